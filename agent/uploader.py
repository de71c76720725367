"""The agent's link to the collector: one control stream, and resumable uploads from the spool.

Three tasks run under :meth:`Uploader.run`:

* **control**: keeps one long-lived ``AgentService.Connect`` stream up.  It sends
  ``Hello`` (identity, labels, version, capabilities, the profiles this agent's
  own config defines, the recorder window), waits for ``Welcome``, then sends
  heartbeats and answers ``SnapshotCommand`` messages.  When the stream breaks
  it reconnects after a jittered exponential backoff (see :class:`Backoff`).
* **commands**: runs accepted snapshot commands one at a time, from a bounded
  queue.  A command only ever names a profile; the agent checks it against its
  own config and never takes a path, a command or code from the wire.
* **uploads**: while connected, uploads spool items oldest first with the
  ByteStream pattern: ``QueryUpload`` for the committed size, then a
  client-streaming ``Upload`` from that offset in ``chunk_bytes`` pieces, the
  last one with ``finish_write``, the total size and the sha256.  An item
  leaves the spool only when the collector says the upload is complete.

Retryable failures (the collector or the network is unwell) are retried with
backoff and never drop a bundle; permanent ones (the collector refuses this
bundle) are checked with a fresh ``QueryUpload`` and, if it still disagrees,
the bundle is quarantined.  ``docs/spool-and-upload.md`` describes the whole
protocol from the agent's side.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import grpc
from grpc import aio

import hostdiag
from hostdiag.agent.config import AgentConfig, CollectorSection
from hostdiag.agent.spool import Spool, SpoolError, SpoolItem
from hostdiag.v1 import agent_pb2 as pb
from hostdiag.v1 import agent_pb2_grpc as pb_grpc

__all__ = [
    "Uploader",
    "HostInfo",
    "Backoff",
    "BundleLike",
    "SnapshotFn",
    "CAPABILITIES",
    "KEEPALIVE_OPTIONS",
    "RETRYABLE_CODES",
    "PERMANENT_CODES",
    "COMMAND_QUEUE_SIZE",
    "collector_channel",
]

log = logging.getLogger("hostdiag.agent.uploader")

CAPABILITIES = ("snapshot", "upload-resume")

# Client keepalive, agreed with the collector's server settings
# (grpc.http2.min_recv_ping_interval_without_data_ms = 10000, permit_without_calls = 1):
# a ping every 20 s is never "too many pings" for the server, and a peer that does not
# answer within 10 s is taken for dead, which breaks the stream and triggers a reconnect.
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)

# The collector or the path to it is unwell: try again later, keep the bundle.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
    }
)
# The collector refuses this bundle: confirm with a fresh QueryUpload, then quarantine.
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# Every other code (UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED, ...) says nothing about
# one bundle, so it is retried like the retryable ones: quarantining would empty the spool.

COMMAND_QUEUE_SIZE = 4  # commands waiting behind the one running; more are refused as busy
MAX_ID_CHARS = 128
RECENT_REQUESTS = 256  # request ids remembered so a re-delivered command is not run twice
UNDELIVERED_RESULTS = 64  # results kept for the next session when the stream is down
OUTGOING_QUEUE = 256
MAX_PERMANENT_RETRIES = 2  # a permanent error that moved the committed offset is retried this often
MIN_UPLOAD_RATE_BYTES_S = 32 * 1024  # an Upload slower than this on average is cut and resumed
MIN_HEARTBEAT_S = 1.0  # the collector may ask for faster heartbeats, but not faster than this


class BundleLike(Protocol):
    """What :func:`hostdiag.agent.snapshot.take_snapshot` returns (``BundleInfo``)."""

    @property
    def path(self) -> str: ...
    @property
    def bundle_id(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def sha256(self) -> str: ...


SnapshotFn = Callable[[str, float, str | None, str | None], Awaitable[BundleLike]]
ChannelFactory = Callable[[str], aio.Channel]


@dataclass(frozen=True)
class HostInfo:
    """Who this agent is, as told to the collector in ``Hello``."""

    host_id: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    agent_version: str = hostdiag.__version__
    boot_id: str = ""

    @classmethod
    def from_config(cls, config: AgentConfig) -> HostInfo:
        boot_id = ""
        with contextlib.suppress(OSError):
            path = os.path.join(config.agent.proc_root, "sys", "kernel", "random", "boot_id")
            with open(path, encoding="ascii", errors="replace") as fh:
                boot_id = fh.read(64).strip()
        return cls(host_id=config.host_id, labels=dict(config.agent.labels), boot_id=boot_id)


class Backoff:
    """Exponential backoff with full jitter.

    The n-th delay (n = 0, 1, ...) is ``rng() * min(max_s, initial_s * 2**n)``:
    uniform between zero and a cap that doubles up to ``max_s``.  Full jitter
    spreads a fleet of agents that lost the collector at the same moment across
    the whole interval, so they do not come back in waves.  :meth:`reset` after a
    healthy connection or a successful upload.
    """

    def __init__(self, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng

    def cap(self, attempt: int) -> float:
        """The upper bound of the ``attempt``-th delay."""
        if attempt >= 64:  # 2**64 * initial_s is beyond any sane max_s
            return self.max_s
        return min(self.max_s, self.initial_s * (2**attempt))

    def next_delay(self) -> float:
        cap = self.cap(self.attempt)
        self.attempt += 1
        return min(cap, max(0.0, self._rng() * cap))

    def reset(self) -> None:
        self.attempt = 0


class _ConnectFailed(Exception):
    """The control stream did not get as far as a Welcome."""


@dataclass
class _Failure:
    """Why one upload attempt failed."""

    message: str
    code: grpc.StatusCode | None = None
    start_offset: int = 0
    permanent: bool = False


def _rpc_error(exc: aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details() or 'no details'}"


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _cancel_requested() -> bool:
    """True when the running task itself is being cancelled (shutdown), not just one of its RPCs."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _rpc(awaitable: Awaitable[Any]) -> Any:
    """Await an RPC; an RPC cancelled under us (its channel was closed) becomes a CANCELLED error.

    grpc.aio raises ``asyncio.CancelledError`` in the caller when a call is cancelled
    locally, e.g. by closing its channel after the control stream broke.  Left alone,
    that would end the calling task as if the agent were shutting down.
    """
    try:
        return await awaitable
    except asyncio.CancelledError:
        if _cancel_requested():
            raise
        raise aio.AioRpcError(
            grpc.StatusCode.CANCELLED, aio.Metadata(), aio.Metadata(), "the channel to the collector was closed"
        ) from None


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def collector_channel(col: CollectorSection) -> ChannelFactory:
    """The channel factory the config asks for: plaintext (loopback only) or mTLS.

    With mTLS the CA, certificate and key are read from disk for every channel, and the
    uploader opens a fresh channel per connection attempt, so rotated files are used from
    the next reconnect on without a restart.  A file that cannot be read fails that attempt
    (reported as the connect error) and the next attempt tries again.
    """
    if col.insecure:
        return lambda address: aio.insecure_channel(address, options=KEEPALIVE_OPTIONS)
    options: list[tuple[str, Any]] = list(KEEPALIVE_OPTIONS)
    if col.tls_server_name:
        options.append(("grpc.ssl_target_name_override", col.tls_server_name))

    def factory(address: str) -> aio.Channel:
        try:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file(col.tls_ca_file),
                private_key=_read_file(col.tls_key_file),
                certificate_chain=_read_file(col.tls_cert_file),
            )
        except OSError as exc:
            raise _ConnectFailed(f"cannot read a TLS file: {exc.filename}: {exc.strerror or exc}") from None
        return aio.secure_channel(address, credentials, options=options)

    return factory


