"""Read and verify bundles, defensively.

The collector runs this on bytes from agents it must not trust, so the reader:

* streams: raw bytes -> zstd stream reader -> ``tarfile`` in stream mode
  (``"r|"``); nothing is extracted and no member name is ever used as a path;
* caps what it holds in memory (manifest and evidence sizes, tar extended
  headers) and what it decompresses in total (a zstd bomb stops at
  :attr:`ReadLimits.max_total_bytes`), and bounds the zstd window;
* reports every problem with a precise message instead of raising:
  :func:`verify_bundle` returns a :class:`VerifyReport`; only
  :func:`read_manifest_and_evidence` raises, and then only
  :class:`BundleFormatError` for anything wrong with the bytes.

The format itself is specified in ``docs/bundle-format.md``; the name rules and
limits that writer and reader share live here.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import orjson
import zstandard

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "EVIDENCE_NAME",
    "MAX_NAME_BYTES",
    "REQUIRED_MANIFEST_FIELDS",
    "BundleFormatError",
    "ReadLimits",
    "VerifyReport",
    "member_name_problem",
    "verify_bundle",
    "read_manifest_and_evidence",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
EVIDENCE_NAME = "evidence.json"
MAX_NAME_BYTES = 200
REQUIRED_MANIFEST_FIELDS = ("format_version", "bundle_id", "host_id", "created_at", "members", "caps", "truncations")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Our own pax headers only carry a path of at most MAX_NAME_BYTES; anything
# much bigger is not from a hostdiag agent and must not be buffered.
_MAX_EXTENDED_HEADER_BYTES = 4 * KiB
_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                   tarfile.GNUTYPE_LONGLINK)
_TAR_BUFSIZE = 64 * KiB
_DATA_CHUNK = 1 * MiB
_ZSTD_READ_SIZE = 64 * KiB


class BundleFormatError(Exception):
    """The bytes are not a valid bundle; the message says what is wrong and where."""


@dataclass(frozen=True)
class ReadLimits:
    """Caps applied while reading bytes that may come from a hostile agent."""

    max_manifest_bytes: int = 1 * MiB
    max_evidence_bytes: int = 4 * MiB
    max_members: int = 1000
    max_total_bytes: int = 4 * GiB  # decompressed tar stream, padding included
    max_json_depth: int = 64
    max_zstd_window_bytes: int = 128 * MiB  # memory the zstd decoder may need


@dataclass
class VerifyReport:
    """What :func:`verify_bundle` found.

    ``members`` has one dict per tar member in archive order, then one per
    manifest entry missing from the archive: ``name``, ``size_bytes`` and
    ``sha256`` as read (None when absent), ``expected_sha256`` from the manifest
    (None for ``manifest.json`` itself and for unlisted members) and ``ok``.
    ``sha256``/``compressed_bytes`` describe the whole file and are set only when
    it was read to the end.
    """

    ok: bool
    manifest: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    compressed_bytes: int | None = None
    decompressed_bytes: int = 0
    sha256: str | None = None


def member_name_problem(name: str) -> str | None:
    """Why ``name`` is not an acceptable member name, or None when it is."""
    if not isinstance(name, str) or not name:
        return "empty name"
    if name.startswith("/"):
        return "absolute path"
    segments = name.split("/")
    if ".." in segments:
        return "contains a '..' segment"
    if "." in segments:
        return "contains a '.' segment"
    if not _NAME_RE.fullmatch(name):
        return "only [A-Za-z0-9._-] segments joined by '/' are allowed"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def _clean(name: str) -> str:
    """A tar name as text that is safe to print and to encode as JSON.

    ``tarfile`` keeps undecodable bytes as lone surrogates; they become
    backslash escapes here (and then fail the name rules, as they should).
    """
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _show(name: object, limit: int = 120) -> str:
    """A name as it may safely appear in a message (quoted, escaped, shortened)."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# --------------------------------------------------------------------------
# Byte plumbing


class _InternalStop(Exception):
    """Raised inside the tar/zstd plumbing; carries a BundleFormatError message."""


