"""The ``processes`` source with a fake probe and the fixture /proc tree."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.agent import procfs
from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import AccessDenied, FakeProbe, FakeProcess, ZombieProcess
from hostdiag.agent.procfs import PAGE_SIZE_BYTES, PidStat
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext
from hostdiag.agent.sources.processes import ProcessesSource

NOW = 1_700_000_000.0
MiB = 1024 * 1024


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("sources here write whole JSON members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        self.members[name] = [orjson.loads(orjson.dumps(r)) for r in rows]


class SpyRedactor:
    """Replaces any value containing "secret" and counts it, recording every call."""

    rule_names = ("spy",)

    def __init__(self) -> None:
        self.argv_calls: list[list[str]] = []
        self.env_calls: list[dict[str, str]] = []

    def _hide(self, value: str, counts: collections.Counter[str] | None) -> str:
        if "secret" in value:
            if counts is not None:
                counts["spy"] += 1
            return "[REDACTED]"
        return value

    def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
        return self._hide(text, counts)

    def redact_argv(self, argv: Iterable[str], counts: collections.Counter[str] | None = None) -> list[str]:
        argv = list(argv)
        self.argv_calls.append(argv)
        return [self._hide(a, counts) for a in argv]

    def redact_env(self, env: Mapping[str, str], counts: collections.Counter[str] | None = None) -> dict[str, str]:
        self.env_calls.append(dict(env))
        return {k: self._hide(v, counts) for k, v in env.items()}


def info(name: str, pid: int, rss_pages: int, num_fds: int | None, **extra: Any) -> dict[str, Any]:
    base = {
        "ppid": 1,
        "name": name,
        "exe": f"/usr/bin/{name}",
        "cmdline": [f"/usr/bin/{name}"],
        "username": "root",
        "status": "sleeping",
        "create_time": NOW - 1000 + pid,
        "cpu_times": {"user": 1.5, "system": 0.5, "children_user": 0.0, "children_system": 0.0, "iowait": 0.0},
        "memory_info": {"rss": rss_pages * PAGE_SIZE_BYTES, "vms": 10 * rss_pages * PAGE_SIZE_BYTES},
        "num_threads": 1,
        "num_fds": num_fds,
        "io_counters": {"read_bytes": 4096, "write_bytes": 8192, "read_count": 1, "write_count": 2},
    }
    base.update(extra)
    return base


def fixture_processes() -> list[FakeProcess]:
    return [
        FakeProcess(1, info("systemd", 1, 3000, 120, cmdline=["/sbin/init", "splash"]), environ={"HOME": "/"}),
        FakeProcess(
            100,
            info("nginx", 100, 2560, 1000, num_threads=4,
                 cmdline=["nginx", "-g", "daemon off;", "--api-key=secret123"]),
            environ={"PATH": "/usr/bin", "API_TOKEN": "secret-token"},
        ),
        FakeProcess(
            200,
            info("my (odd) name", 200, 100, 50, username="bob", status="disk-sleep", io_counters=None),
            environ=AccessDenied(200),
            unavailable=frozenset({"io_counters"}),
        ),
        FakeProcess(
            300,
            {"ppid": 100, "name": "defunct-child", "status": "zombie", "num_threads": 1},
            environ=ZombieProcess(300),
            unavailable=frozenset({"exe", "cmdline", "num_fds", "memory_info", "io_counters"}),
        ),
        FakeProcess(400, info("verylongprocess-worker", 400, 50000, 30000, num_threads=8), environ={"LANG": "C"}),
        FakeProcess(500, info("short-lived", 500, 10, 3), vanish=True),
    ]


def make_ctx(fixtures: Path, probe: Any, redactor: Any = None) -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(), host_id="web-1", labels={}, now=NOW, window_s=900.0,
        proc_root=str(fixtures / "proc"), probe=probe, redactor=redactor or SpyRedactor(), members=MemorySink(),
    )


def fixture_probe(fixtures: Path, processes: list[FakeProcess] | None = None) -> FakeProbe:
    return FakeProbe(
        processes=fixture_processes() if processes is None else processes,
        stats=procfs.read_pid_stats(str(fixtures / "proc")),
    )


def collect(ctx: SnapshotContext, **config: Any) -> dict[str, Any]:
    config.setdefault("cpu_sample_s", 0.0)
    return asyncio.run(ProcessesSource(ProcessesSource.Config(**config)).collect(ctx))


def rows_by_pid(ctx: SnapshotContext) -> dict[int, dict[str, Any]]:
    member = ctx.members.members["processes.json"]  # type: ignore[attr-defined]
    return {r["pid"]: r for r in member["processes"]}


def test_table_rows_have_the_process_fields(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir))
    collect(ctx)
    nginx = rows_by_pid(ctx)[100]
    assert nginx["name"] == "nginx"
    assert nginx["ppid"] == 1
    assert nginx["exe"] == "/usr/bin/nginx"
    assert nginx["username"] == "root"
    assert nginx["status"] == "sleeping"
    assert nginx["create_time"] == NOW - 900
    assert nginx["cpu_user_s"] == 1.5
    assert nginx["cpu_system_s"] == 0.5
    assert nginx["rss_bytes"] == 2560 * PAGE_SIZE_BYTES
    assert nginx["vms_bytes"] == 25600 * PAGE_SIZE_BYTES
    assert nginx["num_threads"] == 4
    assert nginx["num_fds"] == 1000
    assert nginx["io_read_bytes"] == 4096
    assert nginx["io_write_bytes"] == 8192
    assert "unavailable" not in nginx


def test_vanished_process_is_skipped_without_error(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir))
    notes = collect(ctx)
    assert notes["vanished"] == 1
    assert sorted(rows_by_pid(ctx)) == [1, 100, 200, 300, 400]


def test_environ_access_denied_is_recorded_and_the_row_kept(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir))
    notes = collect(ctx)
    odd = rows_by_pid(ctx)[200]
    assert "environ" not in odd
    assert odd["unavailable"] == ["environ", "io_counters"]
    assert odd["name"] == "my (odd) name"
    assert odd["num_fds"] == 50
    assert odd["io_read_bytes"] is None
    assert notes["environ_denied"] == 1


def test_zombie_keeps_its_row_with_what_could_be_read(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir))
    collect(ctx)
    zombie = rows_by_pid(ctx)[300]
    assert zombie["status"] == "zombie"
    assert zombie["cmdline"] is None
    assert "environ" in zombie["unavailable"] and "cmdline" in zombie["unavailable"]


def test_cmdline_and_environ_go_through_the_redactor(fixtures_dir: Path) -> None:
    spy = SpyRedactor()
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir), redactor=spy)
    collect(ctx)
    nginx = rows_by_pid(ctx)[100]
    assert nginx["cmdline"] == ["nginx", "-g", "daemon off;", "[REDACTED]"]
    assert nginx["environ"] == {"PATH": "/usr/bin", "API_TOKEN": "[REDACTED]"}
    assert ["nginx", "-g", "daemon off;", "--api-key=secret123"] in spy.argv_calls
    assert {"PATH": "/usr/bin", "API_TOKEN": "secret-token"} in spy.env_calls
    assert ctx.redaction_counts["spy"] == 2
    raw = orjson.dumps(ctx.members.members["processes.json"])  # type: ignore[attr-defined]
    assert b"secret" not in raw


def test_environ_left_out_when_not_configured(fixtures_dir: Path) -> None:
    spy = SpyRedactor()
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir), redactor=spy)
    notes = collect(ctx, include_environ=False)
    assert all("environ" not in r for r in rows_by_pid(ctx).values())
    assert spy.env_calls == []
    assert "environ_denied" not in notes
    assert "environ" not in rows_by_pid(ctx)[200].get("unavailable", [])


def test_evidence_counts_and_tops(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir))
    collect(ctx)
    ev = ctx.evidence["processes"]
    assert ev["process_count"] == 5
    assert ev["thread_count"] == 16
    assert ev["zombie_count"] == 1
    assert ev["uninterruptible_count"] == 1
    assert [t["pid"] for t in ev["top_rss"]] == [400, 1, 100, 200]
    assert ev["top_rss"][0] == {"pid": 400, "name": "verylongprocess-worker", "rss_bytes": 50000 * PAGE_SIZE_BYTES}
    assert ev["top_cpu"] == []  # no CPU interval measured with cpu_sample_s = 0


def test_fd_evidence_compares_open_files_with_the_limit(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir))
    collect(ctx)
    ev = ctx.evidence["processes"]
    assert ev["most_fds"] == {
        "pid": 400, "name": "verylongprocess-worker", "num_fds": 30000, "fd_limit": 65536, "fd_usage_pct": 45.8
    }
    # nginx is nearest its limit (1000 of 1024); pid 1 has no limits file, pid 200 is unlimited.
    assert [u["pid"] for u in ev["fd_usage_top"]] == [100, 400]
    assert ev["fd_usage_top"][0]["fd_usage_pct"] == 97.7


def test_max_processes_keeps_the_largest_and_counts_the_rest(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir))
    notes = collect(ctx, max_processes=2)
    member = ctx.members.members["processes.json"]  # type: ignore[attr-defined]
    assert sorted(rows_by_pid(ctx)) == [1, 400]  # the two with the most memory
    assert member["omitted"] == notes["omitted"] == 4
    assert member["process_count"] == 5


class TwoReadingsProbe(FakeProbe):
    """Gives successive process_stats readings, as time passes on a host."""

    def __init__(self, readings: list[list[PidStat]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.readings = readings

    def process_stats(self) -> list[PidStat]:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


def test_cpu_percent_is_measured_between_two_readings(fixtures_dir: Path) -> None:
    first = procfs.read_pid_stats(str(fixtures_dir / "proc"))
    second = []
    for s in first:
        if s.pid == 100:
            s = s._replace(cpu_ticks=s.cpu_ticks + 50)
        if s.pid == 400:  # the pid was reused by a new process meanwhile
            s = s._replace(start_ticks=s.start_ticks + 1, cpu_ticks=s.cpu_ticks + 500)
        second.append(s)
    probe = TwoReadingsProbe([first, second], processes=fixture_processes())
    ctx = make_ctx(fixtures_dir, probe)
    collect(ctx, cpu_sample_s=0.05)
    rows = rows_by_pid(ctx)
    member = ctx.members.members["processes.json"]  # type: ignore[attr-defined]
    assert member["cpu_interval_s"] >= 0.05
    assert rows[100]["cpu_pct"] > 0
    assert rows[1]["cpu_pct"] == 0
    assert rows[400]["cpu_pct"] is None
    assert ctx.evidence["processes"]["top_cpu"][0]["pid"] == 100


def test_cancelled_collection_stops_reading_processes(fixtures_dir: Path, wait_for: Any) -> None:
    entered = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    class SlowProbe(FakeProbe):
        def process_info(self, proc: FakeProcess, attrs: Any) -> Any:
            calls.append(proc.pid)
            entered.set()
            release.wait(10)
            return super().process_info(proc, attrs)

    probe = SlowProbe(processes=fixture_processes(), stats=procfs.read_pid_stats(str(fixtures_dir / "proc")))
    ctx = make_ctx(fixtures_dir, probe)

    async def main() -> None:
        task = asyncio.create_task(ProcessesSource(ProcessesSource.Config(cpu_sample_s=0)).collect(ctx))
        await asyncio.to_thread(wait_for, entered.is_set, 10.0, what="first process read")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    asyncio.run(main())  # returns once the worker thread has finished
    assert calls == [1]
    assert "processes.json" not in ctx.members.members  # type: ignore[attr-defined]


@pytest.mark.xfail(
    not load_redactor().rule_names,
    reason="the redaction engine has not landed yet: the placeholder passes text through",
    strict=False,
)
def test_real_redactor_removes_a_password_from_command_lines(fixtures_dir: Path) -> None:
    redactor = load_redactor()
    procs = [
        FakeProcess(
            100,
            info("dbtool", 100, 10, 5, cmdline=["/usr/bin/dbtool", "--user=admin", "--password=hunter2", "sync"]),
            environ={"DB_PASSWORD": "hunter2"},
        )
    ]
    ctx = make_ctx(fixtures_dir, fixture_probe(fixtures_dir, procs), redactor=redactor)
    collect(ctx)
    raw = orjson.dumps(ctx.members.members["processes.json"])  # type: ignore[attr-defined]
    assert b"hunter2" not in raw
    assert b"--user=admin" in raw
    assert sum(ctx.redaction_counts.values()) >= 1
