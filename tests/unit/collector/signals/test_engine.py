"""The signal engine over a real SQLite metadata store: what it stores, when it adds events,
how scheduled evaluations coalesce, and that one broken incident does not stop the others."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from hostdiag.collector.signals.engine import SignalEngine
from hostdiag.collector.signals.model import Suggestion
from hostdiag.collector.signals.rules import load_rules
from hostdiag.collector.store.base import BundleRecord, HostRequestRecord, IncidentRecord, TimelineEventRecord
from hostdiag.collector.store.sqlite import SqliteMetadataStore


def _incident(incident_id: str, hosts: list[str]) -> tuple[IncidentRecord, list[HostRequestRecord]]:
    inc = IncidentRecord(id=incident_id, title="t", severity=3, service="", state="open", selector_labels={},
                         selector_host_ids=tuple(hosts), window_s=300.0, profile="default", opened_at_ms=1,
                         severity_set_at_ms=1)
    reqs = [HostRequestRecord(request_id=f"req-{incident_id}-{h}", incident_id=incident_id, host_id=h,
                              state="requested", created_at_ms=1, updated_at_ms=1, expires_at_ms=10**13)
            for h in hosts]
    return inc, reqs


async def _bundle(store: SqliteMetadataStore, incident_id: str, host: str, evidence: Any, at_ms: int) -> None:
    text = evidence if isinstance(evidence, str) else json.dumps(evidence)
    b = BundleRecord(bundle_id=str(uuid.uuid4()), host_id=host, size_bytes=1, sha256="a" * 64,
                     received_at_ms=at_ms, manifest_json="{}", incident_id=incident_id, evidence_json=text)
    assert await store.publish_bundle(b, [], [])


def test_evaluation_is_stored_with_an_event_only_when_the_severity_changes(tmp_path: Path, evidence) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(str(tmp_path / "c.db"))
        await store.open()
        try:
            engine = SignalEngine(store, load_rules(), clock=lambda: 1000.0)
            inc, reqs = _incident("inc-aaaaaaaa", ["web-1", "web-2"])
            await store.create_incident(inc, reqs, [TimelineEventRecord(inc.id, 1, "opened", "opened")])
            assert await engine.evaluate(inc.id) is None  # no evidence yet: nothing stored
            assert await store.get_suggestion(inc.id) is None

            await _bundle(store, inc.id, "web-1", evidence("probe-api-down", "web-1"), 10)
            first = await engine.evaluate(inc.id)
            assert first is not None and first.severity == 1 and first.evaluated_at_ms == 1_000_000
            stored = await store.get_suggestion(inc.id)
            assert stored is not None and Suggestion.from_json(stored) == first
            await engine.evaluate(inc.id)  # same evidence: same severity, no second event
            events = [e for e in await store.list_events(inc.id) if e.kind == "suggestion"]
            assert [e.message.split(" — ")[0] for e in events] == ["suggestion: P1 (was none)"]

            # web-1 collects again after the API recovered: its newest bundle counts.
            await _bundle(store, inc.id, "web-1", evidence("healthy", "web-1"), 20)
            cleared = await engine.evaluate(inc.id)
            assert cleared is not None and cleared.severity == 0
            events = [e for e in await store.list_events(inc.id) if e.kind == "suggestion"]
            assert events[-1].message.startswith("suggestion: none (was P1) — No rule fired on the 1/2")
            assert (await store.get_incident(inc.id)).severity == 3  # type: ignore[union-attr]
        finally:
            await store.close()

    asyncio.run(main())


def test_scheduled_evaluations_coalesce_and_one_failure_does_not_stop_the_rest(tmp_path: Path, evidence) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(str(tmp_path / "c.db"))
        await store.open()
        try:
            for incident_id in ("inc-aaaaaaaa", "inc-bbbbbbbb"):
                inc, reqs = _incident(incident_id, ["web-1"])
                await store.create_incident(inc, reqs, [])
                await _bundle(store, incident_id, "web-1", evidence("oom-kill", "web-1"), 10)
            engine = SignalEngine(store, load_rules())
            real = store.evidence_for_incident

            async def broken(incident_id: str) -> Any:
                if incident_id == "inc-aaaaaaaa":
                    raise RuntimeError("disk on fire")
                return await real(incident_id)

            store.evidence_for_incident = broken  # type: ignore[method-assign]
            for _ in range(3):
                engine.schedule("inc-aaaaaaaa")
                engine.schedule("inc-bbbbbbbb")
            await engine.idle()
            assert engine.evaluations == 1  # b once (coalesced); a failed and was logged
            assert await store.get_suggestion("inc-aaaaaaaa") is None
            b = await engine.stored("inc-bbbbbbbb")
            assert b is not None and b.rule == "oom-kill"
            store.evidence_for_incident = real  # type: ignore[method-assign]
            assert await engine.schedule_unresolved() == 2
            await engine.idle()
            assert (await engine.stored("inc-aaaaaaaa")) is not None
            await engine.close()
        finally:
            await store.close()

    asyncio.run(main())


def test_unreadable_evidence_counts_as_a_reporting_host_with_nothing_known(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(str(tmp_path / "c.db"))
        await store.open()
        try:
            inc, reqs = _incident("inc-cccccccc", ["web-1"])
            await store.create_incident(inc, reqs, [])
            await _bundle(store, inc.id, "web-1", "{not json", 10)
            result = await SignalEngine(store, load_rules()).evaluate(inc.id)
            assert result is not None
            assert (result.severity, result.hosts_reporting, result.findings) == (0, 1, ())
        finally:
            await store.close()

    asyncio.run(main())
