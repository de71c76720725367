"""Block-level line handling: cutting over-long lines, decoding, and the level classifier."""

from __future__ import annotations

import pytest

from hostdiag.agent.tail.lines import (
    LEVEL_ERROR,
    LEVEL_NONE,
    LEVEL_WARNING,
    classify_block,
    classify_text,
    cut_at_char_boundary,
    cut_long_lines,
    decode_block,
)


def test_short_lines_are_left_alone() -> None:
    block = b"a\n" + b"x" * 100 + b"\nlast\n"
    assert cut_long_lines(block, 100) == (block, 0)


def test_a_line_of_exactly_the_limit_is_not_cut() -> None:
    block = b"y" * 256 + b"\n"
    assert cut_long_lines(block, 256) == (block, 0)


def test_long_lines_are_cut_marked_and_counted() -> None:
    block = b"head\n" + b"A" * 1000 + b"\nmiddle\n" + b"B" * 300 + b"\ntail\n"
    out, cut = cut_long_lines(block, 256)
    assert cut == 2
    lines = out.decode().split("\n")
    assert lines[0] == "head"
    assert lines[1] == "A" * 256 + " …[truncated 744 bytes]"
    assert lines[2] == "middle"
    assert lines[3] == "B" * 256 + " …[truncated 44 bytes]"
    assert lines[4:] == ["tail", ""]


def test_cutting_never_splits_a_utf8_character() -> None:
    # "é" is two bytes; put one across the 256-byte limit.
    line = ("x" * 255 + "é" * 200).encode()
    out, cut = cut_long_lines(line + b"\n", 256)
    assert cut == 1
    text = out.decode("utf-8")  # strict: would raise on a split character
    assert text.startswith("x" * 255 + " …[truncated")
    assert cut_at_char_boundary("aé".encode(), 2) == 1


def test_long_line_detection_holds_for_many_line_lengths() -> None:
    # Lines of every length around the limit, in one block.
    limit = 300
    lengths = list(range(250, 350)) * 3
    block = b"".join(b"z" * n + b"\n" for n in lengths)
    out, cut = cut_long_lines(block, limit)
    assert cut == sum(1 for n in lengths if n > limit)
    for n, line in zip(lengths, out.decode().split("\n")):
        if n > limit:
            assert line == "z" * limit + f" …[truncated {n - limit} bytes]"
        else:
            assert line == "z" * n


def test_valid_utf8_decodes_with_no_invalid_lines() -> None:
    assert decode_block("ünïcode\nok\n".encode()) == ("ünïcode\nok\n", 0)


def test_invalid_utf8_is_replaced_and_lines_counted() -> None:
    text, bad = decode_block(b"good\nbad \xff\xfe here\nalso \xc3 bad\nfine\n")
    assert bad == 2
    assert text.split("\n") == ["good", "bad \ufffd\ufffd here", "also \ufffd bad", "fine", ""]


@pytest.mark.parametrize(
    "line, level",
    [
        ("2024-05-01 ERROR db down", LEVEL_ERROR),
        ("level=error msg=x", LEVEL_ERROR),
        ('{"level":"Error","msg":"x"}', LEVEL_ERROR),
        ("[ERR] cannot bind", LEVEL_ERROR),
        ("FATAL: out of memory", LEVEL_ERROR),
        ("kernel: crit temperature", LEVEL_ERROR),
        ("CRITICAL disk full", LEVEL_ERROR),
        ("panic: runtime error", LEVEL_ERROR),
        ("Traceback (most recent call last):", LEVEL_ERROR),
        ("java.lang.Exception: boom", LEVEL_ERROR),
        ("WARN slow query", LEVEL_WARNING),
        ("warning: deprecated", LEVEL_WARNING),
        ("Warning and error together", LEVEL_ERROR),
        ("INFO all good", LEVEL_NONE),
        ("stderr redirected; errors=0 terror interrupted", LEVEL_NONE),
        ("error_count=0 warned forewarn", LEVEL_NONE),
        ("NullPointerException at Foo", LEVEL_NONE),
    ],
)
def test_level_of_a_line(line: str, level: int) -> None:
    assert classify_text(line) == level
    expected = (int(level == LEVEL_ERROR), int(level == LEVEL_WARNING))
    # The accelerated search (when installed) and the plain one agree.
    assert classify_block((line + "\n").encode()) == expected
    assert classify_block((line + "\n").encode(), accelerated=False) == expected


def test_block_counts_lines_not_words() -> None:
    block = (
        "ERROR error ERROR in one line\n"
        "WARN and WARNING\n"
        "WARN with an ERROR counts as error\n"
        "info\n"
        "error at the very end"
    ).encode()
    assert classify_block(block) == (3, 1)


def test_both_searches_agree_on_a_mixed_block() -> None:
    words = ["error", "ERR", "Warning", "warn", "fatal", "critical", "crit", "panic", "Exception", "Traceback",
             "errors", "stderr", "terror", "warned", "criticality", "x", "info", "é", "err_x", "=error="]
    block = "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(i % 5 + 1)) for i in range(400))
    data = block.encode()
    assert classify_block(data) == classify_block(data, accelerated=False)


def test_keyword_at_block_start_and_end_is_found() -> None:
    assert classify_block(b"error") == (1, 0)
    assert classify_block(b"x\nwarn") == (0, 1)
    assert classify_block("é error é\n".encode()) == (1, 0)
    assert classify_block("éerror\n".encode()) == (0, 0)  # a letter before it: not a word
