"""``agentctl inspect``: the human and JSON summaries of good and tampered bundles."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from hostdiag.agent.bundle import BundleWriter
from hostdiag.agent.inspect import run_inspect

NOW = 1_764_000_000.25
MANIFEST: dict[str, Any] = {
    "agent_version": "0.1.0",
    "labels": {"env": "prod", "role": "api"},
    "trigger": "collector",
    "incident_id": "INC-42",
    "profile": "default",
    "window": {"start": NOW - 900, "end": NOW, "seconds": 900},
    "recorder": "daemon",
    "sources": {
        "processes": {"status": "ok", "duration_s": 0.42, "error": None, "notes": {"count": 312}},
        "sockets": {"status": "timeout", "duration_s": 5.0, "error": "timed out after 5s", "notes": {}},
        "units": {"status": "skipped", "duration_s": 0.0, "error": "no systemd", "notes": {}},
    },
    "redaction": {"password_assignment": 1, "bearer_token": 3},
}


def write_bundle(out: Path, manifest: dict[str, Any] | None = None, *, member_cap: int = 1 << 20) -> str:
    w = BundleWriter(str(out), host_id="web-1", max_member_bytes=member_cap, max_bundle_bytes=1 << 22, now=NOW)
    w.write_json("processes.json", {"count": 312})
    with w.open("logs/app.log") as m:
        m.write(b"started\n" * 1000)
    return w.finish(MANIFEST if manifest is None else manifest, {"cpu": {"util_max": 0.93}}).path


def tamper(path: str, member: str, content: bytes) -> None:
    """Replace one member's bytes, keeping the original manifest, and recompress."""
    with open(path, "rb") as fh:
        plain = zstandard.ZstdDecompressor().stream_reader(fh).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as src, tarfile.open(
        fileobj=out, mode="w:", format=tarfile.PAX_FORMAT
    ) as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == member:
                data = content
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    Path(path).write_bytes(zstandard.ZstdCompressor().compress(out.getvalue()))


@pytest.fixture
def bundle(tmp_path: Path) -> str:
    return write_bundle(tmp_path)


def test_human_summary_of_a_good_bundle(bundle: str) -> None:
    out = io.StringIO()
    assert run_inspect(bundle, as_json=False, out=out) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].startswith("Bundle      ") and len(lines[0].split()[1]) == 36
    assert "Host        web-1" in lines
    assert "Labels      env=prod, role=api" in lines
    assert "Agent       0.1.0" in lines
    assert "Created     2025-11-24T16:00:00.250Z" in lines
    assert "Window      2025-11-24T15:45:00Z .. 2025-11-24T16:00:00Z (900 s)" in lines
    assert "Trigger     collector" in lines
    assert "Incident    INC-42" in lines
    assert "Profile     default" in lines
    assert "Recorder    daemon" in lines
    assert any(line.split()[:3] == ["processes", "ok", "0.42"] and "count=312" in line for line in lines)
    assert any(line.split()[:3] == ["sockets", "timeout", "5.00"] and "error: timed out after 5s" in line
               for line in lines)
    assert any(line.split()[:2] == ["units", "skipped"] for line in lines)
    redaction = lines[lines.index("Redaction") + 1 : lines.index("Redaction") + 3]
    assert [r.split() for r in redaction] == [["bearer_token", "3"], ["password_assignment", "1"]]
    assert lines[lines.index("Truncations") + 1] == "  none"
    assert "Members (4)" in lines
    assert any(line.split()[:3] == ["logs/app.log", "7.8", "KiB"] and line.endswith("ok") for line in lines)
    assert lines[-1].startswith("VERIFIED: every member matches the manifest (file sha256 ")


def test_json_summary_of_a_good_bundle(bundle: str) -> None:
    out = io.StringIO()
    assert run_inspect(bundle, as_json=True, out=out) == 0
    doc = orjson.loads(out.getvalue())
    assert doc["ok"] is True and doc["problems"] == []
    assert doc["host_id"] == "web-1" and doc["path"] == bundle
    assert doc["size_bytes"] == Path(bundle).stat().st_size
    assert doc["manifest"]["sources"]["sockets"]["status"] == "timeout"
    assert doc["evidence"] == {"cpu": {"util_max": 0.93}}
    assert [m["name"] for m in doc["members"]] == ["manifest.json", "evidence.json", "processes.json", "logs/app.log"]
    assert doc["uncompressed_bytes"] == sum(m["size_bytes"] for m in doc["members"])


