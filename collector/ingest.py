"""Resumable bundle uploads (the ByteStream pattern) and their publication.

One ``Upload`` stream carries chunks of one bundle::

    first message   bundle_id, write_offset, data [, request_id, incident_id]
    next messages   write_offset, data            (bundle_id empty or the same)
    last message    finish_write, total_size_bytes, sha256 [, data]

Rules, each with the status a violation gets (the staging file is the state):

- ``bundle_id`` must be a UUID in canonical lowercase form → INVALID_ARGUMENT
  (``invalid_bundle_id``); a later message naming another id → INVALID_ARGUMENT.
- ``data`` longer than ``max_chunk_bytes`` (at most 1 MiB) → INVALID_ARGUMENT
  (``chunk_too_large``).  Nothing of that chunk is written.
- ``write_offset`` must equal the committed size → OUT_OF_RANGE with the
  expected offset in the message (``offset_mismatch``).  This is strict: a
  re-send of bytes already committed is refused like any other overlap,
  because after a broken stream the agent asks ``QueryUpload`` and resumes at
  the committed size, never behind it.  Nothing is written.
- committed + chunk beyond ``max_bundle_bytes`` → FAILED_PRECONDITION (permanent: the agent quarantines)
  (``too_large``); the staging file is removed.
- at finish, ``total_size_bytes`` must equal the bytes received →
  INVALID_ARGUMENT (``size_mismatch``), and ``sha256`` must be 64 lowercase
  hex digits → INVALID_ARGUMENT (``bad_sha256``) that equal the sha256 of the
  bytes received → DATA_LOSS (``sha256_mismatch``); the bundle's
  ``manifest.json`` and ``evidence.json`` must read cleanly within the caps →
  INVALID_ARGUMENT (``bad_bundle``); the manifest's ``bundle_id`` must be the
  upload's and its ``host_id`` the requesting host's → INVALID_ARGUMENT
  (``manifest_mismatch``).  Any finish failure removes the staging file and
  stores nothing.
- more than ``max_concurrent_uploads`` streams at once → RESOURCE_EXHAUSTED
  (``too_many_uploads``); no message arrives for ``upload_idle_timeout_s`` →
  DEADLINE_EXCEEDED (``idle``), the staging file is kept for a resume.

A bundle that is already stored answers ``complete=true`` to any Upload or
QueryUpload for its id (so a re-upload is idempotent and adds no row).
QueryUpload for an id the collector has never seen answers committed 0.

Publication is crash-safe: the finished upload row is first marked
``verified`` with the bundle row to insert, then the staging file is renamed
into the blob store, then the bundle row is inserted and the upload row
deleted in one transaction.  :meth:`Ingest.recover` finishes a publication
that a crash interrupted, and removes blobs that no row refers to; a bundle is
therefore visible either completely or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import grpc

from hostdiag.agent.bundle.reader import (
    BundleFormatError,
    ReadLimits,
    VerifyReport,
    read_manifest_and_evidence,
    verify_bundle,
)
from hostdiag.collector.errors import CollectorError
from hostdiag.collector.metrics import Counter
from hostdiag.collector.signals.evidence import stored_evidence_json
from hostdiag.collector.store.base import BundleRecord, MetadataStore, UploadRecord
from hostdiag.collector.store.blobs import FileBlobStore, StagingArea, is_bundle_id, is_sha256

__all__ = ["Ingest", "IngestLimits", "UploadResult", "IngestCounters"]

log = logging.getLogger("hostdiag.collector.ingest")

MAX_ID_CHARS = 128
# Chunks are written without an fsync each; a stream fsyncs at least this often, so a
# power loss costs the agent at most this much re-sending (a process crash costs nothing).
SYNC_EVERY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class IngestLimits:
    max_bundle_bytes: int = 256 * 1024 * 1024
    max_chunk_bytes: int = 1024 * 1024
    max_manifest_bytes: int = 4 * 1024 * 1024
    max_evidence_bytes: int = 16 * 1024 * 1024
    max_concurrent_uploads: int = 16
    upload_idle_timeout_s: float = 60.0
    upload_retention_s: float = 86400.0
    # evidence.json kept per bundle for the severity signals (largest top-level keys dropped beyond)
    max_stored_evidence_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class UploadResult:
    bundle_id: str
    committed_size_bytes: int
    complete: bool


@dataclass
class IngestCounters:
    bundles_received: Counter | None = None
    bytes_received: Counter | None = None
    rejections: Counter | None = None


class _State:
    """In-memory companion of one bundle's staging file."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.streams = 0
        # The staging file's size as this collector last wrote it; None: ask the file.
        self.size: int | None = None
        self.unsynced_bytes = 0
        # Set once a stream sharing this state stored the bundle.
        self.published = False


