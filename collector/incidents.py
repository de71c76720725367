"""Incidents, their per-host snapshot requests, and the timeline of every change.

Life of an incident: ``open → acknowledged → resolved`` (``open → resolved``
is allowed too).  Opening one records one snapshot request per selected host:

- hosts named in the selector's ``host_ids``, even if never seen, and
- known agents (connected or not) whose labels carry every selector label.

Each request is pushed at once to a connected agent and delivered to an agent
that connects later, until ``expires_at`` (opened + ``request_ttl_s``).  A new
agent whose labels match an unresolved incident's selector and that connects
within that TTL gets a request too.

A request moves ``requested → acknowledged → uploading → attached``; it can
end ``failed`` (the agent refused or failed, with its reason, or it does not
define the profile) or ``expired`` (no bundle by ``expires_at``; marked by
:meth:`IncidentManager.expire_due`, which a periodic task calls with the
injected clock).  A bundle that arrives late still attaches.

Every change is appended to the incident's timeline in the same transaction.
All request and incident changes go through one lock, so concurrent agent
messages and API calls never overwrite each other's state.  The agent-message
handlers hold it only until their change is queued in the store, not until it
is committed: the store runs calls in order, so the next holder's read sees
the change, and the commit (shared with other changes, one fsync for many) is
awaited after the lock is released.  They read the request from the manager's
own copy of its last change (kept for recent requests), not from the store.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import grpc

from hostdiag.collector.errors import CollectorError
from hostdiag.collector.fleet import AgentSession, Command, Fleet, labels_match
from hostdiag.collector.store.base import (
    BundleRecord,
    EscalationRecord,
    HostRequestRecord,
    IncidentRecord,
    IncidentStates,
    MetadataStore,
    RequestStates,
    TimelineEventRecord,
)

__all__ = [
    "IncidentManager",
    "IncidentView",
    "new_incident_id",
    "selector_matches",
    "DEFAULT_PROFILE",
    "MAX_TITLE_CHARS",
    "MAX_MESSAGE_CHARS",
]

log = logging.getLogger("hostdiag.collector.incidents")

T = TypeVar("T")

# Host requests kept in memory as last changed (see IncidentManager._requests).
REQUEST_CACHE_ENTRIES = 16384

DEFAULT_PROFILE = "default"
MAX_TITLE_CHARS = 200
MAX_SERVICE_CHARS = 128
MAX_MESSAGE_CHARS = 4096
MAX_REASON_CHARS = 1024
MAX_SELECTOR_LABELS = 32
MAX_SELECTOR_HOSTS = 10000
MAX_WINDOW_S = 86400.0
MAX_LIST_LIMIT = 1000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")
_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
_INCIDENT_ID = re.compile(r"inc-[a-z2-7]{8}")
# A request coalesced with another host request stays ``requested`` (never sent to the agent)
# with this reason until that request ends; it names the request it waits for.
_COALESCED = re.compile(r"coalesced with request (\S+) of incident \S+")


def _leader_id(req: HostRequestRecord) -> str | None:
    """The request ``req`` is coalesced with (it waits for that one's bundle), or None."""
    if req.state != RequestStates.REQUESTED:
        return None
    match = _COALESCED.match(req.reason)
    return match.group(1) if match else None


def _coalesced_reason(leader: HostRequestRecord) -> str:
    return f"coalesced with request {leader.request_id} of incident {leader.incident_id}"


async def _queued(write: Awaitable[T]) -> Awaitable[T]:
    """``write`` once the store has queued it; await the result after releasing the lock.

    A store whose write methods queue the call before returning a future
    (``SqliteMetadataStore.update_requests`` / ``publish_bundle``) makes every
    later call see the change, so the lock need not be held for the commit.
    Any other awaitable is awaited here, under the lock.
    """
    if asyncio.isfuture(write):
        return write
    result = await write
    done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    done.set_result(result)
    return done


def new_incident_id() -> str:
    """``inc-`` and 8 lowercase base32 characters (40 random bits): short and readable."""
    return "inc-" + base64.b32encode(secrets.token_bytes(5)).decode().lower()


def _new_request_id() -> str:
    return "req-" + base64.b32encode(secrets.token_bytes(10)).decode().lower()


def valid_host_id(value: str) -> bool:
    return isinstance(value, str) and _HOST_ID.fullmatch(value) is not None


def selector_matches(
    selector_labels: Mapping[str, str], selector_host_ids: Sequence[str], host_id: str, labels: Mapping[str, str]
) -> bool:
    """A host is selected when it is named, or when it carries every selector label."""
    return host_id in selector_host_ids or labels_match(selector_labels, labels)


@dataclass(frozen=True)
class IncidentView:
    """An incident with its host requests, timeline, bundle ids and runbook breaches."""

    incident: IncidentRecord
    requests: list[HostRequestRecord]
    events: list[TimelineEventRecord]
    bundle_ids: list[str]
    escalations: list[EscalationRecord] = field(default_factory=list)
    # The severity signals' latest suggestion (JSON, see hostdiag.collector.signals); "" before any.
    suggestion_json: str = ""


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class IncidentManager:
    def __init__(
        self,
        store: MetadataStore,
        fleet: Fleet,
        *,
        request_ttl_s: float = 1800.0,
        default_window_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        snapshot_min_interval_s: float = 0.0,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.request_ttl_s = request_ttl_s
        # Per-host rate limit (0: none): a new request for a host with one in flight, or whose
        # last bundle is younger than this, is coalesced with it instead of asking the host again.
        self.snapshot_min_interval_s = snapshot_min_interval_s
        self.default_window_s = default_window_s
        self.clock = clock
        self._lock = asyncio.Lock()
        # Last progress stage recorded per request: repeated stages are not re-recorded.
        self._last_stage: dict[str, str] = {}
        # Recent host requests as this manager last changed (queued) them.  Every change of a
        # request goes through this manager under the lock and is queued in the store in the
        # same step, so an entry is never behind the store; the agent-message handlers read
        # requests here instead of waiting for a trip through the store's queue with the lock
        # held, which would serialise a thousand agents' messages on the store.
        self._requests: collections.OrderedDict[str, HostRequestRecord] = collections.OrderedDict()
        # Hosts that may have a request coalesced with another one (None: not read yet).  Only
        # for these is the store asked, when a request ends, for the requests waiting on it:
        # that read would otherwise be a trip through the store's queue with the lock held for
        # every bundle attached.
        self._follower_hosts: set[str] | None = None
        # Called with the incident id after a bundle attached to it (the severity signals).
        self.on_bundle_attached: Callable[[str], None] | None = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- the request cache (all under the lock) ---------------------------------------------
    def _remember(self, requests: Sequence[HostRequestRecord]) -> None:
        for req in requests:
            self._requests[req.request_id] = req
            self._requests.move_to_end(req.request_id)
        while len(self._requests) > REQUEST_CACHE_ENTRIES:
            self._requests.popitem(last=False)

    def _forget(self, requests: Sequence[HostRequestRecord]) -> None:
        """A change that failed: read these from the store again next time."""
        for req in requests:
            self._requests.pop(req.request_id, None)

    async def _may_have_followers(self, host_id: str) -> bool:
        """Whether requests coalesced with one of ``host_id``'s may exist (under the lock)."""
        if self._follower_hosts is None:
            waiting = await self.store.requests_expired(2**62, [RequestStates.REQUESTED])  # all of them
            self._follower_hosts = {r.host_id for r in waiting if _leader_id(r) is not None}
        return host_id in self._follower_hosts

    async def _request(self, request_id: str) -> HostRequestRecord | None:
        req = self._requests.get(request_id)
        if req is not None:
            self._requests.move_to_end(request_id)
            return req
        req = await self.store.get_request(request_id)
        if req is not None:
            self._remember([req])
        return req

    async def _committed(self, pending: Awaitable[T], requests: Sequence[HostRequestRecord]) -> T:
        """Wait for a queued change (outside the lock); forget its requests if it failed."""
        try:
            return await pending
        except BaseException:
            self._forget(requests)
            raise

    @property
    def lock(self) -> asyncio.Lock:
        """Held for every incident and request change (the runbook's clock evaluates under it)."""
        return self._lock

    # -- reading ------------------------------------------------------------------------
    async def get(self, incident_id: str) -> IncidentView:
        if not isinstance(incident_id, str) or not incident_id:
            raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, "id: an incident id is required")
        inc = await self.store.get_incident(incident_id)
        if inc is None:
            raise CollectorError(grpc.StatusCode.NOT_FOUND, f"no incident with id {incident_id!r}")
        return await self._view(inc)

    async def _view(self, inc: IncidentRecord) -> IncidentView:
        # The reads go to the store together: while an incident fans out, the store's queue is
        # long, and one wait behind it is better than five in a row.
        requests, events, bundle_ids, escalations, suggestion_json = await asyncio.gather(
            self.store.list_requests(inc.id),
            self.store.list_events(inc.id),
            self._bundle_ids(inc.id),
            self.store.list_escalations(inc.id),
            self.store.get_suggestion(inc.id),
        )
        return IncidentView(
            incident=inc,
            requests=requests,
            events=events,
            bundle_ids=bundle_ids,
            escalations=escalations,
            suggestion_json=suggestion_json or "",
        )

    async def _bundle_ids(self, incident_id: str) -> list[str]:
        """The incident's bundles, with those shared from a coalesced request's incident."""
        ids = await self.store.bundle_ids_for_incident(incident_id)
        shared = [
            r.bundle_id for r in await self.store.list_requests(incident_id)
            if r.state == RequestStates.ATTACHED and r.bundle_id and r.bundle_id not in ids
        ]
        return ids + sorted(set(shared))

    async def list(self, state: str | None = None, limit: int = 100, *, overdue: bool = False) -> list[IncidentView]:
        """Newest first; ``overdue``: only unresolved incidents with an open runbook breach."""
        if limit < 0:
            raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, "limit: must not be negative")
        limit = min(limit or 100, MAX_LIST_LIMIT)
        if not overdue:
            return [await self._view(inc) for inc in await self.store.list_incidents(state, limit)]
        from hostdiag.collector.runbook import open_breaches  # the runbook imports this module

        views: list[IncidentView] = []
        for inc in reversed(await self.store.unresolved_incidents()):
            if state is not None and inc.state != state:
                continue
            view = await self._view(inc)
            if open_breaches(inc, view.escalations):
                views.append(view)
                if len(views) >= limit:
                    break
        return views

    # -- opening ------------------------------------------------------------------------
    async def open(
        self,
        *,
        title: str,
        severity: int,
        service: str = "",
        selector_labels: Mapping[str, str] | None = None,
        selector_host_ids: Sequence[str] = (),
        window_s: float = 0.0,
        profile: str = "",
        actor: str = "",
        alert_group_key: str = "",
    ) -> IncidentView:
        labels = dict(selector_labels or {})
        host_ids = list(dict.fromkeys(selector_host_ids))
        title = title.strip()
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if not title:
            raise CollectorError(bad, "title: must not be empty")
        if len(title) > MAX_TITLE_CHARS:
            raise CollectorError(bad, f"title: at most {MAX_TITLE_CHARS} characters")
        if severity not in (1, 2, 3, 4):
            raise CollectorError(bad, "severity: must be one of SEVERITY_P1 to SEVERITY_P4")
        if len(service) > MAX_SERVICE_CHARS:
            raise CollectorError(bad, f"service: at most {MAX_SERVICE_CHARS} characters")
        if not labels and not host_ids:
            raise CollectorError(bad, "selector: name at least one label or host id")
        if len(labels) > MAX_SELECTOR_LABELS:
            raise CollectorError(bad, f"selector.labels: at most {MAX_SELECTOR_LABELS} labels")
        for k, v in labels.items():
            if not k or len(k) > 63 or len(v) > 253:
                raise CollectorError(bad, f"selector.labels: bad label {k!r} (names 1-63, values up to 253 chars)")
        if len(host_ids) > MAX_SELECTOR_HOSTS:
            raise CollectorError(bad, f"selector.host_ids: at most {MAX_SELECTOR_HOSTS} hosts")
        for h in host_ids:
            if not valid_host_id(h):
                raise CollectorError(bad, f"selector.host_ids: not a valid host id: {h!r}")
        if window_s == 0:
            window_s = self.default_window_s
        if not math.isfinite(window_s) or window_s <= 0 or window_s > MAX_WINDOW_S:
            raise CollectorError(bad, f"window_seconds: must be between 0 and {MAX_WINDOW_S:g}, got {window_s!r}")
        profile = profile or DEFAULT_PROFILE
        if not _NAME.fullmatch(profile):
            raise CollectorError(bad, f"profile: not a valid profile name: {profile!r}")

        async with self._lock:
            now = self.now_ms()
            incident_id = new_incident_id()
            while await self.store.get_incident(incident_id) is not None:
                incident_id = new_incident_id()
            inc = IncidentRecord(
                id=incident_id,
                title=title,
                severity=severity,
                service=service,
                state=IncidentStates.OPEN,
                selector_labels=labels,
                selector_host_ids=tuple(host_ids),
                window_s=float(window_s),
                profile=profile,
                opened_at_ms=now,
                opened_by=actor,
                severity_set_at_ms=now,
                alert_group_key=alert_group_key,
            )
            selected = list(host_ids)
            if labels:
                for agent in await self.store.list_agents():
                    if agent.host_id not in selected and labels_match(labels, agent.labels):
                        selected.append(agent.host_id)
            expires = now + int(self.request_ttl_s * 1000)
            requests = [
                HostRequestRecord(
                    request_id=_new_request_id(),
                    incident_id=incident_id,
                    host_id=h,
                    state=RequestStates.REQUESTED,
                    created_at_ms=now,
                    updated_at_ms=now,
                    expires_at_ms=expires,
                )
                for h in sorted(selected)
            ]
            events = [
                TimelineEventRecord(
                    incident_id,
                    now,
                    "opened",
                    f"P{severity} {title!r} opened; {len(requests)} host(s) selected",
                    actor=actor,
                )
            ]
            requests, coalesced = await self._coalesce(incident_id, requests, now)
            events += coalesced
            await self.store.create_incident(inc, requests, events)
            self._remember(requests)
            log.info(
                "incident opened",
                extra={"event": "incident_opened", "incident_id": incident_id, "hosts": len(requests)},
            )
            await self._deliver(inc, requests)
        return await self._view(inc)

    # -- the per-host rate limit ------------------------------------------------------------
    async def _in_flight(self, host_id: str, incident_id: str, now: int) -> HostRequestRecord | None:
        """Another incident's request to this host still waiting for its bundle (not itself coalesced)."""
        for r in await self.store.requests_for_host(host_id, RequestStates.PENDING):
            if r.incident_id != incident_id and r.expires_at_ms > now and _leader_id(r) is None:
                return r
        return None

    async def _coalesce(
        self, incident_id: str, requests: Sequence[HostRequestRecord], now: int
    ) -> tuple[list[HostRequestRecord], list[TimelineEventRecord]]:
        """New requests (not stored yet), each coalesced when its host was asked recently.

        A host with a request of another incident in flight is not asked again:
        the new request waits for that request's bundle.  A host whose last
        bundle is younger than ``snapshot_min_interval_s`` is not asked either:
        that bundle is attached at once.  Called with the lock held; returns the
        requests to store and the timeline events saying what was coalesced.
        """
        if self.snapshot_min_interval_s <= 0:
            return list(requests), []
        out: list[HostRequestRecord] = []
        events: list[TimelineEventRecord] = []
        interval = f"{self.snapshot_min_interval_s:g}"
        for req in requests:
            leader = await self._in_flight(req.host_id, incident_id, now)
            if leader is not None:
                reason = _coalesced_reason(leader)
                out.append(replace(req, reason=reason))
                if self._follower_hosts is not None:
                    self._follower_hosts.add(req.host_id)
                events.append(TimelineEventRecord(
                    incident_id, now, "coalesced",
                    f"{reason}: that snapshot is in flight, so the host is not asked again; its bundle is "
                    "attached here too",
                    host_id=req.host_id,
                ))
                continue
            last = await self.store.list_bundles("", req.host_id, 1)
            # An expired bundle (retention deleted its bytes) is no evidence to share: ask the host.
            if last and not last[0].expired_at_ms and now - last[0].received_at_ms < self.snapshot_min_interval_s * 1000:
                bundle = last[0]
                source = (
                    f"request {bundle.request_id} of incident {bundle.incident_id}"
                    if bundle.request_id and bundle.incident_id else "collected by the agent"
                )
                age_s = max(0, now - bundle.received_at_ms) / 1000
                out.append(replace(req, state=RequestStates.ATTACHED, bundle_id=bundle.bundle_id, updated_at_ms=now))
                events.append(TimelineEventRecord(
                    incident_id, now, "coalesced",
                    f"coalesced with bundle {bundle.bundle_id} ({source}, received {age_s:.0f} s ago): a host is "
                    f"asked for a snapshot at most every {interval} s",
                    host_id=req.host_id,
                ))
                events.append(TimelineEventRecord(
                    incident_id, now, "bundle_attached",
                    f"bundle {bundle.bundle_id} attached ({bundle.size_bytes} bytes)", host_id=req.host_id,
                ))
                continue
            out.append(req)
        return out, events

    async def _followers_changed(
        self, changed: Sequence[HostRequestRecord], now: int, skip: frozenset[str] = frozenset()
    ) -> tuple[list[HostRequestRecord], list[TimelineEventRecord], list[HostRequestRecord]]:
        """What happens to the requests coalesced with ``changed`` requests that just ended.

        When one is attached, its followers get the same bundle.  When it failed
        or expired, the oldest follower is asked for on its own (returned third:
        deliver it once the change is queued) and the others wait for that one.
        Followers in ``skip`` are left alone.  Returns one event per changed request.
        """
        out: list[HostRequestRecord] = []
        events: list[TimelineEventRecord] = []
        promoted: list[HostRequestRecord] = []
        for leader in changed:
            if leader.state not in RequestStates.FINAL or _leader_id(leader) is not None:
                continue
            if not await self._may_have_followers(leader.host_id):
                continue
            followers = [
                r for r in await self.store.requests_for_host(leader.host_id, [RequestStates.REQUESTED])
                if _leader_id(r) == leader.request_id and r.request_id not in skip
            ]
            if not followers:
                continue
            if leader.state == RequestStates.ATTACHED:
                for f in followers:
                    out.append(replace(f, state=RequestStates.ATTACHED, bundle_id=leader.bundle_id, reason="",
                                       updated_at_ms=now))
                    events.append(TimelineEventRecord(
                        f.incident_id, now, "bundle_attached",
                        f"bundle {leader.bundle_id} attached (shared with request {leader.request_id} of incident "
                        f"{leader.incident_id})",
                        host_id=f.host_id,
                    ))
                continue
            why = f"request {leader.request_id} of incident {leader.incident_id} {leader.state}"
            if leader.reason:
                why += f" ({_truncate(leader.reason, 256)})"
            first = replace(followers[0], reason="", updated_at_ms=now)
            out.append(first)
            promoted.append(first)
            events.append(TimelineEventRecord(
                first.incident_id, now, "coalesced", f"{why}; this host is asked for a snapshot of its own",
                host_id=first.host_id,
            ))
            for f in followers[1:]:
                reason = _coalesced_reason(first)
                out.append(replace(f, reason=reason, updated_at_ms=now))
                events.append(TimelineEventRecord(f.incident_id, now, "coalesced", f"{why}; now {reason}",
                                                  host_id=f.host_id))
        return out, events, promoted

    async def _deliver_promoted(self, promoted: Sequence[HostRequestRecord]) -> None:
        """Deliver requests no longer coalesced (called with the lock held, after their change is queued)."""
        for req in promoted:
            inc = await self.store.get_incident(req.incident_id)
            if inc is not None and inc.state != IncidentStates.RESOLVED:
                await self._deliver(inc, [req])

    # -- delivering ---------------------------------------------------------------------
    async def _deliver(self, inc: IncidentRecord, requests: Sequence[HostRequestRecord]) -> None:
        """Queue commands for connected agents; fail at once what an agent cannot do.

        Called with the lock held.
        """
        failed: list[HostRequestRecord] = []
        events: list[TimelineEventRecord] = []
        now = self.now_ms()
        for req in requests:
            session = self.fleet.get(req.host_id)
            if session is None or req.state != RequestStates.REQUESTED or now >= req.expires_at_ms:
                continue
            if _leader_id(req) is not None:
                continue  # waits for the request it is coalesced with
            if session.profiles and inc.profile not in session.profiles:
                reason = (
                    f"unknown profile {inc.profile!r} (this agent defines: {', '.join(sorted(session.profiles))})"
                )
                failed.append(replace(req, state=RequestStates.FAILED, reason=reason, updated_at_ms=now))
                events.append(TimelineEventRecord(inc.id, now, "failed", reason, host_id=req.host_id))
                continue
            window = inc.window_s
            if session.max_window_s > 0 and window > session.max_window_s:
                window = session.max_window_s
            session.enqueue(Command(req.request_id, inc.id, inc.profile, window))
        if failed:
            more, more_events, promoted = await self._followers_changed(failed, now)
            await self.store.update_requests(failed + more, events + more_events)
            self._remember(failed + more)
            await self._deliver_promoted(promoted)

    async def on_agent_connected(self, session: AgentSession) -> None:
        """Deliver this host's waiting requests and add it to matching incidents."""
        async with self._lock:
            now = self.now_ms()
            waiting = [
                r for r in await self.store.requests_for_host(session.host_id, [RequestStates.REQUESTED])
                if r.expires_at_ms > now
            ]
            by_incident: dict[str, list[HostRequestRecord]] = {}
            for r in waiting:
                by_incident.setdefault(r.incident_id, []).append(r)
            unresolved = {i.id: i for i in await self.store.unresolved_incidents()}
            for incident_id, reqs in by_incident.items():
                if incident_id in unresolved:
                    await self._deliver(unresolved[incident_id], reqs)
            have = {r.incident_id for r in await self.store.requests_for_host(session.host_id, RequestStates.ALL)}
            for inc in unresolved.values():
                expires = inc.opened_at_ms + int(self.request_ttl_s * 1000)
                if inc.id in have or now >= expires:
                    continue
                if not labels_match(inc.selector_labels, session.labels):
                    continue
                req = HostRequestRecord(
                    request_id=_new_request_id(),
                    incident_id=inc.id,
                    host_id=session.host_id,
                    state=RequestStates.REQUESTED,
                    created_at_ms=now,
                    updated_at_ms=now,
                    expires_at_ms=expires,
                )
                event = TimelineEventRecord(
                    inc.id, now, "host_added", "agent connected and matches the selector", host_id=session.host_id
                )
                added, coalesced = await self._coalesce(inc.id, [req], now)
                await self.store.add_requests(added, [event, *coalesced])
                self._remember(added)
                await self._deliver(inc, added)

    async def add_hosts(
        self, incident_id: str, host_ids: Sequence[str], message: str, actor: str = ""
    ) -> Sequence[str]:
        """Name more hosts in an unresolved incident's selector and request a snapshot from each.

        Hosts the incident already has a request for, and names that are not
        valid host ids, are skipped.  Returns the host ids added.
        """
        async with self._lock:
            inc = await self.store.get_incident(incident_id)
            if inc is None:
                raise CollectorError(grpc.StatusCode.NOT_FOUND, f"no incident with id {incident_id!r}")
            if inc.state == IncidentStates.RESOLVED:
                raise CollectorError(grpc.StatusCode.FAILED_PRECONDITION, f"incident {inc.id} is already resolved")
            have = {r.host_id for r in await self.store.list_requests(inc.id)}
            room = MAX_SELECTOR_HOSTS - len(inc.selector_host_ids)
            added = [h for h in dict.fromkeys(host_ids) if valid_host_id(h) and h not in have][: max(0, room)]
            if not added:
                return []
            now = self.now_ms()
            expires = now + int(self.request_ttl_s * 1000)
            requests = [
                HostRequestRecord(
                    request_id=_new_request_id(), incident_id=inc.id, host_id=h, state=RequestStates.REQUESTED,
                    created_at_ms=now, updated_at_ms=now, expires_at_ms=expires,
                )
                for h in added
            ]
            events = [TimelineEventRecord(inc.id, now, "host_added", message, host_id=h, actor=actor) for h in added]
            requests, coalesced = await self._coalesce(inc.id, requests, now)
            events += coalesced
            named = inc.selector_host_ids + tuple(h for h in added if h not in inc.selector_host_ids)
            inc = replace(inc, selector_host_ids=named)
            await self.store.update_incident(inc, [])
            await self.store.add_requests(requests, events)
            self._remember(requests)
            await self._deliver(inc, requests)
            return added

    async def on_command_sent(self, host_id: str, command: Command) -> None:
        """Record that the command went out on the agent's stream."""
        async with self._lock:
            req = await self._request(command.request_id)
            if req is None:
                return
            now = self.now_ms()
            window_note = f", window {command.window_s:g} s" if command.window_s else ""
            event = TimelineEventRecord(
                req.incident_id, now, "request_sent",
                f"snapshot request sent (profile {command.profile!r}{window_note})", host_id=host_id,
            )
            new = replace(req, sent_at_ms=now, updated_at_ms=now)
            committed = await _queued(self.store.update_requests([new], [event]))
            self._remember([new])
        await self._committed(committed, [new])

    # -- agent messages -----------------------------------------------------------------
    async def _agent_request(self, host_id: str, request_id: str) -> HostRequestRecord | None:
        req = await self._request(request_id)
        if req is None or req.host_id != host_id:
            log.warning(
                "agent message for an unknown request",
                extra={"event": "unknown_request", "host_id": host_id, "request_id": request_id[:64]},
            )
            return None
        return req

    async def on_ack(self, host_id: str, request_id: str, accepted: bool, reason: str) -> None:
        async with self._lock:
            req = await self._agent_request(host_id, request_id)
            if req is None or req.state != RequestStates.REQUESTED:
                return
            now = self.now_ms()
            if accepted:
                new = replace(req, state=RequestStates.ACKNOWLEDGED, updated_at_ms=now)
                event = TimelineEventRecord(req.incident_id, now, "acknowledged", "agent accepted", host_id=host_id)
            else:
                why = _truncate(reason or "refused by the agent", MAX_REASON_CHARS)
                new = replace(req, state=RequestStates.FAILED, reason=why, updated_at_ms=now)
                event = TimelineEventRecord(req.incident_id, now, "failed", f"agent refused: {why}", host_id=host_id)
            more, more_events, promoted = await self._followers_changed([new], now)
            committed = await _queued(self.store.update_requests([new, *more], [event, *more_events]))
            self._remember([new, *more])
            await self._deliver_promoted(promoted)
        await self._committed(committed, [new, *more])

    async def on_progress(self, host_id: str, request_id: str, stage: str, bundle_id: str, detail: str) -> None:
        async with self._lock:
            req = await self._agent_request(host_id, request_id)
            if req is None or req.state in RequestStates.FINAL:
                return
            stage = _truncate(stage or "progress", 64)
            if self._last_stage.get(request_id) == stage:
                return
            self._last_stage[request_id] = stage
            now = self.now_ms()
            new = replace(req, updated_at_ms=now)
            if req.state == RequestStates.REQUESTED:
                new = replace(new, state=RequestStates.ACKNOWLEDGED)
            if stage == "uploading":
                new = replace(new, state=RequestStates.UPLOADING)
            if bundle_id and not req.bundle_id:
                new = replace(new, bundle_id=_truncate(bundle_id, 64))
            message = stage + (f": {_truncate(detail, 256)}" if detail else "")
            event = TimelineEventRecord(req.incident_id, now, "progress", message, host_id=host_id)
            committed = await _queued(self.store.update_requests([new], [event]))
            self._remember([new])
        await self._committed(committed, [new])

    async def on_result(self, host_id: str, request_id: str, ok: bool, bundle_id: str, error: str) -> None:
        async with self._lock:
            self._last_stage.pop(request_id, None)
            req = await self._agent_request(host_id, request_id)
            if req is None or req.state in (RequestStates.ATTACHED, RequestStates.FAILED):
                return
            now = self.now_ms()
            if ok:
                # The bundle may already be stored (the upload can finish before the result).
                if bundle_id and await self.store.get_bundle(bundle_id) is not None:
                    new = replace(req, state=RequestStates.ATTACHED, bundle_id=bundle_id, updated_at_ms=now)
                    event = TimelineEventRecord(
                        req.incident_id, now, "bundle_attached", f"bundle {bundle_id} attached", host_id=host_id
                    )
                elif req.state == RequestStates.EXPIRED:
                    return
                else:
                    new = replace(
                        req, state=RequestStates.UPLOADING, bundle_id=_truncate(bundle_id, 64), updated_at_ms=now
                    )
                    event = TimelineEventRecord(
                        req.incident_id, now, "progress", f"snapshot done; uploading bundle {bundle_id}",
                        host_id=host_id,
                    )
            else:
                why = _truncate(error or "the agent reported a failure", MAX_REASON_CHARS)
                new = replace(req, state=RequestStates.FAILED, reason=why, updated_at_ms=now)
                event = TimelineEventRecord(req.incident_id, now, "failed", why, host_id=host_id)
            more, more_events, promoted = await self._followers_changed([new], now)
            committed = await _queued(self.store.update_requests([new, *more], [event, *more_events]))
            self._remember([new, *more])
            await self._deliver_promoted(promoted)
        await self._committed(committed, [new, *more])

    # -- bundles ------------------------------------------------------------------------
    async def publish_bundle(self, bundle: BundleRecord) -> bool:
        """Store ``bundle``'s row and attach it to its request and incident, in one transaction."""
        async with self._lock:
            now = self.now_ms()
            requests: list[HostRequestRecord] = []
            events: list[TimelineEventRecord] = []
            req = await self._request(bundle.request_id) if bundle.request_id else None
            incident_id: str | None = None
            if req is not None and req.host_id == bundle.host_id:
                bundle = replace(bundle, incident_id=req.incident_id)
                incident_id = req.incident_id  # a request's incident exists (foreign key)
                if req.state != RequestStates.ATTACHED:
                    requests.append(
                        replace(req, state=RequestStates.ATTACHED, bundle_id=bundle.bundle_id, reason="",
                                updated_at_ms=now)
                    )
            elif bundle.incident_id and await self.store.get_incident(bundle.incident_id) is not None:
                incident_id = bundle.incident_id
            if incident_id is not None:
                events.append(
                    TimelineEventRecord(
                        incident_id, now, "bundle_attached",
                        f"bundle {bundle.bundle_id} attached ({bundle.size_bytes} bytes)", host_id=bundle.host_id,
                    )
                )
            more, more_events, _ = await self._followers_changed(requests, now)
            requests += more
            events += more_events
            committed = await _queued(self.store.publish_bundle(bundle, requests, events))
            self._remember(requests)
        inserted = await self._committed(committed, requests)
        if not inserted:
            self._forget(requests)  # the bundle was stored before: these changes were not made
        if inserted and incident_id is not None and self.on_bundle_attached is not None:
            self.on_bundle_attached(incident_id)
        return inserted

    # -- expiry -------------------------------------------------------------------------
    async def expire_due(self) -> int:
        """Mark every pending request past its TTL ``expired``; how many were."""
        async with self._lock:
            now = self.now_ms()
            due = await self.store.requests_expired(now, RequestStates.PENDING)
            if not due:
                return 0
            ttl = f"{self.request_ttl_s:g}"
            changed = [
                replace(r, state=RequestStates.EXPIRED, reason=f"no bundle within the request TTL ({ttl} s)",
                        updated_at_ms=now)
                for r in due
            ]
            events = [
                TimelineEventRecord(r.incident_id, now, "expired", f"no bundle within {ttl} s", host_id=r.host_id)
                for r in due
            ]
            due_ids = frozenset(r.request_id for r in due)
            more, more_events, promoted = await self._followers_changed(changed, now, skip=due_ids)
            await self.store.update_requests(changed + more, events + more_events)
            self._remember(changed + more)
            await self._deliver_promoted(promoted)
            for r in due:
                self._last_stage.pop(r.request_id, None)
            return len(due)

    async def run_expiry(self, interval_s: float) -> None:
        """Call :meth:`expire_due` every ``interval_s`` until cancelled."""
        while True:
            try:
                await self.expire_due()
            except Exception:
                log.exception("expiry pass failed", extra={"event": "expiry_failed"})
            await asyncio.sleep(interval_s)

    # -- humans ---------------------------------------------------------------------------
    async def _change(
        self, incident_id: str, change: Callable[[IncidentRecord, int], tuple[IncidentRecord, TimelineEventRecord]]
    ) -> IncidentView:
        async with self._lock:
            if not isinstance(incident_id, str) or not incident_id:
                raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, "id: an incident id is required")
            inc = await self.store.get_incident(incident_id)
            if inc is None:
                raise CollectorError(grpc.StatusCode.NOT_FOUND, f"no incident with id {incident_id!r}")
            new, event = change(inc, self.now_ms())
            if new is not inc:
                await self.store.update_incident(new, [event])
        return await self._view(new)

    async def acknowledge(self, incident_id: str, actor: str = "") -> IncidentView:
        """open → acknowledged; an acknowledged incident is returned unchanged."""

        def change(inc: IncidentRecord, now: int) -> tuple[IncidentRecord, Any]:
            if inc.state == IncidentStates.RESOLVED:
                raise CollectorError(grpc.StatusCode.FAILED_PRECONDITION, f"incident {inc.id} is already resolved")
            if inc.state == IncidentStates.ACKNOWLEDGED:
                return inc, None
            new = replace(inc, state=IncidentStates.ACKNOWLEDGED, acknowledged_at_ms=now)
            return new, TimelineEventRecord(inc.id, now, "incident_acknowledged", "acknowledged", actor=actor)

        return await self._change(incident_id, change)

    async def post_status_update(self, incident_id: str, message: str, actor: str = "") -> IncidentView:
        message = message.strip()
        if not message:
            raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, "message: must not be empty")
        if len(message) > MAX_MESSAGE_CHARS:
            raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, f"message: at most {MAX_MESSAGE_CHARS} characters")

        def change(inc: IncidentRecord, now: int) -> tuple[IncidentRecord, TimelineEventRecord]:
            if inc.state == IncidentStates.RESOLVED:
                raise CollectorError(grpc.StatusCode.FAILED_PRECONDITION, f"incident {inc.id} is already resolved")
            new = replace(inc, last_status_update_at_ms=now)
            return new, TimelineEventRecord(inc.id, now, "status_update", message, actor=actor)

        return await self._change(incident_id, change)

    async def resolve(self, incident_id: str, message: str = "", actor: str = "") -> IncidentView:
        message = message.strip()
        if len(message) > MAX_MESSAGE_CHARS:
            raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, f"message: at most {MAX_MESSAGE_CHARS} characters")

        def change(inc: IncidentRecord, now: int) -> tuple[IncidentRecord, TimelineEventRecord]:
            if inc.state == IncidentStates.RESOLVED:
                raise CollectorError(grpc.StatusCode.FAILED_PRECONDITION, f"incident {inc.id} is already resolved")
            new = replace(inc, state=IncidentStates.RESOLVED, resolved_at_ms=now)
            return new, TimelineEventRecord(inc.id, now, "resolved", message or "resolved", actor=actor)

        return await self._change(incident_id, change)

    async def set_severity(self, incident_id: str, severity: int, reason: str = "", actor: str = "") -> IncidentView:
        """A responder sets the severity; the runbook's acknowledge timer restarts from now.

        Setting the severity it already has changes nothing (no event).  Only a
        human changes severity: the signals' suggestion never does.
        """
        reason = reason.strip()
        if severity not in (1, 2, 3, 4):
            raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, "severity: must be one of SEVERITY_P1 to SEVERITY_P4")
        if len(reason) > MAX_MESSAGE_CHARS:
            raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, f"reason: at most {MAX_MESSAGE_CHARS} characters")

        def change(inc: IncidentRecord, now: int) -> tuple[IncidentRecord, Any]:
            if inc.state == IncidentStates.RESOLVED:
                raise CollectorError(grpc.StatusCode.FAILED_PRECONDITION, f"incident {inc.id} is already resolved")
            if inc.severity == severity:
                return inc, None
            new = replace(inc, severity=severity, severity_set_at_ms=now)
            text = f"severity P{inc.severity} → P{severity}" + (f" by {actor}" if actor else "")
            if reason:
                text += f": {reason}"
            return new, TimelineEventRecord(inc.id, now, "severity_changed", text, actor=actor)

        return await self._change(incident_id, change)
