"""Bundle files on the local disk: content-addressed blobs and upload staging.

Layout under the data directory::

    blobs/sha256/ab/ab12…ef     one finished bundle per file, named by its sha256
    blobs/tmp/                  files being written by write_bytes (tmp + fsync + rename)
    uploads/<bundle-id>.part    one staging file per bundle being uploaded

A staging file's size is its committed size.  Chunks are appended without
an fsync each (``append_sync(sync=False)``): a process crash, even kill -9,
loses nothing the kernel already has, so the agent resumes from the file's
size.  A size is *reported* only once it is durable: :meth:`StagingArea.durable_size`
reads the size and then fsyncs (what QueryUpload answers), the uploader
syncs when a stream ends without finishing and at least every few MiB, and
publication fsyncs the file before renaming it.  Should a power loss ever
leave bytes on disk that were not what the agent sent, the sha256 check at
the end of the upload rejects the bundle (DATA_LOSS) and the agent starts
again; nothing corrupt becomes visible.

Publishing fsyncs the verified staging file, moves it into ``blobs/`` with
``rename`` (the two directories are on the same file system) and fsyncs both
directories, so the blob is either absent or complete.

All methods that touch the disk have a blocking ``*_sync`` form run in an
executor by the async form; the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["FileBlobStore", "StagingArea", "StagedUpload", "is_sha256", "is_bundle_id", "fsync_dir", "fsync_file"]

T = TypeVar("T")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_BLOCK = 1024 * 1024


def is_sha256(value: str) -> bool:
    """True for a lowercase hex sha256 digest."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def is_bundle_id(value: str) -> bool:
    """True for a UUID in its canonical lowercase text form (safe as a file name)."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> int:
    """fsync ``path``; its size as it was just before, so every byte of that size is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


class _Blocking:
    def __init__(self, executor: concurrent.futures.Executor | None) -> None:
        self._executor = executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


