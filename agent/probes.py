"""Health probes: what the host's services look like from the host itself.

A probe is declared in the agent's config as ``[[probes]]`` (:class:`ProbeSection`)
and is one of three kinds:

* ``tcp``: connect to ``host:port``; up when the connection is accepted;
* ``http``: one minimal HTTP/1.1 ``GET`` (``Host``, ``Connection: close``) over
  TCP or TLS (the system's default CA store); up when the status line's code is
  in ``expect_status``;
* ``websocket``: a real upgrade handshake (RFC 6455 section 4): up only on
  ``101`` with ``Upgrade: websocket``, ``Connection: Upgrade`` and the right
  ``Sec-WebSocket-Accept``; the probe then sends a close frame and hangs up.

Every check runs under one deadline (``timeout_s``) covering name resolution,
connect, TLS and the answer, and gives one result::

    {"ts", "name", "kind", "component", "ok", "latency_ms", "status", "error"}

``ts`` is when the check finished (epoch seconds), ``latency_ms`` how long it
took, ``status`` the HTTP status code (``null`` for ``tcp`` and when no status
line arrived), ``error`` a short text (``null`` when up).  A user name and
password in a target (``https://user:secret@host/``) are sent as HTTP basic
auth and shown nowhere: results, errors, status, logs and config errors use
:func:`display_target`, which drops them (and masks query values).

:class:`ProbeRunner` checks each probe every ``interval_s`` (the first check
after a random delay, so probes do not bunch) and appends the results to the
flight recorder's ``probes`` ring, sized by :func:`ring_capacity`.

Only the standard library is used (asyncio streams, ssl, hashlib).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import random
import re
import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hostdiag

__all__ = [
    "KINDS",
    "COMPONENTS",
    "ProbeSection",
    "Target",
    "ProbeFailed",
    "parse_target",
    "display_target",
    "websocket_accept",
    "parse_status_line",
    "check",
    "ring_capacity",
    "probe_ring",
    "ProbeRunner",
]

log = logging.getLogger("hostdiag.agent.probes")

KINDS = ("tcp", "http", "websocket")
COMPONENTS = ("database", "api", "auth", "website", "websocket", "payments", "other")
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

MAX_ERROR_CHARS = 200
MAX_LINE_BYTES = 8192  # one status or header line
MAX_HEADER_LINES = 100
MAX_JITTER_S = 10.0  # the first check of a probe comes within min(interval_s, this)
CLOSE_WAIT_S = 0.5  # how long a finished check waits for the connection to close

_NAME = re.compile(r"[a-z0-9_-]{1,64}")
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? ([1-5]\d\d)(?:[ \t][^\r\n]*)?\r?\n?")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SCHEMES = {"http": ("http", "https"), "websocket": ("ws", "wss")}


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSection:
    """One ``[[probes]]`` table."""

    name: str = field(default="", metadata={"nonempty": True, "doc": "unique name: a-z, 0-9, _ and - (at most 64)"})
    kind: str = field(
        default="",
        metadata={"choices": KINDS, "doc": "tcp: connect; http: GET, check the status; websocket: upgrade handshake"},
    )
    # repr=False: the target may hold a password; show display_target instead.
    target: str = field(
        default="",
        repr=False,
        metadata={"nonempty": True, "doc": "tcp: host:port; http: http:// or https:// URL; websocket: ws:// or wss:// URL"},
    )
    component: str = field(
        default="",
        metadata={"choices": COMPONENTS, "doc": "what the probe stands for; the collector's severity rules read it"},
    )
    critical: bool = field(default=False, metadata={"doc": "the service is critical for this host's role"})
    timeout_s: float = field(
        default=2.0, metadata={"min": 0.05, "max": 60, "doc": "one deadline for resolve, connect, TLS and answer"}
    )
    interval_s: float = field(default=10.0, metadata={"min": 0.1, "max": 3600, "doc": "time between two checks"})
    expect_status: tuple[int, ...] = field(
        default=(200,), metadata={"nonempty": True, "doc": "http: status codes that count as up (a list)"}
    )

    def validate(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(("name", f"use only a-z, 0-9, _ and - (1 to 64 characters), got {self.name!r}"))
        parse_target(self.kind, self.target)  # raises ValueError(("target", ...))
        for i, code in enumerate(self.expect_status):
            if not 100 <= code <= 599:
                raise ValueError((f"expect_status[{i}]", f"must be an HTTP status code from 100 to 599, got {code}"))
        if self.kind != "http" and self.expect_status != (200,):
            raise ValueError(("expect_status", f"only http probes check a status; a {self.kind} probe cannot use it"))

    @property
    def display_target(self) -> str:
        return display_target(self.target)


@dataclass(frozen=True)
class Target:
    """Where a probe connects and what it asks for."""

    scheme: str  # tcp, http, https, ws, wss
    host: str  # as given to connect (IPv6 without brackets)
    port: int
    tls: bool
    request_path: str = "/"  # path and query, as sent in the request line
    host_header: str = ""
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def display_target(target: str) -> str:
    """``target`` safe to show: no user name or password, query values masked.

    Works on any string (also an invalid target, for error messages).
    """
    scheme, sep, rest = target.partition("://")
    if not sep:
        scheme, rest = "", target
    end = len(rest)
    for ch in "/?#":
        pos = rest.find(ch)
        if pos >= 0:
            end = min(end, pos)
    authority, tail = rest[:end], rest[end:]
    authority = authority.rpartition("@")[2]
    tail = tail.partition("#")[0]
    path, qsep, query = tail.partition("?")
    if qsep:
        query = re.sub(r"=[^&;]*", "=***", query)
    return (f"{scheme}://" if sep else "") + authority + path + (f"?{query}" if qsep else "")


def parse_target(kind: str, target: str) -> Target:
    """Check a probe's target and split it; raises ``ValueError(("target", message))``.

    Messages show the target only through :func:`display_target`.
    """
    shown = display_target(target)
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in target):
        raise ValueError(("target", f"must not contain spaces or control characters, got {shown!r}"))
    if kind == "tcp":
        if "://" in target:
            raise ValueError(("target", f"a tcp target is host:port, not a URL, got {shown!r}"))
        if "@" in target:
            raise ValueError(("target", f"a tcp target is host:port, without a user name or password, got {shown!r}"))
        from hostdiag.agent.configfile import split_host_port

        try:
            host, port = split_host_port(target)
        except ValueError as exc:
            raise ValueError(("target", str(exc))) from None
        return Target("tcp", host, port, False)
    if kind not in _SCHEMES:
        # an unknown kind is reported on "kind"; nothing more to say about the target
        raise ValueError(("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}"))
    schemes = _SCHEMES[kind]
    try:
        parts = urllib.parse.urlsplit(target)
        url_port = parts.port
    except ValueError as exc:
        raise ValueError(("target", f"not a valid URL ({display_target(str(exc))}): {shown!r}")) from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        wanted = " or ".join(f"{s}://" for s in schemes)
        raise ValueError(("target", f"a {kind} target is a {wanted} URL, got {shown!r}"))
    host = parts.hostname or ""
    if not host:
        raise ValueError(("target", f"the URL has no host: {shown!r}"))
    if url_port == 0:
        raise ValueError(("target", f"port 0 is not a port: {shown!r}"))
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    username = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return Target(
        scheme=scheme,
        host=host,
        port=url_port or _DEFAULT_PORTS[scheme],
        tls=scheme in ("https", "wss"),
        request_path=path,
        host_header=parts.netloc.rpartition("@")[2],
        username=username,
        password=password,
    )


# -- protocol pieces ----------------------------------------------------------------------------


def websocket_accept(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key: key``."""
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def parse_status_line(line: bytes) -> int:
    """The status code of an HTTP/1.x status line; ``ProbeFailed`` when it is not one."""
    m = _STATUS_LINE.fullmatch(line)
    if not m:
        shown = line[:60].decode("latin-1").rstrip("\r\n")
        raise ProbeFailed(f"not an HTTP response: {shown!r}" if shown else "empty status line")
    return int(m.group(1))


