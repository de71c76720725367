"""The SQLite metadata store: WAL, versioned schema, transactions, idempotent publication."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from hostdiag.collector.store.base import BlobStore, BundleRecord, MetadataStore
from hostdiag.collector.store.blobs import FileBlobStore, StagingArea, is_bundle_id
from hostdiag.collector.store.sqlite import MIGRATIONS, SchemaError, SqliteMetadataStore


def test_schema_is_versioned_and_reopening_is_harmless(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(str(tmp_path / "c.db"))
        assert isinstance(store, MetadataStore)
        await store.open()
        assert await store.schema_version() == MIGRATIONS[-1][0]
        await store.close()
        store = SqliteMetadataStore(str(tmp_path / "c.db"))
        await store.open()
        assert await store.schema_version() == MIGRATIONS[-1][0]
        await store.close()

    asyncio.run(main())
    conn = sqlite3.connect(tmp_path / "c.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == [v for v, _ in MIGRATIONS]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    asyncio.run(_open_close(tmp_path / "c.db"))
    conn = sqlite3.connect(tmp_path / "c.db")
    conn.execute("INSERT INTO schema_migrations VALUES (999, 0)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="newer"):
        asyncio.run(_open_close(tmp_path / "c.db"))


async def _open_close(path: Path) -> None:
    store = SqliteMetadataStore(str(path))
    try:
        await store.open()
    finally:
        await store.close()


def test_publish_bundle_is_idempotent(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteMetadataStore(str(tmp_path / "c.db"))
        await store.open()
        b = BundleRecord(bundle_id="0190a5f4-5b8e-7cc0-8d1e-1234567890ab", host_id="h", size_bytes=3,
                         sha256="c" * 64, received_at_ms=5, manifest_json="{}")
        assert await store.publish_bundle(b, [], []) is True
        assert await store.publish_bundle(b, [], []) is False
        assert await store.list_bundles("", "h", 10) == [b]
        assert await store.referenced_digests() == {"c" * 64}
        await store.close()

    asyncio.run(main())


def test_blob_store_layout_and_atomic_writes(tmp_path: Path) -> None:
    async def main() -> None:
        blobs = FileBlobStore(str(tmp_path / "blobs"))
        assert isinstance(blobs, BlobStore)
        digest = await blobs.write_bytes(b"hello")
        assert (tmp_path / "blobs" / "sha256" / digest[:2] / digest).read_bytes() == b"hello"
        assert await blobs.size(digest) == 5 and await blobs.read(digest, 1, 3) == b"ell"
        assert os_listdir(tmp_path / "blobs" / "tmp") == []
        again = await blobs.write_bytes(b"hello")
        assert again == digest and await blobs.list_digests() == [digest]
        await blobs.delete(digest)
        assert not await blobs.exists(digest)

    asyncio.run(main())


def os_listdir(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_staging_appends_only_at_the_committed_size(tmp_path: Path) -> None:
    staging = StagingArea(str(tmp_path / "uploads"))
    bid = "0190a5f4-5b8e-7cc0-8d1e-1234567890ab"
    assert staging.committed_size_sync(bid) is None
    assert staging.append_sync(bid, 0, b"abc") == 3
    assert staging.append_sync(bid, 3, b"de") == 5
    with pytest.raises(ValueError):
        staging.append_sync(bid, 2, b"x")
    assert staging.committed_size_sync(bid) == 5
    assert [s.bundle_id for s in staging.list_sync()] == [bid]
    with pytest.raises(ValueError):
        staging.path("../escape")
    assert not is_bundle_id("../escape")
    staging.remove_sync(bid)
    assert staging.list_sync() == []
