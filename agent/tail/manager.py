"""The tail manager: discovery, rotation, checkpoints, and one ring per log.

Model
-----
* A *watch* is one log as the user sees it: a configured ``[[logs]]`` path, or
  one file matched by a configured glob.  It owns the ring (named after the
  log's ``name``, or the matched path for globs) and the status counters.
* A *follower* (:class:`~hostdiag.agent.tail.follower.FileFollower`) is one open
  file, keyed by (st_dev, st_ino).  A watch has at most one *current* follower
  (the file at its path now) and any number of *draining* ones: files that were
  at its path before a rotation and are read to their end before being let go.

Each pass (:meth:`TailManager.poll_once`) stats every watched path:

* same inode as the current follower: check for truncation (size below our
  offset, or the fingerprinted first bytes changed) and restart from 0 if so —
  this covers copytruncate and ``: > file``;
* a different inode, or no file: the current follower becomes draining (the
  rename of rename+create, or a deletion) and the new file, if any, is opened
  and read from offset 0;
* a draining follower is closed once it is at its end, has not grown for
  ``ROTATE_WAIT_S`` and is not matched by any watched path any more.

Nothing here depends on inotify: pure polling every ``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hostdiag.agent.tail.checkpoint import load_checkpoint
from hostdiag.agent.tail.checkpoint import save_checkpoint as _write_checkpoint
from hostdiag.agent.tail.follower import FileFollower
from hostdiag.agent.tail.identity import Fingerprint, prefix_matches, read_fingerprint
from hostdiag.agent.tail.ring import LogRing

if TYPE_CHECKING:
    from hostdiag.agent.config import JournalSection, LogSection
    from hostdiag.agent.tail.journal import JournalFollower

__all__ = ["TailManager", "ROTATE_WAIT_S", "PASS_BUDGET_BYTES", "MAX_FILES_PER_GLOB", "JOURNAL_RING"]

log = logging.getLogger("hostdiag.agent.tail")

ROTATE_WAIT_S = 5.0  # a rotated file is let go after this long without growing
PASS_BUDGET_BYTES = 16 * 1024 * 1024  # at most this much per file per pass (fairness, checkpoint cadence)
MAX_FILES_PER_GLOB = 256  # more matches than this are ignored (and said so in status)
MAX_KNOWN_ENTRIES = 1024  # checkpoint entries kept for files not open right now
KNOWN_MAX_AGE_S = 7 * 86400  # ... and for at most this long
CHECKPOINT_MIN_INTERVAL_S = 5.0  # an fsync per save: a crash re-reads at most this much
JOURNAL_RING = "journal"

Key = tuple[int, int]


def _open_readonly(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


class _Watch:
    """One log as configured (or one file matched by a glob)."""

    def __init__(self, name: str, path: str, section: LogSection, ring: LogRing, glob_member: bool) -> None:
        self.name = name
        self.path = path
        self.section = section
        self.ring = ring
        self.glob_member = glob_member
        self.current: FileFollower | None = None
        self.draining: list[FileFollower] = []
        self.lines = 0
        self.truncated_lines = 0
        self.invalid_utf8 = 0
        self.rotations = 0
        self.error: str | None = None

    def followers(self) -> list[FileFollower]:
        return [*self.draining, self.current] if self.current is not None else list(self.draining)


class TailManager:
    """Tails the configured logs into byte-bounded rings; see the module docstring."""

    def __init__(
        self,
        logs: Sequence[LogSection],
        *,
        checkpoint_path: str,
        redactor: Any,
        ring_bytes: int,
        max_line_bytes: int,
        poll_interval_s: float,
        window_s: float,
        journal: JournalSection | None = None,
        clock: Callable[[], float] = time.time,
        opener: Callable[[str], int] = _open_readonly,
        journalctl: str = "journalctl",
    ) -> None:
        self._sections = list(logs)
        self._multiline = {
            id(sec): re.compile(sec.multiline_start) if sec.multiline_start else None for sec in self._sections
        }
        self.checkpoint_path = checkpoint_path
        self._redactor = redactor
        self._stream = getattr(redactor, "stream", None)
        self.ring_bytes = ring_bytes
        self.max_line_bytes = max_line_bytes
        self.poll_interval_s = poll_interval_s
        self.window_s = window_s
        self._clock = clock
        self._opener = opener
        self.redaction_counts: collections.Counter[str] = collections.Counter()

        self._lock = threading.Lock()  # the watch and ring tables, for readers on other threads
        self._pass_lock = threading.Lock()  # one pass or checkpoint save at a time
        self._watches: dict[str, _Watch] = {}
        self._rings: dict[str, LogRing] = {}
        self._followers: dict[Key, FileFollower] = {}
        self._glob_notes: dict[str, str | None] = {}
        self._first_pass = True
        self._dirty = False
        self._last_save = float("-inf")
        self.checkpoint_error: str | None = None

        doc, error = load_checkpoint(checkpoint_path)
        if error:
            log.warning("%s", error, extra={"event": "tail_checkpoint_unusable"})
            self.checkpoint_error = error
        # Checkpoint entries of files that are not open: matched on open by identity.
        self._known: dict[Key, dict[str, Any]] = {(e["dev"], e["ino"]): e for e in doc["files"]}
        self._known_watch_paths = {e.get("watch_path", "") for e in doc["files"]}
        self._journal_checkpoint: dict[str, Any] = dict(doc["journal"])

        for sec in self._sections:
            if not _is_glob(sec.path):
                self._new_watch(sec, sec.path, glob_member=False)

        self._journal: JournalFollower | None = None
        if journal is not None and journal.enabled != "off":
            from hostdiag.agent.tail.journal import JournalFollower

            ring = LogRing(ring_bytes, window_s, clock)
            self._rings[JOURNAL_RING] = ring
            self._journal = JournalFollower(
                journal,
                ring,
                journalctl=journalctl,
                redactor=redactor,
                counts=self.redaction_counts,
                window_s=window_s,
                cursor=self._journal_checkpoint.get("cursor"),
                cursor_saved_at=self._journal_checkpoint.get("saved_at"),
                clock=clock,
            )

    # -- public API -------------------------------------------------------------------
    def rings(self) -> Mapping[str, LogRing]:
        """Every log's ring, by log name (the journal's is ``"journal"``)."""
        with self._lock:
            return MappingProxyType(dict(self._rings))

    def poll_once(self) -> None:
        """Blocking: one discovery and read pass over every watched file."""
        with self._pass_lock:
            self._pass()

    def save_checkpoint(self) -> None:
        """Blocking: write the checkpoint now (atomically)."""
        with self._pass_lock:
            self._save()

    def pass_once(self) -> bool:
        """Blocking: one discovery + read pass, saving the checkpoint when due.

        Returns True when a file had more to read than one pass takes (call
        again soon).  The daemon runs this on the recorder's scheduler thread.
        """
        return self._pass_and_save()

    async def run_journal(self) -> None:
        """Follow the journal (when enabled) until cancelled; then save the checkpoint."""
        try:
            if self._journal is not None:
                await self._journal.run()
            await asyncio.Event().wait()  # the follower ended (or there is none): wait for cancellation
        finally:
            try:
                self.save_checkpoint()
            except Exception:
                log.exception("saving the tail checkpoint failed", extra={"event": "tail_checkpoint_failed"})

    async def run(self, executor: Any = None) -> None:
        """Poll in ``executor`` every ``poll_interval_s`` and follow the journal, until cancelled.

        The checkpoint is saved at most every CHECKPOINT_MIN_INTERVAL_S while
        running, and once more on cancellation (which is then let through, as
        asyncio expects).  Self-contained mode for tests and embedding; the
        daemon uses :meth:`pass_once` on its scheduler thread with
        :meth:`run_journal` on the loop instead.
        """
        loop = asyncio.get_running_loop()
        journal_task = loop.create_task(self.run_journal(), name="journal")
        try:
            while True:
                try:
                    more = await loop.run_in_executor(executor, self._pass_and_save)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug must not end tailing for good
                    log.exception("tail pass failed", extra={"event": "tail_pass_failed"})
                    more = False
                await asyncio.sleep(0 if more else self.poll_interval_s)
        finally:
            journal_task.cancel()
            try:
                await journal_task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("journal follower failed", extra={"event": "journal_failed"})

    def status(self) -> list[dict[str, Any]]:
        """One row per tailed log (and per glob that matches nothing, and the journal)."""
        with self._lock:
            watches = list(self._watches.values())
            notes = dict(self._glob_notes)
        rows = []
        for w in watches:
            cur = w.current
            rows.append({
                "name": w.name,
                "path": w.path,
                "offset": cur.committed_offset if cur is not None else 0,
                "size": cur.size if cur is not None else 0,
                "lag_bytes": sum(f.lag_bytes for f in w.followers()),
                "lines": w.lines,
                "truncated_lines": w.truncated_lines,
                "invalid_utf8": w.invalid_utf8,
                "rotations": w.rotations,
                "error": w.error,
            })
        for pattern, note in notes.items():
            if note:
                rows.append({
                    "name": pattern, "path": pattern, "offset": 0, "size": 0, "lag_bytes": 0, "lines": 0,
                    "truncated_lines": 0, "invalid_utf8": 0, "rotations": 0, "error": note,
                })
        if self._journal is not None:
            rows.append(self._journal.status())
        return rows

    # -- one pass ---------------------------------------------------------------------
    def _pass_and_save(self) -> bool:
        with self._pass_lock:
            more = self._pass()
            journal_moved = self._journal is not None and self._journal.cursor_changed
            if (self._dirty or journal_moved) and time.monotonic() - self._last_save >= CHECKPOINT_MIN_INTERVAL_S:
                self._save()
            return more

    def _pass(self) -> bool:
        now = self._clock()
        first = self._first_pass
        seen: set[Key] = set()
        visited: set[str] = set()
        for sec, path, watch in self._discover():
            if watch is not None:
                if watch.name in visited:
                    continue
                visited.add(watch.name)
            try:
                visited_name = self._visit(sec, path, watch, seen, first, now)
            except Exception as exc:  # one file's trouble never stops the others
                self._note_error(watch, sec, path, exc)
                continue
            if visited_name:
                visited.add(visited_name)
        for watch in list(self._watches.values()):
            if watch.name not in visited and watch.current is not None:
                self._demote(watch, now)  # a glob match that went away
        if first:
            self._recover_rotated_while_down(seen, now)
        more = False
        for watch in list(self._watches.values()):
            more |= self._read_watch(watch, now, seen)
        self._prune(now, visited)
        self._first_pass = False
        return more

    def _discover(self) -> list[tuple[LogSection, str, _Watch | None]]:
        import glob as _glob

        items: list[tuple[LogSection, str, _Watch | None]] = []
        for sec in self._sections:
            if _is_glob(sec.path):
                matches = sorted(_glob.glob(sec.path))
                note = None if matches else "no file matches yet"
                if len(matches) > MAX_FILES_PER_GLOB:
                    note = f"{len(matches)} files match; only the first {MAX_FILES_PER_GLOB} are tailed"
                    known = [m for m in matches if m in self._watches]
                    room = max(0, MAX_FILES_PER_GLOB - len(known))
                    matches = known + [m for m in matches if m not in self._watches][:room]
                with self._lock:
                    self._glob_notes[sec.path] = note
                items.extend((sec, m, self._watches.get(m)) for m in matches)
            else:
                items.append((sec, sec.path, self._watches[sec.name or sec.path]))
        return items

    def _visit(self, sec: LogSection, path: str, watch: _Watch | None, seen: set[Key], first: bool,
               now: float) -> str | None:
        """Bring one watched path up to date; returns the watch name it concerned, if any."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if watch is not None:
                if watch.current is not None:
                    self._demote(watch, now)
                if not watch.glob_member:
                    watch.error = f"{path}: not found"
            return None
        except OSError as exc:
            if watch is None:
                watch = self._new_watch(sec, path, glob_member=True)
            watch.error = _describe(exc)
            return watch.name
        if not stat.S_ISREG(st.st_mode):
            if watch is not None and not watch.glob_member:
                watch.error = f"{path}: not a regular file"
            return None  # a directory or socket a glob happened to match: not a log
        key = (st.st_dev, st.st_ino)
        seen.add(key)
        if watch is None:
            existing = self._followers.get(key)
            if existing is not None:
                existing.path = path  # a file we follow, renamed to a name the glob matches
                return None
            watch = self._new_watch(sec, path, glob_member=True)
        cur = watch.current
        if cur is not None and cur.key == key:
            if cur.check(st):
                watch.rotations += 1
                self._dirty = True
            watch.error = None
            return watch.name
        if cur is not None:
            self._demote(watch, now)
        existing = self._followers.get(key)
        if existing is not None:
            if existing in watch.draining:  # renamed away and back again
                watch.draining.remove(existing)
                watch.current = existing
                existing.path = path
                watch.error = None
            else:
                owner = next((w.name for w in self._watches.values() if existing in w.followers()), "?")
                watch.error = f"{path}: the same file as the log {owner!r}, tailed there"
            return watch.name
        watch.current = self._open(watch, path, first)
        watch.error = None
        return watch.name

    def _note_error(self, watch: _Watch | None, sec: LogSection, path: str, exc: Exception) -> None:
        if watch is None:
            watch = self._watches.get(path)
        if watch is None:
            try:
                watch = self._new_watch(sec, path, glob_member=True)
            except Exception:
                return
        text = _describe(exc)
        if watch.error != text:
            level = logging.WARNING if isinstance(exc, OSError) else logging.ERROR
            log.log(level, "cannot tail %s: %s", path, text, exc_info=not isinstance(exc, OSError),
                    extra={"event": "tail_file_error", "path": path})
        watch.error = text

    # -- opening, rotation ------------------------------------------------------------
    def _new_watch(self, sec: LogSection, path: str, *, glob_member: bool) -> _Watch:
        name = path if glob_member else (sec.name or sec.path)
        ring = LogRing(self.ring_bytes, self.window_s, self._clock)
        watch = _Watch(name, path, sec, ring, glob_member)
        with self._lock:
            self._watches[name] = watch
            self._rings[name] = ring
        return watch

    def _file_redactor(self) -> Any:
        # A redactor that offers per-stream state (for secrets split across blocks,
        # such as a PEM private key) gets one stream per file.
        if callable(self._stream):
            return self._stream()
        return self._redactor

    def _follower(self, watch: _Watch, fd: int, path: str, st: os.stat_result, fp: Fingerprint, offset: int,
                  backlog_end: int) -> FileFollower:
        sec = watch.section
        return FileFollower(
            fd, path, st, fp, offset,
            stats=watch,
            ring=watch.ring,
            redactor=self._file_redactor(),
            counts=self.redaction_counts,
            max_line_bytes=self.max_line_bytes,
            multiline_start=self._multiline[id(sec)],
            multiline_timeout_s=sec.multiline_timeout_s,
            clock=self._clock,
            backlog_end=backlog_end,
        )

    def _open(self, watch: _Watch, path: str, first: bool) -> FileFollower | None:
        fd = self._opener(path)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key in self._followers:  # replaced between stat and open by a file we follow
                os.close(fd)
                return None
            fp, head = read_fingerprint(fd)
            offset, backlog_end = self._start_offset(watch, path, key, st, head, fd, first)
            follower = self._follower(watch, fd, path, st, fp, offset, backlog_end)
        except BaseException:
            os.close(fd)
            raise
        self._followers[key] = follower
        self._dirty = True
        return follower

    def _start_offset(self, watch: _Watch, path: str, key: Key, st: os.stat_result, head: bytes, fd: int,
                      first: bool) -> tuple[int, int]:
        """Where to start reading a file just opened, and where its backlog ends.

        * The checkpoint knows this identity ((dev, inode) and the fingerprinted
          first bytes): resume at its offset.
        * At startup, a file at a path the checkpoint knows but with another
          identity replaced the old one while the agent was down: read it all.
        * At startup, a file the agent never saw: read only its last
          ``ring_bytes`` (from a line start) — the ring could keep no more.
        * Later on, a new file: read it all.

        What is in a file when the agent starts is its *backlog*: kept in the
        ring, not counted per minute (its lines' times are unknown).
        """
        backlog_end = st.st_size if first else 0
        entry = self._known.pop(key, None)
        if entry is not None:
            fp = Fingerprint(entry["fp"], entry["fp_len"])
            if prefix_matches(fp, head) and entry["offset"] <= st.st_size:
                return entry["offset"], backlog_end
        if first and watch.path not in self._known_watch_paths:
            return self._recent_start(fd, st.st_size), backlog_end
        return 0, backlog_end

    def _recent_start(self, fd: int, size: int) -> int:
        if size <= self.ring_bytes:
            return 0
        start = size - self.ring_bytes
        window = os.pread(fd, self.max_line_bytes + 1, start - 1)
        nl = window.find(b"\n")
        return start + nl if nl >= 0 else start

    def _demote(self, watch: _Watch, now: float) -> None:
        f = watch.current
        if f is None:
            return
        watch.current = None
        watch.draining.append(f)
        watch.rotations += 1
        f.last_growth = now  # give writers still holding the old file time to finish
        self._dirty = True

    def _release(self, watch: _Watch, f: FileFollower, now: float) -> None:
        f.flush_pending()
        f.close()
        if f in watch.draining:
            watch.draining.remove(f)
        if watch.current is f:
            watch.current = None
        self._followers.pop(f.key, None)
        self._known[f.key] = {
            "name": watch.name, "watch_path": watch.path, **f.checkpoint_entry(), "state": "retired", "seen_at": now,
        }
        self._dirty = True

    def _recover_rotated_while_down(self, seen: set[Key], now: float) -> None:
        """At startup: finish files rotated away while the agent was not running.

        A checkpointed file that is no longer at its path, but still exists next
        to it under another name (``app.log.1``), may hold lines written after
        the last checkpoint and before the rotation.  Read those (from the
        checkpointed offset) before letting the file go.
        """
        for key, entry in list(self._known.items()):
            if entry.get("state") == "retired" or key in seen:
                continue
            watch = self._watches.get(entry.get("name", ""))
            if watch is None:
                continue
            found = self._find_inode(entry)
            if found is None:
                continue
            try:
                fd = self._opener(found)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                fp, head = read_fingerprint(fd)
                ok = (
                    (st.st_dev, st.st_ino) == key
                    and prefix_matches(Fingerprint(entry["fp"], entry["fp_len"]), head)
                    and st.st_size > entry["offset"]
                    and key not in self._followers
                )
                if not ok:
                    os.close(fd)
                    continue
                follower = self._follower(watch, fd, found, st, fp, entry["offset"], st.st_size)
            except BaseException:
                os.close(fd)
                raise
            self._known.pop(key, None)
            self._followers[key] = follower
            watch.draining.append(follower)
            watch.rotations += 1
            follower.last_growth = now
            log.info("reading the rest of %s, rotated while the agent was down", found,
                     extra={"event": "tail_recover_rotated", "path": found})

    @staticmethod
    def _find_inode(entry: dict[str, Any]) -> str | None:
        dirs = {os.path.dirname(entry.get("path", "")), os.path.dirname(entry.get("watch_path", ""))}
        for d in sorted(x for x in dirs if x):
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.inode() != entry["ino"]:
                            continue
                        st = e.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode) and st.st_dev == entry["dev"]:
                            return str(e.path)
            except OSError:
                continue
        return None

    # -- reading ----------------------------------------------------------------------
    def _read_watch(self, watch: _Watch, now: float, seen: set[Key]) -> bool:
        more = False
        for f in list(watch.draining):
            try:
                f.read(PASS_BUDGET_BYTES)
            except OSError as exc:
                watch.error = _describe(exc)
                self._release(watch, f, now)
                continue
            more |= not f.at_eof
            f.tick(now)
            if f.at_eof and f.key not in seen and now - f.last_growth >= ROTATE_WAIT_S:
                self._release(watch, f, now)
        cur = watch.current
        if cur is not None:
            f = cur
            before = f.truncations
            try:
                if f.read(PASS_BUDGET_BYTES):
                    self._dirty = True
            except OSError as exc:
                watch.error = _describe(exc)
                return more
            if f.truncations != before:
                watch.rotations += f.truncations - before
            more |= not f.at_eof
            f.tick(now)
        return more

    def _prune(self, now: float, visited: set[str]) -> None:
        # Globs: forget files that are gone, read out, and whose lines are out of the window.
        for name, w in list(self._watches.items()):
            if (w.glob_member and name not in visited and w.current is None and not w.draining
                    and w.ring.newest_t < now - self.window_s):
                with self._lock:
                    del self._watches[name]
                    del self._rings[name]
        if len(self._known) > MAX_KNOWN_ENTRIES or self._first_pass:
            keep = sorted(self._known.items(), key=lambda kv: kv[1].get("seen_at", 0.0), reverse=True)
            keep = [kv for kv in keep if kv[1].get("seen_at", now) >= now - KNOWN_MAX_AGE_S]
            self._known = dict(keep[:MAX_KNOWN_ENTRIES])

    # -- checkpoint -------------------------------------------------------------------
    def _save(self) -> None:
        now = self._clock()
        files = []
        for w in list(self._watches.values()):
            for f in w.followers():
                state = "active" if f is w.current else "draining"
                files.append({"name": w.name, "watch_path": w.path, **f.checkpoint_entry(), "state": state,
                              "seen_at": now})
        files.extend(self._known.values())
        journal = dict(self._journal_checkpoint)
        if self._journal is not None:
            journal.update(self._journal.checkpoint())
        try:
            _write_checkpoint(self.checkpoint_path, files, journal, now)
        except OSError as exc:
            text = f"cannot write the tail checkpoint {self.checkpoint_path}: {_describe(exc)}"
            if text != self.checkpoint_error:
                log.warning("%s", text, extra={"event": "tail_checkpoint_failed"})
            self.checkpoint_error = text
            return
        self.checkpoint_error = None
        self._dirty = False
        self._last_save = time.monotonic()
        if self._journal is not None:
            self._journal.cursor_changed = False
