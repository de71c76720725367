"""Snapshot source ``kernel``: kernel events in the window (OOM kills, crashes, hangs).

Reads the kernel ring buffer from ``/dev/kmsg`` without blocking (everything
buffered now).  Where that is not allowed (``kernel.dmesg_restrict=1`` without
``CAP_SYSLOG``) or not present (some containers), it reads the tail of
``/var/log/kern.log`` instead.  Both paths are configurable, e.g. for an agent
in a container that sees the host's log under another path.

Events recognised (one dict each, with ``ts`` in epoch seconds where known):

* ``oom_kill``: ``pid``, ``name``, ``total_vm_bytes``, ``anon_rss_bytes``,
  ``file_rss_bytes``, ``shmem_rss_bytes``, ``uid``, ``cgroup`` (True for a
  memory cgroup limit rather than the whole host), ``memcg`` (the victim's cgroup);
* ``segfault``: ``pid``, ``name``, ``address``, ``ip``, ``error``, ``object``;
* ``trap``: other faults that kill a process (general protection, invalid
  opcode, divide error): ``pid``, ``name``, ``fault``, ``object``;
* ``hung_task``: ``pid``, ``name``, ``blocked_s`` ("blocked for more than N seconds");
* ``soft_lockup``: ``cpu``, ``stuck_s``, ``pid``, ``name``;
* ``io_error``: ``device``;
* ``conntrack_full``: connection tracking table full, packets dropped.

``/dev/kmsg`` stamps records in microseconds since boot; they are turned into
wall-clock time with the boot time (``now - uptime``).  Only events within
``window_s`` before the snapshot are kept; a kern.log line whose time cannot be
read is kept (``ts`` None).

Member ``kernel.json``: ``{"log": "kmsg"|"kern.log", "path", "events": [...],
"messages": [{ts, level, text}]}`` where ``messages`` are the window's lines at
warning level or worse (all lines for kern.log, which has no levels), last
``max_messages`` of them, redacted.

Evidence ``evidence["kernel"]``: ``oom_kills`` (count), ``oom_victims`` (a few
``{pid, name, anon_rss_bytes, cgroup, ts}``), ``segfaults``, ``traps``,
``hung_tasks``, ``soft_lockups``, ``io_errors``, ``conntrack_full``.
"""

from __future__ import annotations

import collections
import datetime as _dt
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hostdiag.agent import procfs
from hostdiag.agent.sources.base import SnapshotContext, SourceConfig, SourceSkipped

__all__ = ["KernelSource", "EventParser", "parse_kern_log_line", "EVENT_KINDS"]

EVENT_KINDS = ("oom_kill", "segfault", "trap", "hung_task", "soft_lockup", "io_error", "conntrack_full")

_KB = 1024

_OOM_CONTEXT = re.compile(r"oom-kill:(?P<fields>\S+)")
_OOM_KILLED = re.compile(
    r"(?P<prefix>.*?)Killed process (?P<pid>\d+) \((?P<name>.*?)\)(?P<rest>.*)$"
)
_OOM_SIZE = re.compile(r"(total-vm|anon-rss|file-rss|shmem-rss):(\d+)kB")
_OOM_UID = re.compile(r"UID:(\d+)")
_SEGFAULT = re.compile(
    r"^(?P<name>.+?)\[(?P<pid>\d+)\]: segfault at (?P<addr>[0-9a-fA-F]+) ip (?P<ip>[0-9a-fA-F]+)"
    r" sp [0-9a-fA-F]+ error (?P<error>\d+)(?: in (?P<object>[^\[\s]+))?"
)
_TRAP = re.compile(
    r"^traps: (?P<name>.+?)\[(?P<pid>\d+)\] (?P<fault>general protection(?: fault)?|trap [^:]+?|[a-z ]+?)"
    r" ip[: ](?P<ip>[0-9a-fA-F]+)(?:.*? in (?P<object>[^\[\s]+))?"
)
_HUNG = re.compile(r"INFO: task (?P<name>.+):(?P<pid>\d+) blocked for more than (?P<secs>\d+) seconds")
_SOFT_LOCKUP = re.compile(
    r"soft lockup - CPU#(?P<cpu>\d+) stuck for (?P<secs>\d+)s! \[(?P<name>.+):(?P<pid>\d+)\]"
)
_IO_ERROR = re.compile(r"(?:I/O error,? dev (?P<dev>[\w-]+)|Buffer I/O error on dev(?:ice)? (?P<bdev>[\w-]+))")
_CONNTRACK_FULL = re.compile(r"nf_conntrack: table full, dropping packet")

_PRINTK_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_RFC3339_LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\S+)\s+\S+\s+kernel:\s?(?P<msg>.*)$")
_BSD_LINE = re.compile(r"^(?P<ts>[A-Z][a-z]{2}\s+\d{1,2}\s+\d\d:\d\d:\d\d)\s+\S+\s+kernel:\s?(?P<msg>.*)$")


