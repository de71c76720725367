"""A stopping collector says so before it goes: health watchers see NOT_SERVING and
/healthz answers 503 during the shutdown grace, so load balancers drain it first."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.server import Collector

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)
DEADLINE_S = 15.0


async def healthz(address: str) -> int:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), DEADLINE_S)
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1])


def test_health_goes_not_serving_and_healthz_503_while_draining(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = CollectorConfig(collector=CollectorSection(
            listen="127.0.0.1:0", http_listen="127.0.0.1:0", auth="none", data_dir=str(tmp_path / "c")))
        collector = Collector(cfg)
        await collector.start()
        stopping: asyncio.Task[None] | None = None
        try:
            assert await healthz(collector.http_address) == 200
            async with aio.insecure_channel(collector.grpc_address) as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
                first = await asyncio.wait_for(watch.read(), DEADLINE_S)
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                # The open Watch stream keeps the gRPC server in its grace period.
                stopping = asyncio.create_task(collector.stop(grace_s=5.0))
                update = await asyncio.wait_for(watch.read(), DEADLINE_S)
                assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
                assert await healthz(collector.http_address) == 503
                watch.cancel()
            await asyncio.wait_for(stopping, DEADLINE_S)
        finally:
            if stopping is None:
                await collector.stop(0.5)

    asyncio.run(scenario())
