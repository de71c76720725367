"""Write a bundle: spool members while sources run, then pack one ``.tar.zst``.

Sources write their members concurrently, from worker threads, through
:meth:`BundleWriter.open` (or :meth:`~BundleWriter.write_json` /
:meth:`~BundleWriter.write_ndjson`).  Each member goes to its own spool file
in a private work directory, hashed and counted as it is written, so nothing
is ever held whole in memory and every member's size and sha256 are known
before ``manifest.json`` -- which must be the first member -- is written.

:meth:`BundleWriter.finish` then streams ``manifest.json``, ``evidence.json``
and the spooled members, in the order they were opened, through ``tarfile``
(pax format) into one zstd frame, hashing the compressed bytes on the way out.
The bundle is written under a temporary name, fsynced, renamed into place and
the directory fsynced; on any error nothing but the error remains.

The format is specified in ``docs/bundle-format.md``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, Iterable

import orjson
import zstandard

from hostdiag.agent.bundle.ids import uuid7, uuid7_unix_ms
from hostdiag.agent.bundle.reader import (
    EVIDENCE_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ReadLimits,
    member_name_problem,
)

__all__ = [
    "BundleWriter",
    "BundleInfo",
    "BundleWriteError",
    "REASON_MEMBER_CAP",
    "REASON_BUNDLE_CAP",
    "REASON_TIMED_OUT",
    "bundle_file_name",
    "remove_stale_temp",
]

REASON_MEMBER_CAP = "member cap"
REASON_BUNDLE_CAP = "bundle cap"
REASON_TIMED_OUT = "source timed out"

_KiB = 1024
_INDENT_UP_TO = 64 * _KiB  # JSON documents up to this size are written indented
_NDJSON_BATCH = 64 * _KiB
_COPY_CHUNK = 1024 * _KiB
_BUNDLE_MODE = 0o640  # bundles hold redacted but still sensitive host state
_TMP_DIR_PREFIX = ".tmp-"
_TMP_SUFFIX = ".tmp"
_BUNDLE_ID_RE = re.compile(r"[A-Za-z0-9-]{8,64}")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class BundleWriteError(Exception):
    """Writing a bundle failed; the message says what went wrong and where.

    ``path`` is the file or directory involved (when there is one) and
    ``errno`` the operating system's error number (when there is one).
    """

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


@dataclass(frozen=True)
class BundleInfo:
    """A finished bundle."""

    path: str
    bundle_id: str
    size_bytes: int  # of the .tar.zst file
    sha256: str  # of the .tar.zst file, lowercase hex
    members: list[dict[str, Any]]  # the manifest's member list (evidence.json first)
    manifest: dict[str, Any] = field(default_factory=dict)  # manifest.json as written


def _os_error(exc: OSError, action: str, path: str) -> BundleWriteError:
    """``no space left on device writing /x/y.tar.zst.tmp``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[:1].lower() + reason[1:]
    return BundleWriteError(f"{reason} {action} {path}", path=path, errno=exc.errno)


def _dumps_document(obj: Any) -> bytes:
    """JSON for a whole-document member: indented when small, compact when big."""
    opts = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
    data = orjson.dumps(obj, option=opts)
    if len(data) <= _INDENT_UP_TO:
        data = orjson.dumps(obj, option=opts | orjson.OPT_INDENT_2)
    return data


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bundle_file_name(host_id: str, created: float, bundle_id: str) -> str:
    """``<host>-<yyyymmddThhmmssZ>-<8 id chars>.tar.zst``.

    The 8 characters are the *last* 8 of the bundle id: a UUIDv7's first 8 hex
    digits are the top of its timestamp, the same for every bundle made within
    about a minute, while its last 8 are random.
    """
    host = _UNSAFE_FILE_CHARS.sub("_", host_id)[:128].strip(".") or "host"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created))
    tag = bundle_id.replace("-", "")[-8:]
    return f"{host}-{stamp}-{tag}.tar.zst"


