"""Severity signals in a real collector: a grpc.aio server on 127.0.0.1:0, real SQLite and files.

Bundles made by the agent's BundleWriter (with evidence fixtures from
tests/fixtures/evidence) are uploaded over ``AgentService.Upload``; the tests read
the suggestion back through ``IncidentService`` and ``collectorctl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from grpc import aio

from hostdiag.agent.bundle import BundleWriter
from hostdiag.collector import ctl
from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.server import Collector
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc
from hostdiag.v1 import incident_pb2 as ipb
from hostdiag.v1 import incident_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
EVIDENCE = REPO / "tests" / "fixtures" / "evidence"
DEADLINE_S = 15.0

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)


def evidence(name: str, host_id: str) -> dict[str, Any]:
    doc = json.loads((EVIDENCE / f"{name}.json").read_text())
    doc["host_id"] = host_id
    return copy.deepcopy(doc)


class FakeClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def eventually(predicate: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


class Client:
    def __init__(self, collector: Collector, channel: aio.Channel) -> None:
        self.collector = collector
        self.channel = channel
        self.agents = agent_pb2_grpc.AgentServiceStub(channel)
        self.incidents = incident_pb2_grpc.IncidentServiceStub(channel)

    async def open(self, hosts: list[str], severity: int = ipb.SEVERITY_P3, service: str = "") -> ipb.Incident:
        req = ipb.OpenIncidentRequest(title="checkout errors", severity=severity, service=service,  # type: ignore[arg-type]
                                      selector=ipb.HostSelector(host_ids=hosts))
        return (await self.incidents.OpenIncident(req, metadata=(("hostdiag-actor", "alice"),))).incident

    async def get(self, incident_id: str) -> ipb.Incident:
        return (await self.incidents.GetIncident(ipb.GetIncidentRequest(id=incident_id))).incident

    async def attach(self, tmp: Path, inc: ipb.Incident, host_id: str, fixture: str,
                     doc: dict[str, Any] | None = None, with_request: bool = True) -> str:
        """Upload a bundle with this evidence for ``host_id``, attached to ``inc``."""
        request_id = next(h.request_id for h in inc.hosts if h.host_id == host_id) if with_request else ""
        out = tmp / "bundles" / f"{host_id}-{fixture}-{time.monotonic_ns()}"
        out.mkdir(parents=True)
        writer = BundleWriter(str(out), host_id=host_id, max_member_bytes=1 << 24, max_bundle_bytes=1 << 26)
        with writer:
            writer.write_json("host.json", {"host_id": host_id})
            info = writer.finish(
                {"trigger": "collector", "profile": "default", "incident_id": inc.id, "request_id": request_id},
                doc if doc is not None else evidence(fixture, host_id),
            )
        data = Path(info.path).read_bytes()
        msg = apb.UploadRequest(bundle_id=info.bundle_id, write_offset=0, data=data, finish_write=True,
                                total_size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                request_id=request_id, incident_id=inc.id)

        async def gen() -> AsyncIterator[apb.UploadRequest]:
            yield msg

        response = await self.agents.Upload(gen())
        assert response.complete
        return info.bundle_id

    async def suggestion(self, incident_id: str, reporting: int) -> ipb.Incident:
        """The incident once its suggestion covers ``reporting`` hosts and nothing is pending."""

        async def ready() -> ipb.Incident | None:
            await self.collector.signals.idle()
            inc = await self.get(incident_id)
            return inc if inc.HasField("suggestion") and inc.suggestion.hosts_reporting == reporting else None

        return await eventually(ready, f"a suggestion over {reporting} host(s)")


def make_config(data_dir: Path, **overrides: Any) -> CollectorConfig:
    return CollectorConfig(collector=CollectorSection(
        listen="127.0.0.1:0", http_listen="127.0.0.1:0", auth="none", data_dir=str(data_dir), **overrides))


@contextlib.asynccontextmanager
async def running(data_dir: Path, clock: Callable[[], float] = time.time, **overrides: Any) -> AsyncIterator[Client]:
    collector = Collector(make_config(data_dir, **overrides), clock=clock)
    await collector.start()
    channel = aio.insecure_channel(collector.grpc_address)
    try:
        yield Client(collector, channel)
    finally:
        await channel.close()
        await collector.stop(0.5)


def sync(fn: Callable[..., Any]) -> Callable[..., None]:
    """Run an async test body with asyncio.run (fixtures pass through)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def kinds(inc: ipb.Incident, kind: str) -> list[str]:
    return [e.message for e in inc.timeline if e.kind == kind]


