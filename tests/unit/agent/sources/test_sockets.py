"""The ``sockets`` source and the TCP state reader."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.agent import procfs
from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext
from hostdiag.agent.sources.sockets import SocketsSource, listening_table


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("sources here write whole JSON members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        self.members[name] = [orjson.loads(orjson.dumps(r)) for r in rows]


def conn(proto: str, laddr: tuple[str, int] | None, raddr: tuple[str, int] | None, status: str,
         pid: int | None, family: str = "ipv4") -> dict[str, Any]:
    return {
        "family": family, "proto": proto, "laddr": list(laddr) if laddr else None,
        "raddr": list(raddr) if raddr else None, "status": status, "pid": pid,
    }


CONNECTIONS = [
    conn("tcp", ("0.0.0.0", 80), None, "LISTEN", 100),
    conn("tcp", ("::", 80), None, "LISTEN", 100, family="ipv6"),
    conn("tcp", ("127.0.0.1", 5432), None, "LISTEN", None),  # owner not visible without privileges
    conn("tcp", ("10.0.0.10", 80), ("10.0.0.11", 50000), "ESTABLISHED", 100),
    conn("tcp", ("10.0.0.10", 80), ("10.0.0.12", 50001), "ESTABLISHED", 100),
    conn("tcp", ("10.0.0.10", 41000), ("10.0.0.20", 443), "ESTABLISHED", 400),  # outgoing: not a listener
    conn("tcp", ("10.0.0.10", 80), ("10.0.0.13", 50002), "TIME_WAIT", None),
    conn("udp", ("0.0.0.0", 53), None, "NONE", 200),
    conn("udp", ("10.0.0.10", 38000), ("10.0.0.2", 53), "NONE", 400),  # a connected UDP client
]


def make_ctx(proc_root: Path, probe: Any) -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(), host_id="web-1", labels={}, now=1_700_000_000.0, window_s=900.0,
        proc_root=str(proc_root), probe=probe, redactor=load_redactor(), members=MemorySink(),
    )


def test_tcp_state_counts_from_tcp_and_tcp6(fixtures_dir: Path) -> None:
    counts = procfs.tcp_state_counts(str(fixtures_dir / "proc"))
    assert counts["listen"] == 3
    assert counts["established"] == 3
    assert counts["time_wait"] == 1
    assert counts["close_wait"] == 1
    assert counts["syn_sent"] == 0  # every state is present so series keep one shape
    assert set(counts) == set(procfs.TCP_STATES.values())


def test_tcp_state_counts_without_ipv6(fixtures_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_bytes((fixtures_dir / "proc" / "net" / "tcp").read_bytes())
    counts = procfs.tcp_state_counts(str(tmp_path))
    assert counts["listen"] == 2
    assert counts["close_wait"] == 0


def test_tcp_state_counts_without_tables_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        procfs.tcp_state_counts(str(tmp_path))


def test_listening_table_has_listeners_with_owners() -> None:
    names = {100: "nginx", 200: "dnsmasq", 400: "curl"}
    rows = listening_table(CONNECTIONS, names.get)
    assert rows == [
        {"proto": "tcp", "family": "ipv4", "address": "0.0.0.0", "port": 80, "pid": 100, "process": "nginx",
         "connections": 2},
        {"proto": "tcp", "family": "ipv6", "address": "::", "port": 80, "pid": 100, "process": "nginx",
         "connections": 2},
        {"proto": "tcp", "family": "ipv4", "address": "127.0.0.1", "port": 5432, "pid": None, "process": None,
         "connections": 0},
        {"proto": "udp", "family": "ipv4", "address": "0.0.0.0", "port": 53, "pid": 200, "process": "dnsmasq",
         "connections": None},
    ]


def test_listening_table_looks_each_owner_up_once() -> None:
    looked_up: list[int] = []

    def name_of(pid: int) -> str:
        looked_up.append(pid)
        return "x"

    listening_table(CONNECTIONS, name_of)
    assert sorted(looked_up) == [100, 200]


def test_collect_writes_member_evidence_and_notes(fixtures_dir: Path) -> None:
    probe = FakeProbe(connections=CONNECTIONS, names={100: "nginx", 200: "dnsmasq"})
    ctx = make_ctx(fixtures_dir / "proc", probe)
    notes = asyncio.run(SocketsSource(SocketsSource.Config()).collect(ctx))
    member = ctx.members.members["sockets.json"]  # type: ignore[attr-defined]
    assert [r["port"] for r in member["listening"]] == [80, 80, 5432, 53]
    assert member["tcp_states"]["listen"] == 3
    assert member["connections_total"] == len(CONNECTIONS)
    assert ctx.evidence["sockets"]["listening_tcp_ports"] == [80, 5432]
    assert ctx.evidence["sockets"]["listening_udp_ports"] == [53]
    assert ctx.evidence["sockets"]["tcp_states"]["established"] == 3
    assert notes == {"listening": 4, "owner_unknown": 1}


def test_collect_counts_states_from_the_probe_without_proc_tables(tmp_path: Path) -> None:
    probe = FakeProbe(connections=CONNECTIONS)
    ctx = make_ctx(tmp_path, probe)
    notes = asyncio.run(SocketsSource(SocketsSource.Config()).collect(ctx))
    states = ctx.evidence["sockets"]["tcp_states"]
    assert states["listen"] == 3
    assert states["established"] == 3
    assert states["time_wait"] == 1
    assert "tcp_states_error" in notes


def test_max_listening_caps_the_member(fixtures_dir: Path) -> None:
    probe = FakeProbe(connections=CONNECTIONS)
    ctx = make_ctx(fixtures_dir / "proc", probe)
    notes = asyncio.run(SocketsSource(SocketsSource.Config(max_listening=2)).collect(ctx))
    assert len(ctx.members.members["sockets.json"]["listening"]) == 2  # type: ignore[attr-defined]
    assert notes["listening_omitted"] == 2
