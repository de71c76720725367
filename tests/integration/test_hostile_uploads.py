"""Hostile bundles through the collector's upload path.

A real collector (grpc.aio on 127.0.0.1:0, real SQLite, real files) and the
generated AgentService stub.  Each bundle below is uploaded with a correct
size and sha256, so it gets past the transport checks and reaches the
collector's reading of the bundle itself: a truncated zstd frame, a bad tar
header, a duplicated member, ``../`` and absolute names, a symlink member, a
manifest that lies about a member's size or hash, zstd bombs, deeply nested
JSON.  Each must be refused with INVALID_ARGUMENT and a message naming the
problem, counted in ``hostdiag_collector_upload_rejections_total`` with reason
``bad_bundle``, and leave nothing behind: no blob, no bundle row, no staging
file, no upload row.  See docs/security.md, "Hostile input".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import re
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import zstandard
from grpc import aio

from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.server import Collector
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc

KiB = 1024
MiB = 1024 * KiB
HOST = "web-1"

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)  # every upload here is refused on purpose


# -- building bundles by hand ------------------------------------------------------------------


@dataclass
class Member:
    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    linkname: str = ""
    listed: bool = True  # listed in the manifest (regular files only)


def _bundle_id() -> str:
    return str(uuid.uuid4())


def _tar(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.kind
            info.mode = 0o644
            info.mtime = 1_700_000_000
            if m.kind == tarfile.REGTYPE:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                info.linkname = m.linkname
                tar.addfile(info)
    return out.getvalue()


def _manifest(
    bundle_id: str, members: list[Member], edit: Callable[[dict[str, Any]], None] | None = None
) -> bytes:
    listed = [
        {"name": m.name, "size_bytes": len(m.data), "sha256": hashlib.sha256(m.data).hexdigest(), "truncated": False}
        for m in members
        if m.listed and m.kind == tarfile.REGTYPE
    ]
    manifest: dict[str, Any] = {
        "format_version": 1,
        "bundle_id": bundle_id,
        "host_id": HOST,
        "created_at": "2026-01-01T00:00:00Z",
        "trigger": "collector",
        "profile": "default",
        "caps": {"max_member_bytes": MiB, "max_bundle_bytes": 64 * MiB},
        "truncations": [],
        "members": listed,
    }
    if edit is not None:
        edit(manifest)
    return orjson.dumps(manifest)


def bundle(
    rest: list[Member] | None = None,
    *,
    evidence: bytes = b'{"schema_version": 1}',
    manifest_data: bytes | None = None,
    edit_manifest: Callable[[dict[str, Any]], None] | None = None,
    plain: Callable[[bytes], bytes] | None = None,
) -> tuple[str, bytes]:
    """A bundle: manifest.json, evidence.json, then ``rest``; hooks make it hostile."""
    bundle_id = _bundle_id()
    members = [Member("evidence.json", evidence), *(rest if rest is not None else [Member("logs/app.log", b"ok\n")])]
    manifest = manifest_data if manifest_data is not None else _manifest(bundle_id, members, edit_manifest)
    tar = _tar([Member("manifest.json", manifest), *members])
    if plain is not None:
        tar = plain(tar)
    return bundle_id, zstandard.ZstdCompressor(level=3).compress(tar)


# -- a running collector ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(data_dir: Path) -> AsyncIterator[tuple[Collector, Any]]:
    # The smallest bundle cap keeps the decompression cap (64 x, at least 64 MiB) at 64 MiB.
    section = CollectorSection(
        listen="127.0.0.1:0", http_listen="127.0.0.1:0", data_dir=str(data_dir), max_bundle_bytes=1 * MiB
    )
    collector = Collector(CollectorConfig(collector=section))
    await collector.start()
    channel = aio.insecure_channel(collector.grpc_address)
    try:
        yield collector, agent_pb2_grpc.AgentServiceStub(channel)
    finally:
        await channel.close()
        await collector.stop(0.5)


async def upload(stub: Any, bundle_id: str, data: bytes, chunk: int = 256 * KiB) -> apb.UploadResponse:
    async def messages() -> AsyncIterator[apb.UploadRequest]:
        offsets = list(range(0, len(data), chunk)) or [0]
        for i, offset in enumerate(offsets):
            last = i == len(offsets) - 1
            yield apb.UploadRequest(
                bundle_id=bundle_id if i == 0 else "", write_offset=offset, data=data[offset: offset + chunk],
                finish_write=last, total_size_bytes=len(data) if last else 0,
                sha256=hashlib.sha256(data).hexdigest() if last else "",
            )

    return await stub.Upload(messages())


async def rejections(collector: Collector) -> dict[str, float]:
    host, port = collector.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = (await reader.read()).decode()
    writer.close()
    found = re.findall(r'^hostdiag_collector_upload_rejections_total\{reason="([a-z_]+)"\} (\S+)$', body, re.M)
    return {reason: float(value) for reason, value in found}


def stored_files(data_dir: Path) -> list[str]:
    """Every file under blobs/ and uploads/ (staging)."""
    return sorted(
        str(p.relative_to(data_dir)) for sub in ("blobs", "uploads") for p in (data_dir / sub).rglob("*") if p.is_file()
    )


async def assert_refused(tmp_path: Path, bundle_id: str, data: bytes, fragment: str) -> None:
    data_dir = tmp_path / "data"
    async with running(data_dir) as (collector, stub):
        before = (await rejections(collector)).get("bad_bundle", 0.0)
        with pytest.raises(grpc.RpcError) as info:
            await upload(stub, bundle_id, data)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        details = info.value.details() or ""
        assert details.startswith("bad bundle: ") and "upload discarded" in details, details
        assert fragment in details, details
        assert (await rejections(collector)).get("bad_bundle", 0.0) == before + 1
        assert await collector.store.get_bundle(bundle_id) is None
        assert await collector.store.list_bundles("", "", 10) == []
        assert await collector.store.get_upload(bundle_id) is None
        assert stored_files(data_dir) == []
        query = await stub.QueryUpload(apb.QueryUploadRequest(bundle_id=bundle_id))
        assert (query.committed_size_bytes, query.complete) == (0, False)


def check(tmp_path: Path, made: tuple[str, bytes], fragment: str) -> None:
    asyncio.run(assert_refused(tmp_path, made[0], made[1], fragment))


# -- the cases -------------------------------------------------------------------------------


def test_a_well_formed_bundle_built_here_is_stored(tmp_path: Path) -> None:
    """The builder itself makes bundles the collector accepts: each case below differs in one way."""

    async def main() -> None:
        async with running(tmp_path / "data") as (collector, stub):
            bundle_id, data = bundle()
            response = await upload(stub, bundle_id, data)
            assert response.complete
            assert await collector.store.get_bundle(bundle_id) is not None

    asyncio.run(main())


def test_a_truncated_zstd_frame_is_refused(tmp_path: Path) -> None:
    bundle_id, data = bundle([Member("logs/app.log", os.urandom(64 * KiB))])
    check(tmp_path, (bundle_id, data[:-7]), "truncated")


def test_a_bad_tar_header_is_refused(tmp_path: Path) -> None:
    def break_third_header(tar: bytes) -> bytes:
        # The third member's header: after manifest and evidence (each a header plus padded data).
        start = tar.index(b"logs/app.log\0")
        assert start % 512 == 0
        broken = bytearray(tar)
        broken[start + 148: start + 156] = b"1234567\0"  # a wrong header checksum
        return bytes(broken)

    check(tmp_path, bundle(plain=break_third_header), "bad tar header")


def test_a_duplicated_member_is_refused(tmp_path: Path) -> None:
    made = bundle([Member("logs/app.log", b"one\n"), Member("logs/app.log", b"one\n", listed=False)])
    check(tmp_path, made, "appears more than once")


@pytest.mark.parametrize("name", ["../../etc/cron.d/evil", "logs/../../../root/.ssh/authorized_keys"])
def test_a_parent_directory_name_is_refused(tmp_path: Path, name: str) -> None:
    check(tmp_path, bundle([Member("logs/app.log", b"ok\n"), Member(name, b"* * * * * root sh\n")]), "'..' segment")


def test_an_absolute_name_is_refused(tmp_path: Path) -> None:
    check(tmp_path, bundle([Member("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n")]), "absolute path")


def test_a_symlink_member_is_refused(tmp_path: Path) -> None:
    made = bundle([Member("logs/app.log", b"ok\n"), Member("logs/shadow", kind=tarfile.SYMTYPE, linkname="/etc/shadow")])
    check(tmp_path, made, "only regular files are allowed")


def test_a_hard_link_member_is_refused(tmp_path: Path) -> None:
    made = bundle([Member("logs/app.log", b"ok\n"), Member("logs/x", kind=tarfile.LNKTYPE, linkname="logs/app.log")])
    check(tmp_path, made, "only regular files are allowed")


def test_a_manifest_lying_about_a_members_size_is_refused(tmp_path: Path) -> None:
    def lie(manifest: dict[str, Any]) -> None:
        manifest["members"][1]["size_bytes"] += 1

    check(tmp_path, bundle(edit_manifest=lie), "size mismatch")


def test_a_manifest_lying_about_a_members_hash_is_refused(tmp_path: Path) -> None:
    def lie(manifest: dict[str, Any]) -> None:
        manifest["members"][1]["sha256"] = "0" * 64

    check(tmp_path, bundle(edit_manifest=lie), "sha256 mismatch")


def test_a_manifest_lying_about_the_evidence_hash_is_refused(tmp_path: Path) -> None:
    def lie(manifest: dict[str, Any]) -> None:
        manifest["members"][0]["sha256"] = "f" * 64

    check(tmp_path, bundle(edit_manifest=lie), "sha256 mismatch")


def test_a_member_the_manifest_does_not_list_is_refused(tmp_path: Path) -> None:
    made = bundle([Member("logs/app.log", b"ok\n"), Member("bin/payload", b"\x7fELF", listed=False)])
    check(tmp_path, made, "not listed in the manifest")


def test_a_zstd_bomb_manifest_stops_at_the_manifest_cap(tmp_path: Path) -> None:
    # 32 MiB of JSON whitespace compresses to a few KiB; the manifest cap is 4 MiB.
    bomb = b"{" + b" " * (32 * MiB) + b"}"
    check(tmp_path, bundle(manifest_data=bomb), "manifest.json is too big")


def _bomb(members: list[Member]) -> tuple[str, bytes]:
    bundle_id = _bundle_id()
    members = [Member("evidence.json", b'{"schema_version": 1}'), *members]
    data = zstandard.ZstdCompressor(level=3).compress(_tar([Member("manifest.json", _manifest(bundle_id, members)), *members]))
    assert len(data) < 1 * MiB  # within the 1 MiB bundle cap: only the decompressed size gives it away
    return bundle_id, data


def test_a_zstd_bomb_member_is_refused_by_its_header_before_decompressing(tmp_path: Path) -> None:
    # One member of 200 MiB of zeros (a few KiB compressed) against the 64 MiB decompression cap.
    check(tmp_path, _bomb([Member("logs/zeros.bin", bytes(200 * MiB))]), "is impossible (decompressed limit 67108864)")


def test_a_zstd_bomb_of_many_members_stops_at_the_decompression_cap(tmp_path: Path) -> None:
    # Four members of 20 MiB of zeros each: every header is plausible, the total is not.
    zeros = bytes(20 * MiB)
    check(tmp_path, _bomb([Member(f"logs/zeros-{i}.bin", zeros) for i in range(4)]), "decompressed")


def test_deeply_nested_evidence_is_refused(tmp_path: Path) -> None:
    nested = b'{"a":' * 200 + b"1" + b"}" * 200
    check(tmp_path, bundle(evidence=nested), "nested too deeply")


def test_deeply_nested_manifest_is_refused(tmp_path: Path) -> None:
    def nest(manifest: dict[str, Any]) -> None:
        deep: Any = 1
        for _ in range(200):
            deep = [deep]
        manifest["trigger_detail"] = deep

    check(tmp_path, bundle(edit_manifest=nest), "nested too deeply")


def test_evidence_that_is_not_json_is_refused(tmp_path: Path) -> None:
    check(tmp_path, bundle(evidence=b"\xff\xfe not json"), "evidence.json is not valid JSON")


# -- transport caps --------------------------------------------------------------------------


async def _transport_case(tmp_path: Path, messages: list[apb.UploadRequest]) -> tuple[grpc.StatusCode, str, dict[str, float]]:
    data_dir = tmp_path / "data"
    async with running(data_dir) as (collector, stub):

        async def stream() -> AsyncIterator[apb.UploadRequest]:
            for m in messages:
                yield m

        with pytest.raises(grpc.RpcError) as info:
            await stub.Upload(stream())
        counted = await rejections(collector)
        assert await collector.store.list_bundles("", "", 10) == []
        assert [f for f in stored_files(data_dir) if f.startswith("blobs/")] == []
        return info.value.code(), info.value.details() or "", counted


def test_a_message_over_the_grpc_cap_is_refused_by_grpc(tmp_path: Path) -> None:
    huge = apb.UploadRequest(bundle_id=_bundle_id(), write_offset=0, data=bytes(2 * MiB))
    code, _, counted = asyncio.run(_transport_case(tmp_path, [huge]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # gRPC refuses the message before the collector's code sees it; the handler then finds a
    # stream with no message and counts that (docs/security.md notes the imprecision).
    assert counted == {"empty_stream": 1.0}


def test_a_chunk_over_the_chunk_cap_is_refused_and_counted(tmp_path: Path) -> None:
    big = apb.UploadRequest(bundle_id=_bundle_id(), write_offset=0, data=bytes(1 * MiB + 1))
    code, details, counted = asyncio.run(_transport_case(tmp_path, [big]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds the limit of 1048576 bytes" in details
    assert counted == {"chunk_too_large": 1.0}


def test_a_bundle_over_the_size_cap_is_refused_counted_and_discarded(tmp_path: Path) -> None:
    bundle_id = _bundle_id()
    chunks = [apb.UploadRequest(bundle_id=bundle_id, write_offset=i * 512 * KiB, data=bytes(512 * KiB)) for i in range(3)]
    code, details, counted = asyncio.run(_transport_case(tmp_path, chunks))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "exceeds the limit of 1048576 bytes" in details
    assert counted == {"too_large": 1.0}
