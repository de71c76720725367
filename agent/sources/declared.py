"""Snapshot source ``declared``: the host against what its config says it runs.

``[expect]`` in the agent's config declares what should be on this host::

    [expect]
    processes = ["postgres", "nginx", "re:gunicorn.*checkout"]
    ports = [5432, 443]
    critical_processes = ["postgres"]

**Matching processes.**  A plain entry (``"postgres"``) matches a process
whose name is exactly that (the full name, not the kernel's 15-character
one) or whose command line's first word has that base name
(``/usr/sbin/nginx`` matches ``nginx``).  An entry starting with ``re:`` is
a Python regular expression searched in the process name and in the command
line joined with spaces (``"re:java .*kafka"``).  The process table comes
from the system probe, the same way the ``processes`` source reads it.

A matching process whose parent also matches is a *worker* (postgres
backends, nginx workers); the others are the *main* processes.

**Listening ports** come from the probe's socket list through the
``sockets`` source's :func:`listening_table` (TCP sockets in LISTEN state,
IPv4 and IPv6).

Member ``declared.json``::

    {"processes": {"<entry>": {"running": 3, "workers": 2,
                               "main": [{"pid", "name", "create_time"}, ...]}},
     "ports": {"5432": {"listening": true, "addresses": ["127.0.0.1"], "processes": ["postgres"]}},
     "critical_processes": ["postgres"]}

Evidence ``evidence["declared"]``:

* ``processes``: per entry ``{"running": n, "youngest_age_s": s | null,
  "restarts_5m": n}``; ``running`` counts every matching process (workers
  too); ``youngest_age_s`` is the age of the newest main process;
  ``restarts_5m`` counts main processes started in the last 5 minutes, leaving
  out starts in the first 2 minutes after boot.  It is a lower bound: one
  snapshot sees only the processes alive now, so a crash loop shows as 1.
  systemd's own count is in ``evidence["units"]["restarts"]`` (sources run
  concurrently, so this source does not read it);
* ``ports``: per port (as a string) ``{"listening": bool}``;
* ``critical_processes``: the configured names, as written.  The collector
  compares them with ``evidence["kernel"]["oom_victims"]`` names, which are
  the kernel's process names (at most 15 characters).

The source reads the host as it is now, with or without the flight recorder.
Skipped when ``[expect]`` is empty.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from hostdiag.agent.probe import AccessDenied, NoSuchProcess
from hostdiag.agent.sources.base import SnapshotContext, SourceConfig, SourceSkipped
from hostdiag.agent.sources.sockets import listening_table

__all__ = ["DeclaredSource", "ProcessPattern", "RESTART_WINDOW_S", "BOOT_GRACE_S"]

RESTART_WINDOW_S = 300.0
BOOT_GRACE_S = 120.0
_ATTRS = ("pid", "ppid", "name", "cmdline", "create_time")
_MAIN_IN_MEMBER = 20


class ProcessPattern:
    """One ``[expect] processes`` entry: a plain name or ``re:REGEX``."""

    def __init__(self, entry: str) -> None:
        self.entry = entry
        self.regex = re.compile(entry[3:]) if entry.startswith("re:") else None

    def matches(self, name: str | None, cmdline: list[str] | None) -> bool:
        argv = cmdline or []
        if self.regex is not None:
            return bool(name and self.regex.search(name)) or bool(argv and self.regex.search(" ".join(argv)))
        return name == self.entry or (bool(argv) and os.path.basename(argv[0]) == self.entry)


def _read_processes(probe: Any) -> tuple[list[dict[str, Any]], int]:
    """``pid, ppid, name, cmdline, create_time`` of every process; and how many vanished meanwhile."""
    rows = []
    vanished = 0
    for proc in probe.iter_processes():
        try:
            info, _unavailable = probe.process_info(proc, _ATTRS)
        except NoSuchProcess:
            vanished += 1
            continue
        except AccessDenied:
            continue
        rows.append(info)
    return rows, vanished


def match_processes(
    patterns: list[ProcessPattern], rows: list[dict[str, Any]], now: float, boot_time: float | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(evidence, member) for the process entries."""
    evidence: dict[str, Any] = {}
    member: dict[str, Any] = {}
    for pattern in patterns:
        matched = [r for r in rows if pattern.matches(r.get("name"), r.get("cmdline"))]
        pids = {r["pid"] for r in matched}
        main = [r for r in matched if r.get("ppid") not in pids]
        starts = [float(r["create_time"]) for r in main if isinstance(r.get("create_time"), (int, float))]
        youngest = max(starts) if starts else None
        earliest_restart = now - RESTART_WINDOW_S
        if boot_time is not None:
            earliest_restart = max(earliest_restart, boot_time + BOOT_GRACE_S)
        restarts = sum(1 for t in starts if t >= earliest_restart)
        evidence[pattern.entry] = {
            "running": len(matched),
            "youngest_age_s": round(max(0.0, now - youngest), 1) if youngest is not None else None,
            "restarts_5m": restarts,
        }
        main_sorted = sorted(main, key=lambda r: r.get("create_time") or 0.0, reverse=True)
        member[pattern.entry] = {
            "running": len(matched),
            "workers": len(matched) - len(main),
            "main": [
                {"pid": r["pid"], "name": r.get("name"), "create_time": r.get("create_time")}
                for r in main_sorted[:_MAIN_IN_MEMBER]
            ],
        }
    return evidence, member