class _FrameWalker:
    """Follows zstd frame boundaries in the compressed bytes (RFC 8878 section 3).

    The zstd stream reader happily returns EOF for a stream cut in the middle
    of a frame, so truncation is detected here, by walking frame and block
    headers without decoding anything.
    """

    _ZSTD_MAGIC = 0xFD2FB528

    def __init__(self) -> None:
        self.offset = 0  # compressed bytes seen
        self.frames = 0
        self.bad: str | None = None
        self._state = "magic"
        self._need = 4
        self._buf = bytearray()
        self._skip_then = "magic"
        self._checksum = False
        self._last_block = False

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and self.bad is None:
            if self._state == "skip":
                take = min(self._need, n - i)
                i += take
                self.offset += take
                self._need -= take
                if self._need == 0:
                    self._state = self._skip_then
                    self._need = {"magic": 4, "block": 3}[self._state]
                continue
            take = min(self._need - len(self._buf), n - i)
            self._buf += data[i : i + take]
            i += take
            self.offset += take
            if len(self._buf) == self._need:
                header = bytes(self._buf)
                self._buf.clear()
                self._on_header(header)

    def _skip(self, count: int, then: str) -> None:
        if count == 0:
            self._state = then
            self._need = {"magic": 4, "block": 3}[then]
        else:
            self._state, self._need, self._skip_then = "skip", count, then

    def _on_header(self, header: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(header, "little")
            if magic == self._ZSTD_MAGIC:
                self._state, self._need = "fhd", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
                self._state, self._need = "skipsize", 4
            else:
                self.bad = f"not a zstd frame at compressed offset {self.offset - 4}"
        elif state == "skipsize":
            self.frames += 1
            self._skip(int.from_bytes(header, "little"), "magic")
        elif state == "fhd":
            fhd = header[0]
            single_segment = (fhd >> 5) & 1
            self._checksum = bool((fhd >> 2) & 1)
            fcs_size = (1 if single_segment else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3] + fcs_size
            self._skip(rest, "block")
        elif state == "block":
            value = int.from_bytes(header, "little")
            self._last_block = bool(value & 1)
            block_type = (value >> 1) & 3
            size = value >> 3
            if block_type == 3:
                self.bad = f"reserved zstd block type at compressed offset {self.offset - 3}"
                return
            body = 1 if block_type == 1 else size
            if self._last_block:
                self.frames += 1
                self._skip(body + (4 if self._checksum else 0), "magic")
            else:
                self._skip(body, "block")

    @property
    def complete(self) -> bool:
        """True when the bytes seen so far end exactly at a frame boundary."""
        return self.bad is None and self.frames > 0 and self._state == "magic" and not self._buf


class _RawTap:
    """The compressed side: counts, hashes and walks frames as zstd reads."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.count = 0
        self.sha = hashlib.sha256()
        self.walker = _FrameWalker()
        self.eof = False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _ZSTD_READ_SIZE
        data = self._source.read(size)
        if not data:
            self.eof = True
            return b""
        data = bytes(data)
        self.count += len(data)
        self.sha.update(data)
        self.walker.feed(data)
        return data


class _PlainTap:
    """The decompressed side: enforces the total cap and remembers recent bytes.

    ``tarfile`` silently treats an invalid header after the first as the end
    of the archive; keeping the last few blocks lets the scanner look at the
    block it stopped on and tell a proper end from a bad header.
    """

    def __init__(self, reader: Any, cap: int) -> None:
        self._reader = reader
        self._cap = cap
        self.pos = 0
        self.eof = False
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._recent_bytes = 0
        self._keep = 4 * _TAR_BUFSIZE

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > _DATA_CHUNK:
            size = _DATA_CHUNK
        data: bytes = self._reader.read(size)
        if not data:
            self.eof = True
            return b""
        if self.pos + len(data) > self._cap:
            raise _InternalStop(
                f"decompressed size exceeds the limit of {self._cap} bytes; stopped reading "
                f"(a compression bomb or a bundle too big for this reader)"
            )
        self._recent.append((self.pos, data))
        self._recent_bytes += len(data)
        self.pos += len(data)
        while self._recent and self._recent_bytes - len(self._recent[0][1]) >= self._keep:
            _, old = self._recent.popleft()
            self._recent_bytes -= len(old)
        return data

    def recent(self, start: int) -> bytes | None:
        """Bytes from absolute ``start`` to what has been read, if still remembered."""
        if not self._recent or start < self._recent[0][0]:
            return None
        joined = b"".join(chunk for _, chunk in self._recent)
        return joined[start - self._recent[0][0] :]


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses header shapes that would make ``tarfile`` buffer or seek without bound.

    ``_proc_member`` is the hook ``tarfile`` documents for subclasses; it runs
    right after a header block is parsed and before any of its data is read.
    """

    max_size = 0  # set per scan: nothing can be bigger than the decompressed cap

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size < 0 or self.size > self.max_size:
            raise _InternalStop(
                f"bad tar header at offset {self.offset}: member size {self.size} is impossible "
                f"(decompressed limit {self.max_size})"
            )
        if self.type in _EXTENDED_TYPES and self.size > _MAX_EXTENDED_HEADER_BYTES:
            raise _InternalStop(
                f"bad tar header at offset {self.offset}: extended header of {self.size} bytes "
                f"(limit {_MAX_EXTENDED_HEADER_BYTES})"
            )
        info: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return info


@dataclass
class _Entry:
    index: int
    name: str
    kind: str | None  # None for a regular file, else what it is ("symbolic link", ...)
    header_size: int
    size_bytes: int = 0
    sha256: str = ""
    data: bytes | None = None  # kept only for manifest/evidence within their limits
    too_big: bool = False


_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.DIRTYPE: "directory",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


class _Scanner:
    """Walks the members of one bundle stream, hashing each member's data."""

    def __init__(self, source: BinaryIO, limits: ReadLimits) -> None:
        self.limits = limits
        self.raw = _RawTap(source)
        dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_zstd_window_bytes)
        self._zreader = dctx.stream_reader(
            self.raw, read_size=_ZSTD_READ_SIZE, read_across_frames=True  # type: ignore[arg-type]
        )
        self.plain = _PlainTap(self._zreader, limits.max_total_bytes)
        self._tar: tarfile.TarFile | None = None
        self._tarinfo = type("_ScanTarInfo", (_GuardedTarInfo,), {"max_size": limits.max_total_bytes})
        self.end_offset: int | None = None

    # -- errors from the layers below, turned into precise messages

    def _explain(self, exc: BaseException, where: str) -> BundleFormatError:
        if isinstance(exc, BundleFormatError):
            return exc
        if isinstance(exc, _InternalStop):
            return BundleFormatError(str(exc))
        walker = self.raw.walker
        if isinstance(exc, zstandard.ZstdError):
            if self.raw.count == 0:
                return BundleFormatError("empty file (0 bytes)")
            if walker.bad is not None:
                if walker.frames == 0:
                    return BundleFormatError(f"not a zstd-compressed bundle ({walker.bad})")
                return BundleFormatError(f"unexpected data after the zstd frame ({walker.bad})")
            if "too much memory" in str(exc):
                return BundleFormatError(
                    f"the zstd frame needs a bigger window than the limit of {self.limits.max_zstd_window_bytes} bytes"
                )
            return BundleFormatError(f"corrupt zstd data {where}: {exc}")
        # A tar-level complaint: if the compressed stream itself was cut short,
        # that is the real story.
        truncation = self.truncation_problem()
        if truncation is not None:
            return BundleFormatError(f"{truncation} ({where})")
        return BundleFormatError(f"bad tar data {where}: {exc}")

    def truncation_problem(self) -> str | None:
        """A message when the raw input ended inside a zstd frame."""
        if not self.raw.eof:
            return None
        if self.raw.count == 0:
            return "empty file (0 bytes)"
        walker = self.raw.walker
        if walker.bad is not None:
            return f"not a zstd-compressed bundle ({walker.bad})" if walker.frames == 0 else walker.bad
        if not walker.complete:
            return f"truncated zstd frame: the compressed stream ends mid-frame after {self.raw.count} bytes"
        return None

    # -- members

    def entries(self, keep: Any) -> Iterator[_Entry]:
        """Yield every tar entry; ``keep(index, name)`` gives a byte limit to keep its data, or None."""
        try:
            self._tar = tarfile.open(  # type: ignore[call-overload]
                fileobj=self.plain, mode="r|", bufsize=_TAR_BUFSIZE, tarinfo=self._tarinfo
            )
        except OSError:
            raise
        except Exception as exc:
            if self.raw.count == 0:
                raise BundleFormatError("empty file (0 bytes)") from None
            if isinstance(exc, tarfile.ReadError) and self.plain.pos == 0:
                trunc = self.truncation_problem()
                raise BundleFormatError(trunc or "empty archive: the zstd stream holds no tar data") from None
            raise self._explain(exc, "at the start of the archive") from None
        index = 0
        while True:
            header_offset = self._tar.offset
            try:
                info = self._tar.next()
            except OSError:
                raise
            except Exception as exc:
                raise self._explain(exc, f"in the tar header at offset {header_offset}") from None
            if info is None:
                self._check_end(self._tar.offset)
                return
            if index >= self.limits.max_members:
                raise BundleFormatError(f"more than {self.limits.max_members} members; stopped reading")
            if not 0 <= info.size <= self.limits.max_total_bytes:
                # A pax "size" record can override the header checked by _GuardedTarInfo.
                raise BundleFormatError(f"bad tar header at offset {header_offset}: member size {info.size}")
            name = _clean(info.name)
            entry = _Entry(index=index, name=name, kind=self._kind(info), header_size=info.size)
            if entry.kind is None:
                # Only regular files are read (and hashed); tarfile skips any other
                # entry's data itself, through the same capped stream.
                self._read_data(info, entry, keep(index, name))
            yield entry
            index += 1

    @staticmethod
    def _kind(info: tarfile.TarInfo) -> str | None:
        if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            return None
        if info.type in _KINDS:
            return _KINDS[info.type]
        return f"entry of unknown type {info.type!r}"

    def _read_data(self, info: tarfile.TarInfo, entry: _Entry, limit: int | None) -> None:
        assert self._tar is not None
        where = f"inside member {_show(info.name)}"
        keep = limit is not None and info.size <= limit
        entry.too_big = limit is not None and not keep
        sha = hashlib.sha256()
        parts: list[bytes] = []
        count = 0
        try:
            fobj = self._tar.extractfile(info)
            if fobj is None:
                return
            while True:
                chunk = fobj.read(_DATA_CHUNK)
                if not chunk:
                    break
                count += len(chunk)
                sha.update(chunk)
                if keep:
                    parts.append(chunk)
        except OSError:
            raise
        except Exception as exc:
            raise self._explain(exc, where) from None
        entry.size_bytes = count
        entry.sha256 = sha.hexdigest()
        if keep:
            entry.data = b"".join(parts)

    def _check_end(self, offset: int) -> None:
        """``tarfile`` stopped at ``offset``: make sure that was a real end of archive."""
        self.end_offset = offset
        tail = self.plain.recent(offset)
        if tail is None:
            raise BundleFormatError(f"bad tar stream: cannot re-read the block at offset {offset}")
        if len(tail) < tarfile.BLOCKSIZE:
            tail += self._read_plain(tarfile.BLOCKSIZE - len(tail))
        if len(tail) < tarfile.BLOCKSIZE:
            trunc = self.truncation_problem()
            if trunc is not None:
                raise BundleFormatError(trunc)
            raise BundleFormatError(f"tar archive truncated: no end-of-archive marker at offset {offset}")
        if tail[: tarfile.BLOCKSIZE].count(0) != tarfile.BLOCKSIZE:
            raise BundleFormatError(f"bad tar header at offset {offset}")
        if tail.count(0) != len(tail):
            raise BundleFormatError(f"unexpected data after the end of the tar archive (offset {offset})")

    def _read_plain(self, size: int) -> bytes:
        try:
            return self.plain.read(size)
        except OSError:
            raise
        except Exception as exc:
            raise self._explain(exc, "after the end of the tar archive") from None

    def drain(self) -> None:
        """Read to the end of the input: only zero padding may follow the tar end, then EOF."""
        assert self.end_offset is not None
        while True:
            start = self.plain.pos
            chunk = self._read_plain(_DATA_CHUNK)
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                raise BundleFormatError(
                    f"unexpected data after the end of the tar archive (offset {start}, archive ended at "
                    f"{self.end_offset})"
                )
        trunc = self.truncation_problem()
        if trunc is not None:
            raise BundleFormatError(trunc)


