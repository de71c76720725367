"""A byte-bounded ring of recent log lines, with per-minute level counts.

Lines arrive a block at a time.  A block (many lines read together, so read at
the same wall-clock time) is kept as one string: appending is O(1) whatever the
number of lines, and the ring splits it into lines only when a snapshot asks.
A multiline event (a stack trace) is kept as one entry.

Memory is bounded by ``capacity_bytes``, not by traffic: every entry is charged
its UTF-8 size plus a fixed overhead for the bookkeeping objects, and the oldest
lines are dropped (whole entries, or the first lines of the oldest block) until
the total fits.  The per-minute counts keep at most ``window_s / 60 + 1``
minutes.

A ring is written by the tailer's thread and read by the event loop (snapshots,
status), so every access takes a short lock; nothing slow happens under it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from hostdiag.agent.tail.lines import LEVEL_ERROR, LEVEL_WARNING

__all__ = ["LogRing", "ENTRY_OVERHEAD_BYTES"]

# What one entry costs beyond its text: the list, the str header and the deque slot.
ENTRY_OVERHEAD_BYTES = 96

_T, _TEXT, _SIZE, _IS_EVENT = 0, 1, 2, 3


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


class LogRing:
    """Recent lines of one log (a file, or the journal), bounded in bytes."""

    def __init__(self, capacity_bytes: int, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.capacity_bytes = int(capacity_bytes)
        self.window_s = float(window_s)
        self._clock = clock
        self._lock = threading.Lock()
        # Each entry: [read_time, text, charged_bytes, is_event].  A block's text is
        # newline-separated lines (it may end with a newline); an event is one entry.
        self._entries: collections.deque[list[Any]] = collections.deque()
        self.bytes_used = 0
        self.minutes_capacity = int(self.window_s // 60) + 1
        # Each: [minute_start, error, warning, lines], oldest first.
        self._minutes: collections.deque[list[int]] = collections.deque(maxlen=self.minutes_capacity)
        self.dropped_bytes = 0
        self.newest_t = 0.0

    # -- writing (the tailer's thread) ---------------------------------------------
    def append_block(self, t: float, text: str, *, lines: int, errors: int = 0, warnings: int = 0,
                     count: bool = True) -> None:
        """Keep a block of lines read at ``t``; ``count`` adds them to the per-minute counts."""
        if not text:
            return
        entry = [t, text, _utf8_len(text) + (0 if text.endswith("\n") else 1) + ENTRY_OVERHEAD_BYTES, False]
        with self._lock:
            self._push(entry)
            if count:
                self._count(t, errors, warnings, lines)

    def append_event(self, t: float, text: str, level: int, *, count: bool = True) -> None:
        """Keep one event (a line, or the lines of a multiline event) read at ``t``."""
        entry = [t, text, _utf8_len(text) + 1 + ENTRY_OVERHEAD_BYTES, True]
        with self._lock:
            self._push(entry)
            if count:
                self._count(t, int(level == LEVEL_ERROR), int(level == LEVEL_WARNING), 1)

    def add_counts(self, t: float, *, errors: int = 0, warnings: int = 0, lines: int = 0) -> None:
        with self._lock:
            self._count(t, errors, warnings, lines)

    def _push(self, entry: list[Any]) -> None:
        self._entries.append(entry)
        self.bytes_used += entry[_SIZE]
        if entry[_T] > self.newest_t:
            self.newest_t = entry[_T]
        if self.bytes_used > self.capacity_bytes:
            self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while self.bytes_used > self.capacity_bytes and entries:
            oldest = entries[0]
            excess = self.bytes_used - self.capacity_bytes
            text: str = oldest[_TEXT]
            # Drop the first lines of the oldest entry when that is enough: removing
            # the characters up to a newline at index >= excess - 1 removes at least
            # ``excess`` bytes, since a character is at least one byte.
            if excess < oldest[_SIZE] - ENTRY_OVERHEAD_BYTES:
                j = text.find("\n", excess - 1)
                if 0 <= j < len(text) - 1:
                    rest = text[j + 1:]
                    size = _utf8_len(rest) + (0 if rest.endswith("\n") else 1) + ENTRY_OVERHEAD_BYTES
                    self.bytes_used -= oldest[_SIZE] - size
                    self.dropped_bytes += oldest[_SIZE] - size
                    oldest[_TEXT] = rest
                    oldest[_SIZE] = size
                    continue
            if len(entries) == 1:
                # One line larger than the whole ring: keep its head.
                self._shrink_single(oldest)
                return
            entries.popleft()
            self.bytes_used -= oldest[_SIZE]
            self.dropped_bytes += oldest[_SIZE]

    def _shrink_single(self, entry: list[Any]) -> None:
        mark = " …[cut to fit the log ring]"
        budget = self.capacity_bytes - ENTRY_OVERHEAD_BYTES - 1 - len(mark.encode())
        if budget <= 0:
            self._entries.clear()
            self.dropped_bytes += entry[_SIZE]
            self.bytes_used = 0
            return
        head = entry[_TEXT].encode("utf-8", "replace")[:budget].decode("utf-8", "ignore")
        text = head + mark
        size = _utf8_len(text) + 1 + ENTRY_OVERHEAD_BYTES
        self.dropped_bytes += entry[_SIZE] - size
        entry[_TEXT] = text
        entry[_SIZE] = size
        self.bytes_used = size

    def _count(self, t: float, errors: int, warnings: int, lines: int) -> None:
        minute = int(t // 60) * 60
        minutes = self._minutes
        row: list[int] | None = None
        if minutes and minutes[-1][0] == minute:
            row = minutes[-1]
        elif not minutes or minute > minutes[-1][0]:
            row = [minute, 0, 0, 0]
            minutes.append(row)  # maxlen drops the oldest minute
        else:
            # Out of order (journal entries carry their own time): find or insert.
            for i, r in enumerate(minutes):
                if r[0] == minute:
                    row = r
                    break
                if r[0] > minute:
                    if len(minutes) == minutes.maxlen:
                        if i == 0:
                            return  # older than anything kept
                        minutes.popleft()
                        i -= 1
                    row = [minute, 0, 0, 0]
                    minutes.insert(i, row)
                    break
        if row is None:
            return
        row[1] += errors
        row[2] += warnings
        row[3] += lines

    # -- reading (snapshots, status) -----------------------------------------------
    def lines_since(self, since: float) -> list[tuple[float, str]]:
        """Every kept line (or multiline event) read at or after ``since``, oldest first."""
        with self._lock:
            picked = [(e[_T], e[_TEXT], e[_IS_EVENT]) for e in self._entries if e[_T] >= since]
        out: list[tuple[float, str]] = []
        for t, text, is_event in picked:
            if is_event:
                out.append((t, text))
                continue
            lines = text.split("\n")
            if text.endswith("\n"):
                lines.pop()
            out.extend([(t, line) for line in lines])
        return out

    def level_counts(self, since: float) -> list[dict[str, int]]:
        """Per-minute counts from the minute holding ``since`` to the current minute.

        Every minute in that range has a row (zeros where nothing was read); the
        range is limited to the minutes the ring keeps.
        """
        now_minute = int(self._clock() // 60) * 60
        start = max(int(since // 60) * 60, now_minute - (self.minutes_capacity - 1) * 60)
        with self._lock:
            kept = {r[0]: (r[1], r[2], r[3]) for r in self._minutes if r[0] >= start}
        end = max([now_minute, *kept]) if kept else now_minute
        rows = []
        for minute in range(start, end + 1, 60):
            e, w, n = kept.get(minute, (0, 0, 0))
            rows.append({"minute": minute, "error": e, "warning": w, "lines": n})
        return rows

    def __len__(self) -> int:
        """How many entries (blocks or events) are kept; not a line count."""
        with self._lock:
            return len(self._entries)
