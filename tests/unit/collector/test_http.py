"""HTTP request-head parsing and Range handling, without a socket."""

from __future__ import annotations

import pytest

from hostdiag.collector.http import HttpError, RangeNotSatisfiable, parse_range, parse_request_head


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=90-1000", 100, (90, 99)),
        ("bytes=99-99", 100, (99, 99)),
        (" bytes=0-0 ", 100, (0, 0)),
        # Malformed, other units and multiple ranges are ignored: the whole file.
        ("bytes=9-0", 100, None),
        ("bytes=-", 100, None),
        ("items=0-1", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("bytes=a-b", 100, None),
        ("bytes 0-1", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100),
                                              ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_parse_a_good_request() -> None:
    req = parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\nX-A: 1\r\nX-A: 2\r\n\r\n")
    assert (req.method, req.path, req.version) == ("GET", "/metrics", "HTTP/1.1")
    assert req.headers["range"] == "bytes=0-1" and req.headers["x-a"] == "1, 2"
    assert req.keep_alive
    assert not parse_request_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive
    assert not parse_request_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive


@pytest.mark.parametrize(
    ("head", "status", "fragment"),
    [
        (b"GET /\r\n\r\n", 400, "request line"),
        (b"GET / HTTP/2.0\r\n\r\n", 505, "not supported"),
        (b"GET / SPDY\r\n\r\n", 400, "version"),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400, "absolute path"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400, "malformed header"),
        (b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", 400, "folding"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate"),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 400, "bodies"),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bodies"),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400, "non-ASCII"),
        (b"GET / HTTP/1.1\r\n" + b"A: 1\r\n" * 101 + b"\r\n", 431, "header lines"),
    ],
)
def test_bad_request_heads(head: bytes, status: int, fragment: str) -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(head)
    assert info.value.status == status
    assert fragment in info.value.reason
