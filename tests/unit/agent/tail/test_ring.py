"""The byte-bounded log ring and its per-minute level counts."""

from __future__ import annotations

import threading

from hostdiag.agent.tail.lines import LEVEL_ERROR, LEVEL_NONE, LEVEL_WARNING
from hostdiag.agent.tail.ring import ENTRY_OVERHEAD_BYTES, LogRing


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


T0 = 1_714_564_800.0  # a minute boundary


def test_lines_come_back_with_their_read_time() -> None:
    ring = LogRing(4096, 900, Clock(T0))
    ring.append_block(T0, "a\nb\n", lines=2)
    ring.append_block(T0 + 5, "c", lines=1)
    ring.append_event(T0 + 6, "Traceback:\n  at x\n  at y", LEVEL_ERROR)
    assert ring.lines_since(0) == [(T0, "a"), (T0, "b"), (T0 + 5, "c"), (T0 + 6, "Traceback:\n  at x\n  at y")]
    assert ring.lines_since(T0 + 5) == [(T0 + 5, "c"), (T0 + 6, "Traceback:\n  at x\n  at y")]


def test_feeding_ten_times_the_capacity_stays_within_the_bound() -> None:
    capacity = 64 * 1024
    ring = LogRing(capacity, 900, Clock(T0))
    line_no = 0
    fed = 0
    while fed < 10 * capacity:
        block = "".join(f"line {line_no + i:08d} " + "x" * (i % 50) + "\n" for i in range(37))
        line_no += 37
        fed += len(block)
        ring.append_block(T0, block, lines=37)
        assert ring.bytes_used <= ring.capacity_bytes
    kept = [text for _, text in ring.lines_since(0)]
    # The newest lines are kept, in order, and whole.
    assert kept[-1].startswith(f"line {line_no - 1:08d} ")
    numbers = [int(text.split()[1]) for text in kept]
    assert numbers == list(range(numbers[0], line_no))
    kept_bytes = sum(len(t) + 1 for t in kept)
    assert kept_bytes > capacity // 2  # it is not emptied either


def test_events_and_single_huge_lines_stay_within_the_bound() -> None:
    ring = LogRing(4096, 900, Clock(T0))
    for i in range(100):
        ring.append_event(T0, f"event {i}\n" + "  at frame\n" * 20, LEVEL_ERROR)
        assert ring.bytes_used <= 4096
    ring.append_block(T0, "h" * 20000 + "\n", lines=1)
    assert ring.bytes_used <= 4096
    [(_, text)] = ring.lines_since(0)
    assert text.startswith("hhhh") and text.endswith("…[cut to fit the log ring]")


def test_non_ascii_text_is_charged_its_utf8_size() -> None:
    ring = LogRing(4096, 900, Clock(T0))
    for _ in range(50):
        ring.append_block(T0, "ééééé ééééé ééééé\n" * 10, lines=10)
        assert ring.bytes_used <= 4096
    assert ring.bytes_used > 4096 - 400
    assert sum(len(t.encode()) + 1 for _, t in ring.lines_since(0)) + ENTRY_OVERHEAD_BYTES * len(ring) <= 4096


def test_level_counts_are_per_minute_and_dense() -> None:
    clock = Clock(T0 + 180 + 30)
    ring = LogRing(4096, 900, clock)
    ring.append_block(T0 + 1, "x\n", lines=10, errors=2, warnings=1)
    ring.append_block(T0 + 59, "x\n", lines=5, errors=1)
    ring.append_event(T0 + 125, "warn", LEVEL_WARNING)
    ring.append_event(T0 + 126, "ok", LEVEL_NONE)
    ring.append_block(T0 + 130, "x\n", lines=3, errors=3, count=False)  # backlog: kept, not counted
    assert ring.level_counts(T0) == [
        {"minute": int(T0), "error": 3, "warning": 1, "lines": 15},
        {"minute": int(T0) + 60, "error": 0, "warning": 0, "lines": 0},
        {"minute": int(T0) + 120, "error": 0, "warning": 1, "lines": 2},
        {"minute": int(T0) + 180, "error": 0, "warning": 0, "lines": 0},
    ]
    assert [r["minute"] for r in ring.level_counts(T0 + 121)] == [int(T0) + 120, int(T0) + 180]


def test_minute_counts_are_bounded_by_the_window() -> None:
    clock = Clock(T0)
    ring = LogRing(4096, 300, clock)  # 300 s: 6 minutes kept
    for minute in range(100):
        clock.t = T0 + minute * 60
        ring.append_block(clock.t, "e\n", lines=1, errors=1)
    assert len(ring._minutes) == 6
    rows = ring.level_counts(0)
    assert len(rows) == 6
    assert all(r["error"] == 1 for r in rows)
    assert rows[-1]["minute"] == int(T0) + 99 * 60


def test_out_of_order_times_land_in_their_minute() -> None:
    ring = LogRing(4096, 600, Clock(T0 + 300))
    ring.add_counts(T0 + 300, errors=1, lines=1)
    ring.add_counts(T0 + 60, errors=2, lines=2)  # older: inserted in order
    ring.add_counts(T0 + 300, errors=1, lines=1)
    rows = {r["minute"]: r["error"] for r in ring.level_counts(T0)}
    assert rows[int(T0) + 60] == 2 and rows[int(T0) + 300] == 2


def test_readers_and_a_writer_on_other_threads_do_not_clash() -> None:
    ring = LogRing(8192, 900, Clock(T0))
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                ring.lines_since(0)
                ring.level_counts(0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    for i in range(3000):
        ring.append_block(T0, f"line {i}\n", lines=1)
    stop.set()
    for r in readers:
        r.join()
    assert not errors
    assert ring.bytes_used <= 8192
