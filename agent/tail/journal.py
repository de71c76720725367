"""journald: following it into the ``journal`` ring, and the helpers both followers share.

The follower runs ``journalctl -o json --follow --no-tail`` as an asyncio
subprocess, resuming after the cursor saved in the tail checkpoint (or, on a
first start or after a long stop, from ``--since=@<now - window_s>``).  Each
batch of entries read is formatted as one line per entry, redacted in one call,
and kept in the ``journal`` ring at the entry's own time (journald records it).
Levels come from the entry's ``PRIORITY`` (0-3 error, 4 warning).

If ``journalctl`` is missing, the journal unreadable, or ``journalctl`` exits,
the error is kept for :meth:`JournalFollower.status`; the follower retries with
a growing delay and never takes the agent down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as _dt
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from hostdiag.agent.tail.lines import LEVEL_ERROR, LEVEL_NONE, LEVEL_WARNING, classify_text
from hostdiag.agent.tail.ring import LogRing

if TYPE_CHECKING:
    from hostdiag.agent.config import JournalSection

__all__ = [
    "JournalFollower",
    "find_journalctl",
    "message_text",
    "entry_time",
    "entry_level",
    "entry_line",
    "redact_many",
]

log = logging.getLogger("hostdiag.agent.tail")

READ_CHUNK_BYTES = 1 << 16
MAX_ENTRY_BYTES = 4 << 20  # a longer JSON line (a huge binary field) is skipped
STDERR_KEEP_BYTES = 2048
RETRY_MAX_S = 60.0


def find_journalctl(name: str = "journalctl") -> str | None:
    """The journalctl executable to run, or None where there is none."""
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


def message_text(value: Any) -> str:
    """journald's MESSAGE as text: a string, or bytes given as a list of ints in JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(x, int) and 0 <= x < 256 for x in value):
            return bytes(value).decode("utf-8", "replace")
        # A field given several times: journalctl prints an array of its values.
        return "\n".join(message_text(v) for v in value)
    return str(value)


def entry_time(entry: dict[str, Any]) -> float | None:
    try:
        return int(entry["__REALTIME_TIMESTAMP"]) / 1e6
    except (KeyError, TypeError, ValueError):
        return None


def entry_level(entry: dict[str, Any], text: str) -> int:
    try:
        prio = int(entry["PRIORITY"])
    except (KeyError, TypeError, ValueError):
        return classify_text(text)
    if prio <= 3:
        return LEVEL_ERROR
    if prio == 4:
        return LEVEL_WARNING
    return LEVEL_NONE


def entry_line(entry: dict[str, Any]) -> str:
    """One entry as a line, like ``journalctl -o short-iso-precise``: time, identifier[pid]: message."""
    t = entry_time(entry)
    stamp = (
        _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t is not None else "-"
    )
    ident = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or entry.get("_SYSTEMD_UNIT") or "-"
    pid = entry.get("_PID") or entry.get("SYSLOG_PID")
    who = f"{message_text(ident)}[{message_text(pid)}]" if pid else message_text(ident)
    return f"{stamp} {who}: {message_text(entry.get('MESSAGE'))}"


def redact_many(redactor: Any, texts: Sequence[str], counts: collections.Counter[str]) -> list[str]:
    """Redact many short texts with as few redactor calls as possible.

    Single-line texts are joined into one block, redacted once, and split
    again; if the redactor changed the number of lines, each is redacted on its
    own.  Texts holding newlines are always redacted on their own.
    """
    out = list(texts)
    single = [i for i, s in enumerate(texts) if "\n" not in s]
    if single:
        trial: collections.Counter[str] = collections.Counter()
        redacted = redactor.redact("\n".join(texts[i] for i in single), trial).split("\n")
        if len(redacted) == len(single):
            counts.update(trial)
            for i, s in zip(single, redacted):
                out[i] = s
        else:
            for i in single:
                out[i] = redactor.redact(texts[i], counts)
    for i, s in enumerate(texts):
        if "\n" in s:
            out[i] = redactor.redact(s, counts)
    return out


class _LineSplitter:
    """Turns chunks of journalctl output into complete lines, skipping absurdly long ones."""

    def __init__(self) -> None:
        self._buf = b""
        self._skipping = False
        self.skipped = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buf + chunk if self._buf else chunk
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self._buf = b""
                return []
            data = data[nl + 1:]
            self._skipping = False
        end = data.rfind(b"\n")
        if end < 0:
            lines, rest = [], data
        else:
            lines, rest = data[:end].split(b"\n"), data[end + 1:]
        if len(rest) > MAX_ENTRY_BYTES:
            rest = b""
            self._skipping = True
            self.skipped += 1
        self._buf = rest
        return [line for line in lines if line]


async def _drain(stream: asyncio.StreamReader | None, keep: collections.deque[bytes]) -> None:
    if stream is None:
        return
    while True:
        chunk = await stream.read(4096)
        if not chunk:
            return
        keep.append(chunk)
        while sum(map(len, keep)) > STDERR_KEEP_BYTES and len(keep) > 1:
            keep.popleft()


def _stderr_text(keep: Iterable[bytes]) -> str:
    text = b"".join(keep).decode("utf-8", "replace").strip()
    return text[-STDERR_KEEP_BYTES:]