# --------------------------------------------------------------------------
# JSON documents


def _json_depth_exceeds(obj: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                return True
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            if depth > max_depth:
                return True
            stack.extend((v, depth + 1) for v in value)
    return False


def _parse_json_object(name: str, data: bytes, limits: ReadLimits) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        text = str(exc).lower()
        if "recursion" in text or "depth" in text:
            raise BundleFormatError(f"{name} is nested too deeply (limit {limits.max_json_depth})") from None
        raise BundleFormatError(f"{name} is not valid JSON: {exc}") from None
    if _json_depth_exceeds(obj, limits.max_json_depth):
        raise BundleFormatError(f"{name} is nested too deeply (limit {limits.max_json_depth})")
    if not isinstance(obj, dict):
        raise BundleFormatError(f"{name} is not a JSON object")
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _manifest_problems(manifest: dict[str, Any], limits: ReadLimits) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Problems with the manifest's own fields, and its well-formed member entries by name."""
    problems: list[str] = []
    for key in REQUIRED_MANIFEST_FIELDS:
        if key not in manifest:
            problems.append(f"manifest.json is missing the required field {key!r}")
    version = manifest.get("format_version")
    if "format_version" in manifest:
        if not _is_int(version):
            problems.append(f"manifest.json: format_version must be an integer, got {_show(version, 40)}")
        elif version != FORMAT_VERSION:
            problems.append(f"unsupported format_version {version} (this reader knows {FORMAT_VERSION})")
    for key in ("bundle_id", "host_id", "created_at"):
        if key in manifest and (not isinstance(manifest[key], str) or not manifest[key]):
            problems.append(f"manifest.json: {key} must be a non-empty string")
    if "caps" in manifest:
        caps = manifest["caps"]
        if not isinstance(caps, dict) or not all(
            _is_int(caps.get(k)) for k in ("max_member_bytes", "max_bundle_bytes")
        ):
            problems.append("manifest.json: caps must hold integer max_member_bytes and max_bundle_bytes")
    if "truncations" in manifest and not isinstance(manifest["truncations"], list):
        problems.append("manifest.json: truncations must be a list")
    expected: dict[str, dict[str, Any]] = {}
    members = manifest.get("members")
    if "members" in manifest and not isinstance(members, list):
        problems.append("manifest.json: members must be a list")
    if isinstance(members, list):
        if len(members) > limits.max_members:
            problems.append(f"manifest.json lists {len(members)} members (limit {limits.max_members})")
            members = members[: limits.max_members]
        for i, item in enumerate(members):
            where = f"manifest.json members[{i}]"
            if not isinstance(item, dict):
                problems.append(f"{where} is not an object")
                continue
            name = item.get("name")
            if not isinstance(name, str):
                problems.append(f"{where}: name must be a string")
                continue
            why = member_name_problem(name)
            if why is not None:
                problems.append(f"{where}: invalid member name {_show(name)}: {why}")
                continue
            if name == MANIFEST_NAME:
                problems.append(f"{where}: the manifest must not list itself")
                continue
            size = item.get("size_bytes")
            sha = item.get("sha256")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                problems.append(f"{where} ({name}): size_bytes must be a non-negative integer")
                continue
            if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
                problems.append(f"{where} ({name}): sha256 must be 64 lowercase hex digits")
                continue
            if "truncated" in item and not isinstance(item["truncated"], bool):
                problems.append(f"{where} ({name}): truncated must be true or false")
            if name in expected:
                problems.append(f"manifest.json lists member {_show(name)} more than once")
                continue
            expected[name] = item
    return problems, expected


# --------------------------------------------------------------------------
# Public entry points


def _open_source(source: str | os.PathLike[str] | bytes | BinaryIO) -> tuple[BinaryIO, bool]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), True
    if isinstance(source, (str, os.PathLike)):
        return open(source, "rb"), True  # noqa: SIM115 - closed by the caller
    return source, False


