"""Health probes and the ``probes``/``declared`` sources against real servers on 127.0.0.1 and the real host."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import psutil
import pytest

from hostdiag.agent.config import AgentConfig, ExpectSection
from hostdiag.agent.probe import SystemProbe
from hostdiag.agent.probes import ProbeRunner, ProbeSection, check, probe_ring, websocket_accept
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext
from hostdiag.agent.sources.declared import DeclaredSource
from hostdiag.agent.sources.probes import ProbesSource

REASONS = {200: "OK", 503: "Service Unavailable", 101: "Switching Protocols"}


class HttpServer:
    """Answers every GET with ``status`` (changeable between requests) and hangs up."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> HttpServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'X')}\r\n"
                         f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class WebSocketServer:
    """A minimal RFC 6455 upgrade: 101 with an accept computed by ``accept_fn``, then waits for the close frame."""

    def __init__(self, accept_fn: Callable[[str], str] = websocket_accept) -> None:
        self.accept_fn = accept_fn
        self.close_codes: list[int] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> WebSocketServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            headers = {}
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("upgrade", "").lower() != "websocket" or headers.get("sec-websocket-version") != "13":
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + self.accept_fn(headers["sec-websocket-key"]).encode() + b"\r\n\r\n"
            )
            await writer.drain()
            first, second = await reader.readexactly(2)
            length = second & 0x7F
            mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
            if first & 0x0F == 0x8 and len(payload) >= 2:
                self.close_codes.append(struct.unpack("!H", payload[:2])[0])
                writer.write(b"\x88\x02" + payload[:2])  # the server's close frame, unmasked
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("whole members only")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        raise AssertionError("no ndjson here")


class RecorderView:
    """The recorder as snapshot sources see it, holding only the probes ring the runner fills."""

    def __init__(self, probes: list[ProbeSection], window_s: float) -> None:
        self.probes = probe_ring(probes, window_s)

    def metrics_since(self, since: float) -> list[dict[str, Any]]:
        return []

    def top_since(self, since: float) -> list[dict[str, Any]]:
        return []

    def log_rings(self) -> dict[str, Any]:
        return {}

    def probes_since(self, since: float) -> list[dict[str, Any]]:
        return self.probes.since(since)


def make_ctx(config: AgentConfig, recorder: Any, window_s: float = 60.0) -> SnapshotContext:
    return SnapshotContext(
        config=config, host_id="it", labels={}, now=time.time(), window_s=window_s, proc_root="/proc",
        probe=SystemProbe(), redactor=load_redactor(), members=MemorySink(), recorder=recorder,
    )


