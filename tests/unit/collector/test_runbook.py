"""The runbook's clock on an injected clock: every breach kind, what restarts and stops each
timer, one record per breach, and nothing lost or doubled when a new clock takes over the store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hostdiag.collector.fleet import Fleet
from hostdiag.collector.incidents import IncidentManager
from hostdiag.collector.metrics import Registry
from hostdiag.collector.runbook import (
    ACK_OVERDUE,
    P1_STATUS_OVERDUE,
    P1_UNRESOLVED,
    RunbookClock,
    RunbookPolicy,
    breach_is_open,
    deadlines,
    escalation_payload,
    open_breaches,
)
from hostdiag.collector.store.base import IncidentRecord, IncidentStates
from hostdiag.collector.store.sqlite import SqliteMetadataStore

MIN = 60.0


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[int, dict[str, Any]]] = []

    def submit(self, key: int, body: Any) -> None:
        self.sent.append((key, dict(body)))


class Env:
    def __init__(self, root: Path, clock: Any, policy: RunbookPolicy | None = None) -> None:
        self.root = root
        self.clock = clock
        self.policy = policy
        self.store = SqliteMetadataStore(str(root / "collector.db"))
        self.incidents = IncidentManager(self.store, Fleet(), clock=clock)
        self.notifier = RecordingNotifier()
        self.registry = Registry()
        self.breaches = self.registry.counter("breaches_total", "test", ["kind", "severity"])
        self.runbook = self.new_clock()

    def new_clock(self) -> RunbookClock:
        return RunbookClock(self.store, self.incidents, self.policy, clock=self.clock, notifier=self.notifier,
                            breaches=self.breaches)

    async def open(self, severity: int = 1, title: str = "API down") -> str:
        view = await self.incidents.open(title=title, severity=severity, service="api", selector_host_ids=["web-1"])
        return view.incident.id

    async def set_severity(self, incident_id: str, severity: int) -> None:
        """What SetIncidentSeverity stores: the new severity and when it was set."""
        inc = await self.store.get_incident(incident_id)
        assert inc is not None
        await self.store.update_incident(
            replace(inc, severity=severity, severity_set_at_ms=self.incidents.now_ms()), []
        )

    async def tick(self, seconds: float) -> list[tuple[str, str]]:
        """Move the clock, run one pass, return (incident, kind) of the new breaches."""
        self.clock.advance(seconds)
        return [(e.incident_id, e.kind) for e in await self.runbook.evaluate()]

    async def escalations(self, incident_id: str) -> list[Any]:
        return (await self.incidents.get(incident_id)).escalations

    async def open_kinds(self, incident_id: str) -> list[str]:
        view = await self.incidents.get(incident_id)
        return [e.kind for e in open_breaches(view.incident, view.escalations)]


def run(tmp_path: Path, clock: Any, body: Callable[[Env], Awaitable[None]], policy: RunbookPolicy | None = None) -> None:
    async def main() -> None:
        env = Env(tmp_path, clock, policy)
        await env.store.open()
        try:
            await body(env)
        finally:
            await env.store.close()

    asyncio.run(main())


# -- acknowledge ------------------------------------------------------------------------------


@pytest.mark.parametrize(("severity", "deadline_s"), [(1, 300), (2, 900), (3, 1800), (4, 86400)])
def test_ack_deadline_by_severity(tmp_path: Path, clock: Any, severity: int, deadline_s: float) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(severity)
        assert await env.tick(deadline_s - 1) == []
        assert await env.tick(1) == [(inc, ACK_OVERDUE)]
        [esc] = await env.escalations(inc)
        assert esc.kind == ACK_OVERDUE and esc.severity == severity and not esc.notified
        assert esc.message == f"P{severity} not acknowledged within {_human(deadline_s)}"
        events = [e for e in (await env.incidents.get(inc)).events if e.kind == "escalation"]
        assert [e.message for e in events] == [f"ack_overdue: {esc.message}"]
        # Still overdue on the next passes, but recorded once.
        later = await env.tick(60) + await env.tick(3600)
        assert (inc, ACK_OVERDUE) not in later
        assert [e.kind for e in await env.escalations(inc)].count(ACK_OVERDUE) == 1
        assert env.breaches.value(kind=ACK_OVERDUE, severity=f"P{severity}") == 1

    run(tmp_path, clock, body)


def _human(seconds: float) -> str:
    return {300: "5 min", 900: "15 min", 1800: "30 min", 86400: "24 h"}[int(seconds)]


def test_acknowledging_in_time_stops_the_ack_timer(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(2)
        await env.tick(14 * MIN)
        await env.incidents.acknowledge(inc, actor="alice")
        assert await env.tick(2 * MIN) == [] and await env.tick(24 * 3600) == []
        assert await env.escalations(inc) == []

    run(tmp_path, clock, body)


def test_acknowledging_late_closes_the_breach(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(3)
        await env.tick(31 * MIN)
        assert await env.open_kinds(inc) == [ACK_OVERDUE]
        assert [v.incident.id for v in await env.incidents.list(overdue=True)] == [inc]
        assert await env.runbook.count_overdue() == 1
        await env.incidents.acknowledge(inc)
        assert await env.open_kinds(inc) == []
        assert await env.incidents.list(overdue=True) == []
        assert await env.runbook.count_overdue() == 0
        # The record stays: the breach happened.
        assert [e.kind for e in await env.escalations(inc)] == [ACK_OVERDUE]

    run(tmp_path, clock, body)


def test_raising_the_severity_restarts_the_ack_timer(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(3)
        await env.tick(20 * MIN)  # the P3 deadline (30 min) is still 10 min away
        await env.set_severity(inc, 1)
        raised_ms = env.incidents.now_ms()
        assert await env.tick(5 * MIN - 1) == []  # 25 min in, but only 5 min minus 1 s as a P1
        assert await env.tick(1) == [(inc, ACK_OVERDUE)]
        [esc] = await env.escalations(inc)
        assert esc.due_at_ms == raised_ms + 300_000 and esc.severity == 1
        assert esc.message.startswith("P1 not acknowledged within 5 min")

    run(tmp_path, clock, body)


def test_a_new_severity_closes_the_old_ack_breach_and_runs_a_new_one(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(3)
        assert await env.tick(30 * MIN) == [(inc, ACK_OVERDUE)]
        await env.set_severity(inc, 2)
        assert await env.open_kinds(inc) == []  # at most one open breach per kind: the P3 one closed
        assert await env.tick(15 * MIN - 1) == []
        assert await env.tick(1) == [(inc, ACK_OVERDUE)]
        assert [e.severity for e in await env.escalations(inc)] == [3, 2]
        assert await env.open_kinds(inc) == [ACK_OVERDUE]

    run(tmp_path, clock, body)


# -- P1 unresolved ----------------------------------------------------------------------------


def test_p1_unresolved_after_15_minutes(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(1)
        await env.tick(1 * MIN)
        await env.incidents.acknowledge(inc)
        for _ in range(3):  # status updates keep the update timer quiet
            await env.tick(4 * MIN)
            await env.incidents.post_status_update(inc, "still digging")
        assert await env.tick(2 * MIN - 1) == []  # 15 min minus 1 s after opening
        assert await env.tick(1) == [(inc, P1_UNRESOLVED)]
        assert await env.open_kinds(inc) == [P1_UNRESOLVED]
        await env.incidents.post_status_update(inc, "found it")  # an update does not close this one
        assert await env.open_kinds(inc) == [P1_UNRESOLVED]

    run(tmp_path, clock, body)


def test_resolving_stops_every_timer(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(1)
        await env.tick(2 * MIN)
        await env.incidents.resolve(inc, "false alarm")
        assert await env.tick(60 * MIN) == []
        assert await env.escalations(inc) == []

        late = await env.open(1, title="DB down")
        found = await env.tick(16 * MIN)
        assert set(found) == {(late, ACK_OVERDUE), (late, P1_UNRESOLVED)}
        await env.incidents.resolve(late)
        assert await env.open_kinds(late) == []
        assert await env.incidents.list(overdue=True) == []

    run(tmp_path, clock, body)


def test_lowering_a_p1_stops_its_p1_timers(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(1)
        await env.incidents.acknowledge(inc)
        await env.tick(4 * MIN)
        await env.set_severity(inc, 2)
        assert await env.tick(60 * MIN) == []
        assert await env.escalations(inc) == []

    run(tmp_path, clock, body)


# -- P1 status updates ------------------------------------------------------------------------


def test_p1_status_timer_starts_at_acknowledgement(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(1)
        # Unacknowledged: the silence is the ack timer's business, not escalated twice.
        assert await env.tick(5 * MIN) == [(inc, ACK_OVERDUE)]
        await env.tick(1 * MIN)
        await env.incidents.acknowledge(inc)
        assert await env.tick(5 * MIN - 1) == []
        assert await env.tick(1) == [(inc, P1_STATUS_OVERDUE)]
        [_, esc] = await env.escalations(inc)
        assert esc.message == "P1 without a status update for 5 min"

    run(tmp_path, clock, body)


def test_p1_status_breach_once_per_silence_and_again_after_the_next_update(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(1)
        await env.incidents.acknowledge(inc)
        assert await env.tick(5 * MIN) == [(inc, P1_STATUS_OVERDUE)]
        assert await env.tick(10 * MIN) == [(inc, P1_UNRESOLVED)]  # no second status breach for the same silence
        assert sorted(await env.open_kinds(inc)) == [P1_STATUS_OVERDUE, P1_UNRESOLVED]
        await env.incidents.post_status_update(inc, "rolling back")
        assert await env.open_kinds(inc) == [P1_UNRESOLVED]
        assert await env.tick(5 * MIN - 1) == []
        assert await env.tick(1) == [(inc, P1_STATUS_OVERDUE)]
        kinds = [e.kind for e in await env.escalations(inc)]
        assert kinds == [P1_STATUS_OVERDUE, P1_UNRESOLVED, P1_STATUS_OVERDUE]

    run(tmp_path, clock, body)


def test_a_status_update_without_an_ack_starts_the_status_timer(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(1)
        await env.tick(1 * MIN)
        await env.incidents.post_status_update(inc, "looking")
        assert await env.tick(4 * MIN) == [(inc, ACK_OVERDUE)]
        assert await env.tick(1 * MIN) == [(inc, P1_STATUS_OVERDUE)]

    run(tmp_path, clock, body)


# -- restarts ---------------------------------------------------------------------------------


def test_a_new_clock_on_the_same_store_neither_doubles_nor_loses_breaches(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        first = await env.open(1)
        assert await env.tick(5 * MIN) == [(first, ACK_OVERDUE)]
        second = await env.open(2, title="checkout slow")
        # The collector is down for 20 min: the old clock stops, a new one takes over.
        env.clock.advance(20 * MIN)
        env.runbook = env.new_clock()
        found = await env.runbook.evaluate()
        assert {(e.incident_id, e.kind) for e in found} == {(first, P1_UNRESOLVED), (second, ACK_OVERDUE)}
        late = next(e for e in found if e.incident_id == second)
        assert "noticed 300 s late" in late.message  # due at 15 min, seen at 20 min
        env.runbook = env.new_clock()
        assert await env.runbook.evaluate() == []
        assert [e.kind for e in await env.escalations(first)] == [ACK_OVERDUE, P1_UNRESOLVED]
        assert [e.kind for e in await env.escalations(second)] == [ACK_OVERDUE]

    run(tmp_path, clock, body)


def test_breaches_survive_reopening_the_database(tmp_path: Path, clock: Any) -> None:
    async def first(env: Env) -> None:
        inc = await env.open(1)
        await env.tick(5 * MIN)
        (tmp_path / "id").write_text(inc)

    async def second(env: Env) -> None:
        inc = (tmp_path / "id").read_text()
        assert await env.tick(1) == []
        view = await env.incidents.get(inc)
        assert [e.kind for e in view.escalations] == [ACK_OVERDUE]
        assert view.incident.severity_set_at_ms == view.incident.opened_at_ms
        assert [v.incident.id for v in await env.incidents.list(overdue=True)] == [inc]

    run(tmp_path, clock, first)
    run(tmp_path, clock, second)


# -- what goes out ----------------------------------------------------------------------------


def test_each_new_breach_goes_to_the_notifier_once(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        inc = await env.open(1)
        await env.tick(5 * MIN)
        await env.tick(1 * MIN)
        [(key, doc)] = env.notifier.sent
        [esc] = await env.escalations(inc)
        assert key == esc.seq
        assert doc["kind"] == ACK_OVERDUE and doc["message"] == esc.message
        assert doc["incident"] == {
            "id": inc, "title": "API down", "severity": "P1", "service": "api", "state": "open",
            "opened_at": "2027-01-15T08:00:00.000Z",
        }
        assert doc["at"] == "2027-01-15T08:05:00.000Z" and doc["due_at"] == "2027-01-15T08:05:00.000Z"

        # Not accepted yet: a restarted collector queues it again; once accepted, never again.
        env.notifier.sent.clear()
        assert await env.new_clock().resend_unnotified() == 1 and env.notifier.sent[0][0] == key
        await env.runbook.mark_notified(key)
        assert (await env.escalations(inc))[0].notified
        env.notifier.sent.clear()
        assert await env.new_clock().resend_unnotified() == 0 and env.notifier.sent == []

    run(tmp_path, clock, body)


def test_configured_deadlines(tmp_path: Path, clock: Any) -> None:
    section = SimpleNamespace(ack_deadline_p1_s=60, ack_deadline_p2_s=120, ack_deadline_p3_s=180,
                              ack_deadline_p4_s=240, p1_unresolved_after_s=600, p1_status_update_interval_s=90)
    policy = RunbookPolicy.from_config(section)

    async def body(env: Env) -> None:
        inc = await env.open(4)
        assert await env.tick(239) == []
        assert await env.tick(1) == [(inc, ACK_OVERDUE)]
        assert (await env.escalations(inc))[0].message == "P4 not acknowledged within 4 min"

    run(tmp_path, clock, body, policy)


# -- the rules as data ------------------------------------------------------------------------


def _incident(**kw: Any) -> IncidentRecord:
    base: dict[str, Any] = dict(id="inc-aaaaaaaa", title="t", severity=1, service="", state=IncidentStates.OPEN,
                                selector_labels={}, selector_host_ids=("h",), window_s=300.0, profile="default",
                                opened_at_ms=1_000_000, severity_set_at_ms=1_000_000)
    base.update(kw)
    return IncidentRecord(**base)


def test_deadlines_follow_state_and_severity() -> None:
    policy = RunbookPolicy()
    t0 = 1_000_000
    assert [(d.kind, d.due_at_ms) for d in deadlines(_incident(), policy)] == [
        (ACK_OVERDUE, t0 + 300_000), (P1_UNRESOLVED, t0 + 900_000)]
    acked = _incident(state=IncidentStates.ACKNOWLEDGED, acknowledged_at_ms=t0 + 60_000,
                      last_status_update_at_ms=t0 + 120_000)
    assert [(d.kind, d.due_at_ms) for d in deadlines(acked, policy)] == [
        (P1_UNRESOLVED, t0 + 900_000), (P1_STATUS_OVERDUE, t0 + 420_000)]
    assert [d.kind for d in deadlines(_incident(severity=2), policy)] == [ACK_OVERDUE]
    assert deadlines(_incident(severity=2, state=IncidentStates.ACKNOWLEDGED), policy) == []
    assert deadlines(_incident(state=IncidentStates.RESOLVED), policy) == []
    # An incident stored before severity_set_at existed runs from its opening.
    assert deadlines(_incident(severity_set_at_ms=0, severity=3), policy)[0].due_at_ms == t0 + 1_800_000


@pytest.mark.parametrize(
    ("kind", "at_ms", "shape", "expected"),
    [
        (ACK_OVERDUE, 500, {}, True),
        (ACK_OVERDUE, 500, {"state": "acknowledged"}, False),
        (ACK_OVERDUE, 500, {"state": "resolved"}, False),
        (ACK_OVERDUE, 500, {"severity_set_at_ms": 600}, False),
        (P1_UNRESOLVED, 500, {"state": "acknowledged"}, True),
        (P1_UNRESOLVED, 500, {"severity": 2}, False),
        (P1_STATUS_OVERDUE, 500, {"acknowledged_at_ms": 200, "last_status_update_at_ms": 300}, True),
        (P1_STATUS_OVERDUE, 500, {"last_status_update_at_ms": 500}, False),
        (P1_STATUS_OVERDUE, 500, {"acknowledged_at_ms": 700}, False),
        ("something_new", 500, {}, False),
    ],
)
def test_which_breaches_stay_open(kind: str, at_ms: int, shape: dict[str, Any], expected: bool) -> None:
    args: dict[str, Any] = dict(state="open", severity=1, severity_set_at_ms=100, acknowledged_at_ms=0,
                                last_status_update_at_ms=0)
    args.update(shape)
    assert breach_is_open(kind, at_ms, **args) is expected


def test_payload_shape() -> None:
    from hostdiag.collector.store.base import EscalationRecord

    esc = EscalationRecord("inc-aaaaaaaa", P1_UNRESOLVED, 1_000_900_123, 1_000_900_000, "P1 unresolved after 15 min",
                           severity=1, seq=7)
    doc = escalation_payload(esc, _incident(opened_at_ms=1_000_000_000, service="db"))
    assert set(doc) == {"kind", "incident", "message", "at", "due_at"}
    assert doc["at"] == "1970-01-12T14:01:40.123Z" and doc["due_at"] == "1970-01-12T14:01:40.000Z"
    assert set(doc["incident"]) == {"id", "title", "severity", "service", "state", "opened_at"}
