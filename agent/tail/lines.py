"""Block-at-a-time line handling: cutting over-long lines, decoding, level classification.

Everything here works on a whole block of complete lines (bytes ending with
``\\n``) at once, so the per-line cost stays in C (``bytes.rfind``,
``bytes.translate``, one regular expression scan) rather than in a Python loop.
This is what lets the tailer keep up with a busy log on one core.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "truncation_mark",
    "cut_long_lines",
    "cut_at_char_boundary",
    "decode_block",
    "classify_block",
    "classify_text",
    "classifier_backend",
    "LEVEL_NONE",
    "LEVEL_WARNING",
    "LEVEL_ERROR",
]

LEVEL_NONE = 0
LEVEL_WARNING = 1
LEVEL_ERROR = 2


def truncation_mark(cut_bytes: int) -> bytes:
    """The suffix that replaces the cut part of an over-long line."""
    return f" …[truncated {cut_bytes} bytes]".encode()


def cut_at_char_boundary(data: bytes, limit: int) -> int:
    """The largest index <= ``limit`` that does not split a UTF-8 sequence of ``data``."""
    cut = min(limit, len(data))
    # A continuation byte (0b10xxxxxx) at ``cut`` means the kept part would end
    # inside a multi-byte character; a UTF-8 character is at most 4 bytes long.
    for _ in range(3):
        if cut <= 0 or cut >= len(data) or data[cut] & 0xC0 != 0x80:
            break
        cut -= 1
    return cut


def cut_long_lines(block: bytes, max_line_bytes: int) -> tuple[bytes, int]:
    """Cut every line longer than ``max_line_bytes`` and mark it.

    ``block`` holds complete lines (it ends with ``\\n``).  Returns the new block
    and how many lines were cut.  A cut line keeps its first ``max_line_bytes``
    (never splitting a UTF-8 character) followed by :func:`truncation_mark`.

    The scan jumps from line start to the last newline inside a window of
    ``max_line_bytes + 1`` bytes: if the window has no newline, the line starting
    there is too long; otherwise every line starting before that newline fits.
    With the default 16 KiB limit a 1 MiB block takes about 64 short ``rfind``
    calls.
    """
    n = len(block)
    window = max_line_bytes + 1
    pos = 0
    last = 0
    parts: list[bytes] | None = None
    cut_lines = 0
    while n - pos > window:
        j = block.rfind(b"\n", pos, pos + window)
        if j >= 0:
            pos = j + 1
            continue
        end = block.find(b"\n", pos + window)
        if end < 0:  # not a complete line: the caller only passes complete lines
            end = n
        keep = cut_at_char_boundary(block, pos + max_line_bytes)
        if parts is None:
            parts = []
        parts.append(block[last:keep])
        parts.append(truncation_mark(end - keep))
        last = end
        cut_lines += 1
        pos = end + 1
    if parts is None:
        return block, 0
    parts.append(block[last:])
    return b"".join(parts), cut_lines


def decode_block(block: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing invalid sequences; returns the text and how many lines had any."""
    try:
        return block.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    # Slow path, only for blocks that hold invalid bytes: find the bad lines.
    out = []
    bad = 0
    for line in block.split(b"\n"):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            bad += 1
            out.append(line.decode("utf-8", "replace"))
    return "\n".join(out), bad