async def until(predicate: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def http_probe(port: int, **kw: Any) -> ProbeSection:
    return ProbeSection(name="api", kind="http", target=f"http://127.0.0.1:{port}/health", component="api", **kw)


# -- single checks --------------------------------------------------------------------------------


def test_http_up_then_503() -> None:
    async def go() -> None:
        server = await HttpServer(200).start()
        try:
            probe = http_probe(server.port)
            up = await check(probe)
            server.status = 503
            down = await check(probe)
        finally:
            await server.stop()
        assert (up["ok"], up["status"], up["error"]) == (True, 200, None)
        assert up["latency_ms"] > 0
        assert (down["ok"], down["status"], down["error"]) == (False, 503, "HTTP status 503, expected 200")
        request = server.requests[0].decode()
        assert request.startswith("GET /health HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in request and "\r\nConnection: close\r\n" in request

    asyncio.run(go())


def test_tcp_listener_up_then_closed() -> None:
    async def go() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        probe = ProbeSection(name="db", kind="tcp", target=f"127.0.0.1:{port}", component="database")
        up = await check(probe)
        server.close()
        await server.wait_closed()
        down = await check(probe)
        assert (up["ok"], up["status"], up["error"]) == (True, None, None)
        assert (down["ok"], down["error"]) == (False, "connection refused")

    asyncio.run(go())


def test_websocket_handshake_real_server() -> None:
    async def go() -> None:
        good = await WebSocketServer().start()
        bad = await WebSocketServer(lambda key: websocket_accept("not-" + key)).start()
        try:
            ok = await check(ProbeSection(name="ws", kind="websocket", target=f"ws://127.0.0.1:{good.port}/feed",
                                          component="websocket"))
            await until(lambda: good.close_codes, "the close frame")
            broken = await check(ProbeSection(name="ws", kind="websocket",
                                              target=f"ws://127.0.0.1:{bad.port}/feed", component="websocket"))
        finally:
            await good.stop()
            await bad.stop()
        assert (ok["ok"], ok["status"], ok["error"]) == (True, 101, None)
        assert good.close_codes == [1000]
        assert (broken["ok"], broken["status"]) == (False, 101)
        assert broken["error"] == "wrong Sec-WebSocket-Accept in the 101 answer"

    asyncio.run(go())


def test_websocket_probe_against_a_plain_http_server_fails() -> None:
    async def go() -> None:
        server = await HttpServer(200).start()
        try:
            result = await check(ProbeSection(name="ws", kind="websocket", target=f"ws://127.0.0.1:{server.port}/",
                                              component="websocket"))
        finally:
            await server.stop()
        assert (result["ok"], result["status"]) == (False, 200)
        assert result["error"] == "HTTP status 200, expected 101 (switching protocols)"

    asyncio.run(go())


def test_silent_server_times_out() -> None:
    async def go() -> None:
        accepted = asyncio.Event()
        held: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
            accepted.set()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            result = await check(http_probe(port, timeout_s=0.3))
        finally:
            for w in held:
                w.close()
            server.close()
            await server.wait_closed()
        assert accepted.is_set()
        assert result["ok"] is False
        assert result["error"] == "timed out after 0.3 s waiting for the response"
        assert result["latency_ms"] >= 300

    asyncio.run(go())


def test_https_probe_against_plain_http_is_a_tls_error() -> None:
    async def go() -> None:
        async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Read the whole ClientHello record first: closing with unread bytes would reset the connection.
            header = await reader.readexactly(5)
            await reader.readexactly(struct.unpack("!H", header[3:5])[0])
            writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(plain, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            result = await check(ProbeSection(name="api", kind="http", target=f"https://u:pw-secret@127.0.0.1:{port}/",
                                              component="api"))
        finally:
            server.close()
            await server.wait_closed()
        assert result["ok"] is False and result["status"] is None
        assert result["error"] == "TLS error: wrong version number"
        assert "pw-secret" not in result["error"]

    asyncio.run(go())


# -- the probes source, daemon and standalone ------------------------------------------------------


def test_probes_source_with_runner_history_shows_the_outage() -> None:
    async def go() -> None:
        server = await HttpServer(200).start()
        probe = http_probe(server.port, interval_s=0.1, timeout_s=1.0, critical=True)
        view = RecorderView([probe], window_s=60)
        runner = ProbeRunner([probe], view, jitter=lambda: 0.0)
        task = asyncio.create_task(runner.run())
        try:
            await until(lambda: runner.status()["probes"][0]["checks"] >= 3, "three good checks")
            server.status = 503
            await until(lambda: runner.status()["probes"][0]["consecutive_failures"] >= 2, "two failed checks")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.stop()
        ctx = make_ctx(AgentConfig(probes=(probe,)), view)
        notes = await ProbesSource(ProbesSource.Config()).collect(ctx)
        assert notes["mode"] == "history" and notes["checked_now"] == [] and notes["failing"] == ["api"]
        ev = ctx.evidence["probes"]["api"]
        assert ev["component"] == "api" and ev["critical"] is True
        assert ev["last_ok"] is False and ev["last_status"] == 503
        assert ev["consecutive_failures"] >= 2 and ev["failures"] >= 2
        assert 0 < ev["uptime_ratio"] < 1
        assert ev["failing_since"] is not None and ev["p50_latency_ms"] is not None
        results = ctx.members.members["probes.json"]["probes"]["api"]["results"]  # type: ignore[attr-defined]
        assert len(results) == ev["checks"] and results[0]["ok"] is True and results[-1]["status"] == 503

    asyncio.run(go())


def test_probes_source_standalone_checks_real_services() -> None:
    async def go() -> None:
        http = await HttpServer(200).start()
        ws = await WebSocketServer().start()
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()  # bound then released: nothing listens there
        probes = (
            http_probe(http.port),
            ProbeSection(name="db", kind="tcp", target=f"127.0.0.1:{closed_port}", component="database", critical=True),
            ProbeSection(name="feed", kind="websocket", target=f"ws://127.0.0.1:{ws.port}/", component="websocket"),
        )
        ctx = make_ctx(AgentConfig(probes=probes), None)
        try:
            notes = await ProbesSource(ProbesSource.Config()).collect(ctx)
        finally:
            await http.stop()
            await ws.stop()
        assert notes["mode"] == "instant" and sorted(notes["checked_now"]) == ["api", "db", "feed"]
        ev = ctx.evidence["probes"]
        assert ev["api"]["last_ok"] is True and ev["api"]["uptime_ratio"] == 1.0
        assert ev["feed"]["last_ok"] is True and ev["feed"]["last_status"] == 101
        assert ev["db"]["last_ok"] is False and ev["db"]["last_error"] == "connection refused"
        assert ev["db"]["consecutive_failures"] == 1 and ev["db"]["uptime_ratio"] == 0.0

    asyncio.run(go())


# -- the declared source on the real host ------------------------------------------------------------


@pytest.mark.parametrize("daemon", [False, True], ids=["standalone", "daemon"])
def test_declared_source_sees_a_real_process_and_port(daemon: bool) -> None:
    marker = f"hostdiag-declared-{uuid.uuid4().hex[:12]}"
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", marker], stdin=subprocess.PIPE)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    unused_port = spare.getsockname()[1]  # bound, not listening
    try:
        expect = ExpectSection(
            processes=(f"re:{marker}", "no-such-daemon-here"), ports=(port, unused_port),
            critical_processes=("postgres",),
        )
        recorder = RecorderView([], 60) if daemon else None
        ctx = make_ctx(AgentConfig(expect=expect), recorder)
        started = psutil.Process(child.pid).create_time()
        notes = asyncio.run(DeclaredSource(DeclaredSource.Config()).collect(ctx))
    finally:
        listener.close()
        spare.close()
        child.stdin.close()  # type: ignore[union-attr]
        child.wait(timeout=10)
    ev = ctx.evidence["declared"]
    mine = ev["processes"][f"re:{marker}"]
    assert mine["running"] == 1
    assert 0 <= mine["youngest_age_s"] <= ctx.now - started + 1
    booted_long_ago = started - psutil.boot_time() > 120
    assert mine["restarts_5m"] == (1 if booted_long_ago else 0)  # it started seconds ago
    assert ev["processes"]["no-such-daemon-here"] == {"running": 0, "youngest_age_s": None, "restarts_5m": 0}
    assert ev["ports"] == {str(port): {"listening": True}, str(unused_port): {"listening": False}}
    assert ev["critical_processes"] == ["postgres"]
    assert notes["not_running"] == ["no-such-daemon-here"] and notes["not_listening"] == [unused_port]
    member = ctx.members.members["declared.json"]  # type: ignore[attr-defined]
    assert member["processes"][f"re:{marker}"]["main"][0]["pid"] == child.pid
    assert os.getpid() != child.pid