class JournalFollower:
    """Follows journald into a ring; see the module docstring."""

    def __init__(
        self,
        section: JournalSection,
        ring: LogRing,
        *,
        journalctl: str = "journalctl",
        redactor: Any,
        counts: collections.Counter[str],
        window_s: float,
        cursor: str | None = None,
        cursor_saved_at: float | None = None,
        clock: Callable[[], float] = time.time,
        retry_initial_s: float = 1.0,
    ) -> None:
        self.section = section
        self.ring = ring
        self.journalctl = journalctl
        self._redactor = redactor
        self._counts = counts
        self.window_s = window_s
        self.cursor = cursor if isinstance(cursor, str) and cursor else None
        self._cursor_at = cursor_saved_at if isinstance(cursor_saved_at, (int, float)) else None
        self._clock = clock
        self._retry_initial_s = retry_initial_s
        self.cursor_changed = False
        self.entries = 0
        self.bad_entries = 0
        self.restarts = 0
        self.error: str | None = None
        self.state = "starting"

    # -- what the manager reads -------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        if self.cursor is None:
            return {}
        return {"cursor": self.cursor, "saved_at": self._cursor_at}

    def status(self) -> dict[str, Any]:
        return {
            "name": "journal",
            "path": "journald",
            "offset": 0,
            "size": 0,
            "lag_bytes": 0,
            "lines": self.entries,
            "truncated_lines": 0,
            "invalid_utf8": 0,
            "rotations": self.restarts,
            "error": self.error,
            "state": self.state,
        }

    # -- running ------------------------------------------------------------------------
    def command(self, binary: str) -> list[str]:
        args = [binary, "-o", "json", "--follow", "--no-tail", "--no-pager", "--quiet"]
        now = self._clock()
        fresh = self._cursor_at is None or self._cursor_at >= now - self.window_s
        if self.cursor and fresh:
            args.append(f"--after-cursor={self.cursor}")
        else:
            # No cursor, or one older than the window: what is older than the
            # window would fall out of the ring anyway.
            args.append(f"--since=@{int(now - self.window_s)}")
        for unit in self.section.units:
            args += ["--unit", unit]
        return args

    async def run(self) -> None:
        """Follow until cancelled.  Never raises (except CancelledError)."""
        binary = find_journalctl(self.journalctl)
        if binary is None:
            if self.section.enabled == "on":
                self.error = f"{self.journalctl} not found"
                self.state = "failed"
            else:
                self.state = "off: journalctl not found"
            return
        if self.section.enabled == "auto":
            readable, why = await self._readable(binary)
            if not readable:
                self.state = f"off: {why}"
                return
        delay = self._retry_initial_s
        while True:
            started = time.monotonic()
            try:
                await self._follow_once(binary)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not end the agent
                log.exception("journal follower failed", extra={"event": "journal_follower_failed"})
                self.error = f"{type(exc).__name__}: {exc}"
            self.restarts += 1
            if time.monotonic() - started > 10 * RETRY_MAX_S:
                delay = self._retry_initial_s
            self.state = f"retrying in {delay:g} s"
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _readable(self, binary: str) -> tuple[bool, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                binary, "-o", "json", "-n", "1", "--no-pager", "--quiet",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return False, f"cannot run {binary}: {exc.strerror or exc}"
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 10.0)
        except asyncio.TimeoutError:
            return False, "journalctl did not answer within 10 s"
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            text = err.decode("utf-8", "replace").strip()[-200:]
            return False, f"journal not readable (journalctl exit status {proc.returncode}: {text})"
        return True, ""

    async def _follow_once(self, binary: str) -> None:
        args = self.command(binary)
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            self.error = f"cannot run {binary}: {exc.strerror or exc}"
            self.state = "failed"
            return
        stderr_keep: collections.deque[bytes] = collections.deque()
        stderr_task = asyncio.get_running_loop().create_task(_drain(proc.stderr, stderr_keep))
        splitter = _LineSplitter()
        self.state = "following"
        got_any = False
        try:
            assert proc.stdout is not None
            while True:
                chunk = await proc.stdout.read(READ_CHUNK_BYTES)
                if not chunk:
                    break
                lines = splitter.feed(chunk)
                if lines:
                    if self.take(lines):
                        got_any = True
                        self.error = None
            rc = await proc.wait()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stderr_task, 1.0)
            detail = _stderr_text(stderr_keep)
            self.error = f"journalctl exited with status {rc}" + (f": {detail}" if detail else "")
            if not got_any:
                self.state = "failed"
            log.warning("%s", self.error, extra={"event": "journal_follower_exited"})
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stderr_task

    def take(self, raw_lines: Sequence[bytes]) -> int:
        """Parse, redact and keep a batch of ``journalctl -o json`` lines; returns entries kept."""
        entries = []
        for raw in raw_lines:
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                self.bad_entries += 1
                continue
            if isinstance(entry, dict):
                entries.append(entry)
            else:
                self.bad_entries += 1
        if not entries:
            return 0
        texts = redact_many(self._redactor, [entry_line(e) for e in entries], self._counts)
        now = self._clock()
        for entry, text in zip(entries, texts):
            t = entry_time(entry)
            self.ring.append_event(t if t is not None else now, text, entry_level(entry, text))
        for entry in reversed(entries):
            cursor = entry.get("__CURSOR")
            if isinstance(cursor, str) and cursor:
                self.cursor = cursor
                self._cursor_at = now
                self.cursor_changed = True
                break
        self.entries += len(entries)
        return len(entries)