def remove_stale_temp(out_dir: str, older_than_s: float = 3600.0, *, now: float | None = None) -> list[str]:
    """Remove work directories and temporary bundle files a crashed writer left behind.

    Only names this module creates (``.tmp-*`` directories, ``*.tar.zst.tmp``
    files) older than ``older_than_s`` are touched.  Returns what was removed.
    """
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        names = os.listdir(out_dir)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(out_dir, name)
        is_work = name.startswith(_TMP_DIR_PREFIX)
        is_tmp = name.endswith(".tar.zst" + _TMP_SUFFIX)
        if not (is_work or is_tmp):
            continue
        try:
            st = os.lstat(path)
            if now - st.st_mtime < older_than_s:
                continue
            if is_work and os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif is_tmp and not os.path.isdir(path):
                os.unlink(path)
            else:
                continue
        except OSError:
            continue
        removed.append(path)
    return removed


class _DiscardMember:
    """What :meth:`BundleWriter.open` hands out after :meth:`~BundleWriter.seal`."""

    def write(self, data: bytes) -> bool:
        return False

    def close(self) -> None:
        pass

    def __enter__(self) -> _DiscardMember:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Member:
    """One member being spooled; implements the ``MemberWriter`` protocol.

    Every ``write`` is one or more ``write(2)`` calls on the spool file, so a
    source writing many small pieces should batch them.
    """

    def __init__(self, owner: BundleWriter, name: str, path: str, raw: io.FileIO) -> None:
        self._owner = owner
        self.name = name
        self.path = path
        self._raw: io.FileIO | None = raw
        self.size = 0
        self._sha = hashlib.sha256()
        self.truncated_reason: str | None = None
        self.closed = False
        self.sealed = False
        self.lock = threading.Lock()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def write(self, data: bytes) -> bool:
        """Append ``data``; False once the member has been cut (the rest is dropped)."""
        view = memoryview(data).cast("B")
        with self.lock:
            if not self._writable():
                return False
            allowed, reason = self._owner._reserve(self, len(view))
            if allowed:
                self._spool(view[:allowed], allowed)
            if reason is not None:
                self.truncated_reason = reason
                return False
            return True

    def write_lines(self, lines: list[bytes]) -> bool:
        """Append whole lines only: when a cap bites, keep the lines that fit and stop."""
        data = b"".join(lines)
        with self.lock:
            if not self._writable():
                return False
            allowed, reason = self._owner._reserve(self, len(data))
            if reason is not None:
                fits = 0
                for line in lines:
                    if fits + len(line) > allowed:
                        break
                    fits += len(line)
                self._owner._release(allowed - fits)
                allowed = fits
            if allowed:
                self._spool(memoryview(data)[:allowed], allowed)
            if reason is not None:
                self.truncated_reason = reason
                return False
            return True

    def _writable(self) -> bool:
        if self.sealed or self.truncated_reason is not None:
            return False
        if self.closed:
            raise ValueError(f"bundle member {self.name!r} is closed")
        return True

    def _spool(self, view: memoryview, reserved: int) -> None:
        assert self._raw is not None
        done = 0
        try:
            while done < len(view):
                n = self._raw.write(view[done:])
                if not n:
                    raise OSError(0, "short write")
                self._sha.update(view[done : done + n])
                done += n
        except OSError as exc:
            self.size += done
            self._owner._release(reserved - done)
            self.truncated_reason = f"spool write failed: {exc.strerror or exc}"
            self._close_file()
            raise _os_error(exc, "writing", self.path) from None
        self.size += done

    def _close_file(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            try:
                raw.close()
            except OSError:
                pass

    def close(self) -> None:
        with self.lock:
            if self.closed or self.sealed:
                return
            self.closed = True
            self._close_file()

    def seal(self, reason: str) -> None:
        with self.lock:
            if self.sealed:
                return
            self.sealed = True
            if not self.closed and self.truncated_reason is None:
                self.truncated_reason = reason
            self._close_file()

    def __enter__(self) -> _Member:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size_bytes": self.size,
            "sha256": self.sha256,
            "truncated": self.truncated_reason is not None,
            "truncated_reason": self.truncated_reason,
        }


