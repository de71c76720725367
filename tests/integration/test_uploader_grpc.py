"""The uploader against a real grpc.aio AgentService on 127.0.0.1.

The service here is a small stand-in written for these tests (not the real
collector): it records every control message, keeps committed upload bytes in
a dict, checks offsets and hashes the way the contract says, and can be told to
drop an upload mid-stream, refuse uploads, or go away and come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from hostdiag.agent.config import AgentConfig, parse_config
from hostdiag.agent.spool import Spool
from hostdiag.agent.uploader import COMMAND_QUEUE_SIZE, HostInfo, Uploader
from hostdiag.v1 import agent_pb2 as pb
from hostdiag.v1 import agent_pb2_grpc as pb_grpc

KiB = 1024
CHUNK = 64 * KiB
DEADLINE_S = 15.0

logging.getLogger("hostdiag").setLevel(int(os.environ.get("HD_TEST_LOG", logging.CRITICAL)))  # the scenarios provoke warnings on purpose


async def eventually(predicate: Callable[[], object], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Poll ``predicate`` on the event loop until it is truthy, or fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            if os.environ.get("HD_TEST_STACKS"):
                for task in asyncio.all_tasks():
                    print("TASK", task.get_name(), [(f.f_code.co_name, f.f_lineno, f.f_code.co_filename.split("/")[-1]) for f in task.get_stack()])
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


# -- the stand-in AgentService -------------------------------------------------------------


@dataclass
class Chunk:
    bundle_id: str
    write_offset: int
    size: int
    committed_before: int
    request_id: str
    incident_id: str
    finish_write: bool


@dataclass
class Session:
    hello: pb.Hello
    outbox: asyncio.Queue[pb.ConnectResponse | None] = field(default_factory=asyncio.Queue)
    received: list[pb.ConnectRequest] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class FakeAgentService(pb_grpc.AgentServiceServicer):
    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.committed: dict[str, bytearray] = {}
        self.complete: dict[str, str] = {}
        self.chunks: list[Chunk] = []
        self.queries: list[str] = []
        self.upload_calls = 0
        self.upload_starts: list[tuple[str, int]] = []  # (bundle id, first write_offset) of each Upload
        self.drop_after_chunks: int | None = None  # abort the next Upload after this many chunks, once
        self.refuse_with: grpc.StatusCode | None = None  # abort every Upload with this code
        self.hold_after_chunks: int | None = None  # stop reading the next Upload after this many chunks
        self.holding = asyncio.Event()  # set once an Upload is being held
        self.stopping: asyncio.Event | None = None

    # control stream
    async def Connect(self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Any) -> None:
        first = await anext(request_iterator)
        session = Session(hello=first.hello)
        self.sessions.append(session)
        await context.write(
            pb.ConnectResponse(
                welcome=pb.Welcome(collector_version="test", session_id=f"s{len(self.sessions)}")
            )
        )

        async def pump() -> None:
            async for message in request_iterator:
                session.received.append(message)

        reader = asyncio.create_task(pump())
        try:
            while True:
                get = asyncio.create_task(session.outbox.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return
                message = get.result()
                if message is None:
                    return
                await context.write(message)
        finally:
            reader.cancel()
            session.ended.set()

    # uploads
    async def Upload(self, request_iterator: AsyncIterator[pb.UploadRequest], context: Any) -> pb.UploadResponse:
        self.upload_calls += 1
        bundle_id = ""
        count = 0
        async for req in request_iterator:
            if not bundle_id:
                self.upload_starts.append((req.bundle_id, req.write_offset))
            bundle_id = req.bundle_id
            buf = self.committed.setdefault(bundle_id, bytearray())
            self.chunks.append(
                Chunk(bundle_id, req.write_offset, len(req.data), len(buf), req.request_id, req.incident_id, req.finish_write)
            )
            if self.refuse_with is not None:
                await context.abort(self.refuse_with, "this collector refuses the bundle")
            if req.write_offset != len(buf):
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"write_offset {req.write_offset} != {len(buf)}")
            if self.drop_after_chunks is not None and count >= self.drop_after_chunks:
                self.drop_after_chunks = None
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection dropped mid-upload")
            buf += req.data
            count += 1
            if self.hold_after_chunks is not None and count >= self.hold_after_chunks:
                self.hold_after_chunks = None
                self.holding.set()
                await asyncio.Event().wait()  # until the server is stopped under it
            if req.finish_write:
                if len(buf) != req.total_size_bytes or hashlib.sha256(buf).hexdigest() != req.sha256:
                    await context.abort(grpc.StatusCode.DATA_LOSS, "size or sha256 mismatch")
                self.complete[bundle_id] = req.sha256
                return pb.UploadResponse(bundle_id=bundle_id, committed_size_bytes=len(buf), complete=True)
        return pb.UploadResponse(
            bundle_id=bundle_id, committed_size_bytes=len(self.committed.get(bundle_id, b"")), complete=False
        )

    async def QueryUpload(self, request: pb.QueryUploadRequest, context: Any) -> pb.QueryUploadResponse:
        self.queries.append(request.bundle_id)
        return pb.QueryUploadResponse(
            bundle_id=request.bundle_id,
            committed_size_bytes=len(self.committed.get(request.bundle_id, b"")),
            complete=request.bundle_id in self.complete,
        )

    # helpers for the tests
    def messages(self, kind: str) -> list[Any]:
        return [getattr(m, kind) for s in self.sessions for m in s.received if m.WhichOneof("message") == kind]

    def command(self, request_id: str, profile: str = "default", window_s: float = 60.0, incident_id: str = "") -> None:
        self.sessions[-1].outbox.put_nowait(
            pb.ConnectResponse(
                snapshot=pb.SnapshotCommand(
                    request_id=request_id, incident_id=incident_id, profile=profile, window_seconds=window_s
                )
            )
        )

    def accepted_chunks(self, bundle_id: str) -> list[Chunk]:
        return [c for c in self.chunks if c.bundle_id == bundle_id]


class Collector:
    """A real grpc.aio server on 127.0.0.1 that can be stopped and started again on its port."""

    def __init__(self, service: FakeAgentService, port: int) -> None:
        self.service = service
        self.port = port
        self.server: aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = aio.server(
            options=(
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            )
        )
        pb_grpc.add_AgentServiceServicer_to_server(self.service, server)
        bound = server.add_insecure_port(self.address)
        assert bound == self.port
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            for session in self.service.sessions:
                session.outbox.put_nowait(None)
            await self.server.stop(grace=None)
            self.server = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the agent side -----------------------------------------------------------------------


@dataclass
class FakeBundle:
    path: str
    bundle_id: str
    size_bytes: int
    sha256: str


def write_bundle(directory: Path, size: int) -> FakeBundle:
    directory.mkdir(parents=True, exist_ok=True)
    bundle_id = str(uuid.uuid4())
    data = os.urandom(size)
    path = directory / f"{bundle_id}.tar.zst"
    path.write_bytes(data)
    return FakeBundle(str(path), bundle_id, size, hashlib.sha256(data).hexdigest())


class FakeSnapshots:
    """Stands in for the daemon's snapshot function: writes a small real bundle file."""

    def __init__(self, directory: Path, size: int = 300 * KiB) -> None:
        self.directory = directory
        self.size = size
        self.calls: list[tuple[str, float, str | None, str | None]] = []
        self.bundles: list[FakeBundle] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def __call__(self, profile: str, window_s: float, incident_id: str | None, request_id: str | None) -> FakeBundle:
        self.calls.append((profile, window_s, incident_id, request_id))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        bundle = write_bundle(self.directory, self.size)
        self.bundles.append(bundle)
        return bundle


