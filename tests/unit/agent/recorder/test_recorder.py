"""The flight recorder keeps a fixed window in bounded memory."""

from __future__ import annotations

import itertools
import time

from hostdiag.agent.config import RecorderSection
from hostdiag.agent.recorder.recorder import FlightRecorder
from hostdiag.agent.recorder.ring import SampleRing
from hostdiag.agent.recorder.scheduler import Scheduler


class FakeMetrics:
    def __init__(self) -> None:
        self.ts = itertools.count(1000)
        self.calls = 0

    def sample(self) -> dict:
        self.calls += 1
        return {"ts": float(next(self.ts)), "cpu_busy_pct": 12.5, "mem_available_bytes": 10**9, "filesystems": []}


class FakeTop:
    def __init__(self) -> None:
        self.ts = itertools.count(1000, 10)

    def sample(self, n: int) -> dict:
        return {"ts": float(next(self.ts)), "by_cpu": [{"pid": i, "name": "x" * 15} for i in range(n)]}


class Broken:
    def sample(self, *args: object) -> dict:
        raise RuntimeError("probe exploded")


def test_ring_keeps_capacity_and_bytes_bound() -> None:
    ring = SampleRing(10)
    for i in range(10_000):
        ring.append(float(i), {"ts": float(i), "v": i})
    assert len(ring) == 10
    assert [s["v"] for s in ring.since(0)] == list(range(9990, 10_000))
    # bytes bound: capacity times one sample's serialized size
    assert ring.bytes_used <= 10 * len(b'{"ts":9999.0,"v":9999}')
    assert ring.since(9995.0)[0]["v"] == 9995
    assert ring.latest() == {"ts": 9999.0, "v": 9999}


def test_memory_bounded_by_configuration_not_traffic() -> None:
    cfg = RecorderSection(window_s=60, interval_s=1, top_interval_s=10, top_n=5)
    rec = FlightRecorder(cfg, FakeMetrics(), FakeTop())
    for _ in range(cfg.metrics_capacity * 20):
        rec.sample_metrics()
    for _ in range(cfg.top_capacity * 20):
        rec.sample_top()
    assert len(rec.metrics) == cfg.metrics_capacity == 61
    assert len(rec.top) == cfg.top_capacity == 7
    per_metrics = len(rec.metrics._data[-1])
    assert rec.metrics.bytes_used == per_metrics * 61
    assert rec.status()["metrics_samples"] == 61


def test_window_query_returns_only_recent_samples() -> None:
    rec = FlightRecorder(RecorderSection(window_s=30, interval_s=1), FakeMetrics(), FakeTop())
    for _ in range(40):
        rec.sample_metrics()
    recent = rec.metrics_since(1035.0)
    assert [s["ts"] for s in recent] == [1035.0, 1036.0, 1037.0, 1038.0, 1039.0]


def test_sampler_failure_is_counted_not_fatal() -> None:
    rec = FlightRecorder(RecorderSection(), Broken(), Broken())
    rec.sample_metrics()
    rec.sample_top()
    assert rec.sample_errors == 2
    assert "probe exploded" in (rec.last_error or "")
    assert len(rec.metrics) == 0


def test_scheduler_runs_jobs_on_cadence_coalesces_and_skips_late_ticks() -> None:
    clock = Clock()
    sched = Scheduler(clock=clock, coalesce_s=0.05)
    calls: list[tuple[str, float]] = []
    sched.every(1.0, lambda: calls.append(("metrics", clock.t)), "metrics")
    sched.every(0.5, lambda: calls.append(("tail", clock.t)), "tail")
    for job in sched._jobs:
        job.next_at = 0.0
    assert sched.run_due() == 0.5  # both ran at t=0; the tail pass is next
    clock.t = 0.5
    sched.run_due()
    clock.t = 1.0
    sched.run_due()  # both due together: one wake-up
    assert calls == [("metrics", 0.0), ("tail", 0.0), ("tail", 0.5), ("metrics", 1.0), ("tail", 1.0)]
    clock.t = 4.2  # the host stalled: missed ticks are skipped, not replayed
    sched.run_due()
    assert calls[-2:] == [("metrics", 4.2), ("tail", 4.2)]
    assert sched.status()["metrics"]["skipped_ticks"] >= 2
    assert sched.run_due() <= 0.5


def test_scheduler_reruns_a_job_with_more_work_and_survives_errors() -> None:
    clock = Clock()
    sched = Scheduler(clock=clock)
    backlog = [3]

    def tail_pass() -> bool:
        backlog[0] -= 1
        return backlog[0] > 0

    def broken() -> None:
        raise RuntimeError("disk on fire")

    sched.every(1.0, tail_pass, "tail")
    sched.every(1.0, broken, "broken")
    for job in sched._jobs:
        job.next_at = 0.0
    waits = [sched.run_due() for _ in range(3)]
    assert waits[:2] == [0.0, 0.0] and backlog[0] == 0
    assert sched.status()["broken"]["errors"] == 1  # ran once at t=0, next due at t=1
    clock.t = 1.0
    sched.run_due()
    assert sched.status()["broken"]["errors"] == 2
    assert "disk on fire" in sched.status()["broken"]["last_error"]


def test_scheduler_thread_samples_the_recorder_and_stops() -> None:
    metrics = FakeMetrics()
    rec = FlightRecorder(RecorderSection(window_s=10, interval_s=0.1, top_interval_s=1), metrics, FakeTop())
    sched = Scheduler()
    sched.every(0.1, rec.sample_metrics, "metrics")
    sched.every(1.0, rec.sample_top, "top")
    sched.start()
    try:
        deadline = time.monotonic() + 10
        while metrics.calls < 3:
            assert time.monotonic() < deadline, "recorder did not sample"
            time.sleep(0.01)
    finally:
        assert sched.stop(timeout_s=2.0)
    assert len(rec.metrics) >= 3
    assert len(rec.top) >= 1


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t