@sync
async def test_bundles_attaching_give_a_p1_suggestion_that_never_changes_the_severity(tmp_path: Path) -> None:
    async with running(tmp_path / "data") as c:
        inc = await c.open(["web-1", "web-2", "web-3"], severity=ipb.SEVERITY_P3)
        await c.attach(tmp_path, inc, "web-1", "probe-api-down")
        await c.attach(tmp_path, inc, "web-2", "probe-api-down")
        got = await c.suggestion(inc.id, reporting=2)
        s = got.suggestion
        assert s.severity == ipb.SEVERITY_P1
        assert s.explanation == (
            "Suggest P1: api down: api-health probe failing on 2/3 hosts for 3 min (uptime 0%); "
            "1 host of 3 not reporting; see docs/troubleshooting/api.md"
        )
        assert s.guide == "docs/troubleshooting/api.md"
        assert (s.hosts_selected, s.hosts_reporting, s.hosts_affected) == (3, 2, 2)
        assert s.evaluated_at_unix_ms > 0
        top = s.findings[0]
        assert (top.rule, top.severity, top.host_id, top.inhibited) == (
            "component-down-everywhere", ipb.SEVERITY_P1, "", False)
        values = json.loads(top.evidence_json)
        assert values["affected_hosts"] == ["web-1", "web-2"]
        assert values["hosts"]["web-1"]["last_error"] == "connection refused"
        # Only a human changes the severity.
        assert got.severity == ipb.SEVERITY_P3
        assert got.severity_set_at_unix_ms == inc.severity_set_at_unix_ms
        events = kinds(got, "suggestion")
        assert len(events) == 1
        assert events[0].startswith("suggestion: P1 (was none) — Suggest P1: api down: api-health probe failing on ")
        # ListIncidents carries it too.
        listed = (await c.incidents.ListIncidents(ipb.ListIncidentsRequest())).incidents
        assert [i.suggestion.severity for i in listed if i.id == inc.id] == [ipb.SEVERITY_P1]


@sync
async def test_each_change_of_suggested_severity_is_a_timeline_event(tmp_path: Path) -> None:
    async with running(tmp_path / "data") as c:
        inc = await c.open(["web-1", "web-2"])
        before = await c.get(inc.id)
        assert not before.HasField("suggestion")
        await c.attach(tmp_path, inc, "web-1", "filesystem-space-critical")
        first = await c.suggestion(inc.id, reporting=1)
        assert first.suggestion.severity == ipb.SEVERITY_P3
        assert "(P2 rule on a single host: at most P3)" in first.suggestion.explanation
        await c.attach(tmp_path, inc, "web-2", "probe-api-down")
        second = await c.suggestion(inc.id, reporting=2)
        assert second.suggestion.severity == ipb.SEVERITY_P2
        assert second.suggestion.explanation.startswith(
            "Suggest P2: api degraded: api-health probe failing on 1 of the 2 hosts that run it for 3 min")
        events = kinds(second, "suggestion")
        assert [e.split(" — ")[0] for e in events] == ["suggestion: P3 (was none)", "suggestion: P2 (was P3)"]
        assert second.severity == ipb.SEVERITY_P3