def _close_frame() -> bytes:
    """A masked WebSocket close frame with status 1000 (normal closure)."""
    mask = os.urandom(4)
    payload = struct.pack("!H", 1000)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + mask + masked


def _request(target: Target, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    headers = [
        ("Host", target.host_header),
        ("User-Agent", f"hostdiag-agent/{hostdiag.__version__} (health probe)"),
        ("Accept", "*/*"),
    ]
    if target.username is not None:
        pair = f"{target.username}:{target.password or ''}".encode()
        headers.append(("Authorization", "Basic " + base64.b64encode(pair).decode("ascii")))
    headers.extend(extra)
    lines = [f"GET {target.request_path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class ProbeFailed(Exception):
    """The service answered, but not as a healthy one does; ``status`` when one was read."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Exchange:
    """What one check has open and how far it got (for timeout messages and cleanup)."""

    def __init__(self) -> None:
        self.phase = "connecting"
        self.writer: Any = None
        self.status: int | None = None

    async def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), CLOSE_WAIT_S)
        except Exception:  # already reset, TLS shutdown refused, slow peer: it is closed on our side
            pass


Opener = Callable[..., Awaitable[tuple[Any, Any]]]

_tls_context: ssl.SSLContext | None = None


def _default_tls() -> ssl.SSLContext:
    global _tls_context
    if _tls_context is None:
        _tls_context = ssl.create_default_context()
    return _tls_context


async def _connect(target: Target, opener: Opener, ex: _Exchange) -> Any:
    ex.phase = "connecting (TLS)" if target.tls else "connecting"
    if target.tls:
        reader, writer = await opener(target.host, target.port, ssl=_default_tls(), server_hostname=target.host)
    else:
        reader, writer = await opener(target.host, target.port)
    ex.writer = writer
    return reader


async def _read_line(reader: Any, what: str) -> bytes:
    try:
        return bytes(await reader.readuntil(b"\n"))
    except asyncio.IncompleteReadError:
        raise ProbeFailed(f"connection closed by the server before {what}") from None
    except asyncio.LimitOverrunError:  # no line end within the stream's limit (64 KiB)
        raise ProbeFailed("a response line is longer than 64 KiB") from None


async def _read_head(reader: Any, ex: _Exchange) -> dict[str, str]:
    """Status line and headers; headers by lower-case name, repeated ones joined with ", "."""
    ex.phase = "waiting for the response"
    line = await _read_line(reader, "the status line")
    ex.status = parse_status_line(line)
    ex.phase = "reading the response headers"
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = await _read_line(reader, "the end of the headers")
        if line in (b"\r\n", b"\n"):
            return headers
        if len(line) > MAX_LINE_BYTES:
            raise ProbeFailed("a response header line is too long", ex.status)
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProbeFailed("malformed response header line", ex.status)
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    raise ProbeFailed(f"more than {MAX_HEADER_LINES} response header lines", ex.status)


async def _check_tcp(probe: ProbeSection, target: Target, opener: Opener, ex: _Exchange) -> None:
    await _connect(target, opener, ex)


async def _check_http(probe: ProbeSection, target: Target, opener: Opener, ex: _Exchange) -> None:
    reader = await _connect(target, opener, ex)
    ex.phase = "sending the request"
    ex.writer.write(_request(target, [("Connection", "close")]))
    await ex.writer.drain()
    for _ in range(5):  # skip interim 1xx answers (103 Early Hints)
        await _read_head(reader, ex)
        if ex.status is None or ex.status == 101 or not 100 <= ex.status < 200:
            break
    if ex.status not in probe.expect_status:
        wanted = ", ".join(str(s) for s in probe.expect_status)
        raise ProbeFailed(f"HTTP status {ex.status}, expected {wanted}", ex.status)


async def _check_websocket(probe: ProbeSection, target: Target, opener: Opener, ex: _Exchange) -> None:
    reader = await _connect(target, opener, ex)
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    ex.phase = "sending the upgrade request"
    ex.writer.write(
        _request(
            target,
            [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", key),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
    )
    await ex.writer.drain()
    headers = await _read_head(reader, ex)
    if ex.status != 101:
        raise ProbeFailed(f"HTTP status {ex.status}, expected 101 (switching protocols)", ex.status)
    if headers.get("upgrade", "").lower() != "websocket":
        raise ProbeFailed("the 101 answer has no 'Upgrade: websocket' header", ex.status)
    if "upgrade" not in [t.strip().lower() for t in headers.get("connection", "").split(",")]:
        raise ProbeFailed("the 101 answer has no 'Connection: Upgrade' header", ex.status)
    accept = headers.get("sec-websocket-accept")
    if accept is None:
        raise ProbeFailed("the 101 answer has no Sec-WebSocket-Accept header", ex.status)
    if accept != websocket_accept(key):
        raise ProbeFailed("wrong Sec-WebSocket-Accept in the 101 answer", ex.status)
    ex.phase = "closing"
    ex.writer.write(_close_frame())
    await ex.writer.drain()


_CHECKS = {"tcp": _check_tcp, "http": _check_http, "websocket": _check_websocket}


def describe_error(exc: BaseException) -> str:
    """A short text for a failed check (never the target: it may hold a password)."""
    if isinstance(exc, ProbeFailed):
        text = str(exc)
    elif isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(exc, ConnectionResetError):
        text = "connection reset by the server"
    elif isinstance(exc, asyncio.IncompleteReadError):
        text = "connection closed by the server"
    elif isinstance(exc, socket.gaierror):
        text = f"cannot resolve the host name: {exc.strerror or exc}"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        text = f"TLS certificate not accepted: {exc.verify_message or exc.reason}"
    elif isinstance(exc, ssl.SSLError):
        text = f"TLS error: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text


def _scrub(text: str, target: Target | None) -> str:
    """Cut an error text short and make sure no credential of the target is in it.

    Error texts are built without the target, so this is a second line of
    defence; values shorter than 4 characters are left alone (replacing them
    would garble ordinary words without protecting anything).
    """
    if target is not None:
        for secret in (target.password, target.username):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
    return text[:MAX_ERROR_CHARS]


async def check(
    probe: ProbeSection,
    *,
    opener: Opener | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Check ``probe`` once; never raises (but lets cancellation through).

    ``opener`` is ``asyncio.open_connection``'s signature (tests pass fakes).
    """
    if opener is None:
        opener = asyncio.open_connection
    ex = _Exchange()
    target: Target | None = None
    error: str | None = None
    started = monotonic()
    try:
        target = parse_target(probe.kind, probe.target)
        async with asyncio.timeout(probe.timeout_s):
            await _CHECKS[probe.kind](probe, target, opener, ex)
    except TimeoutError:
        error = f"timed out after {probe.timeout_s:g} s {ex.phase}"
    except ValueError as exc:  # only from a target the config did not check
        error = str(exc.args[0][1]) if exc.args and isinstance(exc.args[0], tuple) else describe_error(exc)
    except Exception as exc:
        error = describe_error(exc)
    finally:
        latency_ms = round((monotonic() - started) * 1000.0, 2)
        await ex.close()
    return {
        "ts": clock(),
        "name": probe.name,
        "kind": probe.kind,
        "component": probe.component,
        "ok": error is None,
        "latency_ms": latency_ms,
        "status": ex.status,
        "error": None if error is None else _scrub(error, target),
    }


# -- the runner ---------------------------------------------------------------------------------


def ring_capacity(probes: Iterable[ProbeSection], window_s: float) -> int:
    """Results a window holds: ``window_s / interval_s + 2`` per probe, summed.

    A probe checks at most once per ``interval_s`` (late ticks are skipped), so
    one ring of this size keeps every result of the last ``window_s`` for all
    probes; the +2 covers both ends of the window and a wake-up that ran late.
    """
    return max(1, sum(int(window_s / p.interval_s) + 2 for p in probes))


def probe_ring(probes: Iterable[ProbeSection], window_s: float) -> Any:
    """A :class:`SampleRing` sized by :func:`ring_capacity` for the recorder's ``probes``."""
    from hostdiag.agent.recorder.ring import SampleRing

    return SampleRing(ring_capacity(probes, window_s))


@dataclass
class _State:
    checks: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    failing_since: float | None = None
    skipped_ticks: int = 0
    last: dict[str, Any] | None = None


Checker = Callable[[ProbeSection], Awaitable[dict[str, Any]]]


class ProbeRunner:
    """Checks every probe on its own cadence and records the results.

    ``recorder`` is anything with a ``probes`` ring (:class:`SampleRing`:
    ``append(ts, sample)``); the flight recorder in the daemon.  ``clock``
    stamps each result when its check finishes; ``checker`` (default
    :func:`check`) and ``jitter`` (a 0..1 random source) are for tests.
    """

    def __init__(
        self,
        probes: Iterable[ProbeSection],
        recorder: Any,
        clock: Callable[[], float] = time.time,
        *,
        checker: Checker | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.probes = tuple(probes)
        self._recorder = recorder
        self._clock = clock
        self._check: Checker = checker or check
        self._jitter = jitter
        self._state = {p.name: _State() for p in self.probes}

    async def run(self) -> None:
        """Check forever; cancel to stop."""
        async with asyncio.TaskGroup() as tg:
            for probe in self.probes:
                tg.create_task(self._every(probe), name=f"probe-{probe.name}")

    async def _every(self, probe: ProbeSection) -> None:

        loop = asyncio.get_running_loop()
        await asyncio.sleep(self._jitter() * min(probe.interval_s, MAX_JITTER_S))
        next_at = loop.time()
        while True:
            await self.check_once(probe)
            next_at += probe.interval_s
            now = loop.time()
            if next_at < now:  # the check outlasted its interval: skip, never burst
                missed = int((now - next_at) // probe.interval_s) + 1
                self._state[probe.name].skipped_ticks += missed
                next_at += missed * probe.interval_s
            await asyncio.sleep(next_at - now)

    async def check_once(self, probe: ProbeSection) -> dict[str, Any]:
        """Check one probe now and record the result."""
        try:
            result = dict(await self._check(probe))
        except Exception as exc:  # a bug in a check must not stop the others
            result = {
                "name": probe.name, "kind": probe.kind, "component": probe.component, "ok": False,
                "latency_ms": None, "status": None, "error": f"internal error: {type(exc).__name__}",
            }
        result["ts"] = self._clock()  # stamped here, so the ring stays in time order
        self._record(probe, result)
        return result

    def _record(self, probe: ProbeSection, result: dict[str, Any]) -> None:
        state = self._state[probe.name]
        state.checks += 1
        was_failing = state.consecutive_failures > 0
        if result["ok"]:
            state.consecutive_failures = 0
            state.failing_since = None
            if was_failing:
                log.info(
                    "probe recovered",
                    extra={"event": "probe_recovered", "probe": probe.name, "target": probe.display_target},
                )
        else:
            state.failures += 1
            state.consecutive_failures += 1
            if state.failing_since is None:
                state.failing_since = result["ts"]
            if not was_failing:
                log.warning(
                    "probe failing",
                    extra={
                        "event": "probe_failing", "probe": probe.name, "target": probe.display_target,
                        "error": result.get("error"),
                    },
                )
        state.last = result
        self._recorder.probes.append(result["ts"], result)

    def status(self) -> dict[str, Any]:
        """For ``agentctl status``: the ring's use and each probe's latest state."""
        ring = self._recorder.probes
        rows = []
        for probe in self.probes:
            st = self._state[probe.name]
            last = st.last or {}
            rows.append(
                {
                    "name": probe.name,
                    "kind": probe.kind,
                    "component": probe.component,
                    "critical": probe.critical,
                    "target": probe.display_target,
                    "interval_s": probe.interval_s,
                    "checks": st.checks,
                    "failures": st.failures,
                    "consecutive_failures": st.consecutive_failures,
                    "failing_since": st.failing_since,
                    "skipped_ticks": st.skipped_ticks,
                    "last_ts": last.get("ts"),
                    "last_ok": last.get("ok"),
                    "last_status": last.get("status"),
                    "last_latency_ms": last.get("latency_ms"),
                    "last_error": last.get("error"),
                }
            )
        return {
            "ring_samples": len(ring),
            "ring_capacity": ring.capacity,
            "ring_bytes": ring.bytes_used,
            "probes": rows,
        }
