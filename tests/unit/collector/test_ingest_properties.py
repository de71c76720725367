"""The upload state machine under random message sequences (hypothesis, derandomized).

Random streams of Upload messages for one bundle (right and wrong offsets,
chunk sizes, finish flags, sizes, hashes and bundle ids), one stream after the
other, against the real Ingest with SQLite and real files.  After every stream:

- the only exceptions are CollectorError with a documented status;
- the bundle is either completely visible (row, blob, bytes equal to what the
  agent meant to send) or not at all: never a row without its blob, never a blob
  without its row, never different bytes;
- the staging file is always a prefix of the bundle;

and at the end an honest agent resuming from QueryUpload stores the bundle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostdiag.agent.bundle import BundleWriter
from hostdiag.collector.errors import CollectorError
from hostdiag.collector.ingest import Ingest, IngestLimits
from hostdiag.collector.store.blobs import FileBlobStore, StagingArea
from hostdiag.collector.store.sqlite import SqliteMetadataStore
from hostdiag.v1 import agent_pb2

DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
OTHER_ID = "0190a5f4-5b8e-7cc0-8d1e-000000000000"

PROPERTIES = settings(
    max_examples=40, derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@functools.lru_cache(maxsize=1)
def the_bundle() -> tuple[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        writer = BundleWriter(tmp, host_id="web-1", max_member_bytes=1 << 20, max_bundle_bytes=1 << 20,
                              now=1_764_000_000.0)
        with writer:
            writer.write_json("host.json", {"host_id": "web-1"})
            with writer.open("filler.bin") as member:
                member.write(hashlib.shake_256(b"hostdiag").digest(40 * 1024))  # incompressible
            info = writer.finish({"trigger": "collector", "profile": "default"}, {"schema_version": 1})
        return info.bundle_id, Path(info.path).read_bytes()


_MESSAGE = st.fixed_dictionaries({
    "offset": st.sampled_from(["committed", "committed", "committed", "zero", "random"]),
    "random_offset": st.integers(min_value=-3, max_value=50_000),
    "length": st.integers(min_value=0, max_value=48 * 1024),
    "finish": st.booleans(),
    "size": st.sampled_from(["right", "right", "wrong"]),
    "sha": st.sampled_from(["right", "right", "wrong", "malformed"]),
    "bundle_id": st.sampled_from(["same", "same", "same", "empty", "other", "bad"]),
})
_STREAMS = st.lists(st.lists(_MESSAGE, max_size=6), min_size=1, max_size=4)


def _id(kind: str, bundle_id: str) -> str:
    return {"same": bundle_id, "empty": "", "other": OTHER_ID, "bad": "../" + bundle_id}[kind]


async def _scenario(root: Path, streams: list[list[dict[str, Any]]]) -> None:
    bundle_id, data = the_bundle()
    digest = hashlib.sha256(data).hexdigest()
    executor = concurrent.futures.ThreadPoolExecutor(2)
    store = SqliteMetadataStore(str(root / "collector.db"))
    blobs = FileBlobStore(str(root / "blobs"), executor)
    staging = StagingArea(str(root / "uploads"), executor)
    ingest = Ingest(store, blobs, staging, IngestLimits(max_chunk_bytes=32 * 1024, max_bundle_bytes=256 * 1024),
                    executor=executor)
    await store.open()
    try:
        for stream in streams:
            committed = (await ingest.query(bundle_id)).committed_size_bytes

            async def messages(stream: list[dict[str, Any]] = stream, start: int = committed) -> AsyncIterator[Any]:
                model = start  # what the collector has committed if every message so far was accepted
                for i, m in enumerate(stream):
                    offset = {"committed": model, "zero": 0, "random": m["random_offset"]}[m["offset"]]
                    chunk = data[max(offset, 0): max(offset, 0) + m["length"]]
                    msg = agent_pb2.UploadRequest(
                        bundle_id=_id(m["bundle_id"], bundle_id) if i == 0 or m["bundle_id"] != "same" else "",
                        write_offset=offset, data=chunk,
                    )
                    if m["finish"]:
                        msg.finish_write = True
                        end = max(offset, 0) + len(chunk)
                        msg.total_size_bytes = end if m["size"] == "right" else end + 1
                        msg.sha256 = {"right": hashlib.sha256(data[:end]).hexdigest(), "wrong": "0" * 64,
                                      "malformed": "XYZ"}[m["sha"]]
                    if offset == model:
                        model += len(chunk)
                    yield msg

            result = None
            try:
                result = await ingest.receive(messages())
            except CollectorError as exc:
                assert exc.code in DOCUMENTED, exc
            await _check_visibility(store, blobs, staging, bundle_id, data, digest)
            if result is not None and result.complete:
                assert await store.get_bundle(bundle_id) is not None

        # An honest agent resumes from what the collector says it has.
        start = (await ingest.query(bundle_id)).committed_size_bytes

        async def honest() -> AsyncIterator[Any]:
            offset = start
            while True:
                chunk = data[offset: offset + 32 * 1024]
                last = offset + len(chunk) >= len(data)
                msg = agent_pb2.UploadRequest(bundle_id=bundle_id, write_offset=offset, data=chunk)
                if last:
                    msg.finish_write, msg.total_size_bytes, msg.sha256 = True, len(data), digest
                yield msg
                offset += len(chunk)
                if last:
                    return

        result = await ingest.receive(honest())
        assert result.complete and result.committed_size_bytes == len(data)
        await _check_visibility(store, blobs, staging, bundle_id, data, digest)
        assert await store.get_bundle(bundle_id) is not None
    finally:
        await store.close()
        executor.shutdown()


async def _check_visibility(
    store: SqliteMetadataStore, blobs: FileBlobStore, staging: StagingArea, bundle_id: str, data: bytes, digest: str
) -> None:
    row = await store.get_bundle(bundle_id)
    digests = await blobs.list_digests()
    if row is None:
        assert digests == [], "a blob without its bundle row"
        assert await store.list_bundles("", "", 10) == []
        size = await staging.committed_size(bundle_id)
        if size is not None:
            assert size <= len(data)
            with open(staging.path(bundle_id), "rb") as fh:
                assert fh.read() == data[:size], "the staging file is not a prefix of the bundle"
    else:
        assert (row.sha256, row.size_bytes) == (digest, len(data))
        assert list(digests) == [digest], "a bundle row without its blob, or a stray blob"
        assert await blobs.read(digest, 0, len(data) + 1) == data


@PROPERTIES
@given(_STREAMS)
def test_random_upload_streams_never_leave_a_partial_bundle_and_only_fail_as_documented(
    streams: list[list[dict[str, Any]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_scenario(Path(tmp), streams))
