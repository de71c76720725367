"""A small, strict HTTP/1.1 server on asyncio streams (same loop as gRPC).

Endpoints::

    GET /healthz                    200 "ok", 503 "shutting down"
    GET /metrics                    Prometheus text format 0.0.4
    GET|HEAD /api/v1/bundles/<id>   the bundle file; Range: bytes=a-b | a- | -n
                                    (``authorize_bundle`` checks the API token first)
    POST <body route>               e.g. /api/v1/alertmanager (:class:`BodyRoute`)

Strictness: only GET and HEAD (405 with ``Allow``), HTTP/1.0 and 1.1 (505),
the request line and headers together at most ``http_header_bytes`` (431),
at most 100 header lines, no obsolete line folding, no request body (400),
one ``Host`` at most; anything malformed is 400 with the reason in the body.
A :class:`BodyRoute` takes ``POST`` only (405), with one of its media types
(415), a ``Content-Length`` (411; no chunked bodies) of at most its cap (413).
Each request head must arrive within ``http_timeout_s``, an idle keep-alive
connection is closed after it, and a client that stops reading for that long
is disconnected.  At most ``http_max_connections`` connections are served at
once; more are answered 503 and closed.

Bundles are served as ``application/zstd`` with ``ETag: "<sha256>"``,
``Accept-Ranges: bytes`` and ``Content-Disposition: attachment`` with the
bundle's file name.  A single byte range gets 206 with ``Content-Range``; an
unsatisfiable one 416 with ``Content-Range: bytes */SIZE``; a malformed or
multi-range header is ignored (200, whole file), as RFC 9110 allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from hostdiag.agent.bundle.writer import bundle_file_name
from hostdiag.collector.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hostdiag.collector.retention import expired_message
from hostdiag.collector.store.base import BlobStore, MetadataStore
from hostdiag.collector.store.blobs import is_bundle_id

__all__ = [
    "HttpServer", "parse_range", "RangeNotSatisfiable", "parse_request_head", "HttpError", "Request", "BodyRoute",
]

log = logging.getLogger("hostdiag.collector.http")

MAX_HEADERS = 100
BODY_CHUNK_BYTES = 256 * 1024
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_REASONS = {
    200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 410: "Gone", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks for, or None for the whole file.

    Raises :class:`RangeNotSatisfiable` when the range is well formed but
    outside the file.  A malformed header, another unit or several ranges
    give None (the whole file), as RFC 9110 section 14.2 allows.
    """
    if header is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable()
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable()
    return start, min(end, size - 1)


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    target: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    # The client's address ("127.0.0.1:5123"), for the audit log.
    peer: str = ""

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length") or 0)

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn


def parse_request_head(head: bytes, body_paths: Container[str] = ()) -> Request:
    """Parse a request line and headers (``head`` ends with CRLF CRLF).

    Only a request for one of ``body_paths`` may announce a body, and only with
    ``Content-Length``.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "non-ASCII bytes in the request head") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HttpError(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if re.fullmatch(r"HTTP/\d\.\d", version):
            raise HttpError(505, f"{version} is not supported; use HTTP/1.1")
        raise HttpError(400, "malformed HTTP version")
    if not _TARGET.fullmatch(target):
        raise HttpError(400, "the request target must be an absolute path")
    headers: dict[str, str] = {}
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header lines")
    for line in lines[1:]:
        if not line or line[0] in " \t":
            raise HttpError(400, "obsolete header line folding is not accepted")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header line")
        key = name.lower()
        value = value.strip(" \t")
        if any(ord(c) < 0x20 and c != "\t" for c in value):
            raise HttpError(400, f"control characters in header {name}")
        if key in headers:
            if key in ("host", "content-length", "transfer-encoding", "range"):
                raise HttpError(400, f"duplicate {name} header")
            headers[key] += ", " + value
        else:
            headers[key] = value
    path = target.split("?", 1)[0]
    if path in body_paths:
        if "transfer-encoding" in headers:
            raise HttpError(400, "Transfer-Encoding is not accepted; send the body with Content-Length")
        length = headers.get("content-length")
        if length is not None and not (length.isdigit() and len(length) <= 18):
            raise HttpError(400, "malformed Content-Length")
    elif "transfer-encoding" in headers or headers.get("content-length", "0") not in ("0", ""):
        raise HttpError(400, "request bodies are not accepted")
    return Request(method=method, target=target, path=path, version=version, headers=headers)


@dataclass(frozen=True)
class BodyRoute:
    """A ``POST`` endpoint that reads a request body.

    ``handler(request, body)`` returns (status, headers, body).  ``authorize``,
    when set, sees the request head before the body is read and refuses by
    raising :class:`HttpError` (401 or 403): API tokens plug in here.
    """

    handler: Callable[[Request, bytes], Awaitable[tuple[int, dict[str, str], bytes]]]
    max_body_bytes: int
    content_types: tuple[str, ...] = ("application/json",)
    authorize: Callable[[Request], Awaitable[None]] | None = None


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    # (sha256, start, length) when the body comes from the blob store.
    blob: tuple[str, int, int] | None = None

    @property
    def length(self) -> int:
        return self.blob[2] if self.blob else len(self.body)


class HttpServer:
    def __init__(
        self,
        *,
        store: MetadataStore,
        blobs: BlobStore,
        render_metrics: Callable[[], Awaitable[str]],
        is_healthy: Callable[[], bool],
        header_bytes: int = 8192,
        timeout_s: float = 30.0,
        max_connections: int = 256,
        body_routes: Mapping[str, BodyRoute] | None = None,
        authorize_bundle: Callable[[Request, str], Awaitable[None]] | None = None,
        observe: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.body_routes = dict(body_routes or {})
        # Called once per answered request with (route, method, status, seconds) for the latency metrics.
        self.observe = observe
        # Sees every bundle request (and the bundle id) first; refuses by raising HttpError.
        self.authorize_bundle = authorize_bundle
        self.store = store
        self.blobs = blobs
        self.render_metrics = render_metrics
        self.is_healthy = is_healthy
        self.header_bytes = header_bytes
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._client, host, port, limit=self.header_bytes)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(BaseException):
                await task

    # -- connections ----------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > self.max_connections:
                await self._send(writer, self._error(503, "too many connections"), head_only=False, close=True)
                return
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, asyncio.TimeoutError):
            pass
        except Exception:
            log.exception("http connection failed", extra={"event": "http_error"})
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout_s)
            except asyncio.LimitOverrunError:
                await self._send(writer, self._error(431, "request head too large"), head_only=False, close=True)
                return
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    await self._send(writer, self._error(400, "incomplete request head"), head_only=False, close=True)
                return
            except (TimeoutError, asyncio.TimeoutError):
                return
            if len(head) > self.header_bytes:
                await self._send(writer, self._error(431, "request head too large"), head_only=False, close=True)
                return
            try:
                request = parse_request_head(head, self.body_routes)
            except HttpError as exc:
                await self._send(writer, self._error(exc.status, exc.reason, exc.headers), head_only=False, close=True)
                return
            peer = writer.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                request.peer = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
            body_read = True
            started = time.perf_counter()
            try:
                route = self.body_routes.get(request.path)
                if route is not None:
                    response, body_read = await self._body_route(route, request, reader)
                else:
                    response = await self._route(request)
            except HttpError as exc:
                response = self._error(exc.status, exc.reason, exc.headers)
            except Exception:
                log.exception("http handler failed", extra={"event": "http_handler_error", "path": request.path})
                response = self._error(500, "internal error")
            keep = request.keep_alive and response.status < 500 and body_read
            try:
                await self._send(writer, response, head_only=request.method == "HEAD", close=not keep,
                                 version=request.version)
            finally:
                if self.observe is not None:
                    self.observe(self.route_label(request.path), request.method, response.status,
                                 time.perf_counter() - started)
            if not keep:
                return

    # -- routing --------------------------------------------------------------------------
    def route_label(self, path: str) -> str:
        """The route a path belongs to, as a bounded metric label (never the bundle id)."""
        if path in ("/healthz", "/metrics") or path in self.body_routes:
            return path
        if path.startswith("/api/v1/bundles/"):
            return "/api/v1/bundles/{id}"
        return "other"

    @staticmethod
    def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> _Response:
        body = (reason + "\n").encode()
        h = {"Content-Type": "text/plain; charset=utf-8"}
        h.update(headers or {})
        return _Response(status, h, body)

    async def _body_route(
        self, route: BodyRoute, request: Request, reader: asyncio.StreamReader
    ) -> tuple[_Response, bool]:
        """Answer a body route; the flag says whether the body was consumed (keep-alive possible)."""
        no_body = request.content_length == 0
        if request.method != "POST":
            return self._error(405, f"method {request.method} not allowed", {"Allow": "POST"}), no_body
        if route.authorize is not None:
            try:
                await route.authorize(request)
            except HttpError as exc:
                return self._error(exc.status, exc.reason, exc.headers), no_body
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media not in route.content_types:
            return self._error(415, f"Content-Type must be {' or '.join(route.content_types)}"), no_body
        if "content-length" not in request.headers:
            return self._error(411, "Content-Length is required"), False
        if request.content_length > route.max_body_bytes:
            return self._error(413, f"body larger than {route.max_body_bytes} bytes"), False
        body = await asyncio.wait_for(reader.readexactly(request.content_length), self.timeout_s)
        status, headers, payload = await route.handler(request, body)
        return _Response(status, headers, payload), True

    async def _route(self, request: Request) -> _Response:
        path = request.path
        if path in ("/healthz", "/metrics") or path.startswith("/api/v1/bundles/"):
            if request.method not in ("GET", "HEAD"):
                raise HttpError(405, f"method {request.method} not allowed", {"Allow": "GET, HEAD"})
        else:
            raise HttpError(404, f"no such resource: {path[:200]}")
        if path == "/healthz":
            if self.is_healthy():
                return _Response(200, {"Content-Type": "text/plain; charset=utf-8"}, b"ok\n")
            return _Response(503, {"Content-Type": "text/plain; charset=utf-8"}, b"shutting down\n")
        if path == "/metrics":
            text = await self.render_metrics()
            return _Response(200, {"Content-Type": METRICS_CONTENT_TYPE}, text.encode())
        return await self._bundle(request, path[len("/api/v1/bundles/"):])

    async def _bundle(self, request: Request, bundle_id: str) -> _Response:
        if self.authorize_bundle is not None:
            await self.authorize_bundle(request, bundle_id)
        if not is_bundle_id(bundle_id):
            raise HttpError(404, "not a bundle id (a UUID in lowercase canonical form)")
        bundle = await self.store.get_bundle(bundle_id)
        if bundle is None:
            raise HttpError(404, f"no bundle with id {bundle_id}")
        if bundle.expired_at_ms:
            raise HttpError(410, expired_message(bundle))
        size = bundle.size_bytes
        name = bundle_file_name(bundle.host_id, (bundle.created_at_ms or bundle.received_at_ms) / 1000, bundle_id)
        headers = {
            "Content-Type": "application/zstd",
            "Accept-Ranges": "bytes",
            "ETag": f'"{bundle.sha256}"',
            "Content-Disposition": f'attachment; filename="{name}"',
        }
        if request.headers.get("if-none-match", "").strip() in (f'"{bundle.sha256}"', "*"):
            return _Response(304, headers)
        range_header = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range.strip() != f'"{bundle.sha256}"':
            range_header = None  # the client's copy is of other bytes: send the whole file
        try:
            wanted = parse_range(range_header, size)
        except RangeNotSatisfiable:
            raise HttpError(416, f"range not satisfiable for a {size}-byte bundle",
                            {"Content-Range": f"bytes */{size}"}) from None
        if wanted is None:
            return _Response(200, headers, blob=(bundle.sha256, 0, size))
        start, end = wanted
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return _Response(206, headers, blob=(bundle.sha256, start, end - start + 1))

    # -- writing --------------------------------------------------------------------------
    async def _send(
        self, writer: asyncio.StreamWriter, response: _Response, *, head_only: bool, close: bool,
        version: str = "HTTP/1.1",
    ) -> None:
        headers = dict(response.headers)
        headers["Date"] = email.utils.formatdate(usegmt=True)
        headers["Server"] = "hostdiag-collector"
        if response.status != 304:
            headers["Content-Length"] = str(response.length)
        if close:
            headers["Connection"] = "close"
        elif version == "HTTP/1.0":
            headers["Connection"] = "keep-alive"
        lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only and response.status != 304:
            if response.blob is None:
                writer.write(response.body)
            else:
                digest, offset, remaining = response.blob
                while remaining > 0:
                    await asyncio.wait_for(writer.drain(), self.timeout_s)
                    data = await self.blobs.read(digest, offset, min(BODY_CHUNK_BYTES, remaining))
                    if not data:
                        raise ConnectionError(f"blob {digest} is shorter than its bundle row says")
                    writer.write(data)
                    offset += len(data)
                    remaining -= len(data)
        await asyncio.wait_for(writer.drain(), self.timeout_s)
