"""The collector's signal engine: evaluate an incident's evidence, keep its suggestion.

:class:`SignalEngine` is told when a bundle attaches to an incident
(:meth:`schedule`); one background worker re-evaluates each incident that
changed (several bundles arriving together cost one evaluation), reading only
the evidence the metadata store keeps per bundle — never the bundle files.
The suggestion is stored on the incident, and a timeline event is added when
the suggested severity changes.  The incident's own severity is never touched.

Per-host results are cached by bundle id (and the incident's service, which
``applies_to`` may read), so re-evaluating an incident only parses the
evidence of bundles not seen before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from hostdiag.collector.signals.combine import combine
from hostdiag.collector.signals.evaluate import HostResult, evaluate_host
from hostdiag.collector.signals.model import Suggestion, severity_label
from hostdiag.collector.signals.rules import RuleSet
from hostdiag.collector.store.base import TimelineEventRecord

__all__ = ["SignalEngine", "suggestion_event_message"]

log = logging.getLogger("hostdiag.collector.signals")

CACHE_ENTRIES = 4096
MAX_EVENT_CHARS = 1024


def suggestion_event_message(new: Suggestion, old: Suggestion | None) -> str:
    was = severity_label(old.severity) if old is not None else "none"
    text = f"suggestion: {severity_label(new.severity)} (was {was}) — {new.explanation}"
    return text if len(text) <= MAX_EVENT_CHARS else text[: MAX_EVENT_CHARS - 1] + "…"


def _evaluate_one(rules: RuleSet, host_id: str, evidence_json: str, service: str) -> HostResult:
    try:
        evidence = orjson.loads(evidence_json)
    except orjson.JSONDecodeError:
        evidence = {}
    return evaluate_host(rules.rules, host_id, evidence, service=service)


class SignalEngine:
    def __init__(
        self,
        store: Any,
        rules: RuleSet,
        *,
        clock: Callable[[], float] = time.time,
        executor: Any = None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.clock = clock
        self.executor = executor
        self._cache: collections.OrderedDict[tuple[str, str], HostResult] = collections.OrderedDict()
        self._dirty: dict[str, None] = {}
        self._worker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.evaluations = 0

    # -- scheduling ---------------------------------------------------------------------
    def schedule(self, incident_id: str) -> None:
        """Re-evaluate ``incident_id`` soon (in the background; repeated calls coalesce)."""
        self._dirty[incident_id] = None
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain(), name="signal-evaluation")

    async def _drain(self) -> None:
        while self._dirty:
            incident_id = next(iter(self._dirty))
            del self._dirty[incident_id]
            try:
                await self.evaluate(incident_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "signal evaluation failed", extra={"event": "signal_evaluation_failed", "incident_id": incident_id}
                )

    async def idle(self) -> None:
        """Wait until every scheduled evaluation is done."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(BaseException):
                await self._worker

    async def schedule_unresolved(self) -> int:
        """Re-evaluate every unresolved incident in the background (at start: the rules may have changed)."""
        incidents = await self.store.unresolved_incidents()
        for inc in incidents:
            self.schedule(inc.id)
        return len(incidents)

    # -- evaluation ---------------------------------------------------------------------
    async def _host_result(self, bundle_id: str, host_id: str, evidence_json: str, service: str) -> HostResult:
        key = (bundle_id, service)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.executor, _evaluate_one, self.rules, host_id, evidence_json, service)
        self._cache[key] = result
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return result

    async def evaluate(self, incident_id: str) -> Suggestion | None:
        """Evaluate now and store the result; None when the incident is unknown or has no evidence."""
        async with self._lock:
            inc = await self.store.get_incident(incident_id)
            if inc is None:
                return None
            rows = await self.store.evidence_for_incident(incident_id)
            if not rows:
                return None
            latest: dict[str, Any] = {}
            for row in rows:  # oldest first: the newest bundle of a host wins
                latest[row.host_id] = row
            results = [
                await self._host_result(r.bundle_id, r.host_id, r.evidence_json, inc.service)
                for r in latest.values()
            ]
            requests = await self.store.list_requests(incident_id)
            now_ms = int(self.clock() * 1000)
            suggestion = combine(
                self.rules.rules, results, [r.host_id for r in requests], evaluated_at_ms=now_ms
            )
            previous = await self.stored(incident_id)
            events = []
            if (previous.severity if previous is not None else 0) != suggestion.severity:
                events.append(TimelineEventRecord(
                    incident_id, now_ms, "suggestion", suggestion_event_message(suggestion, previous)
                ))
            await self.store.put_suggestion(incident_id, suggestion.severity, now_ms, suggestion.to_json(), events)
            self.evaluations += 1
            if events:
                log.info(
                    "severity suggestion changed",
                    extra={"event": "suggestion_changed", "incident_id": incident_id,
                           "severity": severity_label(suggestion.severity), "rule": suggestion.rule},
                )
            return suggestion

    async def stored(self, incident_id: str) -> Suggestion | None:
        text = await self.store.get_suggestion(incident_id)
        if not text:
            return None
        try:
            return Suggestion.from_json(text)
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return None