def test_tampered_bundle(bundle: str) -> None:
    tamper(bundle, "logs/app.log", b"started\n" * 999 + b"STARTED\n")
    out = io.StringIO()
    assert run_inspect(bundle, as_json=False, out=out) == 1
    text = out.getvalue()
    assert "NOT VERIFIED: 1 problem" in text
    assert "  - member 'logs/app.log': sha256 mismatch (manifest " in text
    assert any(line.startswith("  logs/app.log") and line.endswith("BAD") for line in text.splitlines())
    assert "VERIFIED:" not in text.replace("NOT VERIFIED:", "")

    out = io.StringIO()
    assert run_inspect(bundle, as_json=True, out=out) == 1
    doc = orjson.loads(out.getvalue())
    assert doc["ok"] is False
    assert len(doc["problems"]) == 1 and "sha256 mismatch" in doc["problems"][0]
    bad = next(m for m in doc["members"] if m["name"] == "logs/app.log")
    assert bad["ok"] is False


def test_missing_member_shows_as_missing(bundle: str) -> None:
    with open(bundle, "rb") as fh:
        plain = zstandard.ZstdDecompressor().stream_reader(fh).read()
    out_tar = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as src, tarfile.open(fileobj=out_tar, mode="w:") as dst:
        for info in src.getmembers():
            if info.name != "processes.json":
                dst.addfile(info, src.extractfile(info))
    Path(bundle).write_bytes(zstandard.ZstdCompressor().compress(out_tar.getvalue()))
    out = io.StringIO()
    assert run_inspect(bundle, as_json=False, out=out) == 1
    assert any(line.split()[0] == "processes.json" and line.endswith("MISSING") for line in
               out.getvalue().splitlines() if line.startswith("  "))


def test_truncations_are_listed(tmp_path: Path) -> None:
    path = write_bundle(tmp_path, member_cap=4096)
    out = io.StringIO()
    assert run_inspect(path, as_json=False, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[lines.index("Truncations") + 1] == "  logs/app.log: member cap, kept 4.0 KiB"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    out = io.StringIO()
    missing = tmp_path / "nope.tar.zst"
    assert run_inspect(str(missing), as_json=False, out=out) == 1
    assert out.getvalue() == f"agentctl inspect: cannot read {missing}: No such file or directory\n"
    out = io.StringIO()
    assert run_inspect(str(missing), as_json=True, out=out) == 1
    assert orjson.loads(out.getvalue()) == {
        "path": str(missing), "ok": False, "problems": [f"cannot read {missing}: No such file or directory"]
    }
    garbage = tmp_path / "garbage.tar.zst"
    garbage.write_bytes(b"definitely not a bundle")
    out = io.StringIO()
    assert run_inspect(str(garbage), as_json=False, out=out) == 1
    assert "NOT VERIFIED: 1 problem\n  - not a zstd-compressed bundle" in out.getvalue()


def test_sparse_manifest_does_not_crash(tmp_path: Path) -> None:
    path = write_bundle(tmp_path, manifest={})
    out = io.StringIO()
    assert run_inspect(path, as_json=False, out=out) == 0
    text = out.getvalue()
    assert "Host        web-1" in text and "Sources" not in text and "Trigger" not in text


def test_odd_manifest_values_are_shown_safely(tmp_path: Path) -> None:
    manifest = {
        "labels": "not-a-dict",
        "window": "last 15 minutes",
        "trigger": "agentctl\x1b[2J\x1b[31m",
        "sources": {"weird": "ok", "nested": {"status": None, "duration_s": "slow", "notes": ["a", "b"]}},
        "redaction": {"rule": "many"},
        "incident_id": None,
    }
    path = write_bundle(tmp_path, manifest=manifest)
    out = io.StringIO()
    assert run_inspect(path, as_json=False, out=out) == 0
    text = out.getvalue()
    assert "\x1b" not in text
    assert "Trigger     agentctl\\x1b[2J\\x1b[31m" in text
    assert "Incident    -" in text
    assert "Window      last 15 minutes" in text
