"""The runbook's clock inside a real collector (gRPC, HTTP /metrics, SQLite, the escalation
webhook to a local server, collectorctl), on a clock the test moves; and across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from grpc import aio

from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.ctl import main as collectorctl
from hostdiag.collector.server import Collector
from hostdiag.v1 import incident_pb2 as ipb
from hostdiag.v1 import incident_pb2_grpc

DEADLINE_S = 15.0
MIN = 60.0

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)


class MovableClock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


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


class Hook:
    """A local escalation receiver answering from a script (then 200)."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.bodies: list[dict[str, Any]] = []
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
            self.bodies.append(orjson.loads(await reader.readexactly(length)))
            status = self.answers.pop(0) if self.answers else 200
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{self.port}/escalations?token=t0ken"
        finally:
            server.close()
            await server.wait_closed()


@contextlib.asynccontextmanager
async def running(data_dir: Path, clock: MovableClock, **overrides: Any) -> AsyncIterator[Any]:
    cfg = CollectorConfig(collector=CollectorSection(
        listen="127.0.0.1:0", http_listen="127.0.0.1:0", auth="none", data_dir=str(data_dir), runbook_check_interval_s=0.05,
        **overrides))
    collector = Collector(cfg, clock=clock)
    await collector.start()
    channel = aio.insecure_channel(collector.grpc_address)
    try:
        yield collector, incident_pb2_grpc.IncidentServiceStub(channel)
    finally:
        await channel.close()
        await collector.stop(0.5)


async def get(stub: Any, incident_id: str) -> ipb.Incident:
    return (await stub.GetIncident(ipb.GetIncidentRequest(id=incident_id))).incident


async def overdue_ids(stub: Any, **kw: Any) -> list[str]:
    response = await stub.ListIncidents(ipb.ListIncidentsRequest(overdue=True, **kw))
    return [i.id for i in response.incidents]