def match_ports(ports: tuple[int, ...], connections: list[dict[str, Any]], name_of: Any) -> dict[str, Any]:
    """Member rows for the expected TCP ports (``listening``, ``addresses``, ``processes``)."""
    listening = [r for r in listening_table(connections, name_of) if r["proto"] == "tcp"]
    out: dict[str, Any] = {}
    for port in ports:
        rows = [r for r in listening if r["port"] == port]
        out[str(port)] = {
            "listening": bool(rows),
            "addresses": sorted({r["address"] for r in rows}),
            "processes": sorted({r["process"] for r in rows if r["process"]}),
        }
    return out


class DeclaredSource:
    name = "declared"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        pass

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        expect = ctx.config.expect
        if not (expect.processes or expect.ports or expect.critical_processes):
            raise SourceSkipped("nothing declared ([expect] is empty)")
        evidence, member, notes = await ctx.run_blocking(self._collect, ctx)
        await ctx.run_blocking(ctx.members.write_json, "declared.json", member)
        ctx.evidence[self.name] = evidence
        return notes

    def _collect(self, ctx: SnapshotContext) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        expect = ctx.config.expect
        probe = ctx.probe
        notes: dict[str, Any] = {}
        proc_evidence: dict[str, Any] = {}
        proc_member: dict[str, Any] = {}
        if expect.processes:
            rows, vanished = _read_processes(probe)
            try:
                boot_time: float | None = float(probe.boot_time())
            except Exception:
                boot_time = None
            patterns = [ProcessPattern(e) for e in expect.processes]
            proc_evidence, proc_member = match_processes(patterns, rows, ctx.now, boot_time)
            notes["vanished"] = vanished
            notes["not_running"] = [e for e, v in proc_evidence.items() if v["running"] == 0]
        port_member: dict[str, Any] = {}
        if expect.ports:
            port_member = match_ports(expect.ports, probe.net_connections("inet"), probe.process_name)
            notes["not_listening"] = [int(p) for p, v in port_member.items() if not v["listening"]]
        evidence = {
            "processes": proc_evidence,
            "ports": {p: {"listening": v["listening"]} for p, v in port_member.items()},
            "critical_processes": list(expect.critical_processes),
        }
        member = {
            "processes": proc_member,
            "ports": port_member,
            "critical_processes": list(expect.critical_processes),
        }
        return evidence, member, notes
