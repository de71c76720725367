"""The ``host`` source against fixture files and a fake probe."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

import hostdiag
from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext
from hostdiag.agent.sources.host import HostSource, parse_os_release

NOW = 1_700_000_000.0


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("sources here write whole JSON members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        self.members[name] = [orjson.loads(orjson.dumps(r)) for r in rows]


def fake_probe() -> FakeProbe:
    return FakeProbe(
        cpu_count={"logical": 8, "physical": 4},
        memory={"total": 16 * 2**30, "available": 8 * 2**30, "used": 6 * 2**30},
        swap={"total": 2**30, "used": 0, "free": 2**30},
        users=[{"name": "alice", "terminal": "pts/0", "host": "10.0.0.5", "started": NOW - 60}],
        uname={"sysname": "Linux", "nodename": "web-1", "release": "6.1.0-18-amd64",
               "version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1", "machine": "x86_64"},
        hostname="web-1.example.internal",
        python_version="3.11.2",
    )


def make_ctx(fixtures: Path, probe: Any = None) -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(), host_id="web-1", labels={"role": "api", "env": "prod"}, now=NOW, window_s=900.0,
        proc_root=str(fixtures / "proc"), probe=probe or fake_probe(), redactor=load_redactor(), members=MemorySink(),
    )


def fixture_config(fixtures: Path) -> HostSource.Config:
    return HostSource.Config(
        os_release_path=str(fixtures / "etc" / "os-release"), machine_id_path=str(fixtures / "etc" / "machine-id")
    )


def test_host_json_has_the_host_facts(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir)
    notes = asyncio.run(HostSource(fixture_config(fixtures_dir)).collect(ctx))
    assert notes == {}
    host = ctx.members.members["host.json"]  # type: ignore[attr-defined]
    assert host["host_id"] == "web-1"
    assert host["labels"] == {"role": "api", "env": "prod"}
    assert host["hostname"] == "web-1.example.internal"
    assert host["os"]["id"] == "debian"
    assert host["os"]["version_id"] == "12"
    assert host["os"]["pretty_name"] == "Debian GNU/Linux 12 (bookworm)"
    assert host["kernel"]["release"] == "6.1.0-18-amd64"
    assert host["kernel"]["machine"] == "x86_64"
    assert host["boot_id"] == "0f3c5b1e-9a8d-4c2b-8e7f-6a5d4c3b2a19"
    assert host["uptime_s"] == 5000.0
    assert host["boot_time"] == NOW - 5000.0
    assert host["machine_id"] == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    assert host["cpu"] == {"logical": 8, "physical": 4}
    assert host["memory"] == {"total_bytes": 16 * 2**30, "swap_total_bytes": 2**30}
    assert host["users"][0]["name"] == "alice"
    assert host["python_version"] == "3.11.2"
    assert host["agent_version"] == hostdiag.__version__


def test_evidence_has_cpu_memory_uptime(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir)
    asyncio.run(HostSource(fixture_config(fixtures_dir)).collect(ctx))
    assert ctx.evidence["host"] == {"cpu_count": 8, "mem_total_bytes": 16 * 2**30, "uptime_s": 5000.0}


def test_missing_files_are_named_and_the_rest_is_kept(fixtures_dir: Path, tmp_path: Path) -> None:
    ctx = make_ctx(fixtures_dir)
    config = HostSource.Config(
        os_release_path=str(tmp_path / "no-os-release"), machine_id_path=str(tmp_path / "no-machine-id")
    )
    notes = asyncio.run(HostSource(config).collect(ctx))
    assert notes == {"missing": ["os_release", "machine_id"]}
    host = ctx.members.members["host.json"]  # type: ignore[attr-defined]
    assert host["os"] is None
    assert host["machine_id"] is None
    assert host["boot_id"] == "0f3c5b1e-9a8d-4c2b-8e7f-6a5d4c3b2a19"


def test_fails_when_nothing_can_be_read(tmp_path: Path) -> None:
    class BrokenProbe:
        def __getattr__(self, name: str) -> Any:
            def broken(*args: Any) -> Any:
                raise OSError("no host here")

            return broken

    ctx = SnapshotContext(
        config=AgentConfig(), host_id="h", labels={}, now=NOW, window_s=60.0, proc_root=str(tmp_path),
        probe=BrokenProbe(), redactor=load_redactor(), members=MemorySink(),  # type: ignore[arg-type]
    )
    config = HostSource.Config(os_release_path=str(tmp_path / "x"), machine_id_path=str(tmp_path / "y"))
    with pytest.raises(OSError):
        asyncio.run(HostSource(config).collect(ctx))
    assert "host" not in ctx.evidence


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('ID=ubuntu\nVERSION_ID="22.04"\n', {"ID": "ubuntu", "VERSION_ID": "22.04"}),
        ("NAME='Alpine Linux'\n\n# comment\nBROKEN LINE\n", {"NAME": "Alpine Linux"}),
        ('PRETTY_NAME="Say \\"hi\\""\n', {"PRETTY_NAME": 'Say "hi"'}),
    ],
)
def test_parse_os_release(text: str, expected: dict[str, str]) -> None:
    assert parse_os_release(text) == expected
