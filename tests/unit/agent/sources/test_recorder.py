"""The ``recorder`` source: history from the flight recorder, or one sample standalone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext
from hostdiag.agent.sources.recorder import RecorderSource, summarize_metrics


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("the recorder source writes whole members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        self.members[name] = [orjson.loads(orjson.dumps(r)) for r in rows]


class FakeRecorder:
    def __init__(self) -> None:
        self.metrics = [
            {"ts": 100.0 + i, "mem_available_bytes": 1000 - i * 10, "load1": 0.5 + i, "filesystems": [{"mount": "/"}]}
            for i in range(10)
        ]

    def metrics_since(self, since: float) -> list[dict]:
        return [m for m in self.metrics if m["ts"] >= since]

    def top_since(self, since: float) -> list[dict]:
        return [{"ts": 105.0, "top_cpu": []}] if since <= 105 else []

    def log_rings(self) -> dict:
        return {}

    def probes_since(self, since: float) -> list[dict]:
        return []


def make_ctx(recorder: Any, proc_root: str = "/nonexistent") -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(), host_id="h", labels={}, now=109.0, window_s=5.0, proc_root=proc_root,
        probe=FakeProbe(), redactor=load_redactor(), members=MemorySink(), recorder=recorder,
    )


def test_history_over_the_window_only() -> None:
    ctx = make_ctx(FakeRecorder())
    notes = asyncio.run(RecorderSource(RecorderSource.Config()).collect(ctx))
    assert notes == {"mode": "history", "metrics_samples": 6, "top_samples": 1}
    members = ctx.members.members  # type: ignore[attr-defined]
    assert [m["ts"] for m in members["recorder/metrics.ndjson"]] == [104.0, 105.0, 106.0, 107.0, 108.0, 109.0]
    system = ctx.evidence["system"]
    assert system["samples"] == 6
    assert system["window_min"]["mem_available_bytes"] == 910
    assert system["window_max"]["load1"] == 9.5
    assert system["latest"]["mem_available_bytes"] == 910
    assert system["filesystems"] == [{"mount": "/"}]


def test_standalone_takes_one_sample_now(fixtures_dir: Path) -> None:
    ctx = make_ctx(None, proc_root=str(fixtures_dir / "proc"))
    notes = asyncio.run(RecorderSource(RecorderSource.Config()).collect(ctx))
    assert notes["mode"] == "instant"
    members = ctx.members.members  # type: ignore[attr-defined]
    assert len(members["recorder/metrics.ndjson"]) == 1
    assert len(members["recorder/top.ndjson"]) == 1
    assert ctx.evidence["system"]["samples"] == 1


def test_summarize_ignores_non_numbers_and_handles_empty() -> None:
    assert summarize_metrics([]) == {"samples": 0}
    out = summarize_metrics([{"ts": 1.0, "ok": True, "name": "x", "v": 2}])
    assert out["latest"] == {"v": 2}