Publish = Callable[[BundleRecord], Awaitable[bool]]


class _ReadAhead:
    """An Upload stream's messages, the next one read while the current one is written.

    gRPC hands a message over, and lets the client send more, only while a read
    is pending.  Reading strictly one message after the other therefore stalls
    the stream for every chunk's write, hash and bookkeeping; with one read in
    flight, the next chunk arrives meanwhile.  At most one message is held
    beyond the one being handled.
    """

    def __init__(self, messages: AsyncIterator[Any]) -> None:
        self._messages = messages
        self._pending: asyncio.Task[Any] | None = None
        self._unread: Any = None

    def unread(self, message: Any) -> None:
        """Hand ``message`` out again on the next call (the caller drops its own reference)."""
        self._unread = message

    async def _read(self) -> Any:
        try:
            return await anext(self._messages)
        except StopAsyncIteration:
            return None

    async def next(self, timeout_s: float) -> Any:
        """The next message (None at the end); raises ``TimeoutError`` after ``timeout_s``."""
        if self._unread is not None:
            message, self._unread = self._unread, None
        else:
            if self._pending is None:
                self._pending = asyncio.ensure_future(self._read())
            message = await asyncio.wait_for(asyncio.shield(self._pending), timeout_s)
            self._pending = None
        if message is not None and not message.finish_write and self._pending is None:
            self._pending = asyncio.ensure_future(self._read())
        return message

    async def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


def _created_at_ms(bundle_id: str, manifest: dict[str, Any]) -> int:
    u = uuid.UUID(bundle_id)
    if u.version == 7:
        return u.int >> 80
    created = manifest.get("created_at")
    if isinstance(created, str):
        with contextlib.suppress(ValueError):
            return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() * 1000)
    return 0


def _text(value: Any, limit: int = MAX_ID_CHARS) -> str:
    return value[:limit] if isinstance(value, str) else ""