class Uploader:
    """Keeps the control stream to the collector up and drains the spool into it."""

    def __init__(
        self,
        config: AgentConfig,
        spool: Spool,
        *,
        snapshot_fn: SnapshotFn,
        host_info: HostInfo,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        channel_factory: ChannelFactory | None = None,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        executor: Any = None,
    ) -> None:
        """``clock`` times sessions; ``rng`` jitters backoff; ``sleep`` waits out backoff delays.

        ``channel_factory(address)`` makes the gRPC channel for one session; the default,
        :func:`collector_channel`, is mTLS from the ``collector.tls_*`` files, or plaintext
        with ``collector.insecure = true`` (loopback only).  Both use
        :data:`KEEPALIVE_OPTIONS`.  ``executor`` runs the spool's blocking file work (None:
        the loop's default executor).
        """
        col = config.collector
        if not col.address:
            raise ValueError("collector.address is empty: the agent works offline and needs no uploader")
        self._config = config
        self._col = col
        self._spool = spool
        self._snapshot_fn = snapshot_fn
        self._host = host_info
        self._clock = clock
        self._rng = rng
        self._wall = wall_clock
        self._sleep = sleep
        self._executor = executor
        self._channel_factory = channel_factory or collector_channel(col)
        self._channel: aio.Channel | None = None
        self._stub: pb_grpc.AgentServiceStub | None = None
        self._out: asyncio.Queue[pb.ConnectRequest] | None = None
        self._connected = asyncio.Event()
        self._work = asyncio.Event()
        self._commands: asyncio.Queue[pb.SnapshotCommand] = asyncio.Queue(maxsize=COMMAND_QUEUE_SIZE)
        self._requests: collections.OrderedDict[str, pb.SnapshotResult | None] = collections.OrderedDict()
        self._undelivered: collections.deque[pb.SnapshotResult] = collections.deque(maxlen=UNDELIVERED_RESULTS)
        self._permanent_retries: dict[str, int] = {}
        self._running_request: str | None = None
        self._welcomed_at: float | None = None
        # Status.
        self.session_id = ""
        self.last_connected_at: float | None = None
        self.last_disconnected_at: float | None = None
        self.last_connect_error: str | None = None
        self.last_heard_at: float | None = None
        self.sessions = 0
        self.connect_failures = 0
        self.uploads_ok = 0
        self.uploads_failed = 0
        self.uploads_quarantined = 0
        self.bytes_sent = 0
        self.last_upload_error: str | None = None
        self.last_bundle_uploaded_at: float | None = None
        self.commands_accepted = 0
        self.commands_refused = 0

    # -- public --------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def status(self) -> dict[str, Any]:
        spool = self._spool.status()
        return {
            "collector_address": self._col.address,
            "connected": self.connected,
            "session_id": self.session_id or None,
            "last_connected_at": self.last_connected_at,
            "last_disconnected_at": self.last_disconnected_at,
            "last_connect_error": self.last_connect_error,
            "last_heard_at": self.last_heard_at,
            "reconnects": max(0, self.sessions - 1),
            "connect_failures": self.connect_failures,
            "spool_depth": spool["depth"],
            "spool_bytes": spool["bytes"],
            "evictions": spool["evictions"],
            "quarantined": spool["quarantined"],
            "uploads_ok": self.uploads_ok,
            "uploads_failed": self.uploads_failed,
            "uploads_quarantined": self.uploads_quarantined,
            "bytes_sent": self.bytes_sent,
            "last_upload_error": self.last_upload_error,
            "last_bundle_uploaded_at": self.last_bundle_uploaded_at,
            "commands_accepted": self.commands_accepted,
            "commands_refused": self.commands_refused,
            "command_running": self._running_request,
            "commands_waiting": self._commands.qsize(),
        }

    async def enqueue(self, info: BundleLike, incident_id: str | None = None, request_id: str | None = None) -> SpoolItem:
        """Queue a finished bundle for upload (e.g. from ``agentctl collect --incident ID``).

        Raises :class:`hostdiag.agent.spool.SpoolError` (or its subclass
        ``BundleTooLargeError``) when the spool cannot take it.
        """
        meta = {
            "bundle_id": info.bundle_id,
            "sha256": info.sha256,
            "size_bytes": info.size_bytes,
            "incident_id": incident_id,
            "request_id": request_id,
        }
        loop = asyncio.get_running_loop()
        item = await loop.run_in_executor(self._executor, self._spool.put, info.path, meta)
        self._work.set()
        return item

    async def run(self) -> None:
        """Run until cancelled; on the way out the stream and the channel are closed."""
        log.info("uploader started", extra={"event": "uploader_started", "collector": self._col.address})
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._supervise("control", self._control_loop), name="uploader-control")
                tg.create_task(self._supervise("upload", self._upload_loop), name="uploader-upload")
                tg.create_task(self._supervise("commands", self._command_loop), name="uploader-commands")
        finally:
            self._disconnected()
            await self._close_channel()
            log.info("uploader stopped", extra={"event": "uploader_stopped"})

    async def _supervise(self, name: str, loop_fn: Callable[[], Awaitable[None]]) -> None:
        """Run one of the loops for good: if it ever ends other than by shutdown, log and restart it."""
        backoff = Backoff(self._col.backoff_initial_s, self._col.backoff_max_s, self._rng)
        while True:
            try:
                await loop_fn()
                error = "returned"
            except asyncio.CancelledError:
                if _cancel_requested():
                    raise
                error = "cancelled by a library"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            log.error(
                "uploader loop ended unexpectedly; restarting it",
                extra={"event": "uploader_loop_restarted", "loop": name, "error": error},
            )
            await self._sleep(backoff.next_delay())

    # -- control stream ---------------------------------------------------------------
    def _hello(self) -> pb.Hello:
        return pb.Hello(
            host_id=self._host.host_id,
            labels=dict(self._host.labels),
            agent_version=self._host.agent_version,
            capabilities=list(CAPABILITIES),
            profiles=sorted(self._config.profiles),
            max_window_seconds=self._config.recorder.window_s,
            boot_id=self._host.boot_id,
        )

    async def _control_loop(self) -> None:
        backoff = Backoff(self._col.backoff_initial_s, self._col.backoff_max_s, self._rng)
        while True:
            self._welcomed_at = None
            try:
                await self._session()
                error = "the collector closed the stream"
            except asyncio.CancelledError:
                if _cancel_requested():
                    raise
                error = "the control stream was cancelled"
            except aio.AioRpcError as exc:
                error = _rpc_error(exc)
            except _ConnectFailed as exc:
                error = str(exc)
            except Exception as exc:  # a bug must not end the agent's link for good
                log.exception("control stream failed", extra={"event": "collector_stream_error"})
                error = f"{type(exc).__name__}: {exc}"
            finally:
                was_connected = self.connected
                self._disconnected()
                await self._close_channel()
            healthy = (
                self._welcomed_at is not None
                and self._clock() - self._welcomed_at >= self._col.heartbeat_interval_s
            )
            if healthy:
                backoff.reset()
            delay = backoff.next_delay()
            if was_connected:
                self.last_disconnected_at = self._wall()
                log.warning(
                    "lost the collector",
                    extra={"event": "collector_disconnected", "collector": self._col.address, "error": error,
                           "retry_in_s": round(delay, 3)},
                )
            else:
                self.connect_failures += 1
                log.warning(
                    "cannot reach the collector",
                    extra={"event": "collector_connect_failed", "collector": self._col.address, "error": error,
                           "retry_in_s": round(delay, 3), "attempt": backoff.attempt},
                )
            self.last_connect_error = error
            await self._sleep(delay)

    async def _session(self) -> None:
        channel = self._channel_factory(self._col.address)
        self._channel = channel
        stub = pb_grpc.AgentServiceStub(channel)
        call = stub.Connect()
        await call.write(pb.ConnectRequest(hello=self._hello()))
        try:
            first = await asyncio.wait_for(call.read(), timeout=self._col.connect_timeout_s)
        except TimeoutError:
            raise _ConnectFailed(f"no Welcome from the collector within {self._col.connect_timeout_s:g} s") from None
        if first is aio.EOF:
            raise _ConnectFailed("the collector closed the stream before its Welcome")
        if first.WhichOneof("message") != "welcome":
            raise _ConnectFailed(f"expected Welcome first, got {first.WhichOneof('message') or 'an empty message'}")
        welcome = first.welcome
        interval = self._col.heartbeat_interval_s
        if 0 < welcome.heartbeat_interval_seconds < interval:
            interval = max(welcome.heartbeat_interval_seconds, min(MIN_HEARTBEAT_S, interval))
        out: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue(maxsize=OUTGOING_QUEUE)
        while self._undelivered and not out.full():
            out.put_nowait(pb.ConnectRequest(result=self._undelivered.popleft()))
        self._welcomed_at = self._clock()
        self.session_id = welcome.session_id
        self.sessions += 1
        self.last_connected_at = self.last_heard_at = self._wall()
        self._stub = stub
        self._out = out
        self._connected.set()
        self._work.set()
        log.info(
            "connected to the collector",
            extra={"event": "collector_connected", "collector": self._col.address, "session_id": welcome.session_id,
                   "collector_version": welcome.collector_version, "reconnects": self.sessions - 1},
        )
        tasks = [
            asyncio.create_task(self._read_stream(call), name="uploader-read"),
            asyncio.create_task(self._write_stream(call, out), name="uploader-write"),
            asyncio.create_task(self._heartbeats(out, interval), name="uploader-heartbeat"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            call.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._rescue_results(out)
        for task in done:
            if task.cancelled():  # grpc cancels a call's waiters when the call is cancelled under them
                raise _ConnectFailed("the control stream was cancelled")
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _read_stream(self, call: Any) -> None:
        while True:
            response = await call.read()
            if response is aio.EOF:
                return
            self.last_heard_at = self._wall()
            kind = response.WhichOneof("message")
            if kind == "snapshot":
                self._on_command(response.snapshot)
            # heartbeats only prove liveness; a repeated welcome or an unknown message is ignored

    async def _write_stream(self, call: Any, out: asyncio.Queue[pb.ConnectRequest]) -> None:
        while True:
            message = await out.get()
            try:
                await call.write(message)
            except BaseException:
                if message.HasField("result"):
                    self._undelivered.append(message.result)
                raise

    async def _heartbeats(self, out: asyncio.Queue[pb.ConnectRequest], interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(asyncio.QueueFull):  # the writer is stuck; keepalive will tell
                out.put_nowait(pb.ConnectRequest(heartbeat=pb.Heartbeat(sent_at_unix_ms=int(self._wall() * 1000))))

    def _rescue_results(self, out: asyncio.Queue[pb.ConnectRequest]) -> None:
        while not out.empty():
            message = out.get_nowait()
            if message.HasField("result"):
                self._undelivered.append(message.result)

    def _disconnected(self) -> None:
        self._connected.clear()
        self._out = None
        self._stub = None

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    def _send(self, message: pb.ConnectRequest) -> bool:
        out = self._out
        if out is None:
            return False
        try:
            out.put_nowait(message)
            return True
        except asyncio.QueueFull:
            return False

    def _progress(self, request_id: str, stage: str, bundle_id: str = "", detail: str = "") -> None:
        self._send(
            pb.ConnectRequest(
                progress=pb.SnapshotProgress(request_id=request_id, stage=stage, bundle_id=bundle_id, detail=detail)
            )
        )

    def _finish(self, request_id: str, ok: bool, bundle_id: str = "", error: str = "") -> None:
        result = pb.SnapshotResult(request_id=request_id, ok=ok, bundle_id=bundle_id, error=error)
        self._remember(request_id, result)
        if not self._send(pb.ConnectRequest(result=result)):
            self._undelivered.append(result)

    def _remember(self, request_id: str, result: pb.SnapshotResult | None) -> None:
        self._requests[request_id] = result
        self._requests.move_to_end(request_id)
        while len(self._requests) > RECENT_REQUESTS:
            self._requests.popitem(last=False)

    # -- snapshot commands ------------------------------------------------------------
    def _refusal(self, cmd: pb.SnapshotCommand) -> str | None:
        """Why a command is refused, or None.  Only a profile name and a window come from the wire."""
        if not cmd.request_id:
            return "request_id is required"
        if len(cmd.request_id) > MAX_ID_CHARS:
            return f"request_id is longer than {MAX_ID_CHARS} characters"
        if len(cmd.incident_id) > MAX_ID_CHARS:
            return f"incident_id is longer than {MAX_ID_CHARS} characters"
        profiles = self._config.profiles
        if cmd.profile not in profiles:
            known = ", ".join(sorted(profiles))
            return f"unknown profile {_short(cmd.profile)!r} (this agent defines: {known})"
        window_s = cmd.window_seconds
        recorder_s = self._config.recorder.window_s
        if not math.isfinite(window_s) or window_s <= 0:
            return f"window_seconds must be a positive number of seconds, got {window_s:g}"
        if window_s > recorder_s:
            return f"window_seconds {window_s:g} exceeds the recorder window ({recorder_s:g} s)"
        return None

    def _ack(self, request_id: str, accepted: bool, reason: str = "") -> None:
        self._send(pb.ConnectRequest(ack=pb.SnapshotAck(request_id=request_id, accepted=accepted, reason=reason)))

    def _on_command(self, cmd: pb.SnapshotCommand) -> None:
        request_id = cmd.request_id[:MAX_ID_CHARS]
        reason = self._refusal(cmd)
        if reason is None and cmd.request_id in self._requests:
            # The collector re-delivered a command (e.g. after a reconnect): never run it twice.
            previous = self._requests[cmd.request_id]
            self._ack(request_id, True, "already accepted")
            if previous is not None:
                self._send(pb.ConnectRequest(result=previous))
            return
        if reason is None:
            try:
                self._commands.put_nowait(cmd)
            except asyncio.QueueFull:
                reason = f"busy: {COMMAND_QUEUE_SIZE} snapshot commands are already waiting"
        if reason is not None:
            self.commands_refused += 1
            self._ack(request_id, False, reason)
            log.warning(
                "snapshot command refused",
                extra={"event": "snapshot_command_refused", "request_id": request_id, "reason": reason},
            )
            return
        self.commands_accepted += 1
        self._remember(cmd.request_id, None)
        self._ack(request_id, True)
        log.info(
            "snapshot command accepted",
            extra={"event": "snapshot_command_accepted", "request_id": cmd.request_id,
                   "incident_id": cmd.incident_id or None, "profile": cmd.profile, "window_s": cmd.window_seconds},
        )

    async def _command_loop(self) -> None:
        while True:
            cmd = await self._commands.get()
            self._running_request = cmd.request_id
            try:
                await self._run_command(cmd)
            finally:
                self._running_request = None

    async def _run_command(self, cmd: pb.SnapshotCommand) -> None:
        request_id = cmd.request_id
        incident_id = cmd.incident_id or None
        self._progress(request_id, "collecting", detail=f"profile {cmd.profile}, {cmd.window_seconds:g} s")
        try:
            info = await self._snapshot_fn(cmd.profile, float(cmd.window_seconds), incident_id, request_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "snapshot for the collector failed",
                extra={"event": "snapshot_command_failed", "request_id": request_id, "error": f"{type(exc).__name__}: {exc}"},
            )
            self._finish(request_id, False, error=f"snapshot failed: {type(exc).__name__}: {exc}")
            return
        self._progress(request_id, "packed", bundle_id=info.bundle_id, detail=f"{info.size_bytes} bytes")
        try:
            await self.enqueue(info, incident_id=incident_id, request_id=request_id)
        except SpoolError as exc:
            self._finish(request_id, False, bundle_id=info.bundle_id, error=f"cannot queue the bundle: {exc}")
            return
        ahead = max(0, len(self._spool) - 1)
        self._progress(request_id, "uploading", bundle_id=info.bundle_id, detail=f"queued; {ahead} bundles ahead")
        # The SnapshotResult follows when the collector confirms the upload (or refuses the bundle).

    # -- uploads ------------------------------------------------------------------------
    async def _spool_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _upload_loop(self) -> None:
        backoff = Backoff(self._col.backoff_initial_s, self._col.backoff_max_s, self._rng)
        while True:
            await self._connected.wait()
            stub = self._stub
            item = self._spool.oldest()
            if item is None:
                self._work.clear()
                if self._spool.oldest() is None:
                    await self._work.wait()
                continue
            if stub is None:
                continue
            try:
                failure = await self._upload_item(stub, item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not stop the uploads for good
                log.exception("upload failed unexpectedly", extra={"event": "upload_error", "bundle_id": item.bundle_id})
                failure = _Failure(f"{type(exc).__name__}: {exc}")
            if failure is None:
                backoff.reset()
                continue
            self.uploads_failed += 1
            self.last_upload_error = f"{item.bundle_id}: {failure.message}"
            if failure.permanent:
                await self._quarantine(item, failure.message)
                backoff.reset()
                continue
            await self._spool_call(self._spool.mark_attempt, item.bundle_id, failure.message)
            delay = backoff.next_delay()
            log.warning(
                "upload failed; will retry",
                extra={"event": "upload_retry", "bundle_id": item.bundle_id, "error": failure.message,
                       "retry_in_s": round(delay, 3)},
            )
            await self._sleep(delay)

    async def _query(self, stub: pb_grpc.AgentServiceStub, item: SpoolItem) -> pb.QueryUploadResponse:
        try:
            return await _rpc(
                stub.QueryUpload(pb.QueryUploadRequest(bundle_id=item.bundle_id), timeout=self._col.connect_timeout_s)
            )
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # never started: nothing committed
                return pb.QueryUploadResponse(bundle_id=item.bundle_id, committed_size_bytes=0, complete=False)
            raise

    async def _upload_item(self, stub: pb_grpc.AgentServiceStub, item: SpoolItem) -> _Failure | None:
        """One attempt at one item: None when the collector committed it, else why not."""
        try:
            status = await self._query(stub, item)
        except aio.AioRpcError as exc:
            return await self._classify(stub, item, exc, start_offset=-1)
        if status.complete:
            await self._committed(item, resumed=True)
            return None
        offset = status.committed_size_bytes
        if not 0 <= offset <= item.size_bytes:
            return _Failure(
                f"the collector reports {offset} committed bytes of a {item.size_bytes}-byte bundle", permanent=True
            )
        try:
            fh = await self._spool_call(open, item.path, "rb")
        except OSError as exc:
            if self._spool.get(item.bundle_id) is None:
                return None  # evicted meanwhile; nothing to do
            return _Failure(f"cannot read the spooled bundle: {exc.strerror or exc}", permanent=True)
        try:
            if os.fstat(fh.fileno()).st_size != item.size_bytes:
                return _Failure("the spooled bundle changed size on disk", permanent=True)
            timeout = self._col.connect_timeout_s + (item.size_bytes - offset) / MIN_UPLOAD_RATE_BYTES_S
            try:
                response = await _rpc(stub.Upload(self._chunks(fh, item, offset), timeout=timeout))
            except aio.AioRpcError as exc:
                return await self._classify(stub, item, exc, start_offset=offset)
        finally:
            await self._spool_call(fh.close)
        if not response.complete:
            return _Failure(
                f"the collector did not confirm the upload ({response.committed_size_bytes} of "
                f"{item.size_bytes} bytes committed)"
            )
        await self._committed(item, resumed=offset > 0)
        return None

    async def _chunks(self, fh: Any, item: SpoolItem, offset: int) -> AsyncIterator[pb.UploadRequest]:
        """The Upload messages from ``offset``: one chunk read from disk at a time."""
        chunk_bytes = self._col.chunk_bytes
        await self._spool_call(fh.seek, offset)
        position = offset
        first = True
        while True:
            data = await self._spool_call(fh.read, min(chunk_bytes, max(0, item.size_bytes - position)))
            last = position + len(data) >= item.size_bytes or not data
            request = pb.UploadRequest(bundle_id=item.bundle_id, write_offset=position, data=data)
            if first:
                request.request_id = item.request_id or ""
                request.incident_id = item.incident_id or ""
                first = False
            if last:
                request.finish_write = True
                request.total_size_bytes = item.size_bytes
                request.sha256 = item.sha256
            yield request
            position += len(data)
            self.bytes_sent += len(data)
            if last:
                return

    async def _classify(
        self, stub: pb_grpc.AgentServiceStub, item: SpoolItem, exc: aio.AioRpcError, start_offset: int
    ) -> _Failure | None:
        """Turn an RPC error into a retry or, after a fresh QueryUpload still disagrees, a quarantine."""
        message = _rpc_error(exc)
        code = exc.code()
        if code not in PERMANENT_CODES:
            return _Failure(message, code, start_offset)
        try:
            status = await self._query(stub, item)
        except aio.AioRpcError as again:
            if again.code() in PERMANENT_CODES:
                return _Failure(f"{message}; QueryUpload: {_rpc_error(again)}", code, start_offset, permanent=True)
            return _Failure(message, code, start_offset)  # cannot tell now: try again later
        if status.complete:
            await self._committed(item, resumed=True)
            return None
        committed = status.committed_size_bytes
        retries = self._permanent_retries.get(item.bundle_id, 0)
        if 0 <= committed <= item.size_bytes and committed != start_offset and retries < MAX_PERMANENT_RETRIES:
            # The collector's committed offset moved: the error may be about an offset we no longer hold.
            if len(self._permanent_retries) >= 64:  # forget bundles that were evicted meanwhile
                for bundle_id in [b for b in self._permanent_retries if self._spool.get(b) is None]:
                    del self._permanent_retries[bundle_id]
            self._permanent_retries[item.bundle_id] = retries + 1
            return _Failure(f"{message} (collector now has {committed} bytes committed)", code, start_offset)
        return _Failure(message, code, start_offset, permanent=True)

    async def _committed(self, item: SpoolItem, *, resumed: bool) -> None:
        await self._spool_call(self._spool.delete, item.bundle_id)
        self._permanent_retries.pop(item.bundle_id, None)
        self.uploads_ok += 1
        self.last_bundle_uploaded_at = self._wall()
        log.info(
            "bundle uploaded",
            extra={"event": "bundle_uploaded", "bundle_id": item.bundle_id, "size_bytes": item.size_bytes,
                   "incident_id": item.incident_id, "request_id": item.request_id, "resumed": resumed},
        )
        if item.request_id:
            self._finish(item.request_id, True, bundle_id=item.bundle_id)

    async def _quarantine(self, item: SpoolItem, reason: str) -> None:
        await self._spool_call(self._spool.quarantine, item.bundle_id, reason)
        self._permanent_retries.pop(item.bundle_id, None)
        self.uploads_quarantined += 1
        if item.request_id:
            self._finish(item.request_id, False, bundle_id=item.bundle_id, error=f"the collector refused the bundle: {reason}")
