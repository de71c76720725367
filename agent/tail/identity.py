"""File identity: (st_dev, st_ino) plus a fingerprint of the first bytes.

The path alone says nothing about which file is there now (rotation replaces
it), and (dev, inode) alone is not enough either: once a file is deleted its
inode number is reused by the next file created.  The fingerprint — sha256 of
the first ``FINGERPRINT_BYTES`` bytes, or of all of them while the file is
shorter — tells a reused inode (or a file truncated and rewritten in place)
from the file we were reading.  While a file is shorter than
``FINGERPRINT_BYTES`` the fingerprint covers what there is (``fp_len`` bytes)
and is recomputed as it grows, after checking that the bytes it covered did not
change.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

__all__ = ["FINGERPRINT_BYTES", "Fingerprint", "fingerprint_of", "read_fingerprint", "prefix_matches"]

FINGERPRINT_BYTES = 1024


@dataclass(frozen=True)
class Fingerprint:
    digest: str  # sha256 hex of the first ``length`` bytes
    length: int


def fingerprint_of(head: bytes) -> Fingerprint:
    head = head[:FINGERPRINT_BYTES]
    return Fingerprint(hashlib.sha256(head).hexdigest(), len(head))


def read_fingerprint(fd: int) -> tuple[Fingerprint, bytes]:
    """The fingerprint of an open file, and the head bytes it was computed from."""
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    return fingerprint_of(head), head


def prefix_matches(fp: Fingerprint, head: bytes) -> bool:
    """Whether ``head`` (the current first bytes of a file) starts with the bytes ``fp`` covers."""
    if len(head) < fp.length:
        return False
    return hashlib.sha256(head[: fp.length]).hexdigest() == fp.digest
