"""The flight recorder keeps a fixed window in bounded memory."""

from __future__ import annotations

import asyncio
import itertools

from hostdiag.agent.config import RecorderSection
from hostdiag.agent.recorder.recorder import FlightRecorder
from hostdiag.agent.recorder.ring import SampleRing


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


def test_run_samples_on_its_cadence_and_stops_on_cancel() -> None:
    metrics = FakeMetrics()
    rec = FlightRecorder(RecorderSection(window_s=10, interval_s=0.1, top_interval_s=1), metrics, FakeTop())

    async def scenario() -> None:
        task = asyncio.create_task(rec.run())
        deadline = asyncio.get_running_loop().time() + 10
        while metrics.calls < 3:
            assert asyncio.get_running_loop().time() < deadline, "recorder did not sample"
            await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(scenario())
    assert len(rec.metrics) >= 3
    assert len(rec.top) >= 1
