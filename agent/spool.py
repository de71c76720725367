"""The agent's persistent upload queue: bundles waiting for the collector.

Layout under ``<data_dir>/spool/``::

    <bundle_id>.tar.zst        the bundle (a hard link to, or a copy of, the packed file)
    <bundle_id>.json           its sidecar: id, sha256, size, incident, request, enqueued_at, attempts
    .tmp-*                     a write in progress (removed on start)
    quarantine/<bundle_id>.*   bundles the collector refused for good, with the reason

Every file is written to a ``.tmp-`` name, fsynced, renamed into place, and the
directory fsynced.  The bundle is placed first and its sidecar second, so an
item exists exactly when its sidecar does; on start, a bundle without a
sidecar (or a sidecar without its bundle) is the trace of an interrupted write
or delete and is removed and counted.

The spool is bounded by bytes and by item count.  When a new bundle does not
fit, the oldest items are evicted first; each eviction is logged
(``spool_evicted``) and counted.  A bundle larger than the whole spool is
refused with :class:`BundleTooLargeError`.  Items leave the spool only through
:meth:`Spool.delete` (called after the collector committed the upload),
:meth:`Spool.quarantine` (the collector refused it for good) or eviction.

Memory: the spool keeps an index of small :class:`SpoolItem` records, never
bundle contents; copying and hashing stream in 1 MiB pieces.  Methods block on
disk I/O and may be called from worker threads (one lock guards the index);
asyncio callers should use ``run_in_executor``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "Spool",
    "SpoolItem",
    "SpoolError",
    "BundleTooLargeError",
    "BUNDLE_SUFFIX",
    "META_SUFFIX",
    "QUARANTINE_DIR",
    "TMP_PREFIX",
]

log = logging.getLogger("hostdiag.agent.spool")

BUNDLE_SUFFIX = ".tar.zst"
META_SUFFIX = ".json"
TMP_PREFIX = ".tmp-"
QUARANTINE_DIR = "quarantine"
META_FORMAT = 1
COPY_CHUNK_BYTES = 1024 * 1024
MAX_ERROR_CHARS = 500
MAX_ID_CHARS = 128

# A bundle id becomes a file name: no separators, no leading dot, bounded length.
_ID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}\Z")
_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
_META_KEYS = frozenset({"bundle_id", "sha256", "size_bytes", "incident_id", "request_id"})


class SpoolError(Exception):
    """A bundle the spool cannot take or an operation it cannot do; the message says why."""


class BundleTooLargeError(SpoolError):
    """The bundle is larger than the whole spool (``spool.max_bytes``)."""


@dataclass(frozen=True, slots=True)
class SpoolItem:
    """One queued bundle: small metadata only, the bytes stay on disk at :attr:`path`."""

    bundle_id: str
    path: str
    size_bytes: int
    sha256: str
    seq: int
    enqueued_at: float
    incident_id: str | None = None
    request_id: str | None = None
    attempts: int = 0
    last_error: str | None = None
    last_attempt_at: float | None = None

    def to_meta(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"}
        doc["format"] = META_FORMAT
        return doc


def _check_id(bundle_id: object) -> str:
    if not isinstance(bundle_id, str) or not _ID_RE.match(bundle_id):
        raise SpoolError(f"bundle_id must be 1 to {MAX_ID_CHARS} letters, digits, '.', '_' or '-', got {bundle_id!r}")
    return bundle_id


def _optional_str(meta: Mapping[str, Any], key: str) -> str | None:
    value = meta.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        raise SpoolError(f"{key} must be a string of at most {MAX_ID_CHARS} characters")
    return value


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, TMP_PREFIX + name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _copy_streaming(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, COPY_CHUNK_BYTES)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


@dataclass(frozen=True, slots=True)
class _Quarantined:
    bundle_id: str
    size_bytes: int
    quarantined_at: float
    seq: int


class Spool:
    """A persistent, bounded, oldest-first queue of bundle files under ``directory``."""

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        max_items: int,
        *,
        quarantine_max_bytes: int = 256 * 1024 * 1024,
        quarantine_max_items: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 1 or max_items < 1:
            raise ValueError("max_bytes and max_items must be positive")
        self.dir = os.path.abspath(directory)
        self.quarantine_dir = os.path.join(self.dir, QUARANTINE_DIR)
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.quarantine_max_bytes = quarantine_max_bytes
        self.quarantine_max_items = quarantine_max_items
        self._clock = clock
        self._lock = threading.Lock()
        self._index: dict[str, SpoolItem] = {}  # insertion order == seq order == oldest first
        self._bytes = 0
        self._next_seq = 1
        self._quarantine: dict[str, _Quarantined] = {}
        self._quarantine_bytes = 0
        # Counters (since this process started).
        self.evictions = 0
        self.evicted_bytes = 0
        self.refused = 0
        self.quarantined = 0
        self.quarantine_evictions = 0
        self.recovered_orphans = 0
        self.recovered_tmp_files = 0
        os.makedirs(self.quarantine_dir, mode=0o750, exist_ok=True)
        with self._lock:
            self._recover()

    # -- paths ----------------------------------------------------------------------
    def _bundle_path(self, bundle_id: str, directory: str | None = None) -> str:
        return os.path.join(directory or self.dir, bundle_id + BUNDLE_SUFFIX)

    def _meta_path(self, bundle_id: str, directory: str | None = None) -> str:
        return os.path.join(directory or self.dir, bundle_id + META_SUFFIX)

    # -- recovery -------------------------------------------------------------------
    def _scan(self, directory: str) -> tuple[dict[str, dict[str, Any] | None], set[str]]:
        """Remove leftover temporary files; return the sidecars (None: unreadable) and bundle ids."""
        metas: dict[str, dict[str, Any] | None] = {}
        bundles: set[str] = set()
        for entry in os.scandir(directory):
            name = entry.name
            if name.startswith(TMP_PREFIX):
                if _unlink(entry.path):
                    self.recovered_tmp_files += 1
                    log.info("removed an interrupted write", extra={"event": "spool_tmp_removed", "file": name})
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            if name.endswith(BUNDLE_SUFFIX) and _ID_RE.match(name[: -len(BUNDLE_SUFFIX)]):
                bundles.add(name[: -len(BUNDLE_SUFFIX)])
            elif name.endswith(META_SUFFIX) and _ID_RE.match(name[: -len(META_SUFFIX)]):
                bundle_id = name[: -len(META_SUFFIX)]
                try:
                    with open(entry.path, "rb") as fh:
                        doc = orjson.loads(fh.read(64 * 1024))
                    metas[bundle_id] = doc if isinstance(doc, dict) else None
                except (OSError, orjson.JSONDecodeError):
                    metas[bundle_id] = None
        return metas, bundles

    def _drop_orphan(self, bundle_id: str, directory: str, why: str) -> None:
        _unlink(self._meta_path(bundle_id, directory))
        _unlink(self._bundle_path(bundle_id, directory))
        self.recovered_orphans += 1
        log.warning(
            "removed an incomplete spool item",
            extra={"event": "spool_orphan_removed", "bundle_id": bundle_id, "reason": why, "dir": directory},
        )

    def _item_from_meta(self, bundle_id: str, doc: dict[str, Any]) -> SpoolItem:
        size = doc.get("size_bytes")
        sha = doc.get("sha256")
        seq = doc.get("seq")
        if doc.get("bundle_id") != bundle_id:
            raise ValueError("sidecar names another bundle")
        if not isinstance(size, int) or not isinstance(sha, str) or not isinstance(seq, int):
            raise ValueError("sidecar lacks size_bytes, sha256 or seq")
        attempts = doc.get("attempts", 0)
        last_error = doc.get("last_error")
        last_attempt_at = doc.get("last_attempt_at")
        return SpoolItem(
            bundle_id=bundle_id,
            path=self._bundle_path(bundle_id),
            size_bytes=size,
            sha256=sha,
            seq=seq,
            enqueued_at=float(doc.get("enqueued_at") or 0.0),
            incident_id=_optional_str(doc, "incident_id"),
            request_id=_optional_str(doc, "request_id"),
            attempts=attempts if isinstance(attempts, int) else 0,
            last_error=last_error if isinstance(last_error, str) else None,
            last_attempt_at=float(last_attempt_at) if isinstance(last_attempt_at, (int, float)) else None,
        )

    def _recover(self) -> None:
        metas, bundles = self._scan(self.dir)
        items: list[SpoolItem] = []
        for bundle_id, doc in metas.items():
            if bundle_id not in bundles:
                self._drop_orphan(bundle_id, self.dir, "sidecar without bundle")
                continue
            try:
                if doc is None:
                    raise ValueError("unreadable sidecar")
                item = self._item_from_meta(bundle_id, doc)
                if os.stat(item.path).st_size != item.size_bytes:
                    raise ValueError("bundle size differs from its sidecar")
            except (ValueError, SpoolError, OSError) as exc:
                self._drop_orphan(bundle_id, self.dir, str(exc))
                continue
            items.append(item)
        for bundle_id in bundles - metas.keys():
            self._drop_orphan(bundle_id, self.dir, "bundle without sidecar")
        items.sort(key=lambda it: (it.seq, it.enqueued_at))
        for item in items:
            self._index[item.bundle_id] = item
            self._bytes += item.size_bytes
            self._next_seq = max(self._next_seq, item.seq + 1)

        qmetas, qbundles = self._scan(self.quarantine_dir)
        qitems: list[_Quarantined] = []
        for bundle_id, doc in qmetas.items():
            size = doc.get("size_bytes") if doc else None
            if bundle_id not in qbundles or not isinstance(size, int):
                self._drop_orphan(bundle_id, self.quarantine_dir, "incomplete quarantine entry")
                continue
            at = doc.get("quarantined_at") if doc else None
            seq = doc.get("seq") if doc else None
            qitems.append(
                _Quarantined(
                    bundle_id,
                    size,
                    float(at) if isinstance(at, (int, float)) else 0.0,
                    seq if isinstance(seq, int) else 0,
                )
            )
        for bundle_id in qbundles - qmetas.keys():
            self._drop_orphan(bundle_id, self.quarantine_dir, "quarantined bundle without sidecar")
        qitems.sort(key=lambda q: (q.quarantined_at, q.seq))
        for q in qitems:
            self._quarantine[q.bundle_id] = q
            self._quarantine_bytes += q.size_bytes
        # The bounds may have shrunk since the last run.
        self._make_room(0, 0)
        self._make_quarantine_room(0, 0)
        if items or self.recovered_orphans or self.recovered_tmp_files:
            log.info(
                "spool recovered",
                extra={
                    "event": "spool_recovered",
                    "depth": len(self._index),
                    "bytes": self._bytes,
                    "orphans_removed": self.recovered_orphans,
                    "tmp_files_removed": self.recovered_tmp_files,
                },
            )

    # -- bounds -------------------------------------------------------------------------
    def _make_room(self, incoming_bytes: int, incoming_items: int) -> None:
        while self._index and (
            self._bytes + incoming_bytes > self.max_bytes or len(self._index) + incoming_items > self.max_items
        ):
            oldest = next(iter(self._index.values()))
            reason = "bytes" if self._bytes + incoming_bytes > self.max_bytes else "items"
            self._remove(oldest)
            self.evictions += 1
            self.evicted_bytes += oldest.size_bytes
            log.warning(
                "spool full: evicted the oldest bundle",
                extra={
                    "event": "spool_evicted",
                    "bundle_id": oldest.bundle_id,
                    "size_bytes": oldest.size_bytes,
                    "incident_id": oldest.incident_id,
                    "request_id": oldest.request_id,
                    "enqueued_at": oldest.enqueued_at,
                    "attempts": oldest.attempts,
                    "limit": reason,
                    "max_bytes": self.max_bytes,
                    "max_items": self.max_items,
                },
            )

    def _make_quarantine_room(self, incoming_bytes: int, incoming_items: int) -> None:
        while self._quarantine and (
            self._quarantine_bytes + incoming_bytes > self.quarantine_max_bytes
            or len(self._quarantine) + incoming_items > self.quarantine_max_items
        ):
            oldest = next(iter(self._quarantine.values()))
            del self._quarantine[oldest.bundle_id]
            self._quarantine_bytes -= oldest.size_bytes
            _unlink(self._meta_path(oldest.bundle_id, self.quarantine_dir))
            _unlink(self._bundle_path(oldest.bundle_id, self.quarantine_dir))
            self.quarantine_evictions += 1
            log.warning(
                "quarantine full: removed the oldest quarantined bundle",
                extra={"event": "spool_quarantine_evicted", "bundle_id": oldest.bundle_id},
            )

    def _remove(self, item: SpoolItem) -> None:
        """Forget ``item`` and delete its files: sidecar first, so a crash leaves only an orphan bundle."""
        del self._index[item.bundle_id]
        self._bytes -= item.size_bytes
        _unlink(self._meta_path(item.bundle_id))
        _unlink(item.path)

    # -- public API --------------------------------------------------------------------
    def put(self, bundle_path: str, meta: Mapping[str, Any]) -> SpoolItem:
        """Queue the bundle at ``bundle_path``; ``meta`` needs ``bundle_id``.

        Optional meta: ``sha256`` (computed when absent), ``size_bytes`` (checked
        against the file), ``incident_id``, ``request_id``.  The file is hard-linked
        into the spool when it is on the same file system, else copied; the
        original is left where it is.  Putting the same bundle again returns the
        queued item.  Raises :class:`BundleTooLargeError` or :class:`SpoolError`.
        """
        unknown = set(meta) - _META_KEYS
        if unknown:
            raise SpoolError(f"unknown spool metadata keys: {', '.join(sorted(unknown))}")
        bundle_id = _check_id(meta.get("bundle_id"))
        incident_id = _optional_str(meta, "incident_id")
        request_id = _optional_str(meta, "request_id")
        try:
            size = os.stat(bundle_path).st_size
        except OSError as exc:
            raise SpoolError(f"cannot read bundle {bundle_path}: {exc.strerror or exc}") from None
        declared = meta.get("size_bytes")
        if declared is not None and declared != size:
            raise SpoolError(f"bundle {bundle_id} is {size} bytes on disk, but its metadata says {declared}")
        if size > self.max_bytes:
            with self._lock:
                self.refused += 1
            log.warning(
                "bundle larger than the spool: not queued",
                extra={"event": "spool_refused", "bundle_id": bundle_id, "size_bytes": size, "max_bytes": self.max_bytes},
            )
            raise BundleTooLargeError(
                f"bundle {bundle_id} is {size} bytes, larger than the whole spool (spool.max_bytes = {self.max_bytes})"
            )
        try:
            sha = meta.get("sha256") or _sha256_file(bundle_path)
        except OSError as exc:
            raise SpoolError(f"cannot read bundle {bundle_path}: {exc.strerror or exc}") from None
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise SpoolError(f"sha256 must be 64 lowercase hex digits, got {sha!r}")
        with self._lock:
            existing = self._index.get(bundle_id)
            if existing is not None:
                if existing.sha256 == sha:
                    return existing
                raise SpoolError(f"bundle {bundle_id} is already queued with different content")
            self._make_room(size, 1)
            final = self._bundle_path(bundle_id)
            tmp = os.path.join(self.dir, TMP_PREFIX + bundle_id + BUNDLE_SUFFIX)
            try:
                _unlink(tmp)
                try:
                    os.link(bundle_path, tmp)
                except OSError:
                    _copy_streaming(bundle_path, tmp)  # another file system, or links not allowed
                _fsync_file(tmp)
                os.replace(tmp, final)
                _fsync_dir(self.dir)
                item = SpoolItem(
                    bundle_id=bundle_id,
                    path=final,
                    size_bytes=size,
                    sha256=sha,
                    seq=self._next_seq,
                    enqueued_at=self._clock(),
                    incident_id=incident_id,
                    request_id=request_id,
                )
                _write_atomic(self._meta_path(bundle_id), orjson.dumps(item.to_meta()))
            except OSError as exc:
                _unlink(tmp)
                _unlink(final)
                raise SpoolError(f"cannot queue bundle {bundle_id}: {exc.strerror or exc}") from None
            self._next_seq += 1
            self._index[bundle_id] = item
            self._bytes += size
        log.info(
            "bundle queued for upload",
            extra={
                "event": "spool_put",
                "bundle_id": bundle_id,
                "size_bytes": size,
                "incident_id": incident_id,
                "request_id": request_id,
            },
        )
        return item

    def items(self) -> list[SpoolItem]:
        """The queued items, oldest first."""
        with self._lock:
            return list(self._index.values())

    def oldest(self) -> SpoolItem | None:
        with self._lock:
            return next(iter(self._index.values()), None)

    def get(self, bundle_id: str) -> SpoolItem | None:
        with self._lock:
            return self._index.get(bundle_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def delete(self, bundle_id: str) -> bool:
        """Remove an item; call only once the collector committed it.  False if it was not queued."""
        with self._lock:
            item = self._index.get(bundle_id)
            if item is None:
                return False
            self._remove(item)
            with contextlib.suppress(OSError):
                _fsync_dir(self.dir)
        return True

    def mark_attempt(self, bundle_id: str, error: str | None) -> SpoolItem | None:
        """Count a failed (or interrupted) upload attempt and remember its error in the sidecar."""
        with self._lock:
            item = self._index.get(bundle_id)
            if item is None:
                return None
            updated = dataclasses.replace(
                item,
                attempts=item.attempts + 1,
                last_error=(error or "")[:MAX_ERROR_CHARS] or None,
                last_attempt_at=self._clock(),
            )
            try:
                _write_atomic(self._meta_path(bundle_id), orjson.dumps(updated.to_meta()))
            except OSError as exc:
                log.warning(
                    "cannot update spool sidecar",
                    extra={"event": "spool_sidecar_failed", "bundle_id": bundle_id, "error": exc.strerror or str(exc)},
                )
            self._index[bundle_id] = updated
            return updated

    def quarantine(self, bundle_id: str, reason: str) -> bool:
        """Move an item the collector refused for good to ``quarantine/``; False if it was not queued.

        The quarantine keeps at most ``quarantine_max_items`` / ``quarantine_max_bytes``;
        the oldest quarantined bundles go first, and a bundle that cannot fit is dropped.
        """
        reason = (reason or "unspecified")[:MAX_ERROR_CHARS]
        with self._lock:
            item = self._index.get(bundle_id)
            if item is None:
                return False
            self.quarantined += 1
            log.warning(
                "bundle quarantined: the collector refused it",
                extra={
                    "event": "spool_quarantined",
                    "bundle_id": bundle_id,
                    "size_bytes": item.size_bytes,
                    "incident_id": item.incident_id,
                    "request_id": item.request_id,
                    "attempts": item.attempts,
                    "reason": reason,
                },
            )
            if item.size_bytes > self.quarantine_max_bytes or self.quarantine_max_items == 0:
                self._remove(item)
                log.warning(
                    "quarantined bundle does not fit the quarantine: removed",
                    extra={"event": "spool_quarantine_dropped", "bundle_id": bundle_id},
                )
                return True
            self._make_quarantine_room(item.size_bytes, 1)
            qbundle = self._bundle_path(bundle_id, self.quarantine_dir)
            now = self._clock()
            doc = item.to_meta()
            doc.update(reason=reason, quarantined_at=now)
            del self._index[bundle_id]
            self._bytes -= item.size_bytes
            try:
                os.replace(item.path, qbundle)
                _write_atomic(self._meta_path(bundle_id, self.quarantine_dir), orjson.dumps(doc))
            except OSError as exc:
                _unlink(qbundle)
                _unlink(item.path)
                log.warning(
                    "cannot keep the quarantined bundle: removed",
                    extra={"event": "spool_quarantine_failed", "bundle_id": bundle_id, "error": exc.strerror or str(exc)},
                )
                _unlink(self._meta_path(bundle_id))
                return True
            _unlink(self._meta_path(bundle_id))
            with contextlib.suppress(OSError):
                _fsync_dir(self.dir)
            self._quarantine[bundle_id] = _Quarantined(bundle_id, item.size_bytes, now, item.seq)
            self._quarantine_bytes += item.size_bytes
        return True

    def quarantined_items(self) -> list[dict[str, Any]]:
        """The quarantine's sidecars (with their reasons), oldest first."""
        with self._lock:
            ids = list(self._quarantine)
        out = []
        for bundle_id in ids:
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                with open(self._meta_path(bundle_id, self.quarantine_dir), "rb") as fh:
                    out.append(orjson.loads(fh.read(64 * 1024)))
        return out

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def status(self) -> dict[str, Any]:
        with self._lock:
            oldest = next(iter(self._index.values()), None)
            return {
                "dir": self.dir,
                "depth": len(self._index),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "max_items": self.max_items,
                "oldest_enqueued_at": oldest.enqueued_at if oldest else None,
                "evictions": self.evictions,
                "evicted_bytes": self.evicted_bytes,
                "refused": self.refused,
                "quarantined": self.quarantined,
                "quarantine_depth": len(self._quarantine),
                "quarantine_bytes": self._quarantine_bytes,
                "quarantine_evictions": self.quarantine_evictions,
                "recovered_orphans": self.recovered_orphans,
                "recovered_tmp_files": self.recovered_tmp_files,
            }