class Ingest:
    def __init__(
        self,
        store: MetadataStore,
        blobs: FileBlobStore,
        staging: StagingArea,
        limits: IngestLimits,
        *,
        publish: Publish | None = None,
        counters: IngestCounters | None = None,
        clock: Callable[[], float] = time.time,
        executor: Any = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.staging = staging
        self.limits = limits
        self._publish: Publish = publish or (lambda b: store.publish_bundle(b, [], []))
        self.counters = counters or IngestCounters()
        self.clock = clock
        self._executor = executor
        self._states: dict[str, _State] = {}
        self.active_streams = 0
        self._read_limits = ReadLimits(
            max_manifest_bytes=limits.max_manifest_bytes,
            max_evidence_bytes=limits.max_evidence_bytes,
            max_total_bytes=max(limits.max_bundle_bytes * 64, 64 * 1024 * 1024),
        )

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- bookkeeping --------------------------------------------------------------------
    def _reject(self, code: grpc.StatusCode, message: str, reason: str) -> CollectorError:
        if self.counters.rejections is not None:
            self.counters.rejections.inc(reason=reason)
        log.info("upload rejected", extra={"event": "upload_rejected", "reason": reason, "detail": message})
        return CollectorError(code, message, reason)

    def _acquire_state(self, bundle_id: str) -> _State:
        state = self._states.get(bundle_id)
        if state is None:
            state = _State()
            self._states[bundle_id] = state
        state.streams += 1
        return state

    def _release_state(self, bundle_id: str, state: _State) -> None:
        state.streams -= 1
        if state.streams == 0 and self._states.get(bundle_id) is state:
            del self._states[bundle_id]

    def _forget(self, bundle_id: str) -> None:
        state = self._states.get(bundle_id)
        if state is not None:
            state.size = None

    async def _discard(self, bundle_id: str) -> None:
        """Remove a rejected upload entirely: staging file and upload row."""
        self._forget(bundle_id)
        await self.staging.remove(bundle_id)
        await self.store.delete_upload(bundle_id)

    # -- QueryUpload --------------------------------------------------------------------
    def _check_owner(self, bundle: Any, identity: tuple[str, ...] | None) -> None:
        """An agent with a certificate only ever learns about its own host's stored bundles."""
        if identity is not None and bundle.host_id not in identity:
            raise self._reject(
                grpc.StatusCode.PERMISSION_DENIED,
                f"bundle {bundle.bundle_id} belongs to another host than this agent's certificate names",
                "not_owner",
            )

    async def query(self, bundle_id: str, identity: tuple[str, ...] | None = None) -> UploadResult:
        """``identity``: the names in the caller's verified certificate (None: plaintext, no check)."""
        if not is_bundle_id(bundle_id):
            raise self._reject(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bundle_id: must be a UUID in canonical lowercase form, got {bundle_id[:80]!r}",
                "invalid_bundle_id",
            )
        bundle = await self.store.get_bundle(bundle_id)
        if bundle is not None:
            self._check_owner(bundle, identity)
            return UploadResult(bundle_id, bundle.size_bytes, True)
        # Only what is durable: chunks are written without an fsync each.
        size = await self.staging.durable_size(bundle_id)
        return UploadResult(bundle_id, size or 0, False)

    # -- Upload -------------------------------------------------------------------------
    async def _next(self, messages: _ReadAhead) -> Any:
        try:
            return await messages.next(self.limits.upload_idle_timeout_s)
        except asyncio.TimeoutError:
            raise self._reject(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no upload message for {self.limits.upload_idle_timeout_s:g} s; resume with QueryUpload",
                "idle",
            ) from None

    async def receive(self, messages: AsyncIterator[Any], identity: tuple[str, ...] | None = None) -> UploadResult:
        """Serve one Upload stream of ``UploadRequest`` messages.

        ``identity``: the names in the caller's verified certificate; the manifest's
        ``host_id`` must be one of them (None: plaintext on loopback, no such check).
        """
        if self.active_streams >= self.limits.max_concurrent_uploads:
            raise self._reject(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent uploads (limit {self.limits.max_concurrent_uploads}); retry later",
                "too_many_uploads",
            )
        self.active_streams += 1
        reader = _ReadAhead(messages)
        try:
            first = await self._next(reader)
            if first is None:
                raise self._reject(
                    grpc.StatusCode.INVALID_ARGUMENT, "empty upload stream: no UploadRequest", "empty_stream"
                )
            bundle_id = first.bundle_id
            if not is_bundle_id(bundle_id):
                raise self._reject(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"bundle_id: must be a UUID in canonical lowercase form, got {bundle_id[:80]!r}",
                    "invalid_bundle_id",
                )
            for name in ("request_id", "incident_id"):
                if len(getattr(first, name)) > MAX_ID_CHARS:
                    raise self._reject(
                        grpc.StatusCode.INVALID_ARGUMENT, f"{name}: at most {MAX_ID_CHARS} characters", "bad_field"
                    )
            request_id, incident_id = first.request_id, first.incident_id
            # Nothing but the reader keeps a message (and its chunk) once the chunk is written:
            # with many uploads at once, chunks held through publication add up.
            reader.unread(first)
            del first
            state = self._acquire_state(bundle_id)
            try:
                return await self._receive(bundle_id, state, request_id, incident_id, reader, identity)
            finally:
                self._release_state(bundle_id, state)
        finally:
            self.active_streams -= 1
            await reader.close()

    async def _receive(
        self, bundle_id: str, state: _State, request_id: str, incident_id: str, messages: _ReadAhead,
        identity: tuple[str, ...] | None = None,
    ) -> UploadResult:
        stored = await self.store.get_bundle(bundle_id)
        if stored is not None:
            self._check_owner(stored, identity)
            return UploadResult(bundle_id, stored.size_bytes, True)
        upload = await self.store.get_upload(bundle_id)
        saved = upload is not None
        if upload is None:
            now = self.now_ms()
            upload = UploadRecord(
                bundle_id=bundle_id,
                started_at_ms=now,
                updated_at_ms=now,
                request_id=request_id,
                incident_id=incident_id,
            )
        elif (request_id or incident_id) and not (upload.request_id or upload.incident_id):
            upload = replace(upload, request_id=request_id, incident_id=incident_id)
            saved = False
        msg = await self._next(messages)
        committed = 0
        while msg is not None:
            if msg.bundle_id and msg.bundle_id != bundle_id:
                raise self._reject(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"bundle_id: this stream uploads {bundle_id}, a later message names {msg.bundle_id[:80]!r}",
                    "invalid_bundle_id",
                )
            # Each read of a protobuf bytes field copies it: read the chunk once, then let the
            # message go, so only ``data`` holds the chunk until it is written.
            data: bytes = msg.data
            offset, finish = msg.write_offset, msg.finish_write
            total_size, sha256 = msg.total_size_bytes, msg.sha256
            del msg
            if len(data) > self.limits.max_chunk_bytes:
                raise self._reject(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"data: chunk of {len(data)} bytes exceeds the limit of {self.limits.max_chunk_bytes} bytes",
                    "chunk_too_large",
                )
            async with state.lock:
                if state.published:  # another stream of this bundle stored it meanwhile
                    stored = await self.store.get_bundle(bundle_id)
                    assert stored is not None
                    return UploadResult(bundle_id, stored.size_bytes, True)
                if state.size is None:
                    state.size = await self.staging.committed_size(bundle_id) or 0
                committed = state.size
                if offset != committed:
                    raise self._reject(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"write_offset: expected {committed} (the committed size), got {offset}",
                        "offset_mismatch",
                    )
                if committed + len(data) > self.limits.max_bundle_bytes:
                    await self._discard(bundle_id)
                    # Permanent (FAILED_PRECONDITION), not RESOURCE_EXHAUSTED: retrying the
                    # same bundle can never fit, and agents retry RESOURCE_EXHAUSTED.
                    raise self._reject(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"bundle exceeds the limit of {self.limits.max_bundle_bytes} bytes; upload discarded",
                        "too_large",
                    )
                if not saved:
                    # The upload row exists once the first bytes are about to be written.
                    upload = replace(upload, updated_at_ms=self.now_ms())
                    await self.store.put_upload(upload)
                    saved = True
                if data or committed == 0:
                    # Not hashed here: the member check at finish reads the whole file anyway,
                    # and hashes it on the way.
                    sync = state.unsynced_bytes + len(data) >= SYNC_EVERY_BYTES
                    state.size = None  # unknown until the write returns
                    try:
                        committed = await self.staging.append(bundle_id, committed, data, None, sync)
                    except ValueError:
                        # The file changed size under us (a write of a cancelled stream ended late).
                        now_size = await self.staging.committed_size(bundle_id) or 0
                        raise self._reject(
                            grpc.StatusCode.OUT_OF_RANGE,
                            f"write_offset: expected {now_size} (the committed size), got {offset}",
                            "offset_mismatch",
                        ) from None
                    state.size = committed
                    state.unsynced_bytes = 0 if sync else state.unsynced_bytes + len(data)
                    if data and self.counters.bytes_received is not None:
                        self.counters.bytes_received.inc(len(data))
                data = b""
                if finish:
                    return await self._finish(bundle_id, state, upload, committed, total_size, sha256, identity)
            msg = await self._next(messages)
        # The stream ended without finishing: what we answer must be durable.
        async with state.lock:
            await self.staging.sync(bundle_id)
            state.unsynced_bytes = 0
        return UploadResult(bundle_id, committed, False)

    async def _finish(
        self, bundle_id: str, state: _State, upload: UploadRecord, committed: int, total_size_bytes: int,
        sha256: str, identity: tuple[str, ...] | None = None,
    ) -> UploadResult:
        """Verify and publish; called with the bundle's lock held."""
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if total_size_bytes != committed:
            await self._discard(bundle_id)
            raise self._reject(
                bad,
                f"total_size_bytes: finish_write says {total_size_bytes} but {committed} bytes were received; "
                "upload discarded",
                "size_mismatch",
            )
        if not is_sha256(sha256):
            await self._discard(bundle_id)
            raise self._reject(bad, "sha256: must be 64 lowercase hex digits; upload discarded", "bad_sha256")
        path = self.staging.path(bundle_id)
        loop = asyncio.get_running_loop()
        # One pass reads every member (names, types, duplicates, count, each size and sha256
        # against the manifest, so a bundle stored here is one a responder can unpack safely)
        # and hashes the whole file on the way; that hash is checked first, so bytes damaged
        # on the way are DATA_LOSS (send again), not a bad bundle.
        report = await loop.run_in_executor(self._executor, self._verify, path)
        if report.sha256 is not None and report.compressed_bytes == committed:
            digest = report.sha256
        else:  # the reader stopped early: hash the file on its own
            digest = await self.staging.sha256(bundle_id)
        if digest != sha256:
            await self._discard(bundle_id)
            raise self._reject(
                grpc.StatusCode.DATA_LOSS,
                f"sha256: the {committed} bytes received hash to {digest}, finish_write says {sha256}; "
                "upload discarded, send the bundle again",
                "sha256_mismatch",
            )
        try:
            manifest, evidence = await loop.run_in_executor(
                self._executor, read_manifest_and_evidence, path, self._read_limits
            )
            if not report.ok:
                more = len(report.problems) - 1
                raise BundleFormatError(report.problems[0] + (f" (and {more} more problems)" if more > 0 else ""))
        except BundleFormatError as exc:
            await self._discard(bundle_id)
            raise self._reject(bad, f"bad bundle: {exc}; upload discarded", "bad_bundle") from None
        problem = await self._manifest_problem(bundle_id, upload, manifest, identity)
        if problem:
            await self._discard(bundle_id)
            raise self._reject(bad, f"{problem}; upload discarded", "manifest_mismatch")
        manifest_json = await loop.run_in_executor(self._executor, self._manifest_text, path)
        evidence_json = await loop.run_in_executor(
            self._executor, stored_evidence_json, evidence, self.limits.max_stored_evidence_bytes
        )
        now = self.now_ms()
        bundle = BundleRecord(
            bundle_id=bundle_id,
            host_id=manifest["host_id"],
            size_bytes=committed,
            sha256=digest,
            received_at_ms=now,
            manifest_json=manifest_json,
            created_at_ms=_created_at_ms(bundle_id, manifest),
            incident_id=_text(upload.incident_id or manifest.get("incident_id")),
            request_id=_text(upload.request_id or manifest.get("request_id")),
            profile=_text(manifest.get("profile"), 64),
            trigger=_text(manifest.get("trigger"), 64),
            evidence_json=evidence_json,
        )
        # Shielded: a client that goes away now does not leave publication half done.
        await asyncio.shield(self._commit(replace(upload, state="verified", bundle=bundle, updated_at_ms=now)))
        state.published = True
        self._forget(bundle_id)
        return UploadResult(bundle_id, committed, True)

    def _verify(self, path: str) -> VerifyReport:
        """Read the whole bundle within the caps: every member checked, the file hashed."""
        return verify_bundle(path, limits=self._read_limits)

    def _manifest_text(self, path: str) -> str:
        """manifest.json exactly as the agent wrote it (the reader already checked it)."""
        import tarfile

        import zstandard

        with open(path, "rb") as raw:
            dctx = zstandard.ZstdDecompressor(max_window_size=self._read_limits.max_zstd_window_bytes)
            with dctx.stream_reader(raw, read_across_frames=True) as plain:
                with tarfile.open(fileobj=plain, mode="r|") as tar:
                    member = tar.next()
                    assert member is not None and member.name == "manifest.json"
                    if member.size > self.limits.max_manifest_bytes:
                        raise BundleFormatError("manifest.json is too big")
                    fh = tar.extractfile(member)
                    assert fh is not None
                    return fh.read(member.size).decode("utf-8")

    async def _manifest_problem(
        self, bundle_id: str, upload: UploadRecord, manifest: dict[str, Any], identity: tuple[str, ...] | None = None
    ) -> str:
        if manifest.get("bundle_id") != bundle_id:
            return f"manifest.json: bundle_id is {str(manifest.get('bundle_id'))[:80]!r}, the upload is {bundle_id}"
        host_id = manifest.get("host_id")
        if not isinstance(host_id, str) or not host_id or len(host_id) > 253:
            return "manifest.json: host_id must be a non-empty string of at most 253 characters"
        if identity is not None and host_id not in identity:
            # Permanent (INVALID_ARGUMENT): the agent quarantines this bundle and goes on with the next.
            return f"manifest.json: host_id {host_id!r} is not the host this agent's certificate names"
        if upload.request_id:
            req = await self.store.get_request(upload.request_id)
            if req is not None and req.host_id != host_id:
                return (
                    f"manifest.json: host_id {host_id!r} is not the host request {upload.request_id} "
                    f"was sent to ({req.host_id!r})"
                )
        return ""

    async def _commit(self, upload: UploadRecord) -> bool:
        """Steps 2 and 3 of publication (1: the verified upload row).  Idempotent."""
        bundle = upload.bundle
        assert bundle is not None
        await self.store.put_upload(upload)
        if await self.staging.committed_size(bundle.bundle_id) is not None:
            await self.blobs.publish_file(bundle.sha256, self.staging.path(bundle.bundle_id))
        inserted = await self._publish(bundle)
        if inserted:
            if self.counters.bundles_received is not None:
                self.counters.bundles_received.inc()
            log.info(
                "bundle stored",
                extra={
                    "event": "bundle_stored", "bundle_id": bundle.bundle_id, "host_id": bundle.host_id,
                    "size_bytes": bundle.size_bytes, "incident_id": bundle.incident_id,
                },
            )
        return inserted

    # -- start-up and housekeeping -----------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Finish interrupted publications, drop orphans; what was done."""
        done = {"published": 0, "orphan_blobs": 0, "orphan_uploads": 0}
        for upload in await self.store.list_uploads():
            if upload.state == "verified" and upload.bundle is not None:
                staged = await self.staging.committed_size(upload.bundle_id) is not None
                if staged or await self.blobs.exists(upload.bundle.sha256):
                    await self._commit(upload)
                    done["published"] += 1
                else:
                    await self.store.delete_upload(upload.bundle_id)
                    done["orphan_uploads"] += 1
        referenced = await self.store.referenced_digests()
        for digest in await self.blobs.list_digests():
            if digest not in referenced:
                await self.blobs.delete(digest)
                done["orphan_blobs"] += 1
        if any(done.values()):
            log.info("recovered storage", extra={"event": "ingest_recovered", **done})
        return done

    async def sweep(self) -> int:
        """Delete partial uploads not touched for ``upload_retention_s``; how many."""
        cutoff = self.clock() - self.limits.upload_retention_s
        removed = 0
        for staged in await self.staging.list():
            if staged.mtime < cutoff and staged.bundle_id not in self._states:
                await self._discard(staged.bundle_id)
                removed += 1
        for upload in await self.store.list_uploads():
            if (
                upload.state == "receiving"
                and upload.updated_at_ms < cutoff * 1000
                and upload.bundle_id not in self._states
                and await self.staging.committed_size(upload.bundle_id) is None
            ):
                await self.store.delete_upload(upload.bundle_id)
        if removed:
            log.info("abandoned uploads removed", extra={"event": "uploads_swept", "count": removed})
        return removed

    async def run_sweeper(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("upload sweep failed", extra={"event": "sweep_failed"})
