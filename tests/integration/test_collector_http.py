"""The collector's HTTP listener over a real socket: bundle downloads with Range,
/healthz, /metrics, and the strict request rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from hostdiag.agent.bundle import BundleWriter
from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.server import Collector
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc

KiB = 1024
DEADLINE_S = 15.0

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)


@contextlib.asynccontextmanager
async def running(data_dir: Path, **overrides: Any) -> AsyncIterator[Collector]:
    cfg = CollectorConfig(collector=CollectorSection(
        listen="127.0.0.1:0", http_listen="127.0.0.1:0", auth="none", data_dir=str(data_dir), **overrides))
    collector = Collector(cfg)
    await collector.start()
    try:
        yield collector
    finally:
        await collector.stop(0.5)


async def http(collector: Collector, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request (the server closes after it) and parse the response."""
    host, port = collector.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), DEADLINE_S)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


async def get(collector: Collector, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return await http(collector, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())


async def store_bundle(collector: Collector, tmp_path: Path, filler_bytes: int = 200 * KiB) -> tuple[str, bytes]:
    out = tmp_path / "agent"
    out.mkdir(exist_ok=True)
    writer = BundleWriter(str(out), host_id="web-1", max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        with writer.open("filler.bin") as member:
            member.write(hashlib.shake_256(os.urandom(8)).digest(filler_bytes))
        info = writer.finish({"trigger": "agentctl"}, {"schema_version": 1})
    data = Path(info.path).read_bytes()

    async def gen() -> AsyncIterator[apb.UploadRequest]:
        offset = 0
        while offset < len(data):
            piece = data[offset: offset + 64 * KiB]
            last = offset + len(piece) >= len(data)
            yield apb.UploadRequest(
                bundle_id=info.bundle_id, write_offset=offset, data=piece, finish_write=last,
                total_size_bytes=len(data) if last else 0,
                sha256=hashlib.sha256(data).hexdigest() if last else "",
            )
            offset += len(piece)

    async with aio.insecure_channel(collector.grpc_address) as channel:
        resp = await agent_pb2_grpc.AgentServiceStub(channel).Upload(gen())
        assert resp.complete
    return info.bundle_id, data


def test_bundle_download_with_ranges(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            bundle_id, data = await store_bundle(c, tmp_path)
            size = len(data)
            sha = hashlib.sha256(data).hexdigest()
            path = f"/api/v1/bundles/{bundle_id}"

            status, h, body = await get(c, path)
            assert status == 200 and body == data
            assert h["content-type"] == "application/zstd"
            assert h["content-length"] == str(size)
            assert h["etag"] == f'"{sha}"'
            assert h["accept-ranges"] == "bytes"
            assert h["content-disposition"].startswith('attachment; filename="web-1-')
            assert h["content-disposition"].endswith(f'{bundle_id.replace("-", "")[-8:]}.tar.zst"')

            status, h, body = await get(c, path, Range="bytes=100-199")
            assert (status, body, h["content-range"]) == (206, data[100:200], f"bytes 100-199/{size}")
            status, h, body = await get(c, path, Range=f"bytes={size - 10}-")
            assert (status, body, h["content-range"]) == (206, data[-10:], f"bytes {size - 10}-{size - 1}/{size}")
            status, h, body = await get(c, path, Range="bytes=-500")
            assert (status, body) == (206, data[-500:])
            status, h, body = await get(c, path, Range=f"bytes={size}-")
            assert status == 416 and h["content-range"] == f"bytes */{size}"
            status, h, body = await get(c, path, Range="bytes=5-1")  # malformed: ignored
            assert status == 200 and body == data
            status, h, body = await get(c, path, Range="bytes=0-9", If_Range='"other"')
            assert status == 200 and body == data

            status, h, body = await get(c, path, method="HEAD")
            assert status == 200 and body == b"" and h["content-length"] == str(size)
            status, h, body = await get(c, path, If_None_Match=f'"{sha}"')
            assert status == 304 and body == b""

            status, _, body = await get(c, "/api/v1/bundles/0190a5f4-5b8e-7cc0-8d1e-1234567890ab")
            assert status == 404 and b"no bundle" in body
            status, _, _ = await get(c, "/api/v1/bundles/../../etc/passwd")
            assert status == 404

    asyncio.run(main())


def test_keep_alive_serves_several_requests_on_one_connection(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            bundle_id, data = await store_bundle(c, tmp_path, filler_bytes=1000)
            host, port = c.http_address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            for _ in range(2):
                writer.write(f"GET /api/v1/bundles/{bundle_id} HTTP/1.1\r\nRange: bytes=0-3\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
                assert head.startswith(b"HTTP/1.1 206 ")
                assert await reader.readexactly(4) == data[:4]
            writer.close()

    asyncio.run(main())


def test_healthz_metrics_and_strictness(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data", http_header_bytes=2048) as c:
            status, h, body = await get(c, "/healthz")
            assert (status, body) == (200, b"ok\n")
            bundle_id, data = await store_bundle(c, tmp_path)
            async with aio.insecure_channel(c.grpc_address) as channel:
                stub = agent_pb2_grpc.AgentServiceStub(channel)

                async def bad() -> AsyncIterator[apb.UploadRequest]:
                    yield apb.UploadRequest(bundle_id="nope")

                try:
                    await stub.Upload(bad())
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            status, h, body = await get(c, "/metrics")
            assert status == 200 and h["content-type"].startswith("text/plain; version=0.0.4")
            lines = body.decode().splitlines()
            assert "hostdiag_collector_bundles_received_total 1" in lines
            assert f"hostdiag_collector_bundle_bytes_received_total {len(data)}" in lines
            assert 'hostdiag_collector_upload_rejections_total{reason="invalid_bundle_id"} 1' in lines
            assert "hostdiag_collector_agents_connected 0" in lines
            assert 'hostdiag_collector_incidents{state="open",severity="P1"} 0' in lines
            assert 'hostdiag_collector_snapshot_requests{state="requested"} 0' in lines

            status, h, _ = await get(c, "/metrics", method="POST")
            assert status == 405 and h["allow"] == "GET, HEAD"
            status, _, body = await get(c, "/nowhere")
            assert status == 404
            status, _, _ = await http(c, b"GET / HTTP/2.0\r\n\r\n")
            assert status == 505
            status, _, body = await http(c, b"GARBAGE\r\n\r\n")
            assert status == 400 and b"request line" in body
            status, _, _ = await http(c, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
            assert status == 431

    asyncio.run(main())


def test_healthz_turns_503_while_shutting_down(tmp_path: Path) -> None:
    async def main() -> None:
        collector_cm = running(tmp_path / "data")
        c = await collector_cm.__aenter__()
        try:
            bundle_id = "0190a5f4-5b8e-7cc0-8d1e-1234567890ab"
            stall = asyncio.Event()

            async def stalls() -> AsyncIterator[apb.UploadRequest]:
                yield apb.UploadRequest(bundle_id=bundle_id, data=b"partial")
                await stall.wait()

            async with aio.insecure_channel(c.grpc_address) as channel:
                stub = agent_pb2_grpc.AgentServiceStub(channel)
                call = stub.Upload(stalls())
                deadline = time.monotonic() + DEADLINE_S
                while (await stub.QueryUpload(apb.QueryUploadRequest(bundle_id=bundle_id))).committed_size_bytes != 7:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                stopping = asyncio.create_task(c.stop(10))  # the open upload holds the grace period
                deadline = time.monotonic() + DEADLINE_S
                while True:
                    status, _, body = await get(c, "/healthz")
                    if status == 503:
                        break
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                assert body == b"shutting down\n"
                stall.set()
                call.cancel()
                await stopping
        finally:
            await collector_cm.__aexit__(None, None, None)

    asyncio.run(main())
