"""Time-ordered bundle ids: UUID version 7 (RFC 9562, section 5.7).

Layout of the 128 bits, most significant first::

    48 bits  unix_ts_ms   milliseconds since the epoch
     4 bits  version      0b0111
    12 bits  rand_a
     2 bits  variant      0b10
    62 bits  rand_b

Ids made from the clock by one process are strictly increasing: when the clock
gives the same millisecond as the previous id (or goes backwards), the 74
random bits are treated as a counter and advanced by a random step (RFC 9562
section 6.2, method 2).  When the counter space of a millisecond runs out the
timestamp moves one millisecond ahead, as the RFC allows.  Ids made from an
explicit ``now_ms`` keep exactly that timestamp and are random within it.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid

__all__ = ["uuid7", "uuid7_unix_ms", "is_uuid7"]

_RAND_BITS = 74
_RAND_MAX = (1 << _RAND_BITS) - 1
_MAX_MS = (1 << 48) - 1
# The random step keeps ids from one millisecond unguessable from each other
# while leaving room for ~2**42 ids per millisecond before the counter wraps.
_STEP_BITS = 32

_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


def _assemble(unix_ms: int, rand74: int) -> uuid.UUID:
    rand_a = rand74 >> 62
    rand_b = rand74 & ((1 << 62) - 1)
    value = (unix_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A new UUIDv7.  ``now_ms``: the timestamp to embed (default: the clock)."""
    global _last_ms, _last_rand
    if now_ms is not None:
        if not 0 <= now_ms <= _MAX_MS:
            raise ValueError(f"now_ms out of range for a UUIDv7: {now_ms}")
        return _assemble(int(now_ms), secrets.randbits(_RAND_BITS))
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            rand = secrets.randbits(_RAND_BITS)
        else:
            ms = _last_ms
            rand = _last_rand + 1 + secrets.randbits(_STEP_BITS)
            if rand > _RAND_MAX:
                ms += 1
                rand = secrets.randbits(_RAND_BITS - 1)  # leave headroom in the new millisecond
        _last_ms, _last_rand = ms, rand
        return _assemble(ms, rand)


def uuid7_unix_ms(value: uuid.UUID | str) -> int:
    """The millisecond timestamp embedded in a UUIDv7."""
    u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    if u.version != 7:
        raise ValueError(f"not a UUIDv7: {u}")
    return u.int >> 80


def is_uuid7(value: str) -> bool:
    """True for the canonical lowercase text form of a UUIDv7."""
    try:
        u = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == value
