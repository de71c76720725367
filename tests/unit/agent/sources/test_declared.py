"""The ``declared`` source: expected processes and ports against the host."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from hostdiag.agent.config import AgentConfig, ExpectSection
from hostdiag.agent.probe import FakeProbe, FakeProcess
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext, SourceSkipped
from hostdiag.agent.sources.declared import DeclaredSource, ProcessPattern

NOW = 1_700_000_000.0
BOOT = NOW - 86400.0


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("the declared source writes whole members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        raise AssertionError("the declared source writes declared.json")


class EmptyRecorder:
    def metrics_since(self, since: float) -> list[dict[str, Any]]:
        return []

    def top_since(self, since: float) -> list[dict[str, Any]]:
        return []

    def log_rings(self) -> dict[str, Any]:
        return {}

    def probes_since(self, since: float) -> list[dict[str, Any]]:
        return []


def proc(pid: int, ppid: int, name: str, cmdline: list[str], age_s: float, vanish: bool = False) -> FakeProcess:
    return FakeProcess(
        pid, {"ppid": ppid, "name": name, "cmdline": cmdline, "create_time": NOW - age_s}, vanish=vanish
    )


def listen(port: int, pid: int | None, address: str = "0.0.0.0", proto: str = "tcp") -> dict[str, Any]:
    return {"family": "ipv4", "proto": proto, "laddr": [address, port], "raddr": None,
            "status": "LISTEN" if proto == "tcp" else "NONE", "pid": pid}


def host(boot_time: float = BOOT) -> FakeProbe:
    return FakeProbe(
        processes=[
            proc(1, 0, "systemd", ["/sbin/init"], 86400),
            # postgres: the postmaster restarted 60 s ago, its backends are workers
            proc(100, 1, "postgres", ["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/pg"], 60),
            proc(101, 100, "postgres", ["postgres: checkpointer "], 59),
            proc(102, 100, "postgres", ["postgres: client backend"], 1),
            # nginx: matched by the first word of the command line's base name
            proc(200, 1, "nginx", ["/usr/sbin/nginx", "-g", "daemon off;"], 3600),
            proc(201, 200, "nginx", ["nginx: worker process"], 3600),
            proc(300, 1, "python3", ["/usr/bin/python3", "-m", "gunicorn", "checkout.wsgi"], 7200),
            proc(400, 1, "redis-server", ["redis-server *:6379"], 10, vanish=True),
        ],
        connections=[listen(5432, 100, "127.0.0.1"), listen(443, None, "::"), listen(53, 9, proto="udp"),
                     {"family": "ipv4", "proto": "tcp", "laddr": ["10.0.0.1", 40000], "raddr": ["10.0.0.2", 5432],
                      "status": "ESTABLISHED", "pid": 300}],
        names={100: "postgres"},
        boot_time=boot_time,
    )


def make_ctx(expect: ExpectSection, probe: FakeProbe, recorder: Any = None) -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(expect=expect), host_id="h", labels={}, now=NOW, window_s=900.0,
        proc_root="/nonexistent", probe=probe, redactor=load_redactor(), members=MemorySink(), recorder=recorder,
    )


def collect(ctx: SnapshotContext) -> dict[str, Any]:
    return asyncio.run(DeclaredSource(DeclaredSource.Config()).collect(ctx))


EXPECT = ExpectSection(
    processes=("postgres", "nginx", "re:gunicorn .*checkout", "redis-server", "memcached"),
    ports=(5432, 443, 53, 6379),
    critical_processes=("postgres",),
)


@pytest.mark.parametrize("recorder", [None, EmptyRecorder()], ids=["standalone", "daemon"])
def test_processes_ports_and_critical_names(recorder: Any) -> None:
    ctx = make_ctx(EXPECT, host(), recorder)
    notes = collect(ctx)
    ev = ctx.evidence["declared"]
    assert ev["processes"] == {
        "postgres": {"running": 3, "youngest_age_s": 60.0, "restarts_5m": 1},
        "nginx": {"running": 2, "youngest_age_s": 3600.0, "restarts_5m": 0},
        "re:gunicorn .*checkout": {"running": 1, "youngest_age_s": 7200.0, "restarts_5m": 0},
        "redis-server": {"running": 0, "youngest_age_s": None, "restarts_5m": 0},
        "memcached": {"running": 0, "youngest_age_s": None, "restarts_5m": 0},
    }
    # 53 listens on UDP only: the declared ports are TCP listeners
    assert ev["ports"] == {"5432": {"listening": True}, "443": {"listening": True},
                           "53": {"listening": False}, "6379": {"listening": False}}
    assert ev["critical_processes"] == ["postgres"]
    assert notes == {"vanished": 1, "not_running": ["redis-server", "memcached"], "not_listening": [53, 6379]}
    member = ctx.members.members["declared.json"]  # type: ignore[attr-defined]
    assert member["processes"]["postgres"]["workers"] == 2
    assert [m["pid"] for m in member["processes"]["postgres"]["main"]] == [100]
    assert member["ports"]["5432"] == {"listening": True, "addresses": ["127.0.0.1"], "processes": ["postgres"]}
    assert member["ports"]["443"] == {"listening": True, "addresses": ["::"], "processes": []}


def test_starts_just_after_boot_are_not_restarts() -> None:
    ctx = make_ctx(ExpectSection(processes=("postgres",)), host(boot_time=NOW - 100.0))
    collect(ctx)
    assert ctx.evidence["declared"]["processes"]["postgres"] == {
        "running": 3, "youngest_age_s": 60.0, "restarts_5m": 0
    }


def test_only_ports_declared_reads_no_process_table() -> None:
    probe = host()
    ctx = make_ctx(ExpectSection(ports=(5432,)), probe)
    notes = collect(ctx)
    assert "iter_processes" not in probe.calls
    assert ctx.evidence["declared"] == {"processes": {}, "ports": {"5432": {"listening": True}},
                                        "critical_processes": []}
    assert notes == {"not_listening": []}


def test_nothing_declared_is_skipped() -> None:
    with pytest.raises(SourceSkipped, match="nothing declared"):
        collect(make_ctx(ExpectSection(), host()))


def test_pattern_matching_rules() -> None:
    plain = ProcessPattern("nginx")
    assert plain.matches("nginx", ["nginx: master process"])
    assert plain.matches("something", ["/usr/sbin/nginx", "-g"])
    assert not plain.matches("nginx-exporter", ["/usr/bin/nginx-exporter"])
    assert not plain.matches("tail", ["tail", "-f", "/var/log/nginx/access.log"])
    assert not plain.matches(None, None)
    regex = ProcessPattern("re:^java .*kafka")
    assert regex.matches("java", ["java", "-cp", "/opt/kafka/libs", "kafka.Kafka"])
    assert not regex.matches("java", ["java", "-jar", "app.jar"])
    assert ProcessPattern("re:^post").matches("postgres", [])
