"""The per-host snapshot rate limit in a real collector (grpc.aio on 127.0.0.1:0, SQLite, files).

An agent connects with the generated stubs; two incidents select it.  The agent
receives one SnapshotCommand, uploads one bundle for it, and both incidents end
up with that bundle.  (Incidents are opened on the collector's own incident
manager: the API's authentication is not what this test is about.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from grpc import aio

from hostdiag.agent.bundle import BundleWriter
from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.server import Collector
from hostdiag.collector.store.base import RequestStates
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)


@contextlib.asynccontextmanager
async def running(data_dir: Path, **overrides: Any) -> AsyncIterator[tuple[Collector, aio.Channel]]:
    section = CollectorSection(listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=str(data_dir), **overrides)
    collector = Collector(CollectorConfig(collector=section))
    await collector.start()
    channel = aio.insecure_channel(collector.grpc_address)
    try:
        yield collector, channel
    finally:
        await channel.close()
        await collector.stop(0.5)


async def next_command(call: Any, timeout_s: float = 10.0) -> apb.SnapshotCommand | None:
    """The next SnapshotCommand on the stream (heartbeats skipped), or None after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await call.read()
                if message.WhichOneof("message") == "snapshot":
                    return message.snapshot
    except TimeoutError:
        return None


def make_bundle(out_dir: Path, command: apb.SnapshotCommand) -> tuple[str, bytes]:
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = BundleWriter(str(out_dir), host_id="web-1", max_member_bytes=1 << 20, max_bundle_bytes=1 << 20)
    with writer:
        writer.write_json("host.json", {"host_id": "web-1"})
        info = writer.finish(
            {"trigger": "collector", "profile": command.profile, "request_id": command.request_id,
             "incident_id": command.incident_id},
            {"schema_version": 1, "host_id": "web-1"},
        )
    return info.bundle_id, Path(info.path).read_bytes()


async def upload(stub: Any, bundle_id: str, data: bytes, request_id: str) -> apb.UploadResponse:
    async def messages() -> AsyncIterator[apb.UploadRequest]:
        yield apb.UploadRequest(
            bundle_id=bundle_id, request_id=request_id, write_offset=0, data=data, finish_write=True,
            total_size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        )

    return await stub.Upload(messages())


def test_two_incidents_one_snapshot_one_bundle_attached_to_both(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data", snapshot_min_interval_s=60) as (collector, channel):
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Connect()
            await call.write(apb.ConnectRequest(hello=apb.Hello(
                host_id="web-1", labels={"role": "api"}, agent_version="t", profiles=["default"],
                max_window_seconds=600, boot_id="b",
            )))
            assert (await call.read()).WhichOneof("message") == "welcome"

            first = (await collector.incidents.open(title="API down", severity=1, selector_host_ids=["web-1"]))
            command = await next_command(call)
            assert command is not None and command.incident_id == first.incident.id
            await call.write(apb.ConnectRequest(ack=apb.SnapshotAck(request_id=command.request_id, accepted=True)))

            second = await collector.incidents.open(title="checkout slow", severity=2, selector_labels={"role": "api"})
            assert await next_command(call, timeout_s=0.5) is None, "the host is asked once"
            waiting = (await collector.incidents.get(second.incident.id)).requests[0]
            assert waiting.reason == f"coalesced with request {command.request_id} of incident {first.incident.id}"

            bundle_id, data = make_bundle(tmp_path / "agent", command)
            assert (await upload(stub, bundle_id, data, command.request_id)).complete
            for view in (await collector.incidents.get(first.incident.id), await collector.incidents.get(second.incident.id)):
                assert view.bundle_ids == [bundle_id]
                assert [(r.state, r.bundle_id) for r in view.requests] == [(RequestStates.ATTACHED, bundle_id)]
            kinds = [e.kind for e in (await collector.incidents.get(second.incident.id)).events]
            assert kinds == ["opened", "coalesced", "bundle_attached"]
            call.cancel()

    asyncio.run(main())


def test_the_default_config_coalesces_within_a_minute() -> None:
    assert CollectorSection().snapshot_min_interval_s == 60
