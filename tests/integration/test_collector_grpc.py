"""The collector's gRPC services end to end: a real grpc.aio server on 127.0.0.1:0,
real SQLite and real files, and a fake agent written here with the generated
stubs (a real client against the real server).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import zstandard
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hostdiag.agent.bundle import BundleWriter
from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.server import Collector
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc
from hostdiag.v1 import bundle_pb2 as bpb
from hostdiag.v1 import bundle_pb2_grpc
from hostdiag.v1 import fleet_pb2 as fpb
from hostdiag.v1 import fleet_pb2_grpc
from hostdiag.v1 import incident_pb2 as ipb
from hostdiag.v1 import incident_pb2_grpc

KiB = 1024
DEADLINE_S = 15.0

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)  # rejections are provoked on purpose


# -- helpers ------------------------------------------------------------------------------------


async def eventually(predicate: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Await ``predicate()`` (sync or async) until truthy, or fail after ``timeout_s``."""
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


class FakeClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def config(data_dir: Path, **overrides: Any) -> CollectorConfig:
    return CollectorConfig(
        collector=CollectorSection(listen="127.0.0.1:0", http_listen="127.0.0.1:0", auth="none", data_dir=str(data_dir),
                                   **overrides)
    )


@contextlib.asynccontextmanager
async def running(data_dir: Path, clock: Callable[[], float] = time.time, **overrides: Any) -> AsyncIterator[Any]:
    collector = Collector(config(data_dir, **overrides), clock=clock)
    await collector.start()
    channel = aio.insecure_channel(collector.grpc_address)
    try:
        yield Client(collector, channel)
    finally:
        await channel.close()
        await collector.stop(0.5)


class Client:
    def __init__(self, collector: Collector, channel: aio.Channel) -> None:
        self.collector = collector
        self.channel = channel
        self.agents = agent_pb2_grpc.AgentServiceStub(channel)
        self.incidents = incident_pb2_grpc.IncidentServiceStub(channel)
        self.bundles = bundle_pb2_grpc.BundleServiceStub(channel)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(channel)

    async def open_incident(self, **kw: Any) -> ipb.Incident:
        labels = kw.pop("labels", {})
        host_ids = kw.pop("host_ids", [])
        req = ipb.OpenIncidentRequest(
            title=kw.pop("title", "checkout API down"),
            severity=kw.pop("severity", ipb.SEVERITY_P1),
            selector=ipb.HostSelector(labels=labels, host_ids=host_ids),
            **kw,
        )
        return (await self.incidents.OpenIncident(req, metadata=(("hostdiag-actor", "alice"),))).incident

    async def incident(self, incident_id: str) -> ipb.Incident:
        return (await self.incidents.GetIncident(ipb.GetIncidentRequest(id=incident_id))).incident


class FakeAgent:
    """An agent's control stream, driven by the test."""

    def __init__(self, channel: aio.Channel, host_id: str, profiles: tuple[str, ...] = ("default",),
                 **labels: str) -> None:
        self.stub = agent_pb2_grpc.AgentServiceStub(channel)
        self.host_id = host_id
        self.labels = labels
        self.profiles = profiles
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.call: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> apb.Welcome:
        self.call = self.stub.Connect()
        await self.call.write(apb.ConnectRequest(hello=apb.Hello(
            host_id=self.host_id, labels=self.labels, agent_version="0.1.0", profiles=list(self.profiles),
            max_window_seconds=900, boot_id="boot-1",
        )))
        self._reader = asyncio.create_task(self._read())
        welcome = await self.next("welcome")
        return welcome.welcome

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is aio.EOF:
                    break
                await self.inbox.put(msg)
        except grpc.RpcError as exc:
            await self.inbox.put(exc)
            return
        await self.inbox.put(None)

    async def next(self, kind: str, timeout_s: float = DEADLINE_S) -> Any:
        """The next message of ``kind`` (skipping heartbeats unless asked for)."""
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), timeout_s)
            if msg is None or isinstance(msg, grpc.RpcError):
                raise AssertionError(f"stream ended while waiting for {kind}: {msg!r}")
            if msg.WhichOneof("message") == kind:
                return msg

    async def ended(self, timeout_s: float = DEADLINE_S) -> Any:
        """How the stream ended: an RpcError, or None for OK."""
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), timeout_s)
            if msg is None or isinstance(msg, grpc.RpcError):
                return msg

    async def send(self, **kw: Any) -> None:
        await self.call.write(apb.ConnectRequest(**kw))

    async def close(self) -> None:
        if self.call is not None:
            with contextlib.suppress(Exception):
                await self.call.done_writing()
            self.call.cancel()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader


def make_bundle(out_dir: Path, host_id: str, filler_bytes: int = 300 * KiB, **manifest: Any) -> tuple[str, bytes]:
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = BundleWriter(str(out_dir), host_id=host_id, max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        with writer.open("filler.bin") as member:
            member.write(hashlib.shake_256(host_id.encode() + os.urandom(8)).digest(filler_bytes))
        info = writer.finish({"trigger": "collector", "profile": "default", **manifest},
                             {"schema_version": 1, "host_id": host_id})
    return info.bundle_id, Path(info.path).read_bytes()


def manifest_bytes(bundle: bytes) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bundle)) as plain:
        with tarfile.open(fileobj=plain, mode="r|") as tar:
            member = tar.next()
            assert member is not None and member.name == "manifest.json"
            fh = tar.extractfile(member)
            assert fh is not None
            return fh.read()


def chunks(bundle_id: str, data: bytes, chunk: int = 64 * KiB, start: int = 0, finish: bool = True,
           sha256: str | None = None, **first: str) -> list[apb.UploadRequest]:
    out = []
    offset = start
    while offset < len(data):
        piece = data[offset: offset + chunk]
        out.append(apb.UploadRequest(bundle_id=bundle_id, write_offset=offset, data=piece,
                                     **(first if not out else {})))
        offset += len(piece)
    if finish:
        if not out:
            out.append(apb.UploadRequest(bundle_id=bundle_id, write_offset=offset))
        out[-1].finish_write = True
        out[-1].total_size_bytes = len(data)
        out[-1].sha256 = sha256 or hashlib.sha256(data).hexdigest()
    return out


async def upload(stub: Any, msgs: list[apb.UploadRequest]) -> apb.UploadResponse:
    async def gen() -> AsyncIterator[apb.UploadRequest]:
        for m in msgs:
            yield m

    return await stub.Upload(gen())


async def download(client: Client, bundle_id: str, offset: int = 0) -> bytes:
    out = bytearray()
    async for piece in client.bundles.DownloadBundle(bpb.DownloadBundleRequest(bundle_id=bundle_id, offset=offset)):
        assert piece.offset == offset + len(out)
        assert len(piece.data) <= 1024 * 1024
        out += piece.data
    return bytes(out)


async def status_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        await call
    return info.value.code()


def run(coro: Any) -> None:
    asyncio.run(coro)


# -- scenarios ----------------------------------------------------------------------------------