async def metrics(collector: Collector) -> dict[str, float]:
    host, port = collector.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), DEADLINE_S)
    writer.close()
    samples = {}
    for line in data.partition(b"\r\n\r\n")[2].decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def ctl(collector: Collector, *args: str) -> str:
    """collectorctl in a thread (it is synchronous; the collector runs on this loop)."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(collectorctl, ["--collector", collector.grpc_address, *args], out, err)
    assert code == 0, err.getvalue()
    return out.getvalue()


async def open_incident(stub: Any, severity: int, title: str) -> str:
    request = ipb.OpenIncidentRequest(title=title, severity=severity, service="api",  # type: ignore[arg-type]
                                      selector=ipb.HostSelector(host_ids=["web-1"]))
    return (await stub.OpenIncident(request)).incident.id


def test_breach_is_recorded_listed_measured_and_notified(tmp_path: Path) -> None:
    clock = MovableClock()
    hook = Hook([])

    async def main() -> None:
        async with hook.serving() as url, running(tmp_path, clock, escalation_webhook_url=url) as (collector, stub):
            p1 = await open_incident(stub, ipb.SEVERITY_P1, "API down")
            p3 = await open_incident(stub, ipb.SEVERITY_P3, "search slow")
            inc = await get(stub, p1)
            assert inc.severity_set_at_unix_ms == inc.opened_at_unix_ms > 0
            assert await overdue_ids(stub) == []

            clock.advance(5 * MIN + 1)
            inc = await eventually(lambda: _with_escalation(stub, p1), "ack_overdue recorded")
            [esc] = inc.escalations
            assert esc.kind == "ack_overdue" and esc.message.startswith("P1 not acknowledged within 5 min")
            assert any(e.kind == "escalation" and e.message.startswith("ack_overdue: ") for e in inc.timeline)
            assert await overdue_ids(stub) == [p1]
            assert await overdue_ids(stub, state=ipb.INCIDENT_STATE_ACKNOWLEDGED) == []

            # The webhook got it and the breach is marked notified.
            await eventually(lambda: hook.bodies, "webhook POST")
            assert hook.bodies[0]["kind"] == "ack_overdue" and hook.bodies[0]["incident"]["id"] == p1
            await eventually(lambda: _notified(stub, p1), "escalation marked notified")

            m = await metrics(collector)
            assert m['hostdiag_collector_runbook_breaches_total{kind="ack_overdue",severity="P1"}'] == 1
            assert m["hostdiag_collector_incidents_overdue"] == 1
            assert m['hostdiag_collector_escalation_notifications_total{result="delivered"}'] == 1

            # collectorctl shows it.
            listed = orjson.loads(await ctl(collector, "incident", "list", "--overdue", "--json"))
            assert [i["id"] for i in listed] == [p1] and listed[0]["overdue"] is True
            assert listed[0]["escalations"][0]["kind"] == "ack_overdue" and listed[0]["escalations"][0]["open"]
            table = await ctl(collector, "incident", "list")
            rows = {line.split()[0]: line.split()[2] for line in table.splitlines()[1:]}
            assert rows == {p1: "open,overdue", p3: "open"}
            shown = await ctl(collector, "incident", "show", p1)
            assert "open (overdue: ack_overdue)" in shown and "escalations (1)" in shown

            # Acknowledging closes it.
            await stub.AcknowledgeIncident(ipb.AcknowledgeIncidentRequest(id=p1))
            assert await overdue_ids(stub) == []
            assert (await metrics(collector))["hostdiag_collector_incidents_overdue"] == 0
            assert orjson.loads(await ctl(collector, "incident", "list", "--overdue", "--json")) == []

    asyncio.run(main())


async def _with_escalation(stub: Any, incident_id: str) -> ipb.Incident | None:
    inc = await get(stub, incident_id)
    return inc if inc.escalations else None


async def _notified(stub: Any, incident_id: str) -> bool:
    return all(e.notified for e in (await get(stub, incident_id)).escalations)


def test_restart_neither_duplicates_nor_loses_and_resends_the_unnotified(tmp_path: Path) -> None:
    clock = MovableClock()
    hook = Hook([500])  # the first delivery fails

    async def main() -> None:
        async with hook.serving() as url:
            async with running(tmp_path, clock, escalation_webhook_url=url, escalation_webhook_max_attempts=1) as (
                    collector, stub):
                p1 = await open_incident(stub, ipb.SEVERITY_P1, "API down")
                await stub.AcknowledgeIncident(ipb.AcknowledgeIncidentRequest(id=p1))
                clock.advance(5 * MIN + 1)
                inc = await eventually(lambda: _with_escalation(stub, p1), "status breach")
                assert [e.kind for e in inc.escalations] == ["p1_status_overdue"]
                await eventually(
                    lambda: collector.notifier is not None and collector.notifier.failed == 1, "delivery failed")
                assert not (await get(stub, p1)).escalations[0].notified

            # Down for 15 minutes: the P1 unresolved deadline passes meanwhile.
            clock.advance(15 * MIN)
            async with running(tmp_path, clock, escalation_webhook_url=url) as (collector, stub):
                inc = await eventually(lambda: _kinds(stub, p1, 2), "breach found after the restart")
                await collector.runbook.evaluate()
                await collector.runbook.evaluate()
                inc = await get(stub, p1)
                assert [e.kind for e in inc.escalations] == ["p1_status_overdue", "p1_unresolved"]
                assert [e.kind for e in inc.timeline].count("escalation") == 2
                # The unnotified breach went out again, with the new one.
                await eventually(lambda: _notified(stub, p1), "both notified")
                assert sorted(b["kind"] for b in hook.bodies) == [
                    "p1_status_overdue", "p1_status_overdue", "p1_unresolved"]

    asyncio.run(main())


async def _kinds(stub: Any, incident_id: str, count: int) -> ipb.Incident | None:
    inc = await get(stub, incident_id)
    return inc if len(inc.escalations) >= count else None


def test_no_webhook_configured(tmp_path: Path) -> None:
    clock = MovableClock()

    async def main() -> None:
        async with running(tmp_path, clock) as (collector, stub):
            assert collector.notifier is None
            p2 = await open_incident(stub, ipb.SEVERITY_P2, "checkout errors")
            clock.advance(15 * MIN + 1)
            inc = await eventually(lambda: _with_escalation(stub, p2), "ack_overdue recorded")
            assert not inc.escalations[0].notified
            await stub.ResolveIncident(ipb.ResolveIncidentRequest(id=p2, message="fixed"))
            assert await overdue_ids(stub) == []

    asyncio.run(main())


def test_set_incident_severity_restarts_the_ack_timer(tmp_path: Path) -> None:
    clock = MovableClock()

    async def main() -> None:
        async with running(tmp_path, clock) as (collector, stub):
            inc_id = await open_incident(stub, ipb.SEVERITY_P3, "search slow")
            clock.advance(20 * MIN)
            changed = (await stub.SetIncidentSeverity(ipb.SetIncidentSeverityRequest(
                id=inc_id, severity=ipb.SEVERITY_P1, reason="checkout fails too"),
                metadata=(("hostdiag-actor", "alice"),))).incident
            assert changed.severity_set_at_unix_ms > changed.opened_at_unix_ms
            clock.advance(5 * MIN - 30)  # 25 min open, but not yet 5 min as a P1
            await collector.runbook.evaluate()
            assert not (await get(stub, inc_id)).escalations
            clock.advance(31)
            inc = await eventually(lambda: _with_escalation(stub, inc_id), "ack_overdue as a P1")
            [esc] = inc.escalations
            assert esc.kind == "ack_overdue" and esc.message.startswith("P1 not acknowledged within 5 min")

    asyncio.run(main())
