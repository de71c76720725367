"""Keep the agent's resident memory close to what it uses (glibc only).

Snapshots build short-lived buffers in worker threads.  glibc gives each
thread its own malloc arena and keeps freed memory mapped, so without help the
agent's RSS settles at the peak of the largest snapshot times the number of
threads.  ``limit_arenas`` caps the arenas; ``trim`` hands freed memory back to
the kernel after a snapshot.  Both are no-ops where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["limit_arenas", "trim"]

_M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    return lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None


_LIBC = _libc()


def limit_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas; call before worker threads start."""
    return bool(_LIBC is not None and _LIBC.mallopt(_M_ARENA_MAX, count) == 1)


def trim() -> bool:
    """Return freed heap memory to the kernel; True when something was released."""
    return bool(_LIBC is not None and _LIBC.malloc_trim(0) == 1)