def agent_config(tmp_path: Path, address: str, **collector: Any) -> AgentConfig:
    settings: dict[str, Any] = {
        "address": address,
        "insecure": True,
        "connect_timeout_s": 2.0,
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.2,
        "chunk_bytes": CHUNK,
        "heartbeat_interval_s": 0.2,
    }
    settings.update(collector)
    return parse_config(
        {
            "agent": {"host_id": "web-1", "labels": {"role": "api", "env": "test"}, "data_dir": str(tmp_path / "data")},
            "recorder": {"window_s": 600},
            "profiles": {"quick": {"window_s": 60}, "network": {}},
            "collector": settings,
        },
        str(tmp_path / "agent.toml"),
    )


@dataclass
class Rig:
    config: AgentConfig
    spool: Spool
    uploader: Uploader
    snapshots: FakeSnapshots
    collector: Collector
    sleeps: list[float]
    task: asyncio.Task[None]
    stop_expected: bool = False

    @property
    def service(self) -> FakeAgentService:
        return self.collector.service


async def run_rig(
    tmp_path: Path,
    scenario: Callable[[Rig], Awaitable[None]],
    *,
    start_server: bool = True,
    rng: Callable[[], float] = lambda: 0.5,
    **collector: Any,
) -> None:
    service = FakeAgentService()
    server = Collector(service, free_port())
    config = agent_config(tmp_path, server.address, **collector)
    spool = Spool(config.spool_dir, config.spool.max_bytes, config.spool.max_items)
    snapshots = FakeSnapshots(tmp_path / "bundles")
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.sleep(delay)

    uploader = Uploader(
        config, spool, snapshot_fn=snapshots, host_info=HostInfo("web-1", {"role": "api"}, "9.9.9", "boot-1"),
        rng=rng, sleep=sleep,
    )
    if start_server:
        await server.start()
    task = asyncio.create_task(uploader.run())
    try:
        rig = Rig(config, spool, uploader, snapshots, server, sleeps, task)
        await scenario(rig)
        assert rig.stop_expected or not task.done(), "the uploader stopped on its own"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


