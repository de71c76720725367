"""POST /api/v1/alertmanager on a real collector: real HTTP requests shaped as Alertmanager
sends them, a fake agent on the control stream receiving the snapshot command, and every
refusal (400 naming the field, 405, 411, 413, 415) changing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from grpc import aio

from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.server import Collector
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc
from hostdiag.v1 import incident_pb2 as ipb
from hostdiag.v1 import incident_pb2_grpc

DEADLINE_S = 15.0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alertmanager"
PATH = "/api/v1/alertmanager"

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@contextlib.asynccontextmanager
async def running(data_dir: Path, **overrides: Any) -> AsyncIterator[tuple[Collector, Any, aio.Channel]]:
    cfg = CollectorConfig(collector=CollectorSection(
        listen="127.0.0.1:0", http_listen="127.0.0.1:0", auth="none", data_dir=str(data_dir), **overrides))
    collector = Collector(cfg)
    await collector.start()
    channel = aio.insecure_channel(collector.grpc_address)
    try:
        yield collector, incident_pb2_grpc.IncidentServiceStub(channel), channel
    finally:
        await channel.close()
        await collector.stop(0.5)


def alertmanager_request(body: bytes, *, content_type: str = "application/json", method: str = "POST",
                         length: int | None = None, extra: str = "", close: bool = True) -> bytes:
    """The request Alertmanager's webhook notifier sends (Go net/http client headers)."""
    head = [f"{method} {PATH} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: Alertmanager/0.28.1"]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    if length is not None or method == "POST":
        head.append(f"Content-Length: {len(body) if length is None else length}")
    head.append("Accept-Encoding: gzip")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n" + extra + "\r\n").encode() + body


async def exchange(collector: Collector, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = collector.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), DEADLINE_S)
    finally:
        writer.close()
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split(" ")[1]), headers, body


async def post(collector: Collector, body: bytes, **kw: Any) -> tuple[int, Any]:
    status, headers, payload = await exchange(collector, alertmanager_request(body, **kw))
    return status, (orjson.loads(payload) if headers.get("content-type") == "application/json" else payload)


async def incidents(stub: Any) -> list[ipb.Incident]:
    return list((await stub.ListIncidents(ipb.ListIncidentsRequest())).incidents)


class FakeAgent:
    """Just enough of an agent's control stream to see the snapshot command arrive."""

    def __init__(self, channel: aio.Channel, host_id: str) -> None:
        self.call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
        self.host_id = host_id

    async def connect(self) -> None:
        await self.call.write(apb.ConnectRequest(hello=apb.Hello(
            host_id=self.host_id, labels={"role": "node"}, agent_version="0.1.0", profiles=["default"],
            max_window_seconds=900, boot_id="boot-1")))
        await self.next("welcome")

    async def next(self, kind: str) -> Any:
        while True:
            msg = await asyncio.wait_for(self.call.read(), DEADLINE_S)
            assert msg is not aio.EOF, f"stream ended waiting for {kind}"
            if msg.WhichOneof("message") == kind:
                return msg

    def close(self) -> None:
        self.call.cancel()


