"""Retention: old or surplus bundle blobs of resolved incidents are deleted, rows and history kept."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path

import grpc
from grpc import aio

from hostdiag.agent.bundle import BundleWriter
from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.metrics import Registry
from hostdiag.collector.retention import Retention
from hostdiag.collector.server import Collector
from hostdiag.collector.store.base import BundleRecord, HostRequestRecord, IncidentRecord
from hostdiag.collector.store.blobs import FileBlobStore
from hostdiag.collector.store.sqlite import SqliteMetadataStore
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc, bundle_pb2, bundle_pb2_grpc

DAY_MS = 86_400_000
NOW_MS = 1_800_000_000_000


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def run_with_store(tmp_path, body) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(str(tmp_path / "collector.db"))
        await store.open()
        try:
            await body((store, FileBlobStore(str(tmp_path / "blobs"))))
        finally:
            await store.close()

    asyncio.run(main())


async def incident(store, incident_id: str, state: str) -> None:
    await store.create_incident(
        IncidentRecord(id=incident_id, title="t", severity=2, service="api", state=state, selector_labels={},
                       selector_host_ids=("web-1",), window_s=60, profile="default", opened_at_ms=NOW_MS - 90 * DAY_MS),
        [], [],
    )


async def bundle(store, blobs, incident_id: str, received_at_ms: int, size: int, request_for: str = "") -> BundleRecord:
    data = os.urandom(size)
    digest = blobs.write_bytes_sync(data)
    b = BundleRecord(bundle_id=str(uuid.uuid4()), host_id="web-1", size_bytes=size, sha256=digest,
                     received_at_ms=received_at_ms, manifest_json="{}", incident_id=incident_id)
    requests = []
    if request_for:  # the same bundle shared with another incident (a coalesced request)
        requests = [HostRequestRecord(request_id=str(uuid.uuid4()), incident_id=request_for, host_id="web-1",
                                      state="attached", created_at_ms=received_at_ms, updated_at_ms=received_at_ms,
                                      expires_at_ms=received_at_ms, bundle_id=b.bundle_id)]
        await store.add_requests(requests, [])
    assert await store.publish_bundle(b, [], [])
    return b


def retention(store, blobs, clock, *, days: float = 30, max_bytes: int = 0) -> tuple[Retention, Registry]:
    reg = Registry()
    r = Retention(store, blobs, retention_days=days, max_bytes=max_bytes, clock=clock,
                  expired_bundles=reg.counter("b_total", "b"), expired_bytes=reg.counter("y_total", "y"))
    return r, reg


def test_old_bundles_of_resolved_incidents_expire_open_ones_never(tmp_path) -> None:
    run_with_store(tmp_path, _test_old_bundles_of_resolved_incidents_expire_open_ones_never)


async def _test_old_bundles_of_resolved_incidents_expire_open_ones_never(env) -> None:
    store, blobs = env
    await incident(store, "inc-resolved", "resolved")
    await incident(store, "inc-open", "open")
    await incident(store, "inc-ack", "acknowledged")
    old_resolved = await bundle(store, blobs, "inc-resolved", NOW_MS - 40 * DAY_MS, 100)
    new_resolved = await bundle(store, blobs, "inc-resolved", NOW_MS - 1 * DAY_MS, 100)
    old_open = await bundle(store, blobs, "inc-open", NOW_MS - 60 * DAY_MS, 100)
    old_ack = await bundle(store, blobs, "inc-ack", NOW_MS - 60 * DAY_MS, 100)
    # Attached to a resolved incident but shared with an open one: held.
    shared = await bundle(store, blobs, "inc-resolved", NOW_MS - 50 * DAY_MS, 100, request_for="inc-open")
    clock = Clock(NOW_MS)
    r, reg = retention(store, blobs, clock)

    result = await r.run_once()

    assert result.expired_bundles == 1 and result.expired_bytes == 100
    row = await store.get_bundle(old_resolved.bundle_id)
    assert row is not None and row.expired_at_ms == NOW_MS  # metadata kept, marked with the time
    assert not await blobs.exists(old_resolved.sha256)
    for kept in (new_resolved, old_open, old_ack, shared):
        assert (await store.get_bundle(kept.bundle_id)).expired_at_ms == 0
        assert await blobs.exists(kept.sha256)
    events = [e for e in await store.list_events("inc-resolved") if e.kind == "bundle_expired"]
    assert [e.message.split(" (")[0] for e in events] == [f"bundle {old_resolved.bundle_id} expired by retention"]
    assert reg.get("b_total").value() == 1 and reg.get("y_total").value() == 100

    # Open incidents hold their bundles however much time passes; a second pass changes nothing.
    clock.ms += 365 * DAY_MS
    again = await r.run_once()
    assert again.expired_bundles == 1  # new_resolved now too old
    assert (await store.get_bundle(new_resolved.bundle_id)).expired_at_ms == clock.ms
    for held in (old_open, old_ack, shared):
        assert await blobs.exists(held.sha256)
    assert (await r.run_once()).expired_bundles == 0


def test_byte_bound_evicts_oldest_unheld_first(tmp_path) -> None:
    run_with_store(tmp_path, _test_byte_bound_evicts_oldest_unheld_first)


async def _test_byte_bound_evicts_oldest_unheld_first(env) -> None:
    store, blobs = env
    await incident(store, "inc-r", "resolved")
    await incident(store, "inc-o", "open")
    b1 = await bundle(store, blobs, "inc-r", NOW_MS - 5 * DAY_MS, 300)
    held = await bundle(store, blobs, "inc-o", NOW_MS - 4 * DAY_MS, 300)
    b2 = await bundle(store, blobs, "inc-r", NOW_MS - 3 * DAY_MS, 300)
    b3 = await bundle(store, blobs, "inc-r", NOW_MS - 2 * DAY_MS, 300)
    r, _reg = retention(store, blobs, Clock(NOW_MS), days=0, max_bytes=700)

    result = await r.run_once()

    # 1200 bytes kept, bound 700: b1 then b2 go (the held bundle is skipped, never evicted).
    assert result.expired_bundles == 2 and result.kept_bytes == 600
    assert (await store.get_bundle(b1.bundle_id)).expired_at_ms and (await store.get_bundle(b2.bundle_id)).expired_at_ms
    assert (await store.get_bundle(b3.bundle_id)).expired_at_ms == 0
    assert await blobs.exists(held.sha256) and await blobs.exists(b3.sha256)
    assert not await blobs.exists(b1.sha256)


def test_no_bounds_keeps_everything(tmp_path) -> None:
    run_with_store(tmp_path, _test_no_bounds_keeps_everything)


async def _test_no_bounds_keeps_everything(env) -> None:
    store, blobs = env
    await incident(store, "inc-r", "resolved")
    b = await bundle(store, blobs, "inc-r", NOW_MS - 900 * DAY_MS, 10)
    r, _ = retention(store, blobs, Clock(NOW_MS), days=0, max_bytes=0)
    assert (await r.run_once()).expired_bundles == 0
    assert await blobs.exists(b.sha256)


def test_an_expired_bundle_through_the_real_collector(tmp_path) -> None:
    """Retention in a running collector: 410 on HTTP, FAILED_PRECONDITION on gRPC, listed as expired, counted."""
    out = tmp_path / "agent"
    out.mkdir()
    writer = BundleWriter(str(out), host_id="web-1", max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        with writer.open("filler.bin") as member:
            member.write(os.urandom(4096))
        info = writer.finish({"trigger": "agentctl"}, {"schema_version": 1})
    data = Path(info.path).read_bytes()
    clock = Clock(NOW_MS)

    async def http_status(address: str, path: str) -> int:
        host, port = address.rsplit(":", 1)
        reader, w = await asyncio.open_connection(host, int(port))
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await w.drain()
        head = await asyncio.wait_for(reader.read(), 15)
        w.close()
        return int(head.split(b" ", 2)[1])

    async def main() -> None:
        cfg = CollectorConfig(collector=CollectorSection(
            listen="127.0.0.1:0", http_listen="127.0.0.1:0", auth="none", data_dir=str(tmp_path / "data")))
        collector = Collector(cfg, clock=clock)
        await collector.start()
        try:
            async def upload():
                yield apb.UploadRequest(bundle_id=info.bundle_id, write_offset=0, data=data, finish_write=True,
                                        total_size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

            async with aio.insecure_channel(collector.grpc_address) as ch:
                assert (await agent_pb2_grpc.AgentServiceStub(ch).Upload(upload())).complete
                path = f"/api/v1/bundles/{info.bundle_id}"
                assert await http_status(collector.http_address, path) == 200

                clock.ms += 31 * DAY_MS
                assert (await collector.retention.run_once()).expired_bundles == 1

                assert await http_status(collector.http_address, path) == 410
                stub = bundle_pb2_grpc.BundleServiceStub(ch)
                call = stub.DownloadBundle(bundle_pb2.DownloadBundleRequest(bundle_id=info.bundle_id))
                try:
                    async for _ in call:
                        raise AssertionError("an expired bundle sent bytes")
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                    assert "expired by retention" in exc.details()
                [listed] = (await stub.ListBundles(bundle_pb2.ListBundlesRequest())).bundles
                assert listed.expired_at_unix_ms == clock.ms
                metrics = (await collector.render_metrics()).splitlines()
                assert "hostdiag_collector_bundles_expired_total 1" in metrics
                assert f"hostdiag_collector_bundle_bytes_expired_total {len(data)}" in metrics
        finally:
            await collector.stop(0.5)

    asyncio.run(main())
