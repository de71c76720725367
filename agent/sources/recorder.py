"""Snapshot source ``recorder``: the flight recorder's history over the window.

Members: ``recorder/metrics.ndjson`` (one system metrics sample a line) and
``recorder/top.ndjson`` (one top-processes sample a line).  When ``agentctl``
collects standalone there is no history, so the source takes one sample of
each now and says so in its notes.

Evidence (``evidence["system"]``): the latest sample's numbers, the minimum
and maximum of every numeric field over the window, and the latest
filesystems list, which the collector's rules read (memory, load, PSI,
filesystem fullness, open file descriptors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hostdiag.agent.sources.base import SnapshotContext, SourceConfig

__all__ = ["RecorderSource", "summarize_metrics"]


def _numeric(sample: dict[str, Any]) -> dict[str, float]:
    return {
        k: v for k, v in sample.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "ts"
    }


def summarize_metrics(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Compact evidence from a series of metrics samples (oldest first)."""
    if not samples:
        return {"samples": 0}
    latest = samples[-1]
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for sample in samples:
        for key, value in _numeric(sample).items():
            if key not in lo or value < lo[key]:
                lo[key] = value
            if key not in hi or value > hi[key]:
                hi[key] = value
    return {
        "samples": len(samples),
        "first_ts": samples[0].get("ts"),
        "last_ts": latest.get("ts"),
        "latest": _numeric(latest),
        "window_min": lo,
        "window_max": hi,
        "filesystems": latest.get("filesystems", []),
        "tcp_states": latest.get("tcp_states", {}),
    }


class RecorderSource:
    name = "recorder"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        pass

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        return await ctx.run_blocking(self._collect, ctx)

    def _collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        since = ctx.now - ctx.window_s
        if ctx.recorder is not None:
            metrics = ctx.recorder.metrics_since(since)
            top = ctx.recorder.top_since(since)
            mode = "history"
        else:
            from hostdiag.agent.recorder.sampler import MetricsSampler, TopSampler

            metrics = [MetricsSampler(ctx.probe, proc_root=ctx.proc_root).sample()]
            top = [TopSampler(ctx.probe).sample(ctx.config.recorder.top_n)]
            mode = "instant"
        ctx.members.write_ndjson("recorder/metrics.ndjson", metrics)
        ctx.members.write_ndjson("recorder/top.ndjson", top)
        ctx.evidence["system"] = summarize_metrics(metrics)
        return {"mode": mode, "metrics_samples": len(metrics), "top_samples": len(top)}
