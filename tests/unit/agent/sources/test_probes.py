"""The ``probes`` source: evidence from the recorder's probe history, or one check now."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.probes import ProbeSection
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext, SourceSkipped
from hostdiag.agent.sources.probes import ProbesSource, percentile, summarize

DB = ProbeSection(name="db", kind="tcp", target="db.internal:5432", component="database", critical=True)
API = ProbeSection(
    name="api", kind="http", target="https://svc:s3cr3t-pw@api.internal/health?token=abc", component="api"
)


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("the probes source writes whole members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        raise AssertionError("the probes source writes probes.json")


class FakeRecorder:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def metrics_since(self, since: float) -> list[dict[str, Any]]:
        return []

    def top_since(self, since: float) -> list[dict[str, Any]]:
        return []

    def log_rings(self) -> dict[str, Any]:
        return {}

    def probes_since(self, since: float) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["ts"] >= since]


def result(name: str, ts: float, ok: bool, latency_ms: float = 10.0, status: int | None = None,
           error: str | None = None) -> dict[str, Any]:
    return {"ts": ts, "name": name, "kind": "tcp", "component": "database", "ok": ok,
            "latency_ms": latency_ms, "status": status, "error": error}


class FakeChecker:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, probe: ProbeSection) -> dict[str, Any]:
        self.calls.append(probe.name)
        return result(probe.name, 2000.0, False, latency_ms=2000.0, error="timed out after 2 s connecting")


def make_ctx(probes: tuple[ProbeSection, ...], recorder: Any, now: float = 1000.0, window_s: float = 100.0) -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(probes=probes), host_id="h", labels={}, now=now, window_s=window_s,
        proc_root="/nonexistent", probe=FakeProbe(), redactor=load_redactor(), members=MemorySink(),
        recorder=recorder,
    )


def collect(ctx: SnapshotContext, checker: Any = None) -> dict[str, Any]:
    return asyncio.run(ProbesSource(ProbesSource.Config(), checker=checker).collect(ctx))


def test_no_probes_configured_is_skipped() -> None:
    with pytest.raises(SourceSkipped, match="no \\[\\[probes\\]\\] configured"):
        collect(make_ctx((), None))


def test_history_gives_uptime_failing_since_and_latency_percentiles() -> None:
    rows = [result("db", 890.0, True)]  # before the window: left out
    rows += [result("db", 910.0 + i * 10, True, latency_ms=float(i + 1)) for i in range(6)]  # 910..960 up
    rows += [result("db", 970.0, False, error="connection refused"),
             result("db", 980.0, False, error="connection refused"),
             result("db", 990.0, False, error="connection refused")]
    rows += [result("db", 1005.0, True)]  # after the snapshot started: left out
    checker = FakeChecker()
    ctx = make_ctx((DB,), FakeRecorder(rows))
    notes = collect(ctx, checker)
    assert checker.calls == []
    assert notes == {"mode": "history", "probes": 1, "checked_now": [], "failing": ["db"]}
    ev = ctx.evidence["probes"]["db"]
    assert ev == {
        "kind": "tcp", "component": "database", "critical": True, "target": "db.internal:5432",
        "last_ts": 990.0, "last_ok": False, "last_error": "connection refused", "last_status": None,
        "checks": 9, "failures": 3, "uptime_ratio": round(6 / 9, 4), "failing_since": 970.0,
        "consecutive_failures": 3, "p50_latency_ms": 3.0, "p95_latency_ms": 6.0,
    }
    member = ctx.members.members["probes.json"]  # type: ignore[attr-defined]
    assert member["mode"] == "history"
    history = member["probes"]["db"]["results"]
    assert [r["ts"] for r in history] == [910.0, 920.0, 930.0, 940.0, 950.0, 960.0, 970.0, 980.0, 990.0]
    assert set(history[0]) == {"ts", "ok", "latency_ms", "status", "error"}


def test_a_probe_without_history_is_checked_now() -> None:
    checker = FakeChecker()
    ctx = make_ctx((DB, API), FakeRecorder([result("db", 990.0, True)]))
    notes = collect(ctx, checker)
    assert checker.calls == ["api"]
    assert notes["checked_now"] == ["api"]
    assert ctx.evidence["probes"]["db"]["last_ok"] is True
    assert ctx.evidence["probes"]["api"]["checks"] == 1
    assert ctx.evidence["probes"]["api"]["failing_since"] == 2000.0


def test_standalone_checks_every_probe_once_and_hides_credentials() -> None:
    checker = FakeChecker()
    ctx = make_ctx((DB, API), None)
    notes = collect(ctx, checker)
    assert sorted(checker.calls) == ["api", "db"]
    assert notes["mode"] == "instant"
    api = ctx.evidence["probes"]["api"]
    assert api["target"] == "https://api.internal/health?token=***"
    assert api["uptime_ratio"] == 0.0 and api["consecutive_failures"] == 1
    assert api["p50_latency_ms"] is None  # failed checks say nothing about latency
    everything = orjson.dumps([ctx.evidence, ctx.members.members])  # type: ignore[attr-defined]
    assert b"s3cr3t-pw" not in everything and b"svc:" not in everything and b"abc" not in everything


def test_summarize_without_results_and_percentile_ranks() -> None:
    ev = summarize(DB, [])
    assert ev["checks"] == 0 and ev["uptime_ratio"] is None and ev["last_ok"] is None
    assert ev["failing_since"] is None and ev["consecutive_failures"] == 0
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0


def test_recovered_probe_has_no_failing_since() -> None:
    rows = [result("db", 950.0, False), result("db", 960.0, True)]
    ev = summarize(DB, rows)
    assert ev["failing_since"] is None and ev["consecutive_failures"] == 0
    assert ev["failures"] == 1 and ev["uptime_ratio"] == 0.5