# -- the control stream ---------------------------------------------------------------------


def test_hello_says_who_the_agent_is_and_heartbeats_follow(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        session = await eventually(lambda: rig.service.sessions and rig.service.sessions[0], "a hello")
        hello = session.hello
        assert hello.host_id == "web-1"
        assert dict(hello.labels) == {"role": "api"}
        assert hello.agent_version == "9.9.9"
        assert hello.boot_id == "boot-1"
        assert list(hello.capabilities) == ["snapshot", "upload-resume"]
        assert list(hello.profiles) == ["default", "network", "quick"]  # the agent's own config
        assert hello.max_window_seconds == 600
        await eventually(lambda: len(rig.service.messages("heartbeat")) >= 2, "two heartbeats")
        beat = rig.service.messages("heartbeat")[0]
        assert beat.sent_at_unix_ms > 1_600_000_000_000
        status = await eventually(lambda: rig.uploader.status()["connected"] and rig.uploader.status(), "connected")
        assert status["collector_address"] == rig.collector.address
        assert status["session_id"] == "s1"
        assert status["last_connected_at"] is not None
        assert status["reconnects"] == 0
        assert len(rig.service.sessions) == 1, "one long-lived stream"

    run(run_rig(tmp_path, scenario))


def test_cancelling_run_closes_the_stream_and_the_channel(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        session = await eventually(lambda: rig.uploader.connected and rig.service.sessions[0], "connected")
        rig.stop_expected = True
        rig.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rig.task
        await asyncio.wait_for(session.ended.wait(), DEADLINE_S)  # the collector saw the stream end
        assert not rig.uploader.connected

    run(run_rig(tmp_path, scenario))


def test_hello_and_upload_work_under_uvloop(tmp_path: Path) -> None:
    import uvloop

    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        bundle = write_bundle(tmp_path / "local", 100 * KiB)
        await rig.uploader.enqueue(bundle, incident_id="INC-1")
        await eventually(lambda: bundle.bundle_id in rig.service.complete, "the upload")

    uvloop.run(asyncio.wait_for(run_rig(tmp_path, scenario), 60))


def test_unknown_profile_and_bad_windows_are_refused_with_the_reason(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        rig.service.command("r-1", profile="rm -rf /")
        rig.service.command("r-2", profile="quick", window_s=601)
        rig.service.command("r-3", profile="quick", window_s=0)
        rig.service.command("r-4", profile="quick", window_s=-5)
        rig.service.command("", profile="quick")
        acks = await eventually(lambda: len(rig.service.messages("ack")) >= 5 and rig.service.messages("ack"), "5 acks")
        by_id = {a.request_id: a for a in acks}
        assert not by_id["r-1"].accepted
        assert by_id["r-1"].reason == "unknown profile 'rm -rf /' (this agent defines: default, network, quick)"
        assert not by_id["r-2"].accepted and "exceeds the recorder window (600 s)" in by_id["r-2"].reason
        assert not by_id["r-3"].accepted and "positive" in by_id["r-3"].reason
        assert not by_id["r-4"].accepted and "positive" in by_id["r-4"].reason
        assert not by_id[""].accepted and "request_id" in by_id[""].reason
        assert rig.snapshots.calls == [], "nothing ran"
        assert rig.uploader.status()["commands_refused"] == 5

    run(run_rig(tmp_path, scenario))


def test_a_command_produces_a_bundle_uploaded_in_chunks_then_removed_from_the_spool(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        rig.service.command("r-1", profile="quick", window_s=30, incident_id="INC-42")
        result = await eventually(lambda: rig.service.messages("result"), "a result")
        [ack] = rig.service.messages("ack")
        assert ack.request_id == "r-1" and ack.accepted
        assert rig.snapshots.calls == [("quick", 30.0, "INC-42", "r-1")]
        [bundle] = rig.snapshots.bundles
        assert result[0] == pb.SnapshotResult(request_id="r-1", ok=True, bundle_id=bundle.bundle_id)
        stages = [p.stage for p in rig.service.messages("progress") if p.request_id == "r-1"]
        assert stages == ["collecting", "packed", "uploading"]
        # Chunks: consecutive offsets, chunk_bytes each, the first carries the ids, the last finishes.
        chunks = rig.service.accepted_chunks(bundle.bundle_id)
        assert [c.write_offset for c in chunks] == list(range(0, bundle.size_bytes, CHUNK))
        assert all(c.size == CHUNK for c in chunks[:-1])
        assert chunks[0].request_id == "r-1" and chunks[0].incident_id == "INC-42"
        assert [c.finish_write for c in chunks] == [False] * (len(chunks) - 1) + [True]
        assert bytes(rig.service.committed[bundle.bundle_id]) == Path(bundle.path).read_bytes()
        assert rig.service.complete[bundle.bundle_id] == bundle.sha256
        assert rig.service.queries == [bundle.bundle_id], "QueryUpload before sending"
        await eventually(lambda: len(rig.spool) == 0, "the spool to empty")
        assert not os.path.exists(os.path.join(rig.spool.dir, bundle.bundle_id + ".tar.zst"))
        status = rig.uploader.status()
        assert status["uploads_ok"] == 1 and status["uploads_failed"] == 0
        assert status["last_bundle_uploaded_at"] is not None
        assert status["spool_depth"] == 0

    run(run_rig(tmp_path, scenario))


def test_commands_run_one_at_a_time_and_excess_is_refused_as_busy(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        rig.snapshots.gate = asyncio.Event()
        rig.service.command("r-0")
        await eventually(lambda: rig.snapshots.calls, "the first snapshot to start")
        for n in range(1, COMMAND_QUEUE_SIZE + 2):
            rig.service.command(f"r-{n}")
        acks = await eventually(
            lambda: len(rig.service.messages("ack")) == COMMAND_QUEUE_SIZE + 2 and rig.service.messages("ack"), "acks"
        )
        refused = [a for a in acks if not a.accepted]
        assert [a.request_id for a in refused] == [f"r-{COMMAND_QUEUE_SIZE + 1}"]
        assert refused[0].reason.startswith("busy")
        assert len(rig.snapshots.calls) == 1, "one snapshot at a time"
        rig.service.command("r-0")  # a re-delivered command is not run twice
        rig.snapshots.gate.set()
        await eventually(
            lambda: len({r.request_id for r in rig.service.messages("result")}) == COMMAND_QUEUE_SIZE + 1, "results"
        )
        assert [c[3] for c in rig.snapshots.calls] == [f"r-{n}" for n in range(COMMAND_QUEUE_SIZE + 1)]
        assert all(r.ok for r in rig.service.messages("result"))

    run(run_rig(tmp_path, scenario))


def test_a_failed_snapshot_is_reported(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        rig.snapshots.fail = OSError(28, "No space left on device")
        rig.service.command("r-1")
        [result] = await eventually(lambda: rig.service.messages("result"), "a result")
        assert not result.ok
        assert "No space left on device" in result.error
        assert len(rig.spool) == 0

    run(run_rig(tmp_path, scenario))


def test_reconnects_after_the_collector_restarts(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        await eventually(lambda: rig.service.messages("heartbeat"), "a heartbeat (a healthy session)")
        rig.sleeps.clear()
        await rig.collector.stop()
        await eventually(lambda: not rig.uploader.connected, "the agent to notice")
        await eventually(lambda: len(rig.sleeps) >= 2, "some retries while the collector is down")
        # The broken session was healthy, so backoff started over: 0.5 * 0.02, then 0.5 * 0.04, ...
        assert rig.sleeps[:2] == pytest.approx([0.01, 0.02])
        await rig.collector.start()
        await eventually(lambda: len(rig.service.sessions) == 2 and rig.uploader.connected, "a second session")
        assert rig.service.sessions[1].hello.host_id == "web-1"
        status = rig.uploader.status()
        assert status["reconnects"] == 1
        assert status["session_id"] == "s2"
        # The new session works: a command is answered.
        rig.service.command("r-after")
        await eventually(lambda: rig.service.messages("result"), "a result on the new session")

    run(run_rig(tmp_path, scenario))


def test_a_command_survives_a_collector_restart_and_its_result_arrives_on_the_next_session(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        rig.snapshots.gate = asyncio.Event()
        rig.service.command("r-1", incident_id="INC-3")
        await eventually(lambda: rig.snapshots.calls, "the snapshot to start")
        await rig.collector.stop()
        await eventually(lambda: not rig.uploader.connected, "the agent to notice")
        rig.snapshots.gate.set()
        await eventually(lambda: len(rig.spool) == 1, "the bundle in the spool while the collector is away")
        await rig.collector.start()
        [bundle] = rig.snapshots.bundles
        await eventually(lambda: bundle.bundle_id in rig.service.complete, "the upload on the new session")
        results = await eventually(
            lambda: [m.result for m in rig.service.sessions[-1].received if m.WhichOneof("message") == "result"],
            "the result on the new session",
        )
        assert results == [pb.SnapshotResult(request_id="r-1", ok=True, bundle_id=bundle.bundle_id)]
        assert rig.service.accepted_chunks(bundle.bundle_id)[0].incident_id == "INC-3"

    run(run_rig(tmp_path, scenario))


# -- uploads ------------------------------------------------------------------------------


def test_a_broken_upload_resumes_from_the_committed_offset(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        rig.service.drop_after_chunks = 3
        bundle = write_bundle(tmp_path / "local", 10 * CHUNK + 123)
        await rig.uploader.enqueue(bundle, incident_id="INC-5", request_id="r-9")
        await eventually(lambda: bundle.bundle_id in rig.service.complete, "the upload to complete")
        chunks = rig.service.accepted_chunks(bundle.bundle_id)
        # Nothing committed was ever sent again: every chunk started at the committed size.
        assert all(c.write_offset == c.committed_before for c in chunks), chunks
        assert rig.service.upload_starts == [(bundle.bundle_id, 0), (bundle.bundle_id, 3 * CHUNK)]
        resumed = [c for c in chunks if c.request_id]
        assert [c.write_offset for c in resumed] == [0, 3 * CHUNK], "each Upload call starts with the ids"
        assert bytes(rig.service.committed[bundle.bundle_id]) == Path(bundle.path).read_bytes()
        assert rig.service.queries.count(bundle.bundle_id) == 2
        await eventually(lambda: len(rig.spool) == 0, "the spool to empty")
        [result] = await eventually(lambda: rig.service.messages("result"), "the result")
        assert result.ok and result.request_id == "r-9" and result.bundle_id == bundle.bundle_id
        status = rig.uploader.status()
        assert status["uploads_ok"] == 1 and status["uploads_failed"] == 1
        # The server's UNAVAILABLE can reach a client still writing as INTERNAL; both are retried.
        assert status["last_upload_error"].split(": ")[1] in ("UNAVAILABLE", "INTERNAL")

    run(run_rig(tmp_path, scenario))


def test_the_collector_killed_mid_upload_resumes_after_it_comes_back(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        bundle = write_bundle(tmp_path / "local", 8 * CHUNK)
        rig.service.hold_after_chunks = 2
        await rig.uploader.enqueue(bundle)
        await eventually(rig.service.holding.is_set, "an upload in the middle of its bundle")
        await rig.collector.stop()  # killed with the Upload stream open
        await eventually(lambda: not rig.uploader.connected, "the agent to notice")
        assert len(rig.spool) == 1, "still spooled while the collector is away"
        assert len(rig.service.committed[bundle.bundle_id]) == 2 * CHUNK
        await rig.collector.start()
        await eventually(lambda: bundle.bundle_id in rig.service.complete, "the upload to complete")
        chunks = rig.service.accepted_chunks(bundle.bundle_id)
        assert all(c.write_offset == c.committed_before for c in chunks)
        assert rig.service.upload_starts == [(bundle.bundle_id, 0), (bundle.bundle_id, 2 * CHUNK)]
        assert bytes(rig.service.committed[bundle.bundle_id]) == Path(bundle.path).read_bytes()
        await eventually(lambda: len(rig.spool) == 0, "the spool to empty")

    run(run_rig(tmp_path, scenario))


def test_collector_down_at_first_the_spool_holds_the_bundle_until_it_appears(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        bundle = write_bundle(tmp_path / "local", 3 * CHUNK)
        await rig.uploader.enqueue(bundle, incident_id="INC-7")
        await eventually(lambda: len(rig.sleeps) >= 4, "a few reconnect attempts")
        # Backoff grows: rng() = 0.5 of a cap that doubles from 0.02 up to 0.2.
        assert rig.sleeps[:5] == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.1][: len(rig.sleeps[:5])])
        status = rig.uploader.status()
        assert not status["connected"]
        assert status["connect_failures"] >= 4
        assert "UNAVAILABLE" in (status["last_connect_error"] or "")
        assert status["spool_depth"] == 1 and status["spool_bytes"] == 3 * CHUNK
        assert [i.bundle_id for i in rig.spool.items()] == [bundle.bundle_id]
        await rig.collector.start()
        await eventually(lambda: bundle.bundle_id in rig.service.complete, "the upload once the collector is up")
        await eventually(lambda: len(rig.spool) == 0, "the spool to empty")
        assert rig.service.accepted_chunks(bundle.bundle_id)[0].incident_id == "INC-7"

    run(run_rig(tmp_path, scenario, start_server=False))


def test_a_permanent_error_quarantines_the_bundle_and_the_queue_moves_on(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        rig.service.refuse_with = grpc.StatusCode.INVALID_ARGUMENT
        bad = write_bundle(tmp_path / "local", 2 * CHUNK)
        await rig.uploader.enqueue(bad, request_id="r-bad")
        await eventually(lambda: rig.spool.status()["quarantine_depth"] == 1, "the quarantine")
        assert len(rig.spool) == 0
        assert bad.bundle_id not in rig.service.complete
        [entry] = rig.spool.quarantined_items()
        assert entry["bundle_id"] == bad.bundle_id
        assert entry["reason"].startswith("INVALID_ARGUMENT")
        # A fresh QueryUpload confirmed the refusal first.  (grpc.aio may report a server's abort that
        # races the client's writes as INTERNAL; that attempt is retried, so there can be more queries.)
        assert rig.service.queries.count(bad.bundle_id) >= 2
        assert rig.service.queries[-1] == bad.bundle_id
        [result] = await eventually(lambda: rig.service.messages("result"), "a failed result")
        assert not result.ok and result.request_id == "r-bad" and "refused" in result.error
        # The next bundle is not stuck behind it.
        rig.service.refuse_with = None
        good = write_bundle(tmp_path / "local", CHUNK)
        await rig.uploader.enqueue(good)
        await eventually(lambda: good.bundle_id in rig.service.complete, "the next upload")
        assert rig.uploader.status()["uploads_quarantined"] == 1

    run(run_rig(tmp_path, scenario))


def test_retryable_errors_keep_the_bundle_and_retry_with_backoff(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await eventually(lambda: rig.uploader.connected, "connected")
        rig.service.refuse_with = grpc.StatusCode.RESOURCE_EXHAUSTED
        bundle = write_bundle(tmp_path / "local", CHUNK)
        await rig.uploader.enqueue(bundle)
        await eventually(lambda: rig.service.upload_calls >= 3, "three attempts")
        assert len(rig.spool) == 1 and rig.spool.status()["quarantine_depth"] == 0
        item = rig.spool.get(bundle.bundle_id)
        assert item is not None and item.attempts >= 2 and "RESOURCE_EXHAUSTED" in (item.last_error or "")
        rig.service.refuse_with = None
        await eventually(lambda: bundle.bundle_id in rig.service.complete, "the upload")
        await eventually(lambda: len(rig.spool) == 0, "the spool to empty")

    run(run_rig(tmp_path, scenario))


def test_an_upload_already_complete_on_the_collector_is_just_removed(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        bundle = write_bundle(tmp_path / "local", CHUNK)
        rig.service.committed[bundle.bundle_id] = bytearray(Path(bundle.path).read_bytes())
        rig.service.complete[bundle.bundle_id] = bundle.sha256  # e.g. the agent died before deleting it
        await rig.uploader.enqueue(bundle)
        await eventually(lambda: len(rig.spool) == 0, "the spool to empty")
        assert rig.service.upload_calls == 0

    run(run_rig(tmp_path, scenario))


def test_the_backlog_goes_oldest_first(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        bundles = [write_bundle(tmp_path / "local", 2 * KiB) for _ in range(5)]
        for bundle in bundles:
            await rig.uploader.enqueue(bundle)
        await rig.collector.start()
        await eventually(lambda: len(rig.service.complete) == 5, "five uploads")
        order = list(dict.fromkeys(c.bundle_id for c in rig.service.chunks))
        assert order == [b.bundle_id for b in bundles]

    run(run_rig(tmp_path, scenario, start_server=False))