@sync
async def test_a_hosts_newest_bundle_replaces_its_older_evidence(tmp_path: Path) -> None:
    async with running(tmp_path / "data") as c:
        inc = await c.open(["web-1"])
        await c.attach(tmp_path, inc, "web-1", "probe-api-down")
        assert (await c.suggestion(inc.id, reporting=1)).suggestion.severity == ipb.SEVERITY_P1
        # An engineer on the host collects again once the API is back (agentctl collect --incident).
        await c.attach(tmp_path, inc, "web-1", "healthy", with_request=False)

        async def recovered() -> ipb.Incident | None:
            await c.collector.signals.idle()
            got = await c.get(inc.id)
            return got if got.suggestion.severity == ipb.SEVERITY_UNSPECIFIED else None

        got = await eventually(recovered, "the suggestion to clear")
        assert got.suggestion.explanation == "No rule fired on the 1/1 reporting hosts"
        assert kinds(got, "suggestion")[-1].startswith("suggestion: none (was P1) — No rule fired")
        assert len(got.bundle_ids) == 2


@sync
async def test_set_severity_records_who_and_why_and_restarts_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running(tmp_path / "data", clock=clock) as c:
        inc = await c.open(["web-1"], severity=ipb.SEVERITY_P3)
        clock.offset = 120.0
        meta = (("hostdiag-actor", "bob"),)
        changed = (await c.incidents.SetIncidentSeverity(
            ipb.SetIncidentSeverityRequest(id=inc.id, severity=ipb.SEVERITY_P1, reason="api down on every host"),
            metadata=meta)).incident
        assert changed.severity == ipb.SEVERITY_P1
        assert changed.severity_set_at_unix_ms >= inc.severity_set_at_unix_ms + 120_000
        event = changed.timeline[-1]
        assert (event.kind, event.actor) == ("severity_changed", "bob")
        assert event.message == "severity P3 → P1 by bob: api down on every host"
        # The same severity again changes nothing.
        again = (await c.incidents.SetIncidentSeverity(
            ipb.SetIncidentSeverityRequest(id=inc.id, severity=ipb.SEVERITY_P1), metadata=meta)).incident
        assert len(again.timeline) == len(changed.timeline)
        assert again.severity_set_at_unix_ms == changed.severity_set_at_unix_ms
        # Without a reason or an actor.
        lowered = (await c.incidents.SetIncidentSeverity(
            ipb.SetIncidentSeverityRequest(id=inc.id, severity=ipb.SEVERITY_P2))).incident
        assert lowered.timeline[-1].message == "severity P1 → P2"

        async def code_of(**kw: Any) -> grpc.StatusCode:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.incidents.SetIncidentSeverity(ipb.SetIncidentSeverityRequest(**kw))
            return info.value.code()

        assert await code_of(id=inc.id, severity=ipb.SEVERITY_UNSPECIFIED) == grpc.StatusCode.INVALID_ARGUMENT
        assert await code_of(id=inc.id, severity=7) == grpc.StatusCode.INVALID_ARGUMENT
        assert await code_of(id=inc.id, severity=1, reason="x" * 5000) == grpc.StatusCode.INVALID_ARGUMENT
        assert await code_of(id="", severity=1) == grpc.StatusCode.INVALID_ARGUMENT
        assert await code_of(id="inc-aaaaaaaa", severity=1) == grpc.StatusCode.NOT_FOUND
        await c.incidents.ResolveIncident(ipb.ResolveIncidentRequest(id=inc.id))
        assert await code_of(id=inc.id, severity=1) == grpc.StatusCode.FAILED_PRECONDITION


