"""The per-host snapshot rate limit: a second incident for a busy or recently snapshotted host
is coalesced with what is already there, never silently dropped, and never asks the host again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hostdiag.collector.fleet import AgentSession, Fleet
from hostdiag.collector.incidents import IncidentManager
from hostdiag.collector.store.base import AgentRecord, BundleRecord, RequestStates
from hostdiag.collector.store.sqlite import SqliteMetadataStore

INTERVAL_S = 60.0
TTL_S = 1800.0


class Env:
    def __init__(self, root: Path, clock: Any, interval_s: float) -> None:
        self.store = SqliteMetadataStore(str(root / "collector.db"))
        self.fleet = Fleet()
        self.clock = clock
        self.incidents = IncidentManager(
            self.store, self.fleet, request_ttl_s=TTL_S, clock=clock, snapshot_min_interval_s=interval_s
        )
        self.bundles = 0

    def connect(self, host_id: str = "web-1", profiles: tuple[str, ...] = ("default",)) -> AgentSession:
        session = AgentSession(
            host_id=host_id, labels={"role": "api"}, agent_version="t", profiles=profiles, capabilities=(),
            max_window_s=0, boot_id="", peer="", connected_at_ms=1, queue_length=16,
        )
        self.fleet.register(session)
        return session

    async def open(self, *hosts: str, **kw: Any) -> str:
        view = await self.incidents.open(title="API down", severity=1, selector_host_ids=list(hosts), **kw)
        return view.incident.id

    async def request(self, incident_id: str, host_id: str = "web-1") -> Any:
        view = await self.incidents.get(incident_id)
        return next(r for r in view.requests if r.host_id == host_id)

    async def publish(self, request_id: str = "", host_id: str = "web-1") -> str:
        self.bundles += 1
        bundle_id = f"0190a5f4-5b8e-7cc0-8d1e-{self.bundles:012d}"
        stored = await self.incidents.publish_bundle(
            BundleRecord(bundle_id=bundle_id, host_id=host_id, size_bytes=10, sha256=f"{self.bundles:064x}",
                         received_at_ms=self.incidents.now_ms(), manifest_json="{}", request_id=request_id)
        )
        assert stored
        return bundle_id

    async def messages(self, incident_id: str, kind: str) -> list[str]:
        return [e.message for e in (await self.incidents.get(incident_id)).events if e.kind == kind]


def run(tmp_path: Path, clock: Any, body: Callable[[Env], Awaitable[None]], interval_s: float = INTERVAL_S) -> None:
    async def main() -> None:
        env = Env(tmp_path, clock, interval_s)
        await env.store.open()
        try:
            await body(env)
        finally:
            await env.store.close()

    asyncio.run(main())


def drain(session: AgentSession) -> list[str]:
    sent = []
    while not session.queue.empty():
        sent.append(session.queue.get_nowait().request_id)
    return sent


def test_a_second_incident_for_a_host_with_a_request_in_flight_is_coalesced(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        session = env.connect()
        first = await env.open("web-1")
        leader = await env.request(first)
        assert drain(session) == [leader.request_id]
        await env.incidents.on_ack("web-1", leader.request_id, True, "")

        second = await env.open("web-1")
        follower = await env.request(second)
        assert drain(session) == [], "the host is not asked again"
        assert follower.state == RequestStates.REQUESTED
        assert follower.reason == f"coalesced with request {leader.request_id} of incident {first}"
        [note] = await env.messages(second, "coalesced")
        assert note.startswith(f"coalesced with request {leader.request_id} of incident {first}")

        bundle_id = await env.publish(leader.request_id)
        for incident_id in (first, second):
            request = await env.request(incident_id)
            assert (request.state, request.bundle_id) == (RequestStates.ATTACHED, bundle_id)
            assert (await env.incidents.get(incident_id)).bundle_ids == [bundle_id]
        [attached] = await env.messages(second, "bundle_attached")
        assert attached == f"bundle {bundle_id} attached (shared with request {leader.request_id} of incident {first})"

    run(tmp_path, clock, body)


def test_a_host_whose_last_bundle_is_recent_gets_that_bundle_attached(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        session = env.connect()
        first = await env.open("web-1")
        leader = await env.request(first)
        drain(session)
        bundle_id = await env.publish(leader.request_id)

        clock.advance(INTERVAL_S - 1)
        second = await env.open("web-1")
        assert drain(session) == []
        request = await env.request(second)
        assert (request.state, request.bundle_id) == (RequestStates.ATTACHED, bundle_id)
        assert (await env.incidents.get(second)).bundle_ids == [bundle_id]
        [note] = await env.messages(second, "coalesced")
        assert f"coalesced with bundle {bundle_id} (request {leader.request_id} of incident {first}" in note
        assert f"at most every {INTERVAL_S:g} s" in note

        clock.advance(2)  # the bundle is now older than the interval: the host is asked again
        third = await env.open("web-1")
        assert drain(session) == [(await env.request(third)).request_id]
        assert await env.messages(third, "coalesced") == []

    run(tmp_path, clock, body)


def test_when_the_request_in_flight_fails_the_oldest_coalesced_one_goes_out_itself(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        session = env.connect()
        first = await env.open("web-1")
        leader = await env.request(first)
        drain(session)
        second = await env.open("web-1")
        third = await env.open("web-1")
        assert drain(session) == []

        await env.incidents.on_result("web-1", leader.request_id, False, "", "disk full")
        promoted, waiting = await env.request(second), await env.request(third)
        assert (promoted.state, promoted.reason) == (RequestStates.REQUESTED, "")
        assert drain(session) == [promoted.request_id], "the oldest follower is sent, once"
        assert waiting.reason == f"coalesced with request {promoted.request_id} of incident {second}"
        [note] = (await env.messages(second, "coalesced"))[1:]
        assert note == (f"request {leader.request_id} of incident {first} failed (disk full); "
                        "this host is asked for a snapshot of its own")

        bundle_id = await env.publish(promoted.request_id)
        assert (await env.request(third)).bundle_id == bundle_id
        assert (await env.request(first)).state == RequestStates.FAILED

    run(tmp_path, clock, body)


def test_when_the_request_in_flight_expires_a_coalesced_one_is_asked_for_on_its_own(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        await env.store.upsert_agent(AgentRecord(host_id="web-1", labels={"role": "api"}, last_seen_ms=1))
        first = await env.open("web-1")  # the host is not connected: the request waits
        clock.advance(600)
        second = await env.open("web-1")
        assert (await env.request(second)).reason.startswith("coalesced with request")

        clock.advance(TTL_S - 600)
        assert await env.incidents.expire_due() == 1
        assert (await env.request(first)).state == RequestStates.EXPIRED
        follower = await env.request(second)
        assert (follower.state, follower.reason) == (RequestStates.REQUESTED, "")
        session = env.connect()
        await env.incidents.on_agent_connected(session)
        assert drain(session) == [follower.request_id]

    run(tmp_path, clock, body)


def test_a_connecting_agent_gets_only_the_request_in_flight_not_the_coalesced_ones(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        first = await env.open("web-1")
        second = await env.open("web-1")
        session = env.connect()
        await env.incidents.on_agent_connected(session)
        assert drain(session) == [(await env.request(first)).request_id]
        assert (await env.request(second)).state == RequestStates.REQUESTED

    run(tmp_path, clock, body)


def test_requests_of_the_same_incident_and_other_hosts_are_not_coalesced(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        one, two = env.connect("web-1"), env.connect("web-2")
        first = await env.open("web-1")
        drain(one)
        second = await env.open("web-2")
        assert drain(two) == [(await env.request(second, "web-2")).request_id]
        assert await env.messages(first, "coalesced") == []

    run(tmp_path, clock, body)


def test_an_interval_of_zero_turns_the_rate_limit_off(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        session = env.connect()
        first = await env.open("web-1")
        second = await env.open("web-1")
        assert drain(session) == [(await env.request(first)).request_id, (await env.request(second)).request_id]
        assert await env.messages(second, "coalesced") == []

    run(tmp_path, clock, body, interval_s=0)


def test_a_recent_bundle_that_retention_expired_is_not_shared(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        session = env.connect()
        first = await env.open("web-1")
        leader = await env.request(first)
        drain(session)
        bundle_id = await env.publish(leader.request_id)
        await env.incidents.resolve(first)  # no longer held: retention may expire its bundle
        expired, _digests = await env.store.expire_bundles([bundle_id], env.incidents.now_ms())
        assert [b.bundle_id for b in expired] == [bundle_id]

        second = await env.open("web-1")
        assert drain(session) == [(await env.request(second)).request_id], "the host is asked for a new bundle"
        assert await env.messages(second, "coalesced") == []

    run(tmp_path, clock, body)