# Level classification.  A line is an error line if it holds one of the error
# words as a whole word, case-insensitively; otherwise it is a warning line if
# it holds a warning word.  A block is lower-cased once and searched for the
# keyword stems (err, fatal, crit, panic, exception, traceback, warn) in one
# multi-pattern pass when the ``ahocorasick_rs`` accelerator is installed (its
# SIMD search costs about as much as one memchr sweep), else with one
# ``bytes.find`` sweep per stem.  Only where a stem occurs does Python look:
# to check the word boundaries and the longer forms (error, critical,
# warning) and to find the line.  A single regular expression over the block
# was measured slower than either: the engine has no fast way to look for
# several words at once and ends up trying a match at most positions.  Bytes
# from 0x80 up count as word characters, as letters outside ASCII do for \b.
_WORD_BYTE = bytes(1 if (c >= 0x80 or chr(c).isalnum() or c == ord("_")) else 0 for c in range(256))
_STEMS: tuple[tuple[bytes, tuple[bytes, ...], int], ...] = (
    (b"err", (b"or",), LEVEL_ERROR),
    (b"fatal", (), LEVEL_ERROR),
    (b"crit", (b"ical",), LEVEL_ERROR),
    (b"panic", (), LEVEL_ERROR),
    (b"exception", (), LEVEL_ERROR),
    (b"traceback", (), LEVEL_ERROR),
    (b"warn", (b"ing",), LEVEL_WARNING),
)
_ERROR_WORDS = r"err(?:or)?|fatal|crit(?:ical)?|panic|exception|traceback"
_WARNING_WORDS = r"warn(?:ing)?"
_TEXT_ERROR_RE = re.compile(r"\b(?:" + _ERROR_WORDS + r")\b", re.IGNORECASE)
_TEXT_WARNING_RE = re.compile(r"\b(?:" + _WARNING_WORDS + r")\b", re.IGNORECASE)

_ahocorasick: Any
try:  # optional accelerator (also used by the redaction engine)
    _ahocorasick = importlib.import_module("ahocorasick_rs")
except ImportError:  # pragma: no cover - exercised where the wheel is absent
    _ahocorasick = None

# Leftmost-first matching lets the library use its SIMD searcher.  Matches do
# not overlap, which loses nothing here: a stem that starts inside another
# match has a letter before it, so it is not a whole word anyway.
_STEM_SEARCH: Any = (
    _ahocorasick.BytesAhoCorasick([stem for stem, _, _ in _STEMS], matchkind=_ahocorasick.MatchKind.LeftmostFirst)
    if _ahocorasick is not None
    else None
)


def classifier_backend() -> str:
    """``"aho-corasick"`` when the accelerated stem search is in use, else ``"bytes.find"``."""
    return "aho-corasick" if _STEM_SEARCH is not None else "bytes.find"


def _stem_hits(lower: bytes, accelerated: bool) -> Iterable[tuple[int, int]]:
    """(stem index, position) of the stems in ``lower``."""
    if accelerated and _STEM_SEARCH is not None:
        return [(i, start) for i, start, _ in _STEM_SEARCH.find_matches_as_indexes(lower)]
    hits = []
    find = lower.find
    for i, (stem, _, _) in enumerate(_STEMS):
        pos = find(stem)
        while pos >= 0:
            hits.append((i, pos))
            pos = find(stem, pos + len(stem))
    return hits


def classify_block(block: bytes, *, accelerated: bool = True) -> tuple[int, int]:
    """How many lines of ``block`` are error lines and how many (other) warning lines."""
    lower = block.lower()
    size = len(lower)
    word = _WORD_BYTE
    rfind = lower.rfind
    startswith = lower.startswith
    errors: set[int] = set()
    warnings: set[int] = set()
    for i, pos in _stem_hits(lower, accelerated):
        if pos and word[lower[pos - 1]]:
            continue
        stem, longer, level = _STEMS[i]
        end = pos + len(stem)
        for suffix in longer:
            if startswith(suffix, end):
                end += len(suffix)
                break
        if end < size and word[lower[end]]:
            continue
        # The line, by where it starts.
        (errors if level == LEVEL_ERROR else warnings).add(rfind(b"\n", 0, pos))
    if not warnings:
        return len(errors), 0
    return len(errors), len(warnings - errors)


def classify_text(text: str) -> int:
    """The level of one line or one multiline event: LEVEL_ERROR, LEVEL_WARNING or LEVEL_NONE."""
    if _TEXT_ERROR_RE.search(text):
        return LEVEL_ERROR
    if _TEXT_WARNING_RE.search(text):
        return LEVEL_WARNING
    return LEVEL_NONE
