"""Helpers for bundle tests: a good bundle, and hand-made (possibly hostile) ones."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from hostdiag.agent.bundle import BundleWriter

NOW = 1_764_000_000.25  # a fixed creation time: 2025-11-24T16:00:00.250Z


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zstd_bytes(data: bytes, **params: Any) -> bytes:
    """``data`` as one zstd frame written by a stream writer (no content size)."""
    buf = io.BytesIO()
    if "compression_params" not in params:
        params["write_checksum"] = True
    with zstandard.ZstdCompressor(**params).stream_writer(buf, closefd=False) as w:
        w.write(data)
    return buf.getvalue()


def tar_bytes(entries: Iterable[tarfile.TarInfo | tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed tar stream: (name, data) pairs for regular files, or ready TarInfos."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=fmt) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
                continue
            name, data = entry
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(NOW)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def manifest_doc(members: Iterable[tuple[str, bytes]], **extra: Any) -> dict[str, Any]:
    """A valid manifest listing ``members`` with their true sizes and hashes."""
    doc: dict[str, Any] = {
        "format_version": 1,
        "bundle_id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "host_id": "web-1",
        "created_at": "2025-11-24T16:00:00.250Z",
        "caps": {"max_member_bytes": 1 << 20, "max_bundle_bytes": 1 << 24},
        "truncations": [],
        "members": [
            {"name": n, "size_bytes": len(d), "sha256": sha(d), "truncated": False, "truncated_reason": None}
            for n, d in members
        ],
    }
    doc.update(extra)
    return doc


@dataclass
class Crafted:
    """Pieces of a hand-made bundle: edit them, then call ``build``."""

    evidence: bytes
    members: list[tuple[str, bytes]]

    # The raw builders, for tests that assemble something stranger.
    tar = staticmethod(tar_bytes)
    zstd = staticmethod(zstd_bytes)

    def manifest(self, **extra: Any) -> dict[str, Any]:
        return manifest_doc([("evidence.json", self.evidence), *self.members], **extra)

    def entries(self, manifest: dict[str, Any] | bytes | None = None) -> list[tuple[str, bytes]]:
        if manifest is None:
            manifest = self.manifest()
        raw = manifest if isinstance(manifest, bytes) else orjson.dumps(manifest)
        return [("manifest.json", raw), ("evidence.json", self.evidence), *self.members]

    def build(self, manifest: dict[str, Any] | bytes | None = None) -> bytes:
        return zstd_bytes(tar_bytes(self.entries(manifest)))


@pytest.fixture
def crafted() -> Crafted:
    return Crafted(
        evidence=orjson.dumps({"cpu": {"util_max": 0.93}}),
        members=[("processes.json", b'{"count": 3}\n'), ("logs/app.log", b"started\nstopped\n")],
    )


@pytest.fixture
def make_writer(tmp_path: Path) -> Callable[..., BundleWriter]:
    out = tmp_path / "bundles"
    out.mkdir()

    def make(out_dir: str | None = None, **kw: Any) -> BundleWriter:
        args: dict[str, Any] = {
            "host_id": "web-1",
            "max_member_bytes": 1 << 20,
            "max_bundle_bytes": 1 << 22,
            "now": NOW,
        }
        args.update(kw)
        return BundleWriter(out_dir if out_dir is not None else str(out), **args)

    return make


SAMPLE_MANIFEST: dict[str, Any] = {
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
    "redaction": {"bearer_token": 3, "password_assignment": 1},
}


@pytest.fixture
def good_bundle(make_writer: Callable[..., BundleWriter]) -> str:
    """A bundle written by BundleWriter, with a few members."""
    w = make_writer()
    w.write_json("processes.json", {"count": 3, "top": [{"pid": 1, "name": "init"}]})
    w.write_ndjson("recorder/metrics.ndjson", [{"t": NOW - i, "cpu": i / 10} for i in range(50)])
    with w.open("logs/app.log") as m:
        m.write(b"started\n")
        m.write(b"stopped\n")
    info = w.finish(dict(SAMPLE_MANIFEST), {"cpu": {"util_max": 0.93}, "mem": {"psi_some_avg10": 1.5}})
    return info.path
