"""The runbook's clock: acknowledge and P1 escalation timers for every incident.

The incident runbook says how fast a responder must react and when to
escalate:

- **acknowledge** within 5 min (P1), 15 min (P2), 30 min (P3), 24 h (P4),
  counted from when the current severity was set (opening, or the last
  severity change: raising the severity restarts the timer);
- a **P1 unresolved** 15 min after it became P1 is escalated;
- a **P1 without a status update** for 5 min is escalated.  This timer starts
  when someone takes the incident (the acknowledgement or the first status
  update, whichever comes first) and restarts with every status update.  Before
  that, silence is the acknowledge timer's business, so an unattended P1 is not
  escalated twice for the same neglect.

Nothing is kept in memory that a restart could lose: every deadline is derived
from timestamps stored on the incident (``severity_set_at_ms``,
``acknowledged_at_ms``, ``last_status_update_at_ms``, state and severity), and a
breach is identified by (incident, kind, missed deadline).  The store refuses a
second record with the same identity, so re-evaluating after a restart neither
loses a breach that fell due while the collector was down (it is recorded late,
at the first pass) nor records one twice.

A breach is *open* until something restarts or stops its timer: resolution
stops all; acknowledgement closes ``ack_overdue``; a status update (or an
acknowledgement that comes after it) closes ``p1_status_overdue``; any severity
change closes the breaches of the previous severity.  There is at most one open
breach per kind: a P1 that stays silent is escalated once for that silence, not
every further 5 min.  :func:`breach_is_open` decides this from the incident
alone, so ``collectorctl`` can mark overdue incidents without knowing the
collector's configuration.

Each new breach is, in one transaction, an escalation record and a timeline
event (``escalation``); then it is counted in
``hostdiag_collector_runbook_breaches_total`` and handed to the outgoing
webhook, if one is configured (:mod:`hostdiag.collector.webhook`), which marks
it ``notified`` once the receiver accepted it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from hostdiag.collector.store.base import (
    EscalationRecord,
    IncidentRecord,
    IncidentStates,
    MetadataStore,
    TimelineEventRecord,
)

if TYPE_CHECKING:
    from hostdiag.collector.incidents import IncidentManager
    from hostdiag.collector.metrics import Counter

__all__ = [
    "ACK_OVERDUE",
    "P1_UNRESOLVED",
    "P1_STATUS_OVERDUE",
    "KINDS",
    "RunbookPolicy",
    "Deadline",
    "deadlines",
    "breach_is_open",
    "open_breaches",
    "escalation_payload",
    "RunbookClock",
]

log = logging.getLogger("hostdiag.collector.runbook")

ACK_OVERDUE = "ack_overdue"
P1_UNRESOLVED = "p1_unresolved"
P1_STATUS_OVERDUE = "p1_status_overdue"
KINDS = (ACK_OVERDUE, P1_UNRESOLVED, P1_STATUS_OVERDUE)
TIMELINE_KIND = "escalation"


@dataclass(frozen=True)
class RunbookPolicy:
    """The runbook's numbers (defaults: the runbook's own)."""

    ack_deadline_s: Mapping[int, float] = field(
        default_factory=lambda: {1: 300.0, 2: 900.0, 3: 1800.0, 4: 86400.0}
    )
    p1_unresolved_after_s: float = 900.0
    p1_status_update_interval_s: float = 300.0

    @classmethod
    def from_config(cls, section: Any) -> RunbookPolicy:
        """From a ``[collector]`` section (``ack_deadline_p1_s`` ... ``p1_status_update_interval_s``)."""
        return cls(
            ack_deadline_s={sev: float(getattr(section, f"ack_deadline_p{sev}_s")) for sev in (1, 2, 3, 4)},
            p1_unresolved_after_s=float(section.p1_unresolved_after_s),
            p1_status_update_interval_s=float(section.p1_status_update_interval_s),
        )


def format_duration(seconds: float) -> str:
    """300 → ``5 min``, 86400 → ``24 h``, 90 → ``90 s``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def rfc3339(unix_ms: int) -> str:
    """``2025-01-31T12:00:00.000Z``."""
    moment = datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{unix_ms % 1000:03d}Z"