def _keep_limit(limits: ReadLimits) -> Any:
    def keep(index: int, name: str) -> int | None:
        if name == MANIFEST_NAME:
            return limits.max_manifest_bytes
        if name == EVIDENCE_NAME:
            return limits.max_evidence_bytes
        return None

    return keep


def _entry_problem(entry: _Entry) -> str | None:
    why = member_name_problem(entry.name)
    if why is not None:
        return f"member {_show(entry.name)} has an unsafe or invalid name: {why}"
    if entry.kind is not None:
        return f"member {_show(entry.name)} is a {entry.kind}; only regular files are allowed"
    return None


def read_manifest_and_evidence(
    source: str | os.PathLike[str] | bytes | BinaryIO, limits: ReadLimits = ReadLimits()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read just the first two members (stopping there) and check them.

    Raises :class:`BundleFormatError` when the first member is not a valid
    manifest, the second is not ``evidence.json``, or evidence.json does not
    match the size and sha256 the manifest gives it.  I/O errors on ``source``
    itself propagate as ``OSError``.  This does not verify the other members;
    use :func:`verify_bundle` for that.
    """
    fh, close = _open_source(source)
    try:
        scanner = _Scanner(fh, limits)
        manifest: dict[str, Any] | None = None
        try:
            for entry in scanner.entries(_keep_limit(limits)):
                problem = _entry_problem(entry)
                if problem is not None:
                    raise BundleFormatError(problem)
                if entry.index == 0:
                    if entry.name != MANIFEST_NAME:
                        raise BundleFormatError(f"manifest.json is not the first member (found {_show(entry.name)})")
                    manifest = _checked_json(entry, MANIFEST_NAME, limits.max_manifest_bytes, limits)
                    problems, _ = _manifest_problems(manifest, limits)
                    if problems:
                        raise BundleFormatError(problems[0])
                    continue
                if entry.name != EVIDENCE_NAME:
                    raise BundleFormatError(f"evidence.json is not the second member (found {_show(entry.name)})")
                evidence = _checked_json(entry, EVIDENCE_NAME, limits.max_evidence_bytes, limits)
                assert manifest is not None
                _, expected = _manifest_problems(manifest, limits)
                listed = expected.get(EVIDENCE_NAME)
                if listed is None:
                    raise BundleFormatError("manifest.json does not list evidence.json")
                if listed["size_bytes"] != entry.size_bytes:
                    raise BundleFormatError(
                        f"member 'evidence.json': size mismatch (manifest {listed['size_bytes']} bytes, "
                        f"archive {entry.size_bytes} bytes)"
                    )
                if listed["sha256"] != entry.sha256:
                    raise BundleFormatError(
                        f"member 'evidence.json': sha256 mismatch (manifest {listed['sha256']}, "
                        f"archive {entry.sha256})"
                    )
                return manifest, evidence
        except (BundleFormatError, OSError):
            raise
        except _InternalStop as exc:
            raise BundleFormatError(str(exc)) from None
        if manifest is None:
            raise BundleFormatError("the archive holds no members (manifest.json is missing)")
        raise BundleFormatError("evidence.json is missing")
    finally:
        if close:
            fh.close()


def _checked_json(entry: _Entry, name: str, limit: int, limits: ReadLimits) -> dict[str, Any]:
    if entry.too_big or entry.data is None:
        raise BundleFormatError(f"{name} is too big: {entry.header_size} bytes (limit {limit})")
    return _parse_json_object(name, entry.data, limits)


def verify_bundle(
    source: str | os.PathLike[str] | bytes | BinaryIO, *, limits: ReadLimits = ReadLimits()
) -> VerifyReport:
    """Read a whole bundle and check everything; never raises for bad bytes.

    ``source`` is a path, the bundle's bytes, or a binary file object read from
    its current position.  An unreadable path or a read error is reported as a
    problem too.
    """
    report = VerifyReport(ok=False)
    problems = report.problems
    try:
        fh, close = _open_source(source)
    except OSError as exc:
        label = os.fsdecode(source) if isinstance(source, (str, os.PathLike)) else repr(source)
        problems.append(f"cannot open {label}: {exc.strerror or exc}")
        return report
    scanner: _Scanner | None = None
    complete = False
    seen: dict[str, dict[str, Any]] = {}
    order: list[tuple[_Entry, dict[str, Any] | None]] = []  # entry, member result (None for skipped)
    try:
        scanner = _Scanner(fh, limits)
        for entry in scanner.entries(_keep_limit(limits)):
            _take_entry(entry, report, seen, order, limits)
        scanner.drain()
        complete = True
    except BundleFormatError as exc:
        problems.append(str(exc))
    except _InternalStop as exc:
        problems.append(str(exc))
    except OSError as exc:
        problems.append(f"read error: {exc.strerror or exc}")
    except Exception as exc:  # a safety net: a reader bug must not crash the collector
        problems.append(f"internal error while reading the bundle: {type(exc).__name__}: {exc}")
    finally:
        if close:
            fh.close()
    if scanner is not None:
        report.decompressed_bytes = scanner.plain.pos
        if complete:
            report.compressed_bytes = scanner.raw.count
            report.sha256 = scanner.raw.sha.hexdigest()
    _cross_check(report, seen, order, complete, limits)
    report.ok = not problems
    return report


def _take_entry(
    entry: _Entry,
    report: VerifyReport,
    seen: dict[str, dict[str, Any]],
    order: list[tuple[_Entry, dict[str, Any] | None]],
    limits: ReadLimits,
) -> None:
    problems = report.problems
    result = {"name": entry.name, "size_bytes": entry.size_bytes, "sha256": entry.sha256 or None,
              "expected_sha256": None, "ok": True}
    problem = _entry_problem(entry)
    if problem is not None:
        problems.append(problem)
        result["ok"] = False
    if entry.index == 0 and entry.name != MANIFEST_NAME:
        problems.append(f"manifest.json is not the first member (the first is {_show(entry.name)})")
    if entry.index == 1 and entry.name != EVIDENCE_NAME:
        problems.append(f"evidence.json is not the second member (the second is {_show(entry.name)})")
    if entry.name in seen:
        problems.append(f"member {_show(entry.name)} appears more than once in the archive")
        result["ok"] = False
        order.append((entry, result))
        return
    if entry.kind is None and problem is None:
        # Parent-directory clashes ("a" and "a/b") would make extraction fail.
        for other in seen:
            if other.startswith(entry.name + "/") or entry.name.startswith(other + "/"):
                problems.append(f"member {_show(entry.name)} clashes with member {_show(other)} (file vs directory)")
                result["ok"] = False
                break
    seen[entry.name] = result
    order.append((entry, result))
    if entry.name == MANIFEST_NAME and entry.kind is None:
        try:
            manifest = _checked_json(entry, MANIFEST_NAME, limits.max_manifest_bytes, limits)
        except BundleFormatError as exc:
            problems.append(str(exc))
            result["ok"] = False
        else:
            report.manifest = manifest
            problems.extend(_manifest_problems(manifest, limits)[0])
    elif entry.name == EVIDENCE_NAME and entry.kind is None:
        try:
            report.evidence = _checked_json(entry, EVIDENCE_NAME, limits.max_evidence_bytes, limits)
        except BundleFormatError as exc:
            problems.append(str(exc))
            result["ok"] = False


def _cross_check(
    report: VerifyReport,
    seen: dict[str, dict[str, Any]],
    order: list[tuple[_Entry, dict[str, Any] | None]],
    complete: bool,
    limits: ReadLimits,
) -> None:
    problems = report.problems
    if complete and MANIFEST_NAME not in seen:
        problems.append("manifest.json is missing")
    expected: dict[str, dict[str, Any]] = {}
    if report.manifest is not None:
        _, expected = _manifest_problems(report.manifest, limits)
    have_manifest = report.manifest is not None
    for entry, result in order:
        if result is None or entry.name == MANIFEST_NAME or entry.kind is not None:
            continue
        if result is not seen.get(entry.name):
            continue  # a duplicate, already reported
        listed = expected.get(entry.name)
        if listed is None:
            if have_manifest:
                problems.append(f"member {_show(entry.name)} is in the archive but not listed in the manifest")
            result["ok"] = False
            continue
        result["expected_sha256"] = listed["sha256"]
        if listed["size_bytes"] != entry.size_bytes:
            problems.append(
                f"member {_show(entry.name)}: size mismatch (manifest {listed['size_bytes']} bytes, "
                f"archive {entry.size_bytes} bytes)"
            )
            result["ok"] = False
        if listed["sha256"] != entry.sha256:
            problems.append(
                f"member {_show(entry.name)}: sha256 mismatch (manifest {listed['sha256']}, archive {entry.sha256})"
            )
            result["ok"] = False
    if complete:
        for name, listed in expected.items():
            if name not in seen:
                problems.append(f"member {_show(name)} is listed in the manifest but missing from the archive")
                order.append((
                    _Entry(index=-1, name=name, kind=None, header_size=0),
                    {"name": name, "size_bytes": None, "sha256": None, "expected_sha256": listed["sha256"],
                     "ok": False},
                ))
        if EVIDENCE_NAME not in seen and EVIDENCE_NAME not in expected:
            problems.append("evidence.json is missing")
    report.members = [result for _, result in order if result is not None]
