"""Snapshot source ``probes``: the health probes' results over the window.

With the agent daemon, the probe runner (``agent/probes.py``) has been
checking every ``[[probes]]`` entry on its cadence into the flight recorder;
the source reads the window's results from there.  A probe with no result in
the window (the agent just started, or the window is shorter than the
probe's interval) is checked once now.  Standalone (``agentctl collect``
without an agent) every probe is checked once now, all at the same time, each
under its own ``timeout_s``.

Member ``probes.json``::

    {"mode": "history" | "instant", "window_s": 900.0,
     "probes": {"<name>": {"kind", "component", "critical", "target", "interval_s",
                           "results": [{ts, ok, latency_ms, status, error}, ...]}}}

Evidence ``evidence["probes"]``, per probe name (see :func:`summarize`):
``kind``, ``component``, ``critical``, ``target``, ``last_ts``, ``last_ok``,
``last_error``, ``last_status``, ``checks``, ``failures``, ``uptime_ratio``,
``failing_since``, ``consecutive_failures``, ``p50_latency_ms``,
``p95_latency_ms``.  Targets never show a user name, password or query value.

Skipped when no ``[[probes]]`` are configured.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hostdiag.agent.probes import ProbeSection, check
from hostdiag.agent.sources.base import SnapshotContext, SourceConfig, SourceSkipped

__all__ = ["ProbesSource", "summarize", "percentile"]

Checker = Callable[[ProbeSection], Awaitable[dict[str, Any]]]

_RESULT_KEYS = ("ts", "ok", "latency_ms", "status", "error")


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of values sorted ascending; None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(probe: ProbeSection, results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Evidence for one probe from its results over the window, oldest first.

    ``uptime_ratio`` is the share of checks that were up (None without
    checks); ``consecutive_failures`` counts the failures since the last
    success; ``failing_since`` is the ``ts`` of the first of them (None while
    up; when the whole window failed it is the window's first check, so the
    outage may have begun earlier).  Latency percentiles are over the checks
    that were up: a refused connection is fast and a timeout is the timeout,
    neither says how fast the service answers.
    """
    checks = len(results)
    failures = sum(1 for r in results if not r.get("ok"))
    consecutive = 0
    for r in reversed(results):
        if r.get("ok"):
            break
        consecutive += 1
    latencies = sorted(
        float(r["latency_ms"]) for r in results if r.get("ok") and isinstance(r.get("latency_ms"), (int, float))
    )
    last = results[-1] if results else {}
    return {
        "kind": probe.kind,
        "component": probe.component,
        "critical": probe.critical,
        "target": probe.display_target,
        "last_ts": last.get("ts"),
        "last_ok": last.get("ok"),
        "last_error": last.get("error"),
        "last_status": last.get("status"),
        "checks": checks,
        "failures": failures,
        "uptime_ratio": round((checks - failures) / checks, 4) if checks else None,
        "failing_since": results[checks - consecutive]["ts"] if consecutive else None,
        "consecutive_failures": consecutive,
        "p50_latency_ms": percentile(latencies, 50),
        "p95_latency_ms": percentile(latencies, 95),
    }


class ProbesSource:
    name = "probes"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        pass

    def __init__(self, config: Config, checker: Checker | None = None) -> None:
        self.config = config
        self._check: Checker = checker or check

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        probes = ctx.config.probes
        if not probes:
            raise SourceSkipped("no [[probes]] configured")
        by_name: dict[str, list[dict[str, Any]]] = {p.name: [] for p in probes}
        if ctx.recorder is not None:
            mode = "history"
            for row in ctx.recorder.probes_since(ctx.now - ctx.window_s):
                if row.get("name") in by_name and float(row.get("ts", 0.0)) <= ctx.now:
                    by_name[row["name"]].append(row)
        else:
            mode = "instant"
        due = [p for p in probes if not by_name[p.name]]
        if due:
            fresh = await asyncio.gather(*(self._check(p) for p in due))
            for probe, result in zip(due, fresh):
                by_name[probe.name].append(result)

        member = {
            "mode": mode,
            "window_s": ctx.window_s,
            "probes": {
                p.name: {
                    "kind": p.kind,
                    "component": p.component,
                    "critical": p.critical,
                    "target": p.display_target,
                    "interval_s": p.interval_s,
                    "results": [{k: r.get(k) for k in _RESULT_KEYS} for r in by_name[p.name]],
                }
                for p in probes
            },
        }
        await ctx.run_blocking(ctx.members.write_json, "probes.json", member)
        evidence = {p.name: summarize(p, by_name[p.name]) for p in probes}
        ctx.evidence[self.name] = evidence
        return {
            "mode": mode,
            "probes": len(probes),
            "checked_now": [p.name for p in due],
            "failing": [name for name, e in evidence.items() if e["last_ok"] is False],
        }
