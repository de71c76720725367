"""Snapshot source ``processes``: the full process table.

Member ``processes.json``::

    {"cpu_interval_s": 0.5, "process_count": 312, "omitted": 0,
     "processes": [{pid, ppid, name, exe, cmdline, username, status, create_time,
                    cpu_user_s, cpu_system_s, cpu_pct, rss_bytes, vms_bytes,
                    num_threads, num_fds, io_read_bytes, io_write_bytes,
                    environ, unavailable}, ...]}

``cmdline`` and ``environ`` go through the redactor before anything is
written.  ``cpu_pct`` (percent of one CPU) is measured over ``cpu_sample_s``:
the source reads every process's CPU ticks before and after reading the table.
``unavailable`` names what could not be read for that process (``environ``
denied, ``io_counters`` of another user's process without privileges, ...);
the rest of the row is kept.  A process that exits while the table is read is
left out and counted in the notes (``vanished``), never an error.

With more than ``max_processes`` processes, the table keeps those with the
most memory plus the busiest ones, and counts the rest in ``omitted``.

Evidence ``evidence["processes"]``: ``process_count``, ``thread_count``,
``zombie_count``, ``uninterruptible_count`` (state D), ``top_rss`` and
``top_cpu`` (a few ``{pid, name, rss_bytes | cpu_pct}``), ``most_fds`` (the
process with most open files, with its RLIMIT_NOFILE soft limit and usage
percent) and ``fd_usage_top`` (the processes closest to their fd limit).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hostdiag.agent import procfs
from hostdiag.agent.probe import AccessDenied, NoSuchProcess, ZombieProcess
from hostdiag.agent.procfs import CLOCK_TICKS_PER_S, PidStat
from hostdiag.agent.sources.base import SnapshotContext, SourceConfig

__all__ = ["ProcessesSource", "TABLE_ATTRS"]

TABLE_ATTRS = (
    "pid",
    "ppid",
    "name",
    "exe",
    "cmdline",
    "username",
    "status",
    "create_time",
    "cpu_times",
    "memory_info",
    "num_threads",
    "num_fds",
    "io_counters",
)

_EVIDENCE_TOP = 5
_FD_CANDIDATES = 10


class _Stopped(Exception):
    """The snapshot gave up on this source; the worker thread stops early."""


def _cpu_reading(probe: Any) -> tuple[float, dict[int, PidStat]] | None:
    try:
        stats = probe.process_stats()
    except OSError:
        return None
    return time.monotonic(), {s.pid: s for s in stats}


class ProcessesSource:
    name = "processes"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        include_environ: bool = field(
            default=True, metadata={"doc": "include each process's environment (redacted)"}
        )
        max_processes: int = field(
            default=10000, metadata={"min": 1, "max": 1_000_000, "doc": "most processes in the table"}
        )
        cpu_sample_s: float = field(
            default=0.1, metadata={"min": 0.0, "max": 10.0, "doc": "CPU percent measured over this long; 0: none"}
        )

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        stop = threading.Event()
        try:
            return await self._collect(ctx, stop)
        except asyncio.CancelledError:
            stop.set()  # the worker thread, if still running, gives up at the next process
            raise

    async def _collect(self, ctx: SnapshotContext, stop: threading.Event) -> dict[str, Any]:
        cfg = self.config
        before = await ctx.run_blocking(_cpu_reading, ctx.probe)
        counts: collections.Counter[str] = collections.Counter()
        rows, notes = await ctx.run_blocking(self._table, ctx, before, counts, stop)
        after = None
        if cfg.cpu_sample_s > 0 and before is not None:
            wait_s = cfg.cpu_sample_s - (time.monotonic() - before[0])
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            after = await ctx.run_blocking(_cpu_reading, ctx.probe)
        interval_s = _apply_cpu(rows, before, after)
        ctx.redaction_counts.update(counts)  # merged on the loop: the counter is shared

        evidence = _evidence(rows, before)
        evidence.update(await ctx.run_blocking(_fd_evidence, rows, ctx.proc_root))
        member = {
            "cpu_interval_s": interval_s,
            "process_count": evidence["process_count"],
            "omitted": notes["omitted"],
            "processes": rows,
        }
        await ctx.run_blocking(ctx.members.write_json, "processes.json", member)
        ctx.evidence[self.name] = evidence
        notes["rows"] = len(rows)
        return notes

    def _table(
        self,
        ctx: SnapshotContext,
        before: tuple[float, dict[int, PidStat]] | None,
        counts: collections.Counter[str],
        stop: threading.Event,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        cfg = self.config
        probe = ctx.probe
        redactor = ctx.redactor
        keep = _choose(before[1], cfg.max_processes) if before is not None else None
        rows: list[dict[str, Any]] = []
        vanished = 0
        environ_denied = 0
        omitted = 0
        for proc in probe.iter_processes():
            if stop.is_set():
                raise _Stopped("stopped")
            pid = proc.pid
            if (keep is not None and pid not in keep) or len(rows) >= cfg.max_processes:
                omitted += 1
                continue
            try:
                info, unavailable = probe.process_info(proc, TABLE_ATTRS)
            except NoSuchProcess:  # exited since it was listed (a zombie's attrs come back None)
                vanished += 1
                continue
            missing = set(unavailable)
            env: dict[str, str] | None = None
            if cfg.include_environ:
                try:
                    env = redactor.redact_env(probe.process_environ(proc), counts)
                except ZombieProcess:
                    missing.add("environ")
                except NoSuchProcess:
                    vanished += 1
                    continue
                except (AccessDenied, PermissionError):
                    environ_denied += 1
                    missing.add("environ")
            rows.append(_row(info, env, sorted(missing), redactor, counts))
        notes: dict[str, Any] = {"vanished": vanished, "omitted": omitted}
        if cfg.include_environ:
            notes["environ_denied"] = environ_denied
        return rows, notes


def _choose(stats: dict[int, PidStat], cap: int) -> set[int] | None:
    """With more processes than ``cap``: the pids to keep (most memory, plus the busiest)."""
    if len(stats) <= cap:
        return None
    busy_n = min(cap // 4, 100)
    busiest = heapq.nlargest(busy_n, stats.values(), key=lambda s: s.cpu_ticks)
    keep = {s.pid for s in busiest}
    for s in sorted(stats.values(), key=lambda s: s.rss_bytes, reverse=True):
        if len(keep) >= cap:
            break
        keep.add(s.pid)
    return keep


def _row(
    info: dict[str, Any],
    env: dict[str, str] | None,
    missing: list[str],
    redactor: Any,
    counts: collections.Counter[str],
) -> dict[str, Any]:
    cmdline = info.get("cmdline")
    if cmdline is not None:
        cmdline = redactor.redact_argv(cmdline, counts)
    cpu = info.get("cpu_times") or {}
    mem = info.get("memory_info") or {}
    io = info.get("io_counters") or {}
    row: dict[str, Any] = {
        "pid": info.get("pid"),
        "ppid": info.get("ppid"),
        "name": info.get("name"),
        "exe": info.get("exe") or None,
        "cmdline": cmdline,
        "username": info.get("username"),
        "status": info.get("status"),
        "create_time": info.get("create_time"),
        "cpu_user_s": cpu.get("user"),
        "cpu_system_s": cpu.get("system"),
        "cpu_pct": None,
        "rss_bytes": mem.get("rss"),
        "vms_bytes": mem.get("vms"),
        "num_threads": info.get("num_threads"),
        "num_fds": info.get("num_fds"),
        "io_read_bytes": io.get("read_bytes"),
        "io_write_bytes": io.get("write_bytes"),
    }
    if env is not None:
        row["environ"] = env
    if missing:
        row["unavailable"] = missing
    return row


def _apply_cpu(
    rows: list[dict[str, Any]],
    before: tuple[float, dict[int, PidStat]] | None,
    after: tuple[float, dict[int, PidStat]] | None,
) -> float | None:
    """Fill ``cpu_pct`` from two tick readings; returns the interval or None."""
    if before is None or after is None:
        return None
    elapsed = after[0] - before[0]
    if elapsed <= 0:
        return None
    b, a = before[1], after[1]
    scale = 100.0 / CLOCK_TICKS_PER_S / elapsed
    for row in rows:
        s0, s1 = b.get(row["pid"]), a.get(row["pid"])
        if s0 is not None and s1 is not None and s0.start_ticks == s1.start_ticks:
            row["cpu_pct"] = round(max(0, s1.cpu_ticks - s0.cpu_ticks) * scale, 1)
    return round(elapsed, 3)


def _evidence(rows: list[dict[str, Any]], before: tuple[float, dict[int, PidStat]] | None) -> dict[str, Any]:
    if before is not None and before[1]:
        stats = before[1].values()
        count = len(before[1])
        threads = sum(s.num_threads for s in stats)
        zombies = sum(1 for s in stats if s.state == "Z")
        blocked = sum(1 for s in stats if s.state == "D")
    else:  # no fast reading: count what the table saw
        count = len(rows)
        threads = sum(r["num_threads"] or 0 for r in rows)
        zombies = sum(1 for r in rows if r["status"] == "zombie")
        blocked = sum(1 for r in rows if r["status"] == "disk-sleep")
    by_rss = heapq.nlargest(_EVIDENCE_TOP, (r for r in rows if r["rss_bytes"] is not None), key=lambda r: r["rss_bytes"])
    by_cpu = heapq.nlargest(_EVIDENCE_TOP, (r for r in rows if r["cpu_pct"] is not None), key=lambda r: r["cpu_pct"])
    return {
        "process_count": count,
        "thread_count": threads,
        "zombie_count": zombies,
        "uninterruptible_count": blocked,
        "top_rss": [{"pid": r["pid"], "name": r["name"], "rss_bytes": r["rss_bytes"]} for r in by_rss],
        "top_cpu": [{"pid": r["pid"], "name": r["name"], "cpu_pct": r["cpu_pct"]} for r in by_cpu],
    }


def _fd_evidence(rows: list[dict[str, Any]], proc_root: str) -> dict[str, Any]:
    """The processes with most open files, against their RLIMIT_NOFILE soft limit."""
    candidates = heapq.nlargest(
        _FD_CANDIDATES, (r for r in rows if r["num_fds"] is not None), key=lambda r: r["num_fds"]
    )
    usage = []
    for r in candidates:
        try:
            soft, _hard = procfs.read_nofile_limit(r["pid"], proc_root)
        except (OSError, ValueError):
            soft = None
        pct = round(100.0 * r["num_fds"] / soft, 1) if soft else None
        usage.append(
            {"pid": r["pid"], "name": r["name"], "num_fds": r["num_fds"], "fd_limit": soft, "fd_usage_pct": pct}
        )
    with_pct = sorted((u for u in usage if u["fd_usage_pct"] is not None), key=lambda u: -u["fd_usage_pct"])
    return {"most_fds": usage[0] if usage else None, "fd_usage_top": with_pct[:3]}
