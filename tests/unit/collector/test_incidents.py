"""Incidents and host requests: selection, delivery, every transition, TTL expiry on an injected clock."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from hostdiag.collector.errors import CollectorError
from hostdiag.collector.fleet import AgentSession, Fleet, labels_match
from hostdiag.collector.incidents import IncidentManager, new_incident_id, selector_matches
from hostdiag.collector.store.base import AgentRecord, BundleRecord, IncidentStates, RequestStates
from hostdiag.collector.store.sqlite import SqliteMetadataStore

TTL = 1800.0


class Env:
    def __init__(self, root: Path, clock: Any) -> None:
        self.store = SqliteMetadataStore(str(root / "collector.db"))
        self.fleet = Fleet()
        self.clock = clock
        self.incidents = IncidentManager(self.store, self.fleet, request_ttl_s=TTL, default_window_s=300, clock=clock)

    async def __aenter__(self) -> Env:
        await self.store.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()

    async def known(self, host_id: str, **labels: str) -> None:
        await self.store.upsert_agent(AgentRecord(host_id=host_id, labels=labels, last_seen_ms=1))

    def connect(self, host_id: str, profiles: tuple[str, ...] = ("default",), max_window_s: float = 0,
                **labels: str) -> AgentSession:
        session = AgentSession(
            host_id=host_id, labels=labels, agent_version="t", profiles=profiles, capabilities=(),
            max_window_s=max_window_s, boot_id="", peer="", connected_at_ms=1, queue_length=4,
        )
        self.fleet.register(session)
        return session

    async def open(self, **kw: Any) -> Any:
        args: dict[str, Any] = {"title": "API down", "severity": 1}
        args.update(kw)
        return await self.incidents.open(**args)

    async def states(self, incident_id: str) -> dict[str, str]:
        view = await self.incidents.get(incident_id)
        return {r.host_id: r.state for r in view.requests}

    async def kinds(self, incident_id: str) -> list[str]:
        return [e.kind for e in (await self.incidents.get(incident_id)).events]


def run(tmp_path: Path, clock: Any, body: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Env(tmp_path, clock) as env:
            await body(env)

    asyncio.run(main())


def test_selector_matching() -> None:
    assert labels_match({"role": "api"}, {"role": "api", "dc": "x"})
    assert not labels_match({"role": "api", "dc": "y"}, {"role": "api", "dc": "x"})
    assert not labels_match({}, {"role": "api"})  # an empty selector never means "all hosts"
    assert selector_matches({}, ["web-1"], "web-1", {})
    assert selector_matches({"role": "api"}, ["db-1"], "web-2", {"role": "api"})
    assert not selector_matches({"role": "api"}, ["db-1"], "web-2", {"role": "db"})


def test_incident_ids_are_short_readable_and_unique() -> None:
    ids = {new_incident_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"inc-[a-z2-7]{8}", i) for i in ids)


def test_open_selects_named_and_matching_known_hosts(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        await env.known("web-1", role="api", dc="a")
        await env.known("web-2", role="api", dc="b")
        await env.known("db-1", role="db", dc="a")
        view = await env.open(selector_labels={"role": "api"}, selector_host_ids=["never-seen"], actor="alice")
        inc = view.incident
        assert inc.state == IncidentStates.OPEN and inc.opened_by == "alice"
        assert inc.window_s == 300 and inc.profile == "default"
        assert {r.host_id for r in view.requests} == {"web-1", "web-2", "never-seen"}
        assert all(r.state == RequestStates.REQUESTED for r in view.requests)
        assert all(r.expires_at_ms == int((clock.now + TTL) * 1000) for r in view.requests)
        assert [e.kind for e in view.events] == ["opened"]
        assert view.events[0].at_ms == int(clock.now * 1000)

    run(tmp_path, clock, body)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"title": "  "}, "title"),
        ({"severity": 0}, "severity"),
        ({"severity": 5}, "severity"),
        ({"selector_labels": {}, "selector_host_ids": []}, "selector"),
        ({"window_s": -1}, "window_seconds"),
        ({"window_s": float("nan")}, "window_seconds"),
        ({"window_s": 10**6}, "window_seconds"),
        ({"profile": "../x"}, "profile"),
        ({"selector_host_ids": ["bad host"]}, "selector.host_ids"),
    ],
)
def test_open_rejects_bad_fields(tmp_path: Path, clock: Any, kwargs: dict[str, Any], field: str) -> None:
    async def body(env: Env) -> None:
        args = {"selector_host_ids": ["web-1"], **kwargs}
        with pytest.raises(CollectorError) as info:
            await env.open(**args)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.message.startswith(field + ":")
        assert await env.incidents.list() == []

    run(tmp_path, clock, body)


def test_connected_agent_gets_the_command_at_once(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        session = env.connect("web-1", max_window_s=120, role="api")
        await env.known("web-1", role="api")
        view = await env.open(selector_labels={"role": "api"}, window_s=600, profile="default")
        command = session.queue.get_nowait()
        assert command.incident_id == view.incident.id
        assert command.request_id == view.requests[0].request_id
        assert command.window_s == 120  # clamped to what the agent can give
        await env.incidents.on_command_sent("web-1", command)
        assert (await env.kinds(view.incident.id))[-1] == "request_sent"

    run(tmp_path, clock, body)


def test_full_happy_path_of_a_request(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        env.connect("web-1")
        view = await env.open(selector_host_ids=["web-1"])
        inc_id, req_id = view.incident.id, view.requests[0].request_id
        clock.advance(1)
        await env.incidents.on_ack("web-1", req_id, True, "")
        assert await env.states(inc_id) == {"web-1": RequestStates.ACKNOWLEDGED}
        await env.incidents.on_progress("web-1", req_id, "collecting", "", "")
        await env.incidents.on_progress("web-1", req_id, "collecting", "", "")  # recorded once
        await env.incidents.on_progress("web-1", req_id, "uploading", "b-1", "")
        assert await env.states(inc_id) == {"web-1": RequestStates.UPLOADING}
        bundle_id = "0190a5f4-5b8e-7cc0-8d1e-1234567890ab"
        await env.incidents.on_result("web-1", req_id, True, bundle_id, "")
        assert await env.states(inc_id) == {"web-1": RequestStates.UPLOADING}
        stored = await env.incidents.publish_bundle(
            BundleRecord(bundle_id=bundle_id, host_id="web-1", size_bytes=10, sha256="a" * 64,
                         received_at_ms=1, manifest_json="{}", request_id=req_id)
        )
        assert stored
        view = await env.incidents.get(inc_id)
        assert view.requests[0].state == RequestStates.ATTACHED
        assert view.requests[0].bundle_id == bundle_id
        assert view.bundle_ids == [bundle_id]
        bundle = await env.store.get_bundle(bundle_id)
        assert bundle is not None and bundle.incident_id == inc_id  # taken from the request
        assert [e.kind for e in view.events] == [
            "opened", "acknowledged", "progress", "progress", "progress", "bundle_attached",
        ]
        assert [e.at_ms for e in view.events][1] == int(clock.now * 1000)

    run(tmp_path, clock, body)


def test_agent_refusal_and_failure_record_the_reason(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        view = await env.open(selector_host_ids=["web-1", "web-2"])
        reqs = {r.host_id: r.request_id for r in view.requests}
        await env.incidents.on_ack("web-1", reqs["web-1"], False, "unknown profile 'default'")
        await env.incidents.on_ack("web-2", reqs["web-2"], True, "")
        await env.incidents.on_result("web-2", reqs["web-2"], False, "", "disk full")
        got = {r.host_id: (r.state, r.reason) for r in (await env.incidents.get(view.incident.id)).requests}
        assert got == {
            "web-1": (RequestStates.FAILED, "unknown profile 'default'"),
            "web-2": (RequestStates.FAILED, "disk full"),
        }

    run(tmp_path, clock, body)


def test_messages_from_another_host_are_ignored(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        view = await env.open(selector_host_ids=["web-1"])
        await env.incidents.on_ack("intruder", view.requests[0].request_id, False, "no")
        await env.incidents.on_ack("web-1", "req-unknown", True, "")
        assert await env.states(view.incident.id) == {"web-1": RequestStates.REQUESTED}

    run(tmp_path, clock, body)


def test_profile_the_agent_lacks_fails_without_sending(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        session = env.connect("web-1", profiles=("default", "db"))
        view = await env.open(selector_host_ids=["web-1"], profile="network")
        assert session.queue.empty()
        req = (await env.incidents.get(view.incident.id)).requests[0]
        assert req.state == RequestStates.FAILED
        assert "unknown profile 'network'" in req.reason and "db, default" in req.reason

    run(tmp_path, clock, body)


def test_agent_connecting_later_gets_the_waiting_request(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        view = await env.open(selector_host_ids=["web-1"])
        clock.advance(TTL - 1)
        session = env.connect("web-1")
        await env.incidents.on_agent_connected(session)
        assert session.queue.get_nowait().request_id == view.requests[0].request_id
        # Not sent twice on the same session.
        await env.incidents.on_agent_connected(session)
        assert session.queue.empty()

    run(tmp_path, clock, body)


def test_new_matching_agent_within_the_ttl_gets_a_request(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        view = await env.open(selector_labels={"role": "api"})
        assert view.requests == []
        clock.advance(60)
        session = env.connect("web-9", role="api")
        await env.incidents.on_agent_connected(session)
        command = session.queue.get_nowait()
        got = await env.incidents.get(view.incident.id)
        assert [(r.host_id, r.request_id) for r in got.requests] == [("web-9", command.request_id)]
        assert got.requests[0].expires_at_ms == view.incident.opened_at_ms + int(TTL * 1000)
        assert "host_added" in [e.kind for e in got.events]
        other = env.connect("db-1", role="db")
        await env.incidents.on_agent_connected(other)
        assert other.queue.empty()

    run(tmp_path, clock, body)


def test_nothing_is_delivered_after_the_ttl(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        await env.open(selector_labels={"role": "api"}, selector_host_ids=["web-1"])
        clock.advance(TTL + 1)
        for host in ("web-1", "web-2"):
            session = env.connect(host, role="api")
            await env.incidents.on_agent_connected(session)
            assert session.queue.empty()

    run(tmp_path, clock, body)


def test_ttl_expiry_marks_pending_requests_only(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        view = await env.open(selector_host_ids=["a", "b", "c", "d"])
        reqs = {r.host_id: r.request_id for r in view.requests}
        await env.incidents.on_ack("b", reqs["b"], True, "")
        await env.incidents.on_ack("c", reqs["c"], False, "busy")
        await env.incidents.on_progress("d", reqs["d"], "uploading", "", "")
        clock.advance(TTL - 1)
        assert await env.incidents.expire_due() == 0
        clock.advance(1)
        assert await env.incidents.expire_due() == 3
        assert await env.states(view.incident.id) == {
            "a": RequestStates.EXPIRED, "b": RequestStates.EXPIRED,
            "c": RequestStates.FAILED, "d": RequestStates.EXPIRED,
        }
        assert (await env.kinds(view.incident.id)).count("expired") == 3
        assert await env.incidents.expire_due() == 0

    run(tmp_path, clock, body)


def test_late_bundle_still_attaches_to_an_expired_request(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        view = await env.open(selector_host_ids=["web-1"])
        clock.advance(TTL)
        await env.incidents.expire_due()
        bundle_id = "0190a5f4-5b8e-7cc0-8d1e-1234567890ab"
        await env.incidents.publish_bundle(
            BundleRecord(bundle_id=bundle_id, host_id="web-1", size_bytes=1, sha256="b" * 64, received_at_ms=1,
                         manifest_json="{}", request_id=view.requests[0].request_id)
        )
        assert await env.states(view.incident.id) == {"web-1": RequestStates.ATTACHED}

    run(tmp_path, clock, body)


def test_acknowledge_status_update_resolve(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        view = await env.open(selector_host_ids=["web-1"])
        inc_id = view.incident.id
        clock.advance(30)
        acked = await env.incidents.acknowledge(inc_id, actor="bob")
        assert acked.incident.state == IncidentStates.ACKNOWLEDGED
        assert acked.incident.acknowledged_at_ms == int(clock.now * 1000)
        again = await env.incidents.acknowledge(inc_id, actor="bob")  # unchanged, no new event
        assert again.incident.acknowledged_at_ms == acked.incident.acknowledged_at_ms
        updated = await env.incidents.post_status_update(inc_id, "rolled back deploy", actor="bob")
        assert updated.events[-1].message == "rolled back deploy" and updated.events[-1].actor == "bob"
        with pytest.raises(CollectorError) as info:
            await env.incidents.post_status_update(inc_id, "   ")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        clock.advance(60)
        resolved = await env.incidents.resolve(inc_id, "fixed", actor="carol")
        assert resolved.incident.state == IncidentStates.RESOLVED
        assert resolved.incident.resolved_at_ms == int(clock.now * 1000)
        assert [e.kind for e in resolved.events] == [
            "opened", "incident_acknowledged", "status_update", "resolved",
        ]
        for change in (
            env.incidents.acknowledge(inc_id),
            env.incidents.post_status_update(inc_id, "more"),
            env.incidents.resolve(inc_id),
        ):
            with pytest.raises(CollectorError) as info:
                await change
            assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION

    run(tmp_path, clock, body)


def test_unknown_incident_is_not_found(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        for call in (
            env.incidents.get("inc-zzzzzzzz"),
            env.incidents.acknowledge("inc-zzzzzzzz"),
            env.incidents.resolve("inc-zzzzzzzz"),
        ):
            with pytest.raises(CollectorError) as info:
                await call
            assert info.value.code == grpc.StatusCode.NOT_FOUND
            assert "inc-zzzzzzzz" in info.value.message

    run(tmp_path, clock, body)


def test_resolved_incident_is_not_delivered(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        view = await env.open(selector_host_ids=["web-1"], selector_labels={"role": "api"})
        await env.incidents.resolve(view.incident.id)
        for host in ("web-1", "web-2"):
            session = env.connect(host, role="api")
            await env.incidents.on_agent_connected(session)
            assert session.queue.empty()

    run(tmp_path, clock, body)


def test_list_filters_by_state_newest_first(tmp_path: Path, clock: Any) -> None:
    async def body(env: Env) -> None:
        first = await env.open(selector_host_ids=["a"], title="first")
        clock.advance(1)
        second = await env.open(selector_host_ids=["a"], title="second")
        await env.incidents.resolve(first.incident.id)
        assert [v.incident.title for v in await env.incidents.list()] == ["second", "first"]
        assert [v.incident.title for v in await env.incidents.list(IncidentStates.OPEN)] == ["second"]
        assert [v.incident.id for v in await env.incidents.list(limit=1)] == [second.incident.id]

    run(tmp_path, clock, body)