class EventParser:
    """Turns kernel messages into events; keeps the state OOM reports need.

    The kernel prints an ``oom-kill:constraint=...,task_memcg=...,pid=N`` line
    just before ``Killed process N``; the parser joins them.
    """

    def __init__(self) -> None:
        self._oom_context: dict[str, str] | None = None

    def parse(self, message: str, ts: float | None) -> dict[str, Any] | None:
        if "Killed process" in message or "oom-kill:" in message:
            return self._oom(message, ts)
        if "segfault at" in message:
            m = _SEGFAULT.search(message)
            if m:
                return {
                    "kind": "segfault",
                    "ts": ts,
                    "pid": int(m["pid"]),
                    "name": m["name"],
                    "address": m["addr"],
                    "ip": m["ip"],
                    "error": int(m["error"]),
                    "object": m["object"],
                }
        if message.startswith("traps: "):
            m = _TRAP.search(message)
            if m:
                return {
                    "kind": "trap",
                    "ts": ts,
                    "pid": int(m["pid"]),
                    "name": m["name"],
                    "fault": m["fault"].strip(),
                    "object": m["object"],
                }
        if "blocked for more than" in message:
            m = _HUNG.search(message)
            if m:
                return {"kind": "hung_task", "ts": ts, "pid": int(m["pid"]), "name": m["name"], "blocked_s": int(m["secs"])}
        if "soft lockup" in message:
            m = _SOFT_LOCKUP.search(message)
            if m:
                return {
                    "kind": "soft_lockup",
                    "ts": ts,
                    "cpu": int(m["cpu"]),
                    "stuck_s": int(m["secs"]),
                    "pid": int(m["pid"]),
                    "name": m["name"],
                }
        if "I/O error" in message:
            m = _IO_ERROR.search(message)
            if m:
                return {"kind": "io_error", "ts": ts, "device": m["dev"] or m["bdev"]}
        if "table full" in message and _CONNTRACK_FULL.search(message):
            return {"kind": "conntrack_full", "ts": ts}
        return None

    def _oom(self, message: str, ts: float | None) -> dict[str, Any] | None:
        m = _OOM_CONTEXT.search(message)
        if m:
            fields = {}
            for item in m["fields"].split(","):
                key, sep, value = item.partition("=")
                if sep:
                    fields[key] = value
            self._oom_context = fields
            return None
        m = _OOM_KILLED.search(message)
        if not m:
            return None
        rest = m["rest"]
        if "total-vm:" not in rest and "or sacrifice child" in message:
            return None  # old kernels' "Kill process N ... or sacrifice child" announcement
        sizes = {k: int(v) * _KB for k, v in _OOM_SIZE.findall(rest)}
        uid = _OOM_UID.search(rest)
        pid = int(m["pid"])
        context = self._oom_context if self._oom_context and self._oom_context.get("pid") == str(pid) else {}
        self._oom_context = None
        constraint = context.get("constraint")
        return {
            "kind": "oom_kill",
            "ts": ts,
            "pid": pid,
            "name": m["name"],
            "total_vm_bytes": sizes.get("total-vm"),
            "anon_rss_bytes": sizes.get("anon-rss"),
            "file_rss_bytes": sizes.get("file-rss"),
            "shmem_rss_bytes": sizes.get("shmem-rss"),
            "uid": int(uid.group(1)) if uid else None,
            "cgroup": "Memory cgroup" in m["prefix"] or constraint == "CONSTRAINT_MEMCG",
            "memcg": context.get("task_memcg"),
            "constraint": constraint,
        }


def parse_kern_log_line(line: str, now: float) -> tuple[float | None, str] | None:
    """``(ts, message)`` of one kern.log / syslog kernel line, or None for other lines.

    Understands RFC 3339 stamps (rsyslog's high-precision format) and the
    traditional ``Mmm dd HH:MM:SS`` (local time, no year: the year that puts
    the line not after ``now``).  A ``[ seconds.micros]`` printk stamp is removed.
    """
    m = _RFC3339_LINE.match(line)
    ts: float | None = None
    if m:
        try:
            stamp = _dt.datetime.fromisoformat(m["ts"])
            if stamp.tzinfo is None:
                ts = time.mktime(stamp.timetuple()) + stamp.microsecond / 1e6
            else:
                ts = stamp.timestamp()
        except ValueError:
            ts = None
    else:
        m = _BSD_LINE.match(line)
        if not m:
            return None
        year = time.localtime(now).tm_year
        for y in (year, year - 1):
            try:
                parsed = time.strptime(f"{y} {' '.join(m['ts'].split())}", "%Y %b %d %H:%M:%S")
            except ValueError:
                ts = None
                break
            ts = time.mktime(parsed)
            if ts <= now + 86400:
                break
    return ts, _PRINTK_TIME.sub("", m["msg"], count=1)


_Line = tuple[float | None, int | None, str]  # (epoch seconds, syslog level, message)