class _HashingSink:
    """The bundle file on its way out: counts and hashes every byte written."""

    def __init__(self, raw: BinaryIO, path: str) -> None:
        self._raw = raw
        self._path = path
        self.count = 0
        self.sha = hashlib.sha256()
        self.failed = False

    def write(self, data: bytes) -> int:
        if self.failed:
            # The error has been raised once; tarfile and zstd objects that are
            # garbage-collected later may still try to flush into here.
            return len(data)
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = self._raw.write(view[done:])
                if not n:
                    raise OSError(0, "short write")
                done += n
        except OSError as exc:
            self.failed = True
            raise _os_error(exc, "writing", self._path) from None
        self.sha.update(view)
        self.count += done
        return done

    def flush(self) -> None:
        pass


class _SpoolReader:
    """Reads a spooled member back for the tar, checking it is what was spooled."""

    def __init__(self, member: _Member) -> None:
        self._member = member
        self._left = member.size
        self._sha = hashlib.sha256()
        try:
            self._fh = open(member.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise _os_error(exc, "reading", member.path) from None

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._left:
            size = self._left
        size = min(size, _COPY_CHUNK)
        parts = []
        got = 0
        while got < size:
            try:
                part = self._fh.read(size - got)
            except OSError as exc:
                raise _os_error(exc, "reading", self._member.path) from None
            if not part:
                raise BundleWriteError(
                    f"spool file {self._member.path} of member {self._member.name!r} is shorter than spooled",
                    path=self._member.path,
                )
            parts.append(part)
            got += len(part)
        data = b"".join(parts)
        self._left -= len(data)
        self._sha.update(data)
        if self._left == 0 and self._sha.hexdigest() != self._member.sha256:
            raise BundleWriteError(
                f"spool file {self._member.path} of member {self._member.name!r} changed after it was written",
                path=self._member.path,
            )
        return data

    def close(self) -> None:
        self._fh.close()


def _open_output_file(path: str) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _BUNDLE_MODE)
    return io.FileIO(fd, "w", closefd=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BundleWriter:
    """Builds one bundle.  Implements the ``MemberSink`` protocol sources write to.

    ``open``/``write_json``/``write_ndjson`` may be called from many threads at
    once, each on its own member.  The caps count uncompressed member bytes:
    one member never exceeds ``max_member_bytes`` and all source members
    together never exceed ``max_bundle_bytes`` (``manifest.json`` and
    ``evidence.json`` are bounded by the reader's limits instead).

    Use it as a context manager, or call :meth:`abort` when not finishing, so
    the work directory does not outlive the writer.
    """

    # Test hooks: how the bundle file is created and how a directory is synced.
    _open_output = staticmethod(_open_output_file)
    _sync_dir = staticmethod(_fsync_dir)

    def __init__(
        self,
        out_dir: str,
        *,
        host_id: str,
        max_member_bytes: int,
        max_bundle_bytes: int,
        zstd_level: int = 3,
        bundle_id: str | None = None,
        now: float | None = None,
        work_dir: str | None = None,
    ) -> None:
        if not isinstance(host_id, str) or not host_id:
            raise ValueError("host_id must be a non-empty string")
        for label, value in (("max_member_bytes", max_member_bytes), ("max_bundle_bytes", max_bundle_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if not isinstance(zstd_level, int) or not 1 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be 1 to 22, got {zstd_level!r}")
        if bundle_id is not None and not _BUNDLE_ID_RE.fullmatch(bundle_id):
            raise ValueError(f"bundle_id must be 8 to 64 characters of [A-Za-z0-9-], got {bundle_id!r}")
        if bundle_id is None:
            if now is None:
                ident = uuid7()
                now = uuid7_unix_ms(ident) / 1000.0  # created_at is the id's own timestamp
            else:
                ident = uuid7(int(now * 1000))
            bundle_id = str(ident)
        elif now is None:
            now = time.time()
        self.bundle_id: str = bundle_id
        self.host_id = host_id
        self.now = float(now)
        self.created_at = _rfc3339(self.now)
        self.max_member_bytes = max_member_bytes
        self.max_bundle_bytes = max_bundle_bytes
        self.zstd_level = zstd_level
        self.out_dir = os.path.abspath(out_dir)
        self.file_name = bundle_file_name(host_id, self.now, bundle_id)
        self.path = os.path.join(self.out_dir, self.file_name)
        self._tmp_path = self.path + _TMP_SUFFIX

        self._lock = threading.Lock()
        self._members: dict[str, _Member] = {}
        self._order: list[_Member] = []
        self._dirs: set[str] = set()  # parent directories implied by member names
        self._total = 0
        self._sealed = False
        self._state = "open"  # open -> finished | aborted | failed

        if not os.path.isdir(self.out_dir):
            missing = not os.path.exists(self.out_dir)
            what = "does not exist" if missing else "is not a directory"
            raise BundleWriteError(f"bundle directory {self.out_dir} {what}", path=self.out_dir)
        base = os.path.abspath(work_dir) if work_dir is not None else self.out_dir
        self._work = os.path.join(base, _TMP_DIR_PREFIX + bundle_id)
        try:
            os.mkdir(self._work, 0o700)
        except OSError as exc:
            raise _os_error(exc, "creating", self._work) from None

    # -- MemberSink

    def open(self, name: str) -> _Member | _DiscardMember:
        """Start member ``name``; ValueError for an invalid, reserved or duplicate name.

        After :meth:`seal` this returns a writer that drops everything.
        """
        why = member_name_problem(name)
        if why is not None:
            raise ValueError(f"invalid bundle member name {name!r}: {why}")
        if name in (MANIFEST_NAME, EVIDENCE_NAME):
            raise ValueError(f"bundle member name {name!r} is reserved")
        with self._lock:
            if self._sealed:
                return _DiscardMember()
            if name in self._members:
                raise ValueError(f"duplicate bundle member name {name!r}")
            if name in self._dirs:
                raise ValueError(f"bundle member name {name!r} is already a directory of another member")
            parents = ["/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1)]
            for parent in parents:
                if parent in self._members:
                    raise ValueError(f"bundle member name {name!r} needs {parent!r} as a directory, but it is a member")
            path = os.path.join(self._work, f"{len(self._order):05d}.member")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise _os_error(exc, "creating", path) from None
            member = _Member(self, name, path, io.FileIO(fd, "w", closefd=True))
            self._members[name] = member
            self._order.append(member)
            self._dirs.update(parents)
            return member

    def write_json(self, name: str, obj: Any) -> None:
        """One JSON document as member ``name`` (cut at the member cap like any member)."""
        data = _dumps_document(obj)  # serialize first: a TypeError leaves no member behind
        with self.open(name) as member:
            member.write(data)

    def write_ndjson(self, name: str, rows: Iterable[Any]) -> None:
        """One JSON value per line.  A cap cuts the member at the last whole line."""
        opts = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
        with self.open(name) as member:
            if isinstance(member, _DiscardMember):
                return
            batch: list[bytes] = []
            pending = 0
            for row in rows:
                line = orjson.dumps(row, option=opts)
                batch.append(line)
                pending += len(line)
                if pending >= _NDJSON_BATCH:
                    if not member.write_lines(batch):
                        return  # cut: stop serializing rows nobody will keep
                    batch, pending = [], 0
            if batch:
                member.write_lines(batch)

    # -- caps (called by members with their own lock held)

    def _reserve(self, member: _Member, wanted: int) -> tuple[int, str | None]:
        """How many of ``wanted`` bytes ``member`` may write now, and why the rest is refused."""
        with self._lock:
            if self._sealed:
                return 0, REASON_TIMED_OUT
            member_room = self.max_member_bytes - member.size
            bundle_room = self.max_bundle_bytes - self._total
            allowed = min(wanted, member_room, bundle_room)
            reason = None
            if allowed < wanted:
                reason = REASON_MEMBER_CAP if member_room <= bundle_room else REASON_BUNDLE_CAP
            self._total += allowed
            return allowed, reason

    def _release(self, count: int) -> None:
        with self._lock:
            self._total -= count

    # -- lifecycle

    def seal(self, reason: str = REASON_TIMED_OUT) -> None:
        """Refuse all further writes.

        Members still open are marked truncated with ``reason`` (a source that
        is still writing when the snapshot seals has timed out); whatever their
        threads write later is dropped.  ``open`` then hands out writers that
        drop everything.
        """
        with self._lock:
            if self._sealed:
                return
            self._sealed = True
            members = list(self._order)
        for member in members:
            member.seal(reason)

    def finish(self, manifest: dict[str, Any], evidence: dict[str, Any]) -> BundleInfo:
        """Seal, write the ``.tar.zst`` and return what was written.

        ``manifest`` is the orchestrator's part of ``manifest.json``; this adds
        ``format_version``, ``bundle_id``, ``host_id``, ``created_at``,
        ``caps``, ``truncations`` and ``members`` (replacing any keys of those
        names).  Raises :class:`BundleWriteError`, after removing everything
        temporary, on any failure; the writer cannot be used afterwards.
        """
        if self._state != "open":
            raise BundleWriteError(f"bundle {self.bundle_id} is already {self._state}")
        self.seal()
        try:
            info = self._write_bundle(manifest, evidence)
        except BaseException as exc:
            self._state = "failed"
            self._remove_temp()
            if isinstance(exc, BundleWriteError) or not isinstance(exc, Exception):
                raise
            raise BundleWriteError(f"writing bundle {self._tmp_path} failed: {type(exc).__name__}: {exc}") from exc
        self._state = "finished"
        shutil.rmtree(self._work, ignore_errors=True)
        return info

    def abort(self) -> None:
        """Drop the bundle: seal and remove the work directory and any temporary file."""
        self.seal()
        if self._state == "open":
            self._state = "aborted"
        if self._state != "finished":
            self._remove_temp()

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state != "finished":
            self.abort()

    # -- internals

    def _remove_temp(self) -> None:
        shutil.rmtree(self._work, ignore_errors=True)
        try:
            os.unlink(self._tmp_path)
        except FileNotFoundError:
            pass
        except OSError:
            pass

    def _build_manifest(
        self, manifest: dict[str, Any], evidence_entry: dict[str, Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        entries = [evidence_entry] + [m.entry() for m in self._order]
        truncations = [
            {"member": m.name, "reason": m.truncated_reason, "kept_bytes": m.size}
            for m in self._order
            if m.truncated_reason is not None
        ]
        ours = ("format_version", "bundle_id", "host_id", "created_at", "caps", "truncations", "members")
        doc: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "bundle_id": self.bundle_id,
            "host_id": self.host_id,
            "created_at": self.created_at,
        }
        for key, value in manifest.items():
            if key not in ours:
                doc[key] = value
        doc["caps"] = {"max_member_bytes": self.max_member_bytes, "max_bundle_bytes": self.max_bundle_bytes}
        doc["truncations"] = truncations
        doc["members"] = entries
        return doc, entries

    def _write_bundle(self, manifest: dict[str, Any], evidence: dict[str, Any]) -> BundleInfo:
        if not isinstance(manifest, dict) or not isinstance(evidence, dict):
            raise BundleWriteError("manifest and evidence must be dicts")
        limits = ReadLimits()
        try:
            evidence_bytes = _dumps_document(evidence)
        except TypeError as exc:
            raise BundleWriteError(f"evidence is not JSON-serializable: {exc}") from None
        if len(evidence_bytes) > limits.max_evidence_bytes:
            raise BundleWriteError(
                f"evidence.json would be {len(evidence_bytes)} bytes; readers accept at most "
                f"{limits.max_evidence_bytes}"
            )
        evidence_entry = {
            "name": EVIDENCE_NAME,
            "size_bytes": len(evidence_bytes),
            "sha256": hashlib.sha256(evidence_bytes).hexdigest(),
            "truncated": False,
            "truncated_reason": None,
        }
        doc, entries = self._build_manifest(manifest, evidence_entry)
        try:
            manifest_bytes = _dumps_document(doc)
        except TypeError as exc:
            raise BundleWriteError(f"manifest is not JSON-serializable: {exc}") from None
        if len(manifest_bytes) > limits.max_manifest_bytes:
            raise BundleWriteError(
                f"manifest.json would be {len(manifest_bytes)} bytes; readers accept at most "
                f"{limits.max_manifest_bytes}"
            )

        if os.path.lexists(self.path):
            raise BundleWriteError(f"bundle file {self.path} already exists", path=self.path)
        try:
            raw = self._open_output(self._tmp_path)
        except OSError as exc:
            if not os.path.isdir(self.out_dir):
                raise BundleWriteError(f"bundle directory {self.out_dir} does not exist", path=self.out_dir) from None
            raise _os_error(exc, "creating", self._tmp_path) from None
        written = False
        try:
            sink = _HashingSink(raw, self._tmp_path)
            try:
                self._write_tar(sink, manifest_bytes, evidence_bytes)
            except BaseException:
                sink.failed = True  # half-built tar/zstd objects must not write on when collected
                raise
            try:
                raw.flush()
                os.fsync(raw.fileno())
            except OSError as exc:
                raise _os_error(exc, "syncing", self._tmp_path) from None
            written = True
        finally:
            try:
                raw.close()
            except OSError as exc:
                # Some file systems report a failed write only here; an earlier
                # error, if any, is the one worth reporting.
                if written:
                    raise _os_error(exc, "closing", self._tmp_path) from None
        try:
            os.rename(self._tmp_path, self.path)
        except OSError as exc:
            raise _os_error(exc, "renaming to", self.path) from None
        try:
            self._sync_dir(self.out_dir)
        except OSError as exc:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            raise _os_error(exc, "syncing directory", self.out_dir) from None
        return BundleInfo(
            path=self.path,
            bundle_id=self.bundle_id,
            size_bytes=sink.count,
            sha256=sink.sha.hexdigest(),
            members=entries,
            manifest=doc,
        )

    def _tar_info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = int(self.now)
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        return info

    def _write_tar(self, sink: _HashingSink, manifest_bytes: bytes, evidence_bytes: bytes) -> None:
        cctx = zstandard.ZstdCompressor(level=self.zstd_level, write_checksum=True)
        zwriter = cctx.stream_writer(sink, closefd=False)  # type: ignore[arg-type]
        tar = tarfile.open(  # type: ignore[call-overload]
            fileobj=zwriter, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=_COPY_CHUNK
        )
        tar.addfile(self._tar_info(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes))
        tar.addfile(self._tar_info(EVIDENCE_NAME, len(evidence_bytes)), io.BytesIO(evidence_bytes))
        for member in self._order:
            spool = _SpoolReader(member)
            try:
                tar.addfile(self._tar_info(member.name, member.size), spool)
            finally:
                spool.close()
        tar.close()
        zwriter.close()  # type: ignore[no-untyped-call]  # ends the one frame (an explicit FLUSH_FRAME first would start a second, empty one)
