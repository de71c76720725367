"""Agent restarts with a writer running: the checkpoint makes the two runs add up exactly.

The first manager tails while a writer appends; it stops (saving its
checkpoint, as the daemon does on SIGTERM) while the writer goes on, and a
second manager starts from the checkpoint.  Lines read by the first run plus
lines read by the second are every line, each once — including when the log
was rotated while no manager was running.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostdiag.agent.config import LogSection
from hostdiag.agent.tail import TailManager


class Redactor:
    def redact(self, text: str, counts: Any = None) -> str:
        return text


def line(i: int) -> bytes:
    return f"n={i:07d} payload\n".encode()


def make(tmp_path: Path, log: Path) -> TailManager:
    return TailManager(
        [LogSection(path=str(log), name="app")],
        checkpoint_path=str(tmp_path / "state" / "tail.json"),
        redactor=Redactor(),
        ring_bytes=64 * 1024 * 1024,
        max_line_bytes=4096,
        poll_interval_s=0.001,
        window_s=900.0,
    )


def numbers(m: TailManager) -> list[int]:
    return [int(text.split()[0][2:]) for _, text in m.rings()["app"].lines_since(0)]


class Writer(threading.Thread):
    def __init__(self, log: Path) -> None:
        super().__init__(daemon=True)
        self.log = log
        self.written = 0
        self.stop = threading.Event()
        self.rotate = threading.Event()
        self.rotated = threading.Event()

    def run(self) -> None:
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        while not self.stop.is_set() and self.written < 400_000:
            if self.rotate.is_set():
                self.rotate.clear()
                os.rename(self.log, str(self.log) + ".1")
                os.write(fd, line(self.written + 1))  # one more line into the renamed file
                self.written += 1
                os.close(fd)
                fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self.rotated.set()
            os.write(fd, line(self.written + 1))
            self.written += 1
        os.close(fd)


def run_for_a_while(m: TailManager, writer: Writer, until_line: int, wait_for: Callable[..., Any]) -> None:
    """Run the manager's own loop (run()) while the writer passes ``until_line``, then cancel it."""

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(m.run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while writer.written < until_line or not numbers(m):
            assert loop.time() < deadline, "the writer or the tailer stalled"
            await asyncio.sleep(0.005)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(scenario())


def test_a_restart_neither_rereads_nor_skips(tmp_path: Path, wait_for: Callable[..., Any]) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    writer = Writer(log)
    m1 = make(tmp_path, log)
    m1.poll_once()
    writer.start()
    run_for_a_while(m1, writer, 20_000, wait_for)  # cancelled: saves the checkpoint
    first = numbers(m1)
    wait_for(lambda: writer.written >= len(first) + 5_000, what="lines written while the agent is down")
    m2 = make(tmp_path, log)
    run_for_a_while(m2, writer, writer.written + 5_000, wait_for)
    writer.stop.set()
    writer.join(timeout=30)
    m2.poll_once()
    wait_for(lambda: (m2.poll_once(), numbers(m2))[1][-1:] == [writer.written], what="the second run to catch up")
    second = numbers(m2)
    assert first and second
    assert first + second == list(range(1, writer.written + 1))


def test_a_restart_after_a_rotation_while_down_finishes_the_rotated_file(
    tmp_path: Path, wait_for: Callable[..., Any]
) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    writer = Writer(log)
    m1 = make(tmp_path, log)
    m1.poll_once()
    writer.start()
    run_for_a_while(m1, writer, 10_000, wait_for)
    first = numbers(m1)
    writer.rotate.set()  # rotated while no manager runs
    wait_for(writer.rotated.is_set, what="the rotation")
    wait_for(lambda: writer.written >= len(first) + 5_000, what="lines written after the rotation")
    writer.stop.set()
    writer.join(timeout=30)
    m2 = make(tmp_path, log)
    m2.poll_once()
    wait_for(lambda: (m2.poll_once(), len(numbers(m2)))[1] >= writer.written - len(first),
             what="the second run to catch up")
    second = numbers(m2)
    counts = collections.Counter(first + second)
    assert [n for n, c in counts.items() if c > 1] == []
    assert sorted(counts) == list(range(1, writer.written + 1))
