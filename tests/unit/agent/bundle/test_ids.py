"""UUIDv7 bundle ids (RFC 9562)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from hostdiag.agent.bundle import is_uuid7, uuid7, uuid7_unix_ms


def test_layout_version_and_variant() -> None:
    u = uuid7()
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert str(u)[14] == "7"
    assert str(u)[19] in "89ab"


def test_embeds_the_clock_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    u = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= uuid7_unix_ms(u) <= after + 1  # +1: the counter may step into the next ms


def test_explicit_timestamp() -> None:
    u = uuid7(1_764_000_000_250)
    assert uuid7_unix_ms(u) == 1_764_000_000_250
    assert str(u).startswith("019ab697-e8fa-7")
    assert uuid7(0).int >> 80 == 0
    assert uuid7((1 << 48) - 1).int >> 80 == (1 << 48) - 1
    with pytest.raises(ValueError):
        uuid7(1 << 48)
    with pytest.raises(ValueError):
        uuid7(-1)


def test_random_within_one_millisecond() -> None:
    ids = {uuid7(1_000) for _ in range(1000)}
    assert len(ids) == 1000


def test_strictly_increasing_from_one_process() -> None:
    ids = [uuid7() for _ in range(20_000)]
    assert all(a.int < b.int for a, b in zip(ids, ids[1:]))


def test_increasing_and_unique_across_threads() -> None:
    results: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def make(slot: list[uuid.UUID]) -> None:
        for _ in range(2000):
            slot.append(uuid7())

    threads = [threading.Thread(target=make, args=(slot,)) for slot in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [u for slot in results for u in slot]
    assert len(set(everything)) == len(everything)
    for slot in results:
        assert all(a.int < b.int for a, b in zip(slot, slot[1:]))


def test_is_uuid7() -> None:
    assert is_uuid7(str(uuid7()))
    assert not is_uuid7(str(uuid.uuid4()))
    assert not is_uuid7(str(uuid7()).upper())
    assert not is_uuid7("{" + str(uuid7()) + "}")
    assert not is_uuid7("not a uuid")
    with pytest.raises(ValueError):
        uuid7_unix_ms(uuid.uuid4())