class FileBlobStore(_Blocking):
    """:class:`~hostdiag.collector.store.base.BlobStore` on a local directory."""

    def __init__(self, root: str, executor: concurrent.futures.Executor | None = None) -> None:
        super().__init__(executor)
        self.root = os.path.abspath(root)
        self._sha_root = os.path.join(self.root, "sha256")
        self._tmp = os.path.join(self.root, "tmp")
        os.makedirs(self._sha_root, mode=0o750, exist_ok=True)
        os.makedirs(self._tmp, mode=0o750, exist_ok=True)
        # Leftovers of write_bytes interrupted by a crash.
        for name in os.listdir(self._tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._tmp, name))

    def path(self, sha256: str) -> str:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return os.path.join(self._sha_root, sha256[:2], sha256)

    # -- blocking forms --------------------------------------------------------------
    def publish_file_sync(self, sha256: str, path: str) -> None:
        target = self.path(sha256)
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o750, exist_ok=True)
            fsync_dir(self._sha_root)
        if os.path.exists(target):
            os.unlink(path)
            fsync_dir(os.path.dirname(path))
            return
        fsync_file(path)  # staging files are appended without an fsync per chunk
        os.rename(path, target)
        fsync_dir(parent)
        fsync_dir(os.path.dirname(path))

    def write_bytes_sync(self, data: bytes) -> str:
        """Store ``data`` (tmp + fsync + rename + dir fsync); returns its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        tmp = os.path.join(self._tmp, f"{digest}.{os.getpid()}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            self.publish_file_sync(digest, tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return digest

    def read_sync(self, sha256: str, offset: int, length: int) -> bytes:
        with open(self.path(sha256), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def delete_sync(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(sha256))

    def list_digests_sync(self) -> list[str]:
        out: list[str] = []
        for prefix in os.listdir(self._sha_root):
            sub = os.path.join(self._sha_root, prefix)
            if os.path.isdir(sub):
                out.extend(name for name in os.listdir(sub) if is_sha256(name) and name.startswith(prefix))
        return sorted(out)

    # -- async interface -----------------------------------------------------------------
    async def publish_file(self, sha256: str, path: str) -> None:
        await self._run(self.publish_file_sync, sha256, path)

    async def write_bytes(self, data: bytes) -> str:
        return await self._run(self.write_bytes_sync, data)

    async def exists(self, sha256: str) -> bool:
        return await self._run(os.path.exists, self.path(sha256))

    async def size(self, sha256: str) -> int:
        return await self._run(os.path.getsize, self.path(sha256))

    async def read(self, sha256: str, offset: int, length: int) -> bytes:
        return await self._run(self.read_sync, sha256, offset, length)

    async def delete(self, sha256: str) -> None:
        await self._run(self.delete_sync, sha256)

    async def list_digests(self) -> list[str]:
        return await self._run(self.list_digests_sync)


@dataclass(frozen=True)
class StagedUpload:
    bundle_id: str
    size_bytes: int
    mtime: float


class StagingArea(_Blocking):
    """One staging file per bundle id under ``uploads/``."""

    SUFFIX = ".part"

    def __init__(self, root: str, executor: concurrent.futures.Executor | None = None) -> None:
        super().__init__(executor)
        self.root = os.path.abspath(root)
        os.makedirs(self.root, mode=0o750, exist_ok=True)

    def path(self, bundle_id: str) -> str:
        if not is_bundle_id(bundle_id):
            raise ValueError(f"not a bundle id: {bundle_id!r}")
        return os.path.join(self.root, bundle_id + self.SUFFIX)

    # -- blocking forms --------------------------------------------------------------
    def committed_size_sync(self, bundle_id: str) -> int | None:
        try:
            return os.path.getsize(self.path(bundle_id))
        except FileNotFoundError:
            return None

    def durable_size_sync(self, bundle_id: str) -> int | None:
        """The staging file's size after making every byte of it durable (None: no file)."""
        try:
            return fsync_file(self.path(bundle_id))
        except FileNotFoundError:
            return None

    def append_sync(self, bundle_id: str, offset: int, data: bytes, hasher: Any = None, sync: bool = True) -> int:
        """Write ``data`` at ``offset`` (the current size), fsync when ``sync``; the new size.

        Creating the file also fsyncs the directory so the file survives a
        crash.  ``hasher`` (a running sha256), if given, is fed ``data`` once
        it is written.
        """
        path = self.path(bundle_id)
        created = False
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            created = True
        try:
            size = os.fstat(fd).st_size
            if size != offset:
                raise ValueError(f"staging file of {bundle_id} has {size} bytes, not {offset}")
            view = memoryview(data)
            pos = offset
            while view:
                n = os.pwrite(fd, view, pos)
                view = view[n:]
                pos += n
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.root)
        if hasher is not None:
            hasher.update(data)
        return pos

    def sha256_sync(self, bundle_id: str, start_hasher: Any = None, start_offset: int = 0) -> str:
        """sha256 of the staging file; continues ``start_hasher`` from ``start_offset``."""
        hasher = start_hasher.copy() if start_hasher is not None else hashlib.sha256()
        with open(self.path(bundle_id), "rb") as fh:
            fh.seek(start_offset if start_hasher is not None else 0)
            while block := fh.read(_HASH_BLOCK):
                hasher.update(block)
        return str(hasher.hexdigest())

    def remove_sync(self, bundle_id: str) -> None:
        try:
            os.unlink(self.path(bundle_id))
        except FileNotFoundError:
            return
        fsync_dir(self.root)

    def list_sync(self) -> list[StagedUpload]:
        out = []
        for name in os.listdir(self.root):
            if not name.endswith(self.SUFFIX):
                continue
            bundle_id = name[: -len(self.SUFFIX)]
            if not is_bundle_id(bundle_id):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(os.path.join(self.root, name))
                out.append(StagedUpload(bundle_id, st.st_size, st.st_mtime))
        return sorted(out, key=lambda s: s.bundle_id)

    # -- async interface -----------------------------------------------------------------
    async def committed_size(self, bundle_id: str) -> int | None:
        return await self._run(self.committed_size_sync, bundle_id)

    async def durable_size(self, bundle_id: str) -> int | None:
        return await self._run(self.durable_size_sync, bundle_id)

    async def sync(self, bundle_id: str) -> None:
        """Make the staging file durable (nothing when there is none)."""
        await self._run(self.durable_size_sync, bundle_id)

    async def append(
        self, bundle_id: str, offset: int, data: bytes, hasher: Any = None, sync: bool = True
    ) -> int:
        """Like :meth:`append_sync`; if the caller is cancelled, still waits for the write to end.

        A cancelled Upload must not release its bundle's lock while a thread is
        still writing to the staging file.
        """
        fut = asyncio.get_running_loop().run_in_executor(
            self._executor, self.append_sync, bundle_id, offset, data, hasher, sync
        )
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await fut
            raise

    async def sha256(self, bundle_id: str) -> str:
        return await self._run(self.sha256_sync, bundle_id)

    async def remove(self, bundle_id: str) -> None:
        await self._run(self.remove_sync, bundle_id)

    async def list(self) -> list[StagedUpload]:
        return await self._run(self.list_sync)