def test_incident_snapshot_upload_and_attachment(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            agent = FakeAgent(c.channel, "web-1", role="api", dc="a")
            welcome = await agent.connect()
            assert welcome.heartbeat_interval_seconds == 15 and welcome.session_id
            listed = await c.fleet.ListAgents(fpb.ListAgentsRequest())
            assert [(a.host_id, a.connected, dict(a.labels)) for a in listed.agents] == [
                ("web-1", True, {"role": "api", "dc": "a"})
            ]
            assert list(listed.agents[0].profiles) == ["default"]

            inc = await c.open_incident(labels={"role": "api"}, window_seconds=120, service="checkout")
            assert inc.id.startswith("inc-") and inc.opened_by == "alice"
            assert [h.host_id for h in inc.hosts] == ["web-1"]
            cmd = (await agent.next("snapshot")).snapshot
            assert (cmd.incident_id, cmd.profile, cmd.window_seconds) == (inc.id, "default", 120)
            assert cmd.request_id == inc.hosts[0].request_id

            await agent.send(ack=apb.SnapshotAck(request_id=cmd.request_id, accepted=True))
            bundle_id, data = make_bundle(tmp_path / "agent", "web-1", request_id=cmd.request_id,
                                          incident_id=inc.id)
            await agent.send(progress=apb.SnapshotProgress(request_id=cmd.request_id, stage="uploading",
                                                           bundle_id=bundle_id))
            await eventually(
                lambda: _host_state(c, inc.id, ipb.HOST_REQUEST_STATE_UPLOADING), "request uploading"
            )
            resp = await upload(c.agents, chunks(bundle_id, data, request_id=cmd.request_id, incident_id=inc.id))
            assert (resp.bundle_id, resp.committed_size_bytes, resp.complete) == (bundle_id, len(data), True)
            await agent.send(result=apb.SnapshotResult(request_id=cmd.request_id, ok=True, bundle_id=bundle_id))

            got = await eventually(lambda: _host_state(c, inc.id, ipb.HOST_REQUEST_STATE_ATTACHED), "attached")
            assert list(got.bundle_ids) == [bundle_id]
            assert got.hosts[0].bundle_id == bundle_id
            kinds = [e.kind for e in got.timeline]
            for kind in ("opened", "request_sent", "acknowledged", "progress", "bundle_attached"):
                assert kind in kinds
            assert all(e.at_unix_ms > 0 for e in got.timeline)

            meta = await c.bundles.GetBundle(bpb.GetBundleRequest(bundle_id=bundle_id))
            assert meta.manifest_json.encode() == manifest_bytes(data)  # verbatim
            b = meta.bundle
            assert (b.host_id, b.incident_id, b.request_id, b.size_bytes) == (
                "web-1", inc.id, cmd.request_id, len(data))
            assert b.sha256 == hashlib.sha256(data).hexdigest() and b.profile == "default"
            listed_b = await c.bundles.ListBundles(bpb.ListBundlesRequest(incident_id=inc.id))
            assert [x.bundle_id for x in listed_b.bundles] == [bundle_id]
            assert await download(c, bundle_id) == data
            assert await download(c, bundle_id, 1000) == data[1000:]
            assert await download(c, bundle_id, len(data)) == b""
            await agent.close()

    run(main())


async def _host_state(c: Client, incident_id: str, state: int) -> Any:
    inc = await c.incident(incident_id)
    return inc if inc.hosts and all(h.state == state for h in inc.hosts) else None


def test_resume_after_a_broken_upload(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            bundle_id, data = make_bundle(tmp_path / "agent", "web-1", filler_bytes=600 * KiB)
            msgs = chunks(bundle_id, data, 64 * KiB)
            stall = asyncio.Event()

            async def breaks() -> AsyncIterator[apb.UploadRequest]:
                for m in msgs[:3]:
                    yield m
                await stall.wait()

            call = c.agents.Upload(breaks())
            await eventually(
                lambda: _committed(c, bundle_id, 3 * 64 * KiB), "three chunks committed"
            )
            call.cancel()  # the network drops
            q = await c.agents.QueryUpload(apb.QueryUploadRequest(bundle_id=bundle_id))
            assert (q.committed_size_bytes, q.complete) == (3 * 64 * KiB, False)
            resp = await upload(c.agents, chunks(bundle_id, data, 64 * KiB, start=q.committed_size_bytes))
            assert resp.complete
            assert await download(c, bundle_id) == data

    run(main())


async def _committed(c: Client, bundle_id: str, size: int) -> bool:
    q = await c.agents.QueryUpload(apb.QueryUploadRequest(bundle_id=bundle_id))
    return q.committed_size_bytes == size


def test_collector_restart_mid_upload_resumes(tmp_path: Path) -> None:
    async def main() -> None:
        bundle_id, data = make_bundle(tmp_path / "agent", "web-1", filler_bytes=600 * KiB)
        msgs = chunks(bundle_id, data, 64 * KiB)
        stall = asyncio.Event()
        async with running(tmp_path / "data") as c:
            async def stalls() -> AsyncIterator[apb.UploadRequest]:
                for m in msgs[:4]:
                    yield m
                await stall.wait()

            call = c.agents.Upload(stalls())
            await eventually(lambda: _committed(c, bundle_id, 4 * 64 * KiB), "four chunks committed")
            await c.collector.stop(0)  # stop with the stream open
            assert await status_of(call) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        stall.set()
        async with running(tmp_path / "data") as c:  # a new server (new port) on the same data dir
            q = await c.agents.QueryUpload(apb.QueryUploadRequest(bundle_id=bundle_id))
            assert (q.committed_size_bytes, q.complete) == (4 * 64 * KiB, False)
            resp = await upload(c.agents, chunks(bundle_id, data, 64 * KiB, start=q.committed_size_bytes))
            assert (resp.committed_size_bytes, resp.complete) == (len(data), True)
            assert await download(c, bundle_id) == data
            q = await c.agents.QueryUpload(apb.QueryUploadRequest(bundle_id=bundle_id))
            assert (q.committed_size_bytes, q.complete) == (len(data), True)
        async with running(tmp_path / "data") as c:  # and it is still there after another restart
            assert await download(c, bundle_id) == data

    run(main())


def test_reupload_is_idempotent(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            bundle_id, data = make_bundle(tmp_path / "agent", "web-1")
            first = await upload(c.agents, chunks(bundle_id, data))
            second = await upload(c.agents, chunks(bundle_id, data))
            assert first.complete and second.complete
            assert second.committed_size_bytes == len(data)
            listed = await c.bundles.ListBundles(bpb.ListBundlesRequest(host_id="web-1"))
            assert [b.bundle_id for b in listed.bundles] == [bundle_id]

    run(main())


def test_upload_rejections_carry_precise_statuses(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            bundle_id, data = make_bundle(tmp_path / "agent", "web-1")
            bad_sha = chunks(bundle_id, data, sha256="0" * 64)
            with pytest.raises(grpc.RpcError) as info:
                await upload(c.agents, bad_sha)
            assert info.value.code() == grpc.StatusCode.DATA_LOSS

            gap = chunks(bundle_id, data)
            gap[1].write_offset += 10
            with pytest.raises(grpc.RpcError) as info:
                await upload(c.agents, gap)
            assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
            assert f"expected {64 * KiB}" in (info.value.details() or "")

            with pytest.raises(grpc.RpcError) as info:
                await upload(c.agents, [apb.UploadRequest(bundle_id="nope", data=b"x")])
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (info.value.details() or "").startswith("bundle_id:")

            big = [apb.UploadRequest(bundle_id=bundle_id, write_offset=64 * KiB, data=b"\0" * (1024 * KiB + 1))]
            with pytest.raises(grpc.RpcError) as info:
                await upload(c.agents, big)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            with pytest.raises(grpc.RpcError) as info:
                await c.agents.QueryUpload(apb.QueryUploadRequest(bundle_id="../x"))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            # After all that, a correct upload of the same bundle resumes from what was committed.
            q = await c.agents.QueryUpload(apb.QueryUploadRequest(bundle_id=bundle_id))
            resp = await upload(c.agents, chunks(bundle_id, data, start=q.committed_size_bytes))
            assert resp.complete and await download(c, bundle_id) == data

    run(main())


def test_connect_must_start_with_hello(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            call = c.agents.Connect()
            await call.write(apb.ConnectRequest(heartbeat=apb.Heartbeat(sent_at_unix_ms=1)))
            assert await status_of(call.read()) == grpc.StatusCode.INVALID_ARGUMENT
            assert "Hello" in (await call.details())
            call = c.agents.Connect()
            await call.write(apb.ConnectRequest(hello=apb.Hello(host_id="bad host id")))
            assert await status_of(call.read()) == grpc.StatusCode.INVALID_ARGUMENT
            assert (await call.details()).startswith("hello.host_id")

    run(main())


def test_second_connect_for_a_host_replaces_the_first(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            old = FakeAgent(c.channel, "web-1")
            first = await old.connect()
            new = FakeAgent(c.channel, "web-1")
            second = await new.connect()
            assert first.session_id != second.session_id
            ended = await old.ended()
            assert isinstance(ended, grpc.RpcError) and ended.code() == grpc.StatusCode.ABORTED
            listed = await c.fleet.ListAgents(fpb.ListAgentsRequest())
            assert [a.host_id for a in listed.agents] == ["web-1"]
            inc = await c.open_incident(host_ids=["web-1"])
            assert (await new.next("snapshot")).snapshot.incident_id == inc.id
            await new.close()
            await old.close()

    run(main())


def test_agent_connecting_after_the_incident_opened_gets_the_request(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            named = await c.open_incident(host_ids=["web-late"])
            by_label = await c.open_incident(labels={"role": "db"})
            assert len(by_label.hosts) == 0
            late = FakeAgent(c.channel, "web-late")
            await late.connect()
            assert (await late.next("snapshot")).snapshot.incident_id == named.id
            fresh = FakeAgent(c.channel, "db-7", role="db")
            await fresh.connect()
            cmd = (await fresh.next("snapshot")).snapshot
            assert cmd.incident_id == by_label.id
            inc = await c.incident(by_label.id)
            assert [(h.host_id, h.request_id) for h in inc.hosts] == [("db-7", cmd.request_id)]
            await late.close()
            await fresh.close()

    run(main())


def test_unknown_profile_fails_with_the_agents_profiles(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            agent = FakeAgent(c.channel, "web-1", profiles=("default", "db"))
            await agent.connect()
            inc = await c.open_incident(host_ids=["web-1"], profile="network")
            got = await eventually(lambda: _host_state(c, inc.id, ipb.HOST_REQUEST_STATE_FAILED), "failed")
            assert "unknown profile 'network'" in got.hosts[0].reason
            await agent.close()

    run(main())


def test_requests_expire_after_the_ttl(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        async with running(tmp_path / "data", clock=clock, request_ttl_s=60, expiry_check_interval_s=0.05) as c:
            inc = await c.open_incident(host_ids=["never-connects"])
            assert inc.hosts[0].expires_at_unix_ms == inc.opened_at_unix_ms + 60_000
            clock.offset = 61
            got = await eventually(lambda: _host_state(c, inc.id, ipb.HOST_REQUEST_STATE_EXPIRED), "expired")
            assert "expired" in [e.kind for e in got.timeline]
            late = FakeAgent(c.channel, "never-connects")
            await late.connect()
            # Commands are queued in order: the expired request was not queued when the agent
            # connected, so the first command it sees is for an incident opened afterwards.
            second = await c.open_incident(host_ids=["never-connects"])
            assert (await late.next("snapshot")).snapshot.incident_id == second.id
            assert "request_sent" not in [e.kind for e in (await c.incident(inc.id)).timeline]
            await late.close()

    run(main())


def test_heartbeats_flow_and_disconnected_agents_are_listed(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data", heartbeat_interval_s=1) as c:
            agent = FakeAgent(c.channel, "web-1", role="api")
            welcome = await agent.connect()
            assert welcome.heartbeat_interval_seconds == 1
            beat = await agent.next("heartbeat", timeout_s=5)
            assert beat.heartbeat.sent_at_unix_ms > 0
            await agent.send(heartbeat=apb.Heartbeat(sent_at_unix_ms=int(time.time() * 1000)))
            await agent.close()
            await eventually(
                lambda: _agents(c, False, []), "agent gone from the connected list"
            )
            everyone = await c.fleet.ListAgents(fpb.ListAgentsRequest(include_disconnected=True))
            assert [(a.host_id, a.connected, dict(a.labels)) for a in everyone.agents] == [
                ("web-1", False, {"role": "api"})
            ]

    run(main())


async def _agents(c: Client, include: bool, expected: list[str]) -> bool:
    got = await c.fleet.ListAgents(fpb.ListAgentsRequest(include_disconnected=include))
    return [a.host_id for a in got.agents] == expected


def test_api_errors_are_precise(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            assert await status_of(c.incidents.GetIncident(ipb.GetIncidentRequest(id="inc-zzzzzzzz"))) == \
                grpc.StatusCode.NOT_FOUND
            assert await status_of(c.incidents.OpenIncident(ipb.OpenIncidentRequest(
                title="x", selector=ipb.HostSelector(host_ids=["a"])))) == grpc.StatusCode.INVALID_ARGUMENT
            assert await status_of(c.incidents.OpenIncident(ipb.OpenIncidentRequest(
                title="x", severity=ipb.SEVERITY_P2))) == grpc.StatusCode.INVALID_ARGUMENT
            missing = "0190a5f4-5b8e-7cc0-8d1e-1234567890ab"
            assert await status_of(c.bundles.GetBundle(bpb.GetBundleRequest(bundle_id=missing))) == \
                grpc.StatusCode.NOT_FOUND
            assert await status_of(c.bundles.GetBundle(bpb.GetBundleRequest(bundle_id="x"))) == \
                grpc.StatusCode.INVALID_ARGUMENT
            assert await status_of(download(c, missing)) == grpc.StatusCode.NOT_FOUND
            bundle_id, data = make_bundle(tmp_path / "agent", "web-1", filler_bytes=10)
            await upload(c.agents, chunks(bundle_id, data))
            assert await status_of(download(c, bundle_id, len(data) + 1)) == grpc.StatusCode.OUT_OF_RANGE

            inc = await c.open_incident(host_ids=["a"])
            acked = await c.incidents.AcknowledgeIncident(ipb.AcknowledgeIncidentRequest(id=inc.id))
            assert acked.incident.state == ipb.INCIDENT_STATE_ACKNOWLEDGED
            upd = await c.incidents.PostStatusUpdate(ipb.PostStatusUpdateRequest(id=inc.id, message="mitigated"))
            assert upd.incident.timeline[-1].message == "mitigated"
            res = await c.incidents.ResolveIncident(ipb.ResolveIncidentRequest(id=inc.id, message="done"))
            assert res.incident.state == ipb.INCIDENT_STATE_RESOLVED and res.incident.resolved_at_unix_ms > 0
            assert await status_of(c.incidents.ResolveIncident(ipb.ResolveIncidentRequest(id=inc.id))) == \
                grpc.StatusCode.FAILED_PRECONDITION
            listed = await c.incidents.ListIncidents(ipb.ListIncidentsRequest(state=ipb.INCIDENT_STATE_OPEN))
            assert list(listed.incidents) == []
            listed = await c.incidents.ListIncidents(ipb.ListIncidentsRequest())
            assert [i.id for i in listed.incidents] == [inc.id]

    run(main())


def test_health_and_reflection(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data") as c:
            health = health_pb2_grpc.HealthStub(c.channel)
            for service in ("", "hostdiag.v1.AgentService", "hostdiag.v1.IncidentService"):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(c.channel)
            call = refl.ServerReflectionInfo()
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            resp = await call.read()
            names = {s.name for s in resp.list_services_response.service}
            assert {"hostdiag.v1.AgentService", "hostdiag.v1.IncidentService", "hostdiag.v1.BundleService",
                    "hostdiag.v1.FleetService", "grpc.health.v1.Health"} <= names
            await call.done_writing()

    run(main())


def test_silent_agent_is_dropped_and_second_hello_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "data", heartbeat_interval_s=1, heartbeat_timeout_s=1.5) as c:
            silent = FakeAgent(c.channel, "quiet-1")
            await silent.connect()
            ended = await silent.ended(timeout_s=10)
            assert isinstance(ended, grpc.RpcError) and ended.code() == grpc.StatusCode.UNAVAILABLE
            assert "no message from the agent" in (ended.details() or "")
            await eventually(lambda: _agents(c, False, []), "silent agent unregistered")

            twice = FakeAgent(c.channel, "chatty-1")
            await twice.connect()
            await twice.send(hello=apb.Hello(host_id="chatty-1"))
            ended = await twice.ended()
            assert isinstance(ended, grpc.RpcError) and ended.code() == grpc.StatusCode.INVALID_ARGUMENT
            await silent.close()
            await twice.close()

    run(main())
