"""The upload state machine: every acceptance and every rejection, on real files and SQLite.

Each rejection is checked for its precise status and for what it leaves
behind: never a blob, never a bundle row; the staging file is removed or kept
exactly as docs/collector.md says.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest

from hostdiag.collector.errors import CollectorError
from hostdiag.collector.ingest import Ingest, IngestCounters, IngestLimits
from hostdiag.collector.metrics import Registry
from hostdiag.collector.store.base import HostRequestRecord, IncidentRecord, RequestStates
from hostdiag.collector.store.blobs import FileBlobStore, StagingArea
from hostdiag.collector.store.sqlite import SqliteMetadataStore
from hostdiag.v1 import agent_pb2

KiB = 1024


class Env:
    def __init__(self, root: Path, publish: Any = None, clock: Any = None, **limits: Any) -> None:
        self.root = root
        self.executor = concurrent.futures.ThreadPoolExecutor(2)
        self.store = SqliteMetadataStore(str(root / "collector.db"))
        self.blobs = FileBlobStore(str(root / "blobs"), self.executor)
        self.staging = StagingArea(str(root / "uploads"), self.executor)
        self.registry = Registry()
        self.rejections = self.registry.counter("rejections", "", ["reason"])
        self.stored = self.registry.counter("stored", "")
        self.bytes = self.registry.counter("bytes", "")
        kwargs: dict[str, Any] = {}
        if clock is not None:
            kwargs["clock"] = clock
        self.ingest = Ingest(
            self.store,
            self.blobs,
            self.staging,
            IngestLimits(**limits),
            publish=publish,
            counters=IngestCounters(self.stored, self.bytes, self.rejections),
            executor=self.executor,
            **kwargs,
        )

    async def __aenter__(self) -> Env:
        await self.store.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()
        self.executor.shutdown()

    async def upload(self, msgs: Iterable[agent_pb2.UploadRequest]) -> Any:
        async def gen() -> AsyncIterator[agent_pb2.UploadRequest]:
            for m in msgs:
                yield m

        return await self.ingest.receive(gen())

    async def rejected(self, msgs: Iterable[agent_pb2.UploadRequest]) -> CollectorError:
        with pytest.raises(CollectorError) as info:
            await self.upload(msgs)
        return info.value

    async def nothing_stored(self) -> None:
        assert await self.blobs.list_digests() == []
        assert await self.store.list_bundles("", "", 100) == []

    def staged(self, bundle_id: str) -> int | None:
        return self.staging.committed_size_sync(bundle_id)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())


def test_upload_in_chunks_stores_the_bundle(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle("web-1", filler_bytes=100 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            result = await env.upload(messages(b.bundle_id, b.data, 16 * KiB))
            assert (result.bundle_id, result.committed_size_bytes, result.complete) == (b.bundle_id, len(b.data), True)
            row = await env.store.get_bundle(b.bundle_id)
            assert row is not None
            assert (row.host_id, row.size_bytes, row.sha256) == ("web-1", len(b.data), b.sha256)
            assert row.profile == "default" and row.trigger == "collector"
            assert '"bundle_id"' in row.manifest_json and b.bundle_id in row.manifest_json
            assert await env.blobs.read(b.sha256, 0, len(b.data) + 1) == b.data
            assert env.blobs.path(b.sha256).endswith(f"blobs/sha256/{b.sha256[:2]}/{b.sha256}")
            assert env.staged(b.bundle_id) is None
            assert await env.store.list_uploads() == []
            assert env.stored.value() == 1
            assert env.bytes.value() == len(b.data)

    run(scenario)


def test_reupload_of_a_stored_bundle_is_idempotent(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle()

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            await env.upload(messages(b.bundle_id, b.data))
            again = await env.upload(messages(b.bundle_id, b.data))
            assert again.complete and again.committed_size_bytes == len(b.data)
            assert len(await env.store.list_bundles("", "", 100)) == 1
            q = await env.ingest.query(b.bundle_id)
            assert (q.committed_size_bytes, q.complete) == (len(b.data), True)
            assert env.stored.value() == 1

    run(scenario)


def test_resume_from_the_committed_size(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle(filler_bytes=64 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            half = messages(b.bundle_id, b.data, 8 * KiB, finish=False)[:3]
            partial = await env.upload(half)
            assert (partial.committed_size_bytes, partial.complete) == (24 * KiB, False)
            assert (await env.ingest.query(b.bundle_id)).committed_size_bytes == 24 * KiB
            rest = messages(b.bundle_id, b.data, 8 * KiB, start=24 * KiB)
            rest[0].bundle_id = b.bundle_id
            done = await env.upload(rest)
            assert done.complete
            assert await env.blobs.read(b.sha256, 0, len(b.data)) == b.data

    run(scenario)


def test_query_for_a_never_seen_bundle_is_zero(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            q = await env.ingest.query("0190a5f4-5b8e-7cc0-8d1e-1234567890ab")
            assert (q.committed_size_bytes, q.complete) == (0, False)

    run(scenario)


def test_offset_gap_is_out_of_range_and_keeps_what_was_committed(
    tmp_path: Path, make_bundle: Any, messages: Any
) -> None:
    b = make_bundle(filler_bytes=32 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            msgs = messages(b.bundle_id, b.data, 8 * KiB)
            msgs[1].write_offset += 1
            err = await env.rejected(msgs)
            assert err.code == grpc.StatusCode.OUT_OF_RANGE
            assert f"expected {8 * KiB}" in err.message and f"got {8 * KiB + 1}" in err.message
            assert env.staged(b.bundle_id) == 8 * KiB  # resumable
            await env.nothing_stored()
            assert env.rejections.value(reason="offset_mismatch") == 1

    run(scenario)


def test_resend_of_committed_bytes_is_out_of_range(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle(filler_bytes=32 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            await env.upload(messages(b.bundle_id, b.data, 8 * KiB, finish=False)[:2])
            err = await env.rejected(messages(b.bundle_id, b.data, 8 * KiB))
            assert err.code == grpc.StatusCode.OUT_OF_RANGE
            assert f"expected {16 * KiB}" in err.message
            assert env.staged(b.bundle_id) == 16 * KiB

    run(scenario)


def test_chunk_over_the_limit_is_invalid_and_writes_nothing(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle(filler_bytes=1200 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            err = await env.rejected(messages(b.bundle_id, b.data, 1024 * KiB + 1))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "exceeds the limit of 1048576 bytes" in err.message
            assert env.staged(b.bundle_id) is None
            assert await env.store.list_uploads() == []
            await env.nothing_stored()

    run(scenario)


@pytest.mark.parametrize(
    "bad_id",
    ["", "not-a-uuid", "../../etc/passwd", "0190A5F4-5B8E-7CC0-8D1E-1234567890AB", "0190a5f45b8e7cc08d1e1234567890ab"],
)
def test_invalid_bundle_id(tmp_path: Path, bad_id: str) -> None:
    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            err = await env.rejected([agent_pb2.UploadRequest(bundle_id=bad_id, data=b"x")])
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            assert err.message.startswith("bundle_id:")
            with pytest.raises(CollectorError) as info:
                await env.ingest.query(bad_id)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert os.listdir(env.staging.root) == []
            await env.nothing_stored()

    run(scenario)


def test_later_message_naming_another_bundle_is_invalid(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle(filler_bytes=32 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            msgs = messages(b.bundle_id, b.data, 8 * KiB)
            msgs[1].bundle_id = "0190a5f4-5b8e-7cc0-8d1e-1234567890ab"
            err = await env.rejected(msgs)
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "later message names" in err.message

    run(scenario)


def test_empty_stream_is_invalid(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            err = await env.rejected([])
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario)


def test_bundle_over_the_size_cap_is_discarded(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle(filler_bytes=96 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c", max_bundle_bytes=64 * KiB) as env:
            err = await env.rejected(messages(b.bundle_id, b.data, 16 * KiB))
            assert err.code == grpc.StatusCode.FAILED_PRECONDITION  # permanent: retrying cannot help
            assert "65536 bytes" in err.message
            assert env.staged(b.bundle_id) is None
            assert await env.store.list_uploads() == []
            await env.nothing_stored()
            assert env.rejections.value(reason="too_large") == 1

    run(scenario)


def test_wrong_sha256_is_data_loss(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle()

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            err = await env.rejected(messages(b.bundle_id, b.data, sha256="0" * 64))
            assert err.code == grpc.StatusCode.DATA_LOSS
            assert b.sha256 in err.message
            assert env.staged(b.bundle_id) is None
            assert await env.store.list_uploads() == []
            await env.nothing_stored()

    run(scenario)


def test_wrong_sha256_after_a_resume_is_detected_from_disk(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle(filler_bytes=32 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            await env.upload(messages(b.bundle_id, b.data, 8 * KiB, finish=False)[:2])
        # A new collector (no in-memory hash state) finishes the upload.
        async with Env(tmp_path / "c") as env:
            rest = messages(b.bundle_id, b.data, 8 * KiB, start=16 * KiB, sha256="f" * 64)
            rest[0].bundle_id = b.bundle_id
            err = await env.rejected(rest)
            assert err.code == grpc.StatusCode.DATA_LOSS and b.sha256 in err.message
            await env.nothing_stored()

    run(scenario)


def test_malformed_sha256_is_invalid(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle()

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            err = await env.rejected(messages(b.bundle_id, b.data, sha256=b.sha256.upper()))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.message.startswith("sha256:")
            assert env.staged(b.bundle_id) is None
            await env.nothing_stored()

    run(scenario)


def test_wrong_total_size_is_invalid(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle()

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            err = await env.rejected(messages(b.bundle_id, b.data, total=len(b.data) + 1))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            assert err.message.startswith("total_size_bytes:")
            assert env.staged(b.bundle_id) is None
            await env.nothing_stored()

    run(scenario)


def test_bytes_that_are_not_a_bundle_are_invalid(tmp_path: Path, messages: Any) -> None:
    junk = hashlib.shake_256(b"junk").digest(5000)
    bundle_id = "0190a5f4-5b8e-7cc0-8d1e-1234567890ab"

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            err = await env.rejected(messages(bundle_id, junk))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            assert err.message.startswith("bad bundle:")
            assert env.staged(bundle_id) is None
            await env.nothing_stored()
            assert env.rejections.value(reason="bad_bundle") == 1

    run(scenario)


def test_manifest_for_another_bundle_id_is_invalid(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle()
    other = "0190a5f4-5b8e-7cc0-8d1e-1234567890ab"

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            err = await env.rejected(messages(other, b.data))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "bundle_id" in err.message and b.bundle_id in err.message
            assert env.staged(other) is None
            await env.nothing_stored()

    run(scenario)


def test_manifest_host_must_be_the_requested_host(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle("db-1")

    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            inc = IncidentRecord("inc-aaaaaaaa", "t", 2, "", "open", {}, ("web-1",), 300.0, "default", 1)
            req = HostRequestRecord("req-1", inc.id, "web-1", RequestStates.REQUESTED, 1, 1, 10**15)
            await env.store.create_incident(inc, [req], [])
            err = await env.rejected(messages(b.bundle_id, b.data, request_id="req-1"))
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "'db-1'" in err.message and "'web-1'" in err.message
            await env.nothing_stored()

    run(scenario)


def test_concurrent_upload_cap(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle(filler_bytes=16 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c", max_concurrent_uploads=1) as env:
            release = asyncio.Event()
            first_in = asyncio.Event()

            async def slow() -> AsyncIterator[agent_pb2.UploadRequest]:
                msgs = messages(b.bundle_id, b.data, 4 * KiB, finish=False)
                yield msgs[0]
                first_in.set()
                await release.wait()

            holder = asyncio.create_task(env.ingest.receive(slow()))
            await first_in.wait()
            err = await env.rejected(messages(b.bundle_id, b.data))
            assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "concurrent uploads" in err.message
            release.set()
            assert not (await holder).complete
            rest = messages(b.bundle_id, b.data, 4 * KiB, start=4 * KiB)
            rest[0].bundle_id = b.bundle_id
            assert (await env.upload(rest)).complete  # the slot is free again

    run(scenario)


def test_idle_stream_times_out_and_stays_resumable(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle(filler_bytes=16 * KiB)

    async def scenario() -> None:
        async with Env(tmp_path / "c", upload_idle_timeout_s=0.1) as env:
            never = asyncio.Event()

            async def stalls() -> AsyncIterator[agent_pb2.UploadRequest]:
                yield messages(b.bundle_id, b.data, 4 * KiB, finish=False)[0]
                await never.wait()

            with pytest.raises(CollectorError) as info:
                await env.ingest.receive(stalls())
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert env.staged(b.bundle_id) == 4 * KiB

    run(scenario)


def test_crash_between_verify_and_row_is_finished_at_start(tmp_path: Path, make_bundle: Any, messages: Any) -> None:
    b = make_bundle()

    async def crash(_bundle: Any) -> bool:
        raise RuntimeError("killed here")

    async def scenario() -> None:
        async with Env(tmp_path / "c", publish=crash) as env:
            with pytest.raises(RuntimeError):
                await env.upload(messages(b.bundle_id, b.data))
            assert await env.store.get_bundle(b.bundle_id) is None  # not visible
            assert (await env.store.list_uploads())[0].state == "verified"
        async with Env(tmp_path / "c") as env:
            done = await env.ingest.recover()
            assert done["published"] == 1
            row = await env.store.get_bundle(b.bundle_id)
            assert row is not None and row.sha256 == b.sha256
            assert await env.blobs.read(b.sha256, 0, len(b.data)) == b.data
            assert await env.store.list_uploads() == []
            assert env.staged(b.bundle_id) is None

    run(scenario)


def test_recover_removes_blobs_no_row_refers_to(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Env(tmp_path / "c") as env:
            digest = await env.blobs.write_bytes(b"orphan")
            assert await env.blobs.list_digests() == [digest]
            assert (await env.ingest.recover())["orphan_blobs"] == 1
            assert await env.blobs.list_digests() == []

    run(scenario)


def test_sweep_removes_abandoned_partial_uploads(tmp_path: Path, make_bundle: Any, messages: Any, clock: Any) -> None:
    b = make_bundle(filler_bytes=16 * KiB)
    clock.now = time.time()  # staging files carry real mtimes

    async def scenario() -> None:
        async with Env(tmp_path / "c", clock=clock, upload_retention_s=3600) as env:
            await env.upload(messages(b.bundle_id, b.data, 4 * KiB, finish=False)[:1])
            assert await env.ingest.sweep() == 0
            clock.advance(3601)
            assert await env.ingest.sweep() == 1
            assert env.staged(b.bundle_id) is None
            assert await env.store.list_uploads() == []

    run(scenario)
