"""Rotation with a writer running: real files, a writer thread, a tailer thread.

The writer appends numbered lines (one ``write`` per line, ``O_APPEND``, as a
logging library does) while the test rotates the file under it, and a second
thread runs ``poll_once`` in a loop, as the daemon's executor does.
"""

from __future__ import annotations

import collections
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostdiag.agent.config import LogSection
from hostdiag.agent.tail import TailManager

PAD = "x" * 40


class Redactor:
    def redact(self, text: str, counts: Any = None) -> str:
        return text


def line(i: int) -> bytes:
    return f"seq {i:07d} {PAD}\n".encode()


def manager(tmp_path: Path, log: Path) -> TailManager:
    return TailManager(
        [LogSection(path=str(log), name="app")],
        checkpoint_path=str(tmp_path / "tail.json"),
        redactor=Redactor(),
        ring_bytes=64 * 1024 * 1024,  # holds every line of the test
        max_line_bytes=4096,
        poll_interval_s=0.001,
        window_s=900.0,
    )


class Tailer(threading.Thread):
    """Runs poll_once in a loop until stopped, like the daemon's executor."""

    def __init__(self, m: TailManager) -> None:
        super().__init__(daemon=True)
        self.m = m
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.m.poll_once()
        except BaseException as exc:  # reported by the test
            self.error = exc


def seen_numbers(m: TailManager) -> collections.Counter[int]:
    out: collections.Counter[int] = collections.Counter()
    for _, text in m.rings()["app"].lines_since(0):
        assert text.startswith("seq ") and text.endswith(PAD), f"mangled line {text!r}"
        out[int(text.split()[1])] += 1
    return out


def app_row(m: TailManager) -> dict[str, Any]:
    return next(r for r in m.status() if r["name"] == "app")


def finish(m: TailManager, tailer: Tailer, total: int, wait_for: Callable[..., Any]) -> collections.Counter[int]:
    wait_for(lambda: sum(seen_numbers(m).values()) >= total or tailer.error, timeout_s=30,
             what=f"{total} lines to be read")
    tailer.stop.set()
    tailer.join(timeout=30)
    assert tailer.error is None, repr(tailer.error)
    m.poll_once()  # anything still pending
    return seen_numbers(m)


def test_rename_and_create_with_a_writer_running_reads_every_line_exactly_once(
    tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    log = tmp_path / "app.log"
    rotate_after = [4_000, 9_000, 15_000, 22_000]
    max_lines = 400_000  # a bound in case the test stalls; never reached normally
    written = [0]
    reopen = threading.Event()
    stop = threading.Event()

    def write() -> None:
        # Writes until told to stop: every rotation happens while it is writing.
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        i = 0
        while not stop.is_set() and i < max_lines:
            if reopen.is_set():
                # The application notices the rotation (SIGHUP) and reopens its log;
                # until then it kept writing into the renamed file.
                os.close(fd)
                fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                reopen.clear()
            i += 1
            os.write(fd, line(i))
            written[0] = i
        os.close(fd)

    log.write_text("")
    m = manager(tmp_path, log)
    m.poll_once()
    tailer = Tailer(m)
    tailer.start()
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    for r, after in enumerate(rotate_after, start=1):
        wait_for(lambda: written[0] >= after, what=f"line {after} written")
        # Rotations are further apart than a poll: the tailer has the current file open.
        wait_for(lambda: app_row(m)["rotations"] == r - 1 and app_row(m)["error"] is None,
                 what="the tailer to follow the current file")
        for k in range(r - 1, 0, -1):  # app.log.1 -> app.log.2, ...
            os.rename(tmp_path / f"app.log.{k}", tmp_path / f"app.log.{k + 1}")
        os.rename(log, tmp_path / "app.log.1")
        reopen.set()
    last = written[0]
    wait_for(lambda: written[0] >= last + 2_000, what="more lines after the last rotation")
    stop.set()
    writer.join(timeout=60)
    assert not writer.is_alive()
    total = written[0]
    assert total < max_lines
    seen = finish(m, tailer, total, wait_for)
    assert [n for n, c in seen.items() if c > 1] == []
    assert sorted(seen) == list(range(1, total + 1))
    assert app_row(m)["rotations"] == len(rotate_after)
    on_disk = sum((tmp_path / f"app.log.{k}").stat().st_size for k in range(1, len(rotate_after) + 1))
    assert on_disk + log.stat().st_size == total * len(line(1))


def copytruncate(log: Path, copy: Path) -> list[int]:
    shutil.copyfile(log, copy)
    os.truncate(log, 0)
    return [int(raw.split()[1]) for raw in copy.read_bytes().splitlines()]


def run_copytruncate(tmp_path: Path, wait_for: Callable[..., Any], catch_up: bool) -> tuple[
        collections.Counter[int], list[list[int]], int]:
    log = tmp_path / "app.log"
    total = 20_000
    rotate_at = [3_000, 8_000, 12_000, 17_000]
    at_rotation = threading.Event()
    go_on = threading.Event()

    def write() -> None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for i in range(1, total + 1):
            if i in rotate_at:
                # logrotate's copy and truncate are not atomic with the writer; the lines
                # written between the two are lost whatever the tailer does.  The writer
                # waits here so that this test sees only the tailer's behaviour.
                at_rotation.set()
                assert go_on.wait(timeout=60)
                go_on.clear()
            os.write(fd, line(i))
        os.close(fd)

    log.write_text("")
    m = manager(tmp_path, log)
    m.poll_once()
    tailer = Tailer(m)
    tailer.start()
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    copies = []
    for k, _ in enumerate(rotate_at, start=1):
        wait_for(at_rotation.is_set, what="the writer to reach a rotation point")
        at_rotation.clear()
        if catch_up:
            size = log.stat().st_size
            wait_for(lambda: app_row(m)["offset"] == size, what="the tailer to catch up")
        copies.append(copytruncate(log, tmp_path / f"app.log.{k}"))
        go_on.set()
    writer.join(timeout=60)
    assert not writer.is_alive()
    wait_for(lambda: app_row(m)["offset"] == log.stat().st_size and app_row(m)["lag_bytes"] == 0,
             what="the tailer to read the live file")
    tailer.stop.set()
    tailer.join(timeout=30)
    assert tailer.error is None, repr(tailer.error)
    m.poll_once()
    return seen_numbers(m), copies, total


def test_copytruncate_with_a_writer_paused_at_rotation_reads_every_line_exactly_once(
    tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    seen, _, total = run_copytruncate(tmp_path, wait_for, catch_up=True)
    assert [n for n, c in seen.items() if c > 1] == []
    assert sorted(seen) == list(range(1, total + 1))


def test_copytruncate_racing_the_tailer_repeats_nothing_and_loses_only_the_copied_tail(
    tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    seen, copies, total = run_copytruncate(tmp_path, wait_for, catch_up=False)
    assert [n for n, c in seen.items() if c > 1] == []
    lost = set(range(1, total + 1)) - set(seen)
    copied = set().union(*copies)
    # Only lines written after the tailer's last read and before a truncation can be
    # lost: they are in that copy, and at its end.
    assert lost <= copied
    for lines_in_copy in copies:
        lost_here = [n for n in lines_in_copy if n in lost]
        assert lost_here == lines_in_copy[len(lines_in_copy) - len(lost_here):]
