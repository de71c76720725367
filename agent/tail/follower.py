"""One open log file being read: blocks in, redacted lines (or events) out to a ring.

A :class:`FileFollower` owns an open file descriptor and the offset of the next
byte to read.  Holding the descriptor is what makes rotation safe: a file that
is renamed or deleted stays readable through it until it is read to the end,
and its inode cannot be reused while it is open.

Per read pass it reads the file in blocks of ``BLOCK_BYTES`` and, per block:
cuts over-long lines, decodes UTF-8 (replacing and counting invalid bytes),
redacts the whole block in one call, classifies levels with one scan, and
appends the block to the ring as one entry.  With ``multiline_start`` set, the
redacted lines are gathered into events first.

An incomplete last line waits (up to ``max_line_bytes``) for the rest of it;
the checkpoint offset (:attr:`committed_offset`) never includes it, so a
restart reads it again whole.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Callable
from typing import Any, Protocol

from hostdiag.agent.tail.identity import FINGERPRINT_BYTES, Fingerprint, prefix_matches, read_fingerprint
from hostdiag.agent.tail.lines import (
    classify_block,
    classify_text,
    cut_at_char_boundary,
    cut_long_lines,
    decode_block,
    truncation_mark,
)
from hostdiag.agent.tail.ring import LogRing

__all__ = ["FileFollower", "BLOCK_BYTES", "FileStats"]

BLOCK_BYTES = 1 << 20


class FileStats(Protocol):
    """Where a follower adds its counts (the watch it belongs to)."""

    lines: int
    truncated_lines: int
    invalid_utf8: int


class FileFollower:
    def __init__(
        self,
        fd: int,
        path: str,
        st: os.stat_result,
        fp: Fingerprint,
        offset: int,
        *,
        stats: FileStats,
        ring: LogRing,
        redactor: Any,
        counts: collections.Counter[str],
        max_line_bytes: int,
        multiline_start: re.Pattern[str] | None = None,
        multiline_timeout_s: float = 1.0,
        clock: Callable[[], float],
        backlog_end: int = 0,
    ) -> None:
        self.fd = fd
        self.path = path
        self.key = (st.st_dev, st.st_ino)
        self.fp = fp
        self.offset = offset
        self.size = st.st_size
        self.stats = stats
        self.ring = ring
        # The redactor, or its per-file stream (which may carry state, such as an
        # open PEM block, from one block to the next).
        self._redactor = redactor
        self._counts = counts
        self.max_line_bytes = max_line_bytes
        self._start_re = multiline_start
        self._timeout_s = multiline_timeout_s
        self._event_max_chars = 4 * max_line_bytes
        self._clock = clock
        # Bytes before ``backlog_end`` were in the file before the agent looked at
        # it: their time is unknown, so they are kept but not counted per minute.
        self.backlog_end = backlog_end
        self._partial = b""
        self._skip_head: bytes | None = None  # head of an over-long line still being skipped
        self._skip_bytes = 0
        self._event: list[str] | None = None
        self._event_t = 0.0
        self._event_last = 0.0
        self._event_chars = 0
        self._event_count = True
        self.last_growth = clock()
        self.at_eof = False
        self.closed = False
        self.truncations = 0  # truncations noticed while reading (not by :meth:`check`)

    # -- positions -------------------------------------------------------------------
    @property
    def committed_offset(self) -> int:
        """The offset just past the last complete line handed on: where a restart resumes."""
        pending = len(self._partial)
        if self._skip_head is not None:
            pending += len(self._skip_head) + self._skip_bytes
        return self.offset - pending

    @property
    def lag_bytes(self) -> int:
        return max(0, self.size - self.offset)

    # -- rotation checks -------------------------------------------------------------
    def check(self, st: os.stat_result) -> bool:
        """Compare with a fresh stat of the same inode; restart from 0 if it was truncated.

        Truncation shows as a size below our offset, or — when the file was
        truncated and written past our offset again between two passes — as a
        change in the bytes the fingerprint covers.  Returns True if it restarted.
        """
        size = st.st_size
        truncated = size < self.offset
        if not truncated and size != self.size:
            fp, head = read_fingerprint(self.fd)
            if not prefix_matches(self.fp, head):
                truncated = True
            elif fp.length > self.fp.length:
                self.fp = fp
        self.size = size
        if truncated:
            self.restart()
        return truncated

    def restart(self) -> None:
        """The file was truncated: hand on what is pending and read again from offset 0."""
        self.flush_pending()
        reset = getattr(self._redactor, "reset", None)
        if callable(reset):
            reset()  # whatever the stream was in the middle of is gone
        self.offset = 0
        self.backlog_end = 0
        self.fp, _ = read_fingerprint(self.fd)

    def refresh_fingerprint(self) -> None:
        """Extend a short fingerprint now that the file has grown."""
        if self.fp.length < FINGERPRINT_BYTES and self.size > self.fp.length:
            fp, head = read_fingerprint(self.fd)
            if prefix_matches(self.fp, head):
                self.fp = fp

    # -- reading -------------------------------------------------------------------
    def read(self, budget_bytes: int) -> int:
        """Read up to about ``budget_bytes``; returns the number of bytes read."""
        total = 0
        restarts = 0
        self.at_eof = False
        while total < budget_bytes:
            want = BLOCK_BYTES
            count = True
            if self.offset < self.backlog_end:
                want = min(want, self.backlog_end - self.offset)
                count = False
            data = os.pread(self.fd, want, self.offset)
            if not data:
                self.at_eof = True
                break
            if self.fp.length and not prefix_matches(self.fp, os.pread(self.fd, self.fp.length, 0)):
                # Truncated (and written again) since the last check, maybe before
                # this read: what was read may be from the new content at the old
                # offset.  Drop it and start over from the beginning.
                self.restart()
                self.truncations += 1
                restarts += 1
                if restarts > 2:  # rewritten over and over: try again next pass
                    break
                continue
            self.offset += len(data)
            total += len(data)
            self._consume(data, count)
        if total:
            self.last_growth = self._clock()
            if self.offset > self.size:
                self.size = self.offset
            self.refresh_fingerprint()
        return total

    def _consume(self, data: bytes, count: bool) -> None:
        prefix = b""
        if self._skip_head is not None:
            nl = data.find(b"\n")
            if nl < 0:
                self._skip_bytes += len(data)
                return
            self._skip_bytes += nl
            prefix = self._skip_head + truncation_mark(self._skip_bytes) + b"\n"
            self.stats.truncated_lines += 1
            self._skip_head = None
            self._skip_bytes = 0
            data = data[nl + 1:]
        buf = self._partial + data if self._partial else data
        end = buf.rfind(b"\n")
        if end < 0:
            complete = b""
            partial = buf
        elif end == len(buf) - 1:
            complete = buf
            partial = b""
        else:
            complete = buf[: end + 1]
            partial = buf[end + 1:]
        if len(partial) > self.max_line_bytes:
            # An over-long line with no end in sight: keep its head, skip the rest
            # as it arrives, and emit it cut once its newline shows up.
            keep = cut_at_char_boundary(partial, self.max_line_bytes)
            self._skip_head = partial[:keep]
            self._skip_bytes = len(partial) - keep
            partial = b""
        self._partial = partial
        if prefix:
            self._emit(prefix, count, cut=False)
        if complete:
            self._emit(complete, count)

    def _emit(self, block: bytes, count: bool, cut: bool = True) -> None:
        stats = self.stats
        if cut:
            block, n_cut = cut_long_lines(block, self.max_line_bytes)
            stats.truncated_lines += n_cut
        n_lines = block.count(b"\n")
        stats.lines += n_lines
        text, bad = decode_block(block)
        if bad:
            stats.invalid_utf8 += bad
        text = self._redactor.redact(text, self._counts)
        t = self._clock()
        if self._start_re is not None:
            self._assemble(text, t, count)
            return
        if count:
            errors, warnings = classify_block(block)
        else:
            errors = warnings = 0
        self.ring.append_block(t, text, lines=n_lines, errors=errors, warnings=warnings, count=count)

    # -- multiline events ------------------------------------------------------------
    def _assemble(self, text: str, t: float, count: bool) -> None:
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        match = self._start_re.match  # type: ignore[union-attr]
        for line in lines:
            if match(line) is not None or self._event is None:
                self._flush_event()
                self._event = [line]
                self._event_t = t
                self._event_chars = len(line)
                self._event_count = count
            else:
                self._event.append(line)
                self._event_chars += len(line) + 1
                if self._event_chars > self._event_max_chars:
                    # A runaway event is handed on in parts rather than held without bound.
                    self._flush_event()
        self._event_last = t

    def _flush_event(self) -> None:
        if not self._event:
            self._event = None
            return
        text = "\n".join(self._event)
        self._event = None
        self.ring.append_event(self._event_t, text, classify_text(text), count=self._event_count)

    def tick(self, now: float) -> None:
        """Flush a multiline event that has had no new line for ``multiline_timeout_s``."""
        if self._event is not None and now - self._event_last >= self._timeout_s:
            self._flush_event()

    def flush_pending(self) -> None:
        """Hand on everything held back: an incomplete last line and an open event."""
        if self._skip_head is not None:
            block = self._skip_head + truncation_mark(self._skip_bytes) + b"\n"
            self.stats.truncated_lines += 1
            self._skip_head = None
            self._skip_bytes = 0
            self._emit(block, True, cut=False)
        if self._partial:
            block = self._partial + b"\n"
            self._partial = b""
            self._emit(block, True)
        self._flush_event()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def checkpoint_entry(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "dev": self.key[0],
            "ino": self.key[1],
            "fp": self.fp.digest,
            "fp_len": self.fp.length,
            "offset": self.committed_offset,
        }