@dataclass(frozen=True)
class Deadline:
    """A running timer: its kind, when it falls due and what a breach means."""

    kind: str
    due_at_ms: int
    message: str


def _severity_start_ms(inc: IncidentRecord) -> int:
    return inc.severity_set_at_ms or inc.opened_at_ms


def _status_base_ms(severity_start_ms: int, acknowledged_at_ms: int, last_status_update_at_ms: int) -> int:
    """Where the P1 status-update timer runs from; 0 while nobody has taken the incident."""
    if not acknowledged_at_ms and not last_status_update_at_ms:
        return 0
    return max(severity_start_ms, acknowledged_at_ms, last_status_update_at_ms)


def deadlines(inc: IncidentRecord, policy: RunbookPolicy) -> list[Deadline]:
    """The timers running for ``inc`` now, each with the deadline it must meet."""
    if inc.state == IncidentStates.RESOLVED:
        return []
    start = _severity_start_ms(inc)
    sev = inc.severity
    out: list[Deadline] = []
    ack_s = policy.ack_deadline_s.get(sev)
    if inc.state == IncidentStates.OPEN and ack_s is not None:
        out.append(Deadline(ACK_OVERDUE, start + int(ack_s * 1000),
                            f"P{sev} not acknowledged within {format_duration(ack_s)}"))
    if sev == 1:
        after = policy.p1_unresolved_after_s
        out.append(Deadline(P1_UNRESOLVED, start + int(after * 1000),
                            f"P1 unresolved after {format_duration(after)}"))
        base = _status_base_ms(start, inc.acknowledged_at_ms, inc.last_status_update_at_ms)
        if base:
            every = policy.p1_status_update_interval_s
            out.append(Deadline(P1_STATUS_OVERDUE, base + int(every * 1000),
                                f"P1 without a status update for {format_duration(every)}"))
    return out


def breach_is_open(
    kind: str,
    at_ms: int,
    *,
    state: str,
    severity: int,
    severity_set_at_ms: int,
    acknowledged_at_ms: int,
    last_status_update_at_ms: int,
) -> bool:
    """Whether a breach recorded at ``at_ms`` still stands for an incident in this shape.

    A breach closes when its timer stops (resolution; acknowledgement for
    ``ack_overdue``; the severity no longer P1 for the P1 timers) or restarts
    after it (a severity change; a status update or acknowledgement for
    ``p1_status_overdue``).
    """
    if state == IncidentStates.RESOLVED or at_ms <= severity_set_at_ms:
        return False
    if kind == ACK_OVERDUE:
        return state == IncidentStates.OPEN
    if severity != 1:
        return False
    if kind == P1_UNRESOLVED:
        return True
    if kind == P1_STATUS_OVERDUE:
        return at_ms > max(acknowledged_at_ms, last_status_update_at_ms)
    return False


def open_breaches(inc: IncidentRecord, escalations: Iterable[EscalationRecord]) -> list[EscalationRecord]:
    """The escalations of ``inc`` that still stand (see :func:`breach_is_open`)."""
    return [
        e for e in escalations
        if e.incident_id == inc.id and breach_is_open(
            e.kind, e.at_ms, state=inc.state, severity=inc.severity,
            severity_set_at_ms=_severity_start_ms(inc), acknowledged_at_ms=inc.acknowledged_at_ms,
            last_status_update_at_ms=inc.last_status_update_at_ms,
        )
    ]


def escalation_payload(escalation: EscalationRecord, inc: IncidentRecord) -> dict[str, Any]:
    """The JSON document the outgoing webhook POSTs for one breach."""
    return {
        "kind": escalation.kind,
        "incident": {
            "id": inc.id,
            "title": inc.title,
            "severity": f"P{inc.severity}",
            "service": inc.service,
            "state": inc.state,
            "opened_at": rfc3339(inc.opened_at_ms),
        },
        "message": escalation.message,
        "at": rfc3339(escalation.at_ms),
        "due_at": rfc3339(escalation.due_at_ms),
    }


