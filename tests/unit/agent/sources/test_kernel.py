"""The ``kernel`` source: kmsg and kern.log parsing, the window, and fallbacks."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.agent import procfs
from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext, SourceSkipped
from hostdiag.agent.sources.kernel import EventParser, KernelSource, parse_kern_log_line

# The fixture /proc says the host has been up 5000 s; kmsg stamps are microseconds since boot.
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
BOOT = NOW - 5000.0


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("sources here write whole JSON members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        self.members[name] = [orjson.loads(orjson.dumps(r)) for r in rows]


class MarkingRedactor:
    rule_names = ("password",)

    def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
        if "password=" in text:
            if counts is not None:
                counts["password"] += 1
            return text.replace("hunter2", "[REDACTED]")
        return text

    def redact_argv(self, argv: Any, counts: Any = None) -> list[str]:
        return list(argv)

    def redact_env(self, env: Any, counts: Any = None) -> dict[str, str]:
        return dict(env)


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def make_ctx(fixtures: Path, window_s: float = 900.0, redactor: Any = None) -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(), host_id="web-1", labels={}, now=NOW, window_s=window_s,
        proc_root=str(fixtures / "proc"), probe=FakeProbe(boot_time=BOOT),
        redactor=redactor or load_redactor(), members=MemorySink(),
    )


def kmsg_config(fixtures: Path, **kw: Any) -> KernelSource.Config:
    return KernelSource.Config(kmsg_path=str(fixtures / "kernel" / "kmsg"), kern_log_path="", **kw)


def collect(ctx: SnapshotContext, config: KernelSource.Config) -> dict[str, Any]:
    return asyncio.run(KernelSource(config).collect(ctx))


def events(ctx: SnapshotContext, kind: str) -> list[dict[str, Any]]:
    member = ctx.members.members["kernel.json"]  # type: ignore[attr-defined]
    return [e for e in member["events"] if e["kind"] == kind]


def test_read_kmsg_parses_records_and_skips_continuations(fixtures_dir: Path) -> None:
    records = procfs.read_kmsg(str(fixtures_dir / "kernel" / "kmsg"))
    assert records[0].seq == 0 and records[0].level == 5 and records[0].message.startswith("Linux version")
    assert all(not r.message.startswith("SUBSYSTEM=") for r in records)
    assert records[-1].message == 'usb 1-1: Product: "Widget" Mk2'  # \x22 unescaped
    assert len(records) == 15


def test_oom_kills_in_the_window_with_victims(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir)
    collect(ctx, kmsg_config(fixtures_dir))
    ooms = events(ctx, "oom_kill")
    assert [e["pid"] for e in ooms] == [4321, 8080]  # pid 999 was killed long before the window
    java = ooms[0]
    assert java["name"] == "java"
    assert java["total_vm_bytes"] == 8388608 * 1024
    assert java["anon_rss_bytes"] == 2097152 * 1024
    assert java["file_rss_bytes"] == 1024 * 1024
    assert java["uid"] == 1000
    assert java["cgroup"] is True
    assert java["memcg"] == "/system.slice/api.service"
    assert java["ts"] == pytest.approx(BOOT + 4200.0001)
    assert ooms[1]["cgroup"] is False and ooms[1]["memcg"] is None
    ev = ctx.evidence["kernel"]
    assert ev["oom_kills"] == 2
    assert ev["oom_victims"][0] == {
        "pid": 4321, "name": "java", "anon_rss_bytes": 2097152 * 1024, "cgroup": True, "ts": java["ts"]
    }


def test_segfaults_traps_hung_tasks_and_others(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir)
    collect(ctx, kmsg_config(fixtures_dir))
    (seg,) = events(ctx, "segfault")
    assert seg["pid"] == 5555 and seg["name"] == "python3"
    assert seg["object"] == "libc.so.6" and seg["error"] == 4 and seg["address"] == "0"
    (trap,) = events(ctx, "trap")
    assert trap["pid"] == 6001 and trap["fault"] == "general protection fault" and trap["object"] == "node"
    (hung,) = events(ctx, "hung_task")
    assert hung == {"kind": "hung_task", "ts": pytest.approx(BOOT + 4400), "pid": 77, "name": "kworker/u8:2",
                    "blocked_s": 122}
    (lockup,) = events(ctx, "soft_lockup")
    assert lockup["cpu"] == 1 and lockup["stuck_s"] == 23 and lockup["name"] == "stress-ng"
    (io,) = events(ctx, "io_error")
    assert io["device"] == "sda"
    assert len(events(ctx, "conntrack_full")) == 1
    ev = ctx.evidence["kernel"]
    assert (ev["segfaults"], ev["traps"], ev["hung_tasks"], ev["soft_lockups"], ev["io_errors"],
            ev["conntrack_full"]) == (1, 1, 1, 1, 1, 1)


def test_short_window_keeps_only_recent_events(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir, window_s=200.0)  # since boot + 4800 s
    notes = collect(ctx, kmsg_config(fixtures_dir))
    assert [e["kind"] for e in ctx.members.members["kernel.json"]["events"]] == ["conntrack_full", "oom_kill"]  # type: ignore[attr-defined]
    assert ctx.evidence["kernel"]["oom_kills"] == 1
    assert ctx.evidence["kernel"]["segfaults"] == 0
    assert notes["lines_read"] == 15 and notes["lines_in_window"] == 4


def test_messages_are_warnings_and_worse_and_redacted(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir, redactor=MarkingRedactor())
    collect(ctx, kmsg_config(fixtures_dir))
    member = ctx.members.members["kernel.json"]  # type: ignore[attr-defined]
    texts = [m["text"] for m in member["messages"]]
    assert "app: connecting with password=[REDACTED] failed" in texts
    assert not any("hunter2" in t for t in texts)
    assert ctx.redaction_counts["password"] == 1
    assert all(m["level"] <= 4 or m["text"].startswith(("python3[", "traps:")) for m in member["messages"])
    assert not any(t.startswith("usb 1-1") for t in texts)  # info level, no event
    assert member["log"] == "kmsg"


def test_max_messages_keeps_the_last_ones(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir)
    collect(ctx, kmsg_config(fixtures_dir, max_messages=2))
    texts = [m["text"] for m in ctx.members.members["kernel.json"]["messages"]]  # type: ignore[attr-defined]
    assert len(texts) == 2 and texts[-1].startswith("app: connecting")


def test_falls_back_to_kern_log(fixtures_dir: Path, tmp_path: Path, utc: None) -> None:
    ctx = make_ctx(fixtures_dir)
    config = KernelSource.Config(
        kmsg_path=str(tmp_path / "no-kmsg"), kern_log_path=str(fixtures_dir / "kernel" / "kern.log")
    )
    notes = collect(ctx, config)
    assert notes["log"] == "kern.log"
    member = ctx.members.members["kernel.json"]  # type: ignore[attr-defined]
    assert member["log"] == "kern.log"
    (oom,) = events(ctx, "oom_kill")  # the old-style "Kill process ... or sacrifice child" is not a second kill
    assert oom["pid"] == 1234 and oom["name"] == "ruby" and oom["anon_rss_bytes"] == 1024000 * 1024
    assert oom["ts"] == pytest.approx(NOW - 200 + 0.1235, abs=1e-3)
    (seg,) = events(ctx, "segfault")
    assert seg["pid"] == 4321 and seg["ts"] == NOW - 80
    (hung,) = events(ctx, "hung_task")
    assert hung["name"] == "jbd2/sda1-8" and hung["pid"] == 311
    assert ctx.evidence["kernel"]["oom_kills"] == 1  # "tooold" is outside the window


def test_unreadable_kmsg_without_fallback_is_a_permission_error(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: str, max_bytes: int = 0) -> Any:
        raise PermissionError(1, "Operation not permitted", path)

    monkeypatch.setattr(procfs, "read_kmsg", refuse)
    config = KernelSource.Config(kmsg_path="/dev/kmsg", kern_log_path=str(tmp_path / "kern.log"))
    with pytest.raises(PermissionError, match=r"/dev/kmsg: permission denied .*CAP_SYSLOG.*kern\.log: not found"):
        collect(make_ctx(fixtures_dir), config)


def test_no_kernel_log_at_all_is_skipped(fixtures_dir: Path, tmp_path: Path) -> None:
    config = KernelSource.Config(kmsg_path=str(tmp_path / "kmsg"), kern_log_path=str(tmp_path / "kern.log"))
    with pytest.raises(SourceSkipped, match="cannot read the kernel log"):
        collect(make_ctx(fixtures_dir), config)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Killed process 77 (a b) total-vm:4kB, anon-rss:8kB, file-rss:0kB, shmem-rss:0kB",
         {"kind": "oom_kill", "pid": 77, "name": "a b", "anon_rss_bytes": 8192}),
        ("Out of memory: Kill process 77 (x) score 1 or sacrifice child", None),
        ("INFO: task my:task:name:42 blocked for more than 600 seconds.",
         {"kind": "hung_task", "pid": 42, "name": "my:task:name", "blocked_s": 600}),
        ("traps: a.out[9] trap divide error ip:401136 sp:7ffd5b0 error:0 in a.out[401000+1000]",
         {"kind": "trap", "pid": 9, "fault": "trap divide error", "object": "a.out"}),
        ("Buffer I/O error on dev dm-0, logical block 0, async page read", {"kind": "io_error", "device": "dm-0"}),
        ("EXT4-fs (sda1): mounted filesystem", None),
    ],
)
def test_event_parser(message: str, expected: dict[str, Any] | None) -> None:
    event = EventParser().parse(message, 1.0)
    if expected is None:
        assert event is None
    else:
        assert event is not None
        assert {k: event[k] for k in expected} == expected


def test_kern_log_line_formats(utc: None) -> None:
    assert parse_kern_log_line("2023-11-14T22:13:00+00:00 h kernel: [ 1.5] hello", NOW) == (NOW - 20, "hello")
    assert parse_kern_log_line("Nov 14 22:13:00 h kernel: hi", NOW) == (NOW - 20, "hi")
    # No year in the stamp: a December line read in January is from last year.
    jan = 1_704_153_600.0  # 2024-01-02T00:00:00Z
    ts, _ = parse_kern_log_line("Dec 31 23:00:00 h kernel: x", jan)  # type: ignore[misc]
    assert ts == jan - 25 * 3600
    assert parse_kern_log_line("Nov 14 22:13:00 h sshd[1]: not kernel", NOW) is None