class KernelSource:
    name = "kernel"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        kmsg_path: str = field(default="/dev/kmsg", metadata={"nonempty": True, "doc": "kernel ring buffer device"})
        kern_log_path: str = field(
            default="/var/log/kern.log", metadata={"doc": "fallback when kmsg is not readable; empty: none"}
        )
        max_read_bytes: int = field(
            default=16 * 1024 * 1024,
            metadata={"size": True, "min": 4096, "max": 1024 * 1024 * 1024, "doc": "most bytes of kernel log read"},
        )
        max_messages: int = field(
            default=2000, metadata={"min": 0, "max": 100000, "doc": "most warning lines kept in kernel.json"}
        )
        message_level: int = field(
            default=4, metadata={"min": 0, "max": 7, "doc": "keep lines at this syslog level or more severe"}
        )

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        counts: collections.Counter[str] = collections.Counter()
        member, notes = await ctx.run_blocking(self._collect, ctx, counts)
        ctx.redaction_counts.update(counts)
        await ctx.run_blocking(ctx.members.write_json, "kernel.json", member)
        ctx.evidence[self.name] = _evidence(member["events"])
        return notes

    # -- reading -----------------------------------------------------------------------------
    def _lines(self, ctx: SnapshotContext) -> tuple[str, str, list[_Line], bool]:
        """``(log, path, [(ts, level, message)], cut)`` from kmsg or the fallback file."""
        cfg = self.config
        try:
            records = procfs.read_kmsg(cfg.kmsg_path, cfg.max_read_bytes)
        except (PermissionError, FileNotFoundError) as exc:
            kmsg_problem = exc
        else:
            boot = _boot_time(ctx)
            lines: list[_Line] = [(boot + r.ts_us / 1e6, r.level, r.message) for r in records]
            return "kmsg", cfg.kmsg_path, lines, False
        why_kmsg = (
            "permission denied (needs CAP_SYSLOG, or kernel.dmesg_restrict=0)"
            if isinstance(kmsg_problem, PermissionError)
            else "not present"
        )
        if cfg.kern_log_path:
            try:
                text_lines, cut = procfs.read_text_tail(cfg.kern_log_path, cfg.max_read_bytes)
            except FileNotFoundError:
                why_file = "not found"
            except PermissionError:
                why_file = "permission denied"
            else:
                lines = []  # kern.log has no levels
                for line in text_lines:
                    parsed = parse_kern_log_line(line, ctx.now)
                    if parsed is not None:
                        lines.append((parsed[0], None, parsed[1]))
                return "kern.log", cfg.kern_log_path, lines, cut
        else:
            why_file = "not configured"
        message = (
            f"cannot read the kernel log: {cfg.kmsg_path}: {why_kmsg}; "
            f"fallback {cfg.kern_log_path or 'kern_log_path'}: {why_file}"
        )
        if isinstance(kmsg_problem, PermissionError):
            raise PermissionError(message)
        raise SourceSkipped(message)

    def _collect(
        self, ctx: SnapshotContext, counts: collections.Counter[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        cfg = self.config
        log, path, lines, cut = self._lines(ctx)
        since = ctx.now - ctx.window_s
        parser = EventParser()
        events: list[dict[str, Any]] = []
        messages: collections.deque[dict[str, Any]] = collections.deque(maxlen=cfg.max_messages)
        in_window = 0
        for ts, level, text in lines:
            inside = ts is None or since <= ts <= ctx.now + 5.0
            event = parser.parse(text, _round(ts))
            if not inside:
                continue
            in_window += 1
            if event is not None:
                events.append(event)
            if cfg.max_messages and (event is not None or level is None or level <= cfg.message_level):
                messages.append({"ts": _round(ts), "level": level, "text": text})
        redacted = [dict(m, text=ctx.redactor.redact(m["text"], counts)) for m in messages]
        member = {"log": log, "path": path, "window_s": ctx.window_s, "events": events, "messages": redacted}
        notes: dict[str, Any] = {"log": log, "lines_read": len(lines), "lines_in_window": in_window, "events": len(events)}
        if cut:
            notes["log_cut_to_bytes"] = cfg.max_read_bytes
        return member, notes


def _round(ts: float | None) -> float | None:
    return None if ts is None else round(ts, 6)


def _boot_time(ctx: SnapshotContext) -> float:
    """Wall-clock boot time: snapshot time minus uptime (falls back to the probe)."""
    try:
        return ctx.now - procfs.read_uptime_s(ctx.proc_root)
    except (OSError, ValueError, IndexError):
        return float(ctx.probe.boot_time())


def _evidence(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in EVENT_KINDS}
    for e in events:
        by_kind[e["kind"]].append(e)
    ooms = by_kind["oom_kill"]
    return {
        "oom_kills": len(ooms),
        "oom_victims": [
            {"pid": e["pid"], "name": e["name"], "anon_rss_bytes": e["anon_rss_bytes"], "cgroup": e["cgroup"], "ts": e["ts"]}
            for e in ooms[-10:]
        ],
        "segfaults": len(by_kind["segfault"]),
        "traps": len(by_kind["trap"]),
        "hung_tasks": len(by_kind["hung_task"]),
        "soft_lockups": len(by_kind["soft_lockup"]),
        "io_errors": len(by_kind["io_error"]),
        "conntrack_full": len(by_kind["conntrack_full"]),
    }