@sync
async def test_restart_reevaluates_from_stored_evidence_with_the_operators_rules(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running(data) as c:
        inc = await c.open(["web-1"])
        await c.attach(tmp_path, inc, "web-1", "probe-api-down")
        assert (await c.suggestion(inc.id, reporting=1)).suggestion.severity == ipb.SEVERITY_P1
    # The bundle files are gone: evaluation reads only the evidence kept in the metadata store.
    for blob in (data / "blobs" / "sha256").rglob("*"):
        if blob.is_file():
            blob.unlink()
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'disable = ["component-down-everywhere"]\n\n'
        '[[rules]]\nname = "component-down-somewhere"\nexplanation = "{probe} is failing here ({last_error})"\n'
    )
    async with running(data, signal_rules_file=str(rules)) as c:

        async def reevaluated() -> ipb.Incident | None:
            await c.collector.signals.idle()
            got = await c.get(inc.id)
            return got if got.suggestion.severity == ipb.SEVERITY_P2 else None

        got = await eventually(reevaluated, "re-evaluation with the operator's rules")
        assert got.suggestion.explanation == (
            "Suggest P2: api-health is failing here (connection refused); see docs/troubleshooting/api.md")
        assert [f.rule for f in got.suggestion.findings] == ["component-down-somewhere"]
        assert kinds(got, "suggestion")[-1].startswith("suggestion: P2 (was P1)")


@sync
async def test_collectorctl_sets_severity_and_shows_the_suggestion(tmp_path: Path) -> None:
    async with running(tmp_path / "data") as c:
        inc = await c.open(["web-1", "web-2"], severity=ipb.SEVERITY_P3)
        await c.attach(tmp_path, inc, "web-1", "probe-api-down")
        await c.attach(tmp_path, inc, "web-2", "memory-available-low")
        await c.suggestion(inc.id, reporting=2)
        address = c.collector.grpc_address

        def run(*argv: str) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = ctl.main(["--collector", address, *argv], out=out, err=err, env={})
            return code, out.getvalue(), err.getvalue()

        code, out, err = await asyncio.to_thread(run, "incident", "show", inc.id)
        assert code == 0, err
        assert (f"suggested  P2 (the severity stays P3 until a responder sets it: "
                f"collectorctl incident severity {inc.id} P2)") in out
        assert ("why        Suggest P2: api degraded: api-health probe failing on 1 of the 2 hosts that run it "
                "for 3 min (uptime 0%); see docs/troubleshooting/api.md") in out
        assert "guide      docs/troubleshooting/api.md" in out
        assert "hosts      2 selected, 2 reporting, 2 affected" in out
        assert "component-down-somewhere" in out and "memory-available-low" in out
        assert "affected=1" in out and "available_pct=7.5" in out  # evidence values in the findings table

        code, out, err = await asyncio.to_thread(run, "incident", "show", inc.id, "--json")
        assert code == 0, err
        doc = orjson.loads(out)
        assert doc["severity"] == "P3"
        assert doc["suggestion"]["severity"] == "P2"
        assert doc["suggestion"]["hosts_reporting"] == 2
        by_rule = {f["rule"]: f for f in doc["suggestion"]["findings"]}
        assert by_rule["memory-available-low"]["host_id"] == "web-2"
        assert by_rule["memory-available-low"]["evidence"]["available_pct"] == pytest.approx(7.5)
        assert by_rule["component-down-somewhere"]["host_id"] is None

        code, out, err = await asyncio.to_thread(
            run, "incident", "severity", inc.id, "P1", "--reason", "checkout fails for every user")
        assert (code, err) == (0, "")
        assert out == f"{inc.id} severity P3 → P1\n"
        code, out, err = await asyncio.to_thread(run, "incident", "severity", inc.id, "p1")
        assert out == f"{inc.id} severity unchanged (P1)\n"
        got = await c.get(inc.id)
        assert got.severity == ipb.SEVERITY_P1
        assert got.timeline[-1].message.startswith("severity P3 → P1 by ")
        assert got.timeline[-1].message.endswith(": checkout fails for every user")
        assert got.suggestion.severity == ipb.SEVERITY_P2  # a human's choice does not move the suggestion

        code, out, err = await asyncio.to_thread(run, "incident", "severity", inc.id, "P7")
        assert code == 2 and "invalid severity 'P7'" in err
        code, out, err = await asyncio.to_thread(run, "incident", "severity", "inc-aaaaaaaa", "P2")
        assert code == 1 and "no incident inc-aaaaaaaa" in err