def test_firing_opens_and_the_agent_is_asked(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (collector, stub, channel):
            agent = FakeAgent(channel, "web-1")
            await agent.connect()
            status, answer = await post(collector, fixture("node_down_firing.json"))
            assert status == 200 and answer["action"] == "opened" and answer["hosts"] == ["web-1"]
            command = (await agent.next("snapshot")).snapshot
            assert command.incident_id == answer["incident_id"] and command.profile == "default"
            inc = (await stub.GetIncident(ipb.GetIncidentRequest(id=answer["incident_id"]))).incident
            assert inc.title == "Node web-1 is down" and inc.severity == ipb.SEVERITY_P1
            assert inc.alert_group_key == '{}/{severity="critical"}:{alertname="NodeDown"}'
            assert inc.opened_by == "alertmanager"
            kinds = [e.kind for e in inc.timeline]
            assert kinds[0] == "opened" and "alerts_firing" in kinds and "request_sent" in kinds
            agent.close()

    asyncio.run(main())


def test_group_updates_and_resolution_over_http(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (collector, stub, channel):
            _, first = await post(collector, fixture("latency_two_hosts_firing.json"))
            agent = FakeAgent(channel, "api-3.prod.example.internal")
            await agent.connect()
            _, second = await post(collector, fixture("latency_three_hosts_firing.json"))
            assert second["incident_id"] == first["incident_id"]
            assert second["hosts_added"] == ["api-3.prod.example.internal"]
            assert (await agent.next("snapshot")).snapshot.incident_id == first["incident_id"]
            _, again = await post(collector, fixture("latency_three_hosts_firing.json"))
            assert again["action"] == "unchanged"
            _, resolved = await post(collector, fixture("latency_resolved.json"))
            assert resolved["action"] == "resolved_noted"
            [inc] = await incidents(stub)
            assert inc.state == ipb.INCIDENT_STATE_OPEN and len(inc.hosts) == 3
            kinds = [e.kind for e in inc.timeline if e.actor == "alertmanager"]
            assert kinds == ["opened", "alerts_firing", "host_added", "alerts_firing", "alerts_resolved"]
            agent.close()

            samples = (await exchange(collector, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))[2]
            text = samples.decode()
            for result, count in (("opened", 1), ("updated", 1), ("unchanged", 1), ("resolved", 1)):
                assert f'hostdiag_collector_alertmanager_notifications_total{{result="{result}"}} {count}' in text

    asyncio.run(main())


def test_refusals_change_nothing(tmp_path: Path) -> None:
    good = fixture("node_down_firing.json")

    async def main() -> None:
        async with running(tmp_path, alertmanager_max_body_bytes=4096) as (collector, stub, _):
            bad = orjson.loads(good)
            bad["alerts"][0]["startsAt"] = "not a time"
            status, answer = await post(collector, orjson.dumps(bad))
            assert status == 400 and answer["field"] == "alerts[0].startsAt"
            assert answer["error"].startswith("alerts[0].startsAt: expected an RFC 3339 time")

            status, answer = await post(collector, b'{"version": "4", "groupKey": ')
            assert status == 400 and answer["field"] == "body"

            status, headers, body = await exchange(collector, alertmanager_request(good, content_type="text/plain"))
            assert status == 415 and b"application/json" in body
            status, _, _ = await exchange(collector, alertmanager_request(good, content_type=""))
            assert status == 415

            padded = good + b" " * 5000
            status, _, body = await exchange(collector, alertmanager_request(padded))
            assert status == 413 and b"4096" in body

            status, headers, _ = await exchange(collector, alertmanager_request(b"", method="GET"))
            assert status == 405 and headers["allow"] == "POST"
            status, headers, _ = await exchange(collector, alertmanager_request(b"", method="PUT", length=0))
            assert status == 405

            no_length = alertmanager_request(good).replace(f"Content-Length: {len(good)}\r\n".encode(), b"")
            status, _, _ = await exchange(collector, no_length)
            assert status == 411
            chunked = alertmanager_request(b"0\r\n\r\n", extra="Transfer-Encoding: chunked\r\n")
            status, _, body = await exchange(collector, chunked)
            assert status == 400 and b"Content-Length" in body

            status, answer = await post(collector, fixture("watchdog_no_host_firing.json"))
            assert status == 422
            assert await incidents(stub) == []

    asyncio.run(main())


def test_keep_alive_serves_several_notifications(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (collector, stub, _):
            host, port = collector.http_address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                for name in ("latency_two_hosts_firing.json", "latency_three_hosts_firing.json"):
                    writer.write(alertmanager_request(fixture(name), close=False))
                    await writer.drain()
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
                    status, headers, _ = parse_response(head)
                    assert status == 200 and "connection" not in headers
                    await reader.readexactly(int(headers["content-length"]))
            finally:
                writer.close()
            [inc] = await incidents(stub)
            assert len(inc.hosts) == 3

    asyncio.run(main())


def test_disabled_endpoint_is_not_served(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, alertmanager_enabled=False) as (collector, stub, _):
            status, _, _ = await exchange(collector, alertmanager_request(b"", method="GET"))
            assert status == 404
            status, _, _ = await exchange(collector, alertmanager_request(fixture("node_down_firing.json")))
            assert status in (400, 404)
            assert await incidents(stub) == []

    asyncio.run(main())


def test_a_hand_opened_incident_is_not_updated_by_notifications(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (collector, stub, _):
            manual = (await stub.OpenIncident(ipb.OpenIncidentRequest(
                title="web-1 down", severity=ipb.SEVERITY_P1, selector=ipb.HostSelector(host_ids=["web-1"])))).incident
            assert manual.alert_group_key == ""
            _, answer = await post(collector, fixture("node_down_firing.json"))
            assert answer["action"] == "opened" and answer["incident_id"] != manual.id
            manual = (await stub.GetIncident(ipb.GetIncidentRequest(id=manual.id))).incident
            assert [e.kind for e in manual.timeline] == ["opened"]

    asyncio.run(main())
