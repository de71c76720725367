"""The flight recorder: the last ``window_s`` of system metrics, top processes
and log lines, in memory bounded by configuration.

* system metrics: one sample every ``interval_s`` in a ring of
  ``window_s / interval_s + 1`` samples;
* top processes: one sample every ``top_interval_s`` in a ring of
  ``window_s / top_interval_s + 1`` samples;
* logs: the tail manager's per-file rings, each bounded in bytes.

Sampling is blocking (psutil, /proc): the daemon runs :meth:`sample_metrics`
and :meth:`sample_top` on the recorder's scheduler thread
(``agent/recorder/scheduler.py``), which skips late ticks rather than queueing
them, so a slow host never builds a backlog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hostdiag.agent.config import RecorderSection
from hostdiag.agent.recorder.ring import SampleRing

__all__ = ["FlightRecorder"]

log = logging.getLogger("hostdiag.agent.recorder")


class _MetricsSampler(Protocol):
    def sample(self) -> dict[str, Any]: ...


class _TopSampler(Protocol):
    def sample(self, n: int) -> dict[str, Any]: ...


class _Tail(Protocol):
    def rings(self) -> Mapping[str, Any]: ...


class FlightRecorder:
    def __init__(
        self,
        config: RecorderSection,
        metrics_sampler: _MetricsSampler,
        top_sampler: _TopSampler,
        tail: _Tail | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = SampleRing(config.metrics_capacity)
        self.top = SampleRing(config.top_capacity)
        self.probes = SampleRing(max(1, config.metrics_capacity))
        self._metrics_sampler = metrics_sampler
        self._top_sampler = top_sampler
        self._tail = tail
        self._clock = clock
        self.started_at = clock()
        self.sample_errors = 0
        self.last_error: str | None = None

    # -- RecorderView (what snapshot sources read) ---------------------------------
    def metrics_since(self, since: float) -> list[dict[str, Any]]:
        return self.metrics.since(since)

    def top_since(self, since: float) -> list[dict[str, Any]]:
        return self.top.since(since)

    def probes_since(self, since: float) -> list[dict[str, Any]]:
        return self.probes.since(since)

    def log_rings(self) -> Mapping[str, Any]:
        return self._tail.rings() if self._tail is not None else {}

    # -- sampling --------------------------------------------------------------------
    def sample_metrics(self) -> None:
        """Blocking: take one system metrics sample into the ring."""
        try:
            sample = self._metrics_sampler.sample()
        except Exception as exc:  # a sampler bug must not stop the recorder
            self._note_error("metrics", exc)
            return
        self.metrics.append(float(sample.get("ts", self._clock())), sample)

    def sample_top(self) -> None:
        """Blocking: take one top-processes sample into the ring."""
        try:
            sample = self._top_sampler.sample(self.config.top_n)
        except Exception as exc:
            self._note_error("top", exc)
            return
        self.top.append(float(sample.get("ts", self._clock())), sample)

    def _note_error(self, what: str, exc: BaseException) -> None:
        self.sample_errors += 1
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        if self.sample_errors <= 5 or self.sample_errors % 100 == 0:
            log.warning("recorder sample failed", extra={"event": "recorder_sample_failed", "error": self.last_error})

    def status(self) -> dict[str, Any]:
        oldest = self.metrics.oldest_ts()
        now = self._clock()
        return {
            "window_s": self.config.window_s,
            "interval_s": self.config.interval_s,
            "metrics_samples": len(self.metrics),
            "metrics_capacity": self.metrics.capacity,
            "metrics_bytes": self.metrics.bytes_used,
            "top_samples": len(self.top),
            "top_capacity": self.top.capacity,
            "top_bytes": self.top.bytes_used,
            "depth_s": round(now - oldest, 1) if oldest is not None else 0.0,
            "sample_errors": self.sample_errors,
            "last_error": self.last_error,
        }
