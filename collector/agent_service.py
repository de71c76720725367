"""``AgentService``: the control stream (Connect) and resumable uploads.

Connect, as the collector runs it:

1. The first message must be a Hello (else INVALID_ARGUMENT), within
   ``hello_timeout_s`` (else DEADLINE_EXCEEDED).  Its fields are checked:
   ``host_id`` 1-253 characters of ``[A-Za-z0-9_.:-]``, at most 64 labels,
   64 profiles and 64 capabilities.
2. The agent is registered in the fleet (replacing, and ending with ABORTED,
   an older stream of the same host id) and in the store (``agents`` table).
3. Welcome goes out with the heartbeat interval; then waiting snapshot
   requests are delivered.
4. From then on the collector sends a Heartbeat every
   ``heartbeat_interval_s`` and each queued SnapshotCommand, and reads
   Heartbeat / SnapshotAck / SnapshotProgress / SnapshotResult.  An agent
   silent for ``heartbeat_timeout_s`` is dropped (UNAVAILABLE); a second
   Hello on the same stream is INVALID_ARGUMENT.  On shutdown the stream ends
   with UNAVAILABLE so the agent reconnects elsewhere or later.

With mTLS (``require_identity``) every call must come with a client certificate
that gRPC verified against the agent CA (else UNAUTHENTICATED: e.g. a call on
the API port, which asks for none).  The certificate is the agent's identity:
the Hello's ``host_id`` must be one of its names (SAN DNS names, else the CN),
else PERMISSION_DENIED "certificate names X, hello says Y"; uploads and upload
queries are checked against the same names (see :mod:`hostdiag.collector.ingest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

import hostdiag
from hostdiag.collector.errors import CollectorError
from hostdiag.collector.fleet import AgentSession, Fleet
from hostdiag.collector.incidents import IncidentManager
from hostdiag.collector.ingest import Ingest
from hostdiag.collector.store.base import AgentRecord, MetadataStore
from hostdiag.collector.tls import PeerIdentity, peer_identity
from hostdiag.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["AgentServicer", "check_hello"]

log = logging.getLogger("hostdiag.collector.agents")

_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_LABELS = 64
MAX_LIST = 64
TOUCH_EVERY_MS = 60_000


def check_hello(hello: agent_pb2.Hello) -> str:
    """What is wrong with a Hello, or "" when it is acceptable."""
    if not _HOST_ID.fullmatch(hello.host_id):
        return "hello.host_id: must be 1-253 characters of [A-Za-z0-9_.:-], starting with a letter or digit"
    if len(hello.labels) > MAX_LABELS:
        return f"hello.labels: at most {MAX_LABELS} labels"
    for key, value in hello.labels.items():
        if not key or len(key) > 63 or len(value) > 253:
            return f"hello.labels: label {key[:70]!r}: names are 1-63 characters, values at most 253"
    for field in ("profiles", "capabilities"):
        values = getattr(hello, field)
        if len(values) > MAX_LIST:
            return f"hello.{field}: at most {MAX_LIST} entries"
        for value in values:
            if not _NAME.fullmatch(value):
                return f"hello.{field}: {value[:70]!r} is not a valid name"
    if not (hello.max_window_seconds >= 0 and hello.max_window_seconds <= 7 * 86400):
        return "hello.max_window_seconds: must be between 0 and 604800"
    if len(hello.agent_version) > 64 or len(hello.boot_id) > 64:
        return "hello.agent_version and hello.boot_id: at most 64 characters"
    return ""


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        *,
        fleet: Fleet,
        incidents: IncidentManager,
        ingest: Ingest,
        store: MetadataStore,
        heartbeat_interval_s: float,
        heartbeat_timeout_s: float,
        queue_length: int,
        hello_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        require_identity: bool = False,
    ) -> None:
        """``require_identity``: mTLS; every call needs a verified agent certificate."""
        self.require_identity = require_identity
        self.fleet = fleet
        self.incidents = incidents
        self.ingest = ingest
        self.store = store
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.queue_length = queue_length
        self.hello_timeout_s = hello_timeout_s
        self.clock = clock
        self.stopping = False

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def _identity(self, context: Any) -> PeerIdentity | None:
        """The caller's certificate identity; None when identities are not required (plaintext)."""
        if not self.require_identity:
            return None
        identity = peer_identity(context.auth_context())
        if identity is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "AgentService needs a client certificate signed by the collector's agent CA "
                "(agents connect to the collector's listen address)",
            )
        assert identity is not None
        return identity

    # -- Connect ------------------------------------------------------------------------
    async def Connect(self, request_iterator: AsyncIterator[Any], context: Any) -> None:  # noqa: N802
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "collector is shutting down")
        identity = await self._identity(context)
        messages = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(messages), self.hello_timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {self.hello_timeout_s:g} s of connecting"
            )
        if first.WhichOneof("message") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on Connect must be a Hello")
        hello = first.hello
        problem = check_hello(hello)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if identity is not None and not identity.allows(hello.host_id):
            log.warning(
                "agent refused: certificate and host id differ",
                extra={"event": "agent_identity_mismatch", "host_id": hello.host_id, "certificate": str(identity),
                       "peer": context.peer() or ""},
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"certificate names {identity}, hello says {hello.host_id}"
            )
        now = self._now_ms()
        session = AgentSession(
            host_id=hello.host_id,
            labels=dict(hello.labels),
            agent_version=hello.agent_version,
            profiles=tuple(hello.profiles),
            capabilities=tuple(hello.capabilities),
            max_window_s=float(hello.max_window_seconds),
            boot_id=hello.boot_id,
            peer=context.peer() or "",
            connected_at_ms=now,
            queue_length=self.queue_length,
            last_heartbeat_ms=now,
        )
        self.fleet.register(session)
        try:
            await self._serve(session, messages, context)
        finally:
            self.fleet.unregister(session)
            with contextlib.suppress(Exception):
                await self.store.touch_agent(session.host_id, self._now_ms())
            log.info(
                "agent disconnected",
                extra={"event": "agent_disconnected", "host_id": session.host_id, "reason": session.close_reason},
            )
        if session.close_reason:
            await context.abort(session.close_code, session.close_reason)

    async def _serve(self, session: AgentSession, messages: AsyncIterator[Any], context: Any) -> None:
        previous = await self.store.get_agent(session.host_id)
        await self.store.upsert_agent(
            AgentRecord(
                host_id=session.host_id,
                labels=dict(session.labels),
                agent_version=session.agent_version,
                profiles=session.profiles,
                capabilities=session.capabilities,
                max_window_s=session.max_window_s,
                boot_id=session.boot_id,
                peer=session.peer,
                first_seen_ms=previous.first_seen_ms if previous else session.connected_at_ms,
                last_seen_ms=session.connected_at_ms,
                connected_at_ms=session.connected_at_ms,
            )
        )
        log.info(
            "agent connected",
            extra={
                "event": "agent_connected", "host_id": session.host_id, "peer": session.peer,
                "agent_version": session.agent_version, "session_id": session.session_id,
            },
        )
        await context.write(
            agent_pb2.ConnectResponse(
                welcome=agent_pb2.Welcome(
                    collector_version=hostdiag.__version__,
                    heartbeat_interval_seconds=self.heartbeat_interval_s,
                    session_id=session.session_id,
                )
            )
        )
        await self.incidents.on_agent_connected(session)
        loop = asyncio.get_running_loop()
        state = {"last_recv": loop.time(), "touched_ms": session.connected_at_ms}
        reader = asyncio.create_task(self._read(session, messages, state), name=f"connect-read-{session.host_id}")
        closed = asyncio.create_task(session.closed.wait())
        getter: asyncio.Task[Any] | None = None
        next_beat = loop.time() + self.heartbeat_interval_s
        try:
            while True:
                if getter is None:
                    getter = asyncio.create_task(session.queue.get())
                timeout = max(0.0, next_beat - loop.time())
                done, _ = await asyncio.wait(
                    {reader, closed, getter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if reader in done or closed in done:
                    break
                if getter in done:
                    command = getter.result()
                    getter = None
                    await context.write(
                        agent_pb2.ConnectResponse(
                            snapshot=agent_pb2.SnapshotCommand(
                                request_id=command.request_id,
                                incident_id=command.incident_id,
                                profile=command.profile,
                                window_seconds=command.window_s,
                            )
                        )
                    )
                    await self.incidents.on_command_sent(session.host_id, command)
                if loop.time() >= next_beat:
                    silent = loop.time() - state["last_recv"]
                    if silent > self.heartbeat_timeout_s:
                        session.close(
                            f"no message from the agent for {silent:.0f} s "
                            f"(timeout {self.heartbeat_timeout_s:g} s)",
                            grpc.StatusCode.UNAVAILABLE,
                        )
                        break
                    await context.write(
                        agent_pb2.ConnectResponse(heartbeat=agent_pb2.Heartbeat(sent_at_unix_ms=self._now_ms()))
                    )
                    next_beat = loop.time() + self.heartbeat_interval_s
        finally:
            for task in (reader, closed, getter):
                if task is not None and not task.done():
                    task.cancel()
            for task in (reader, closed, getter):
                if task is not None:
                    with contextlib.suppress(BaseException):
                        await task
        if reader.done() and not reader.cancelled() and isinstance(reader.exception(), CollectorError):
            exc = reader.exception()
            assert isinstance(exc, CollectorError)
            session.close(exc.message, exc.code)

    async def _read(self, session: AgentSession, messages: AsyncIterator[Any], state: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        async for msg in messages:
            state["last_recv"] = loop.time()
            kind = msg.WhichOneof("message")
            try:
                if kind == "heartbeat":
                    now = self._now_ms()
                    session.last_heartbeat_ms = now
                    if now - state["touched_ms"] >= TOUCH_EVERY_MS:
                        state["touched_ms"] = now
                        await self.store.touch_agent(session.host_id, now)
                elif kind == "ack":
                    a = msg.ack
                    await self.incidents.on_ack(session.host_id, a.request_id, a.accepted, a.reason)
                elif kind == "progress":
                    p = msg.progress
                    await self.incidents.on_progress(session.host_id, p.request_id, p.stage, p.bundle_id, p.detail)
                elif kind == "result":
                    r = msg.result
                    await self.incidents.on_result(session.host_id, r.request_id, r.ok, r.bundle_id, r.error)
                elif kind == "hello":
                    raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, "a second Hello on the same Connect stream")
            except CollectorError:
                raise
            except Exception:
                log.exception(
                    "agent message not processed", extra={"event": "agent_message_failed", "host_id": session.host_id}
                )

    # -- uploads ------------------------------------------------------------------------
    async def Upload(self, request_iterator: AsyncIterator[Any], context: Any) -> agent_pb2.UploadResponse:  # noqa: N802
        identity = await self._identity(context)
        try:
            result = await self.ingest.receive(aiter(request_iterator), identity.names if identity else None)
        except CollectorError as exc:
            await context.abort(exc.code, exc.message)
        return agent_pb2.UploadResponse(
            bundle_id=result.bundle_id, committed_size_bytes=result.committed_size_bytes, complete=result.complete
        )

    async def QueryUpload(self, request: Any, context: Any) -> agent_pb2.QueryUploadResponse:  # noqa: N802
        identity = await self._identity(context)
        try:
            result = await self.ingest.query(request.bundle_id, identity.names if identity else None)
        except CollectorError as exc:
            await context.abort(exc.code, exc.message)
        return agent_pb2.QueryUploadResponse(
            bundle_id=result.bundle_id, committed_size_bytes=result.committed_size_bytes, complete=result.complete
        )