class Notifier(Protocol):
    """What the clock hands breaches to (:class:`hostdiag.collector.webhook.WebhookNotifier`)."""

    def submit(self, key: int, body: Mapping[str, Any]) -> None: ...


class RunbookClock:
    """Evaluates every unresolved incident's timers and records each breach once.

    ``clock`` is injectable (seconds since the epoch) so tests move time by hand.
    """

    def __init__(
        self,
        store: MetadataStore,
        incidents: IncidentManager,
        policy: RunbookPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        breaches: Counter | None = None,
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.policy = policy or RunbookPolicy()
        self.clock = clock
        self.notifier = notifier
        self.breaches = breaches
        # Breaches known to be recorded, so a pass does not ask the store again
        # every few seconds for an incident that stays overdue.
        self._recorded: set[tuple[str, str, int]] = set()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def evaluate(self) -> list[EscalationRecord]:
        """One pass over all unresolved incidents; returns the breaches recorded by it."""
        async with self.incidents.lock:
            now = self.now_ms()
            unresolved = await self.store.unresolved_incidents()
            by_id = {inc.id: inc for inc in unresolved}
            candidates: list[EscalationRecord] = []
            events: list[TimelineEventRecord] = []
            for inc in unresolved:
                due = [d for d in deadlines(inc, self.policy) if now >= d.due_at_ms]
                for d in due:
                    if (inc.id, d.kind, d.due_at_ms) in self._recorded:
                        continue
                    late_s = (now - d.due_at_ms) / 1000
                    message = d.message + (f" (due {rfc3339(d.due_at_ms)}, noticed {late_s:.0f} s late)"
                                           if late_s >= 60 else "")
                    candidates.append(EscalationRecord(inc.id, d.kind, now, d.due_at_ms, message,
                                                       severity=inc.severity))
                    events.append(TimelineEventRecord(inc.id, now, TIMELINE_KIND, f"{d.kind}: {message}"))
            inserted = await self.store.add_escalations(candidates, events) if candidates else []
            self._recorded = {key for key in self._recorded if key[0] in by_id}
            self._recorded.update((e.incident_id, e.kind, e.due_at_ms) for e in candidates)
        for e in inserted:
            log.warning(
                "runbook breach",
                extra={"event": "runbook_breach", "incident_id": e.incident_id, "kind": e.kind,
                       "severity": f"P{e.severity}"},
            )
            if self.breaches is not None:
                self.breaches.inc(kind=e.kind, severity=f"P{e.severity}")
            self._notify(e, by_id[e.incident_id])
        return inserted

    def _notify(self, escalation: EscalationRecord, inc: IncidentRecord) -> None:
        if self.notifier is not None:
            self.notifier.submit(escalation.seq, escalation_payload(escalation, inc))

    async def count_overdue(self) -> int:
        """Unresolved incidents with an open breach (the ``incidents_overdue`` gauge)."""
        count = 0
        for inc in await self.store.unresolved_incidents():
            if open_breaches(inc, await self.store.list_escalations(inc.id)):
                count += 1
        return count

    async def resend_unnotified(self) -> int:
        """Queue the breaches of unresolved incidents the webhook has not accepted (at start)."""
        if self.notifier is None:
            return 0
        count = 0
        for e in await self.store.unnotified_escalations():
            inc = await self.store.get_incident(e.incident_id)
            if inc is not None:
                self._notify(e, inc)
                count += 1
        return count

    async def mark_notified(self, key: int) -> None:
        """The webhook's delivery callback: the receiver accepted breach ``key``."""
        await self.store.mark_escalation_notified(key)

    async def run(self, interval_s: float) -> None:
        """Call :meth:`evaluate` every ``interval_s`` until cancelled."""
        while True:
            try:
                await self.evaluate()
            except Exception:
                log.exception("runbook pass failed", extra={"event": "runbook_failed"})
            await asyncio.sleep(interval_s)
