"""Health probes without a network: config checks, protocol pieces, checks over fake streams, the runner."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hostdiag.agent.config import ConfigError, ExpectSection, load_config
from hostdiag.agent.probes import (
    ProbeFailed,
    ProbeRunner,
    ProbeSection,
    check,
    display_target,
    parse_status_line,
    parse_target,
    probe_ring,
    ring_capacity,
    websocket_accept,
)

PASSWORD = "hunter2-Pr0be"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def probe_toml(**fields: Any) -> str:
    values = {"name": "api", "kind": "http", "target": "http://127.0.0.1:8080/health", "component": "api"}
    values.update(fields)
    lines = ["[[probes]]"]
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, (int, float, list)):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = '{value}'")
    return "\n".join(lines) + "\n"


# -- configuration ----------------------------------------------------------------------------


def test_probes_and_expect_load_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, probe_toml() + probe_toml(
        name="db", kind="tcp", target="[::1]:5432", component="database", critical=True, timeout_s=0.5,
        interval_s=5,
    ) + '[expect]\nprocesses = ["postgres", "re:^nginx"]\nports = [5432]\ncritical_processes = ["postgres"]\n'))
    api, db = cfg.probes
    assert (api.name, api.kind, api.component, api.critical) == ("api", "http", "api", False)
    assert (api.timeout_s, api.interval_s, api.expect_status) == (2.0, 10.0, (200,))
    assert (db.kind, db.critical, db.timeout_s, db.interval_s) == ("tcp", True, 0.5, 5.0)
    assert parse_target(db.kind, db.target).host == "::1"
    assert cfg.expect == ExpectSection(processes=("postgres", "re:^nginx"), ports=(5432,), critical_processes=("postgres",))


def test_no_probes_and_nothing_expected_by_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.probes == () and cfg.expect == ExpectSection()


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (probe_toml(name="API one"), "probes[0].name", "use only a-z, 0-9, _ and -"),
        (probe_toml() + probe_toml(), "probes[1].name", "duplicate probe name 'api'"),
        (probe_toml(kind="udp"), "probes[0].kind", "must be one of 'tcp', 'http', 'websocket'"),
        (probe_toml(component="cache"), "probes[0].component", "must be one of 'database'"),
        (probe_toml(target=""), "probes[0].target", "must not be empty"),
        (probe_toml(target="ws://127.0.0.1/feed"), "probes[0].target", "a http target is a http:// or https:// URL"),
        (probe_toml(kind="websocket", target="http://h/feed"), "probes[0].target", "ws:// or wss:// URL"),
        (probe_toml(kind="tcp", target="db:99999"), "probes[0].target", "from 1 to 65535"),
        (probe_toml(kind="tcp", target="http://db:5432"), "probes[0].target", "not a URL"),
        (probe_toml(target="http:///health"), "probes[0].target", "has no host"),
        (probe_toml(target="http://h:port/"), "probes[0].target", "not a valid URL"),
        (probe_toml(target="http://h/a b"), "probes[0].target", "spaces or control characters"),
        (probe_toml(timeout_s=0), "probes[0].timeout_s", "must be at least 0.05"),
        (probe_toml(interval_s=0.01), "probes[0].interval_s", "must be at least 0.1"),
        (probe_toml(expect_status=[200, 700]), "probes[0].expect_status[1]", "from 100 to 599"),
        (probe_toml(expect_status=[]), "probes[0].expect_status", "must not be empty"),
        (probe_toml(kind="tcp", target="db:5432", expect_status=[204]), "probes[0].expect_status", "only http"),
        (probe_toml(retries=3), "probes[0].retries", "unknown key"),
        ("probes = 3\n", "probes", "expected an array of tables"),
        ('[expect]\nprocesses = ["re:(unclosed"]\n', "expect.processes[0]", "not a valid regular expression"),
        ('[expect]\nprocesses = ["nginx", "nginx"]\n', "expect.processes[1]", "listed twice"),
        ('[expect]\nprocesses = ["re:"]\n', "expect.processes[0]", "must not be empty"),
        ("[expect]\nports = [0]\n", "expect.ports[0]", "port from 1 to 65535"),
        ("[expect]\nports = [443, 443]\n", "expect.ports[1]", "listed twice"),
        ("[expect]\nports = ['443']\n", "expect.ports[0]", "expected an integer"),
        ('[expect]\ncritical_processes = [""]\n', "expect.critical_processes[0]", "must not be empty"),
        ("[expect]\nservices = []\n", "expect.services", "unknown key"),
    ],
)
def test_every_config_error_names_its_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.key == key
    assert message in err.value.message


@pytest.mark.parametrize(
    "target",
    [
        f"http://admin:{PASSWORD}@h:port/",  # invalid port
        f"ws://admin:{PASSWORD}@h/feed",  # wrong scheme for http
        f"http://admin:{PASSWORD}@/health",  # no host
    ],
)
def test_config_errors_never_show_a_password(tmp_path: Path, target: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, probe_toml(target=target)))
    assert PASSWORD not in str(err.value) and "admin" not in str(err.value)


def test_tcp_target_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, probe_toml(kind="tcp", target=f"pg:{PASSWORD}@db:5432")))
    assert err.value.key == "probes[0].target"
    assert "without a user name or password" in err.value.message
    assert PASSWORD not in str(err.value)


def test_probe_repr_hides_the_target() -> None:
    probe = ProbeSection(name="a", kind="http", target=f"https://u:{PASSWORD}@h/", component="api")
    assert PASSWORD not in repr(probe)
    assert PASSWORD not in repr(parse_target(probe.kind, probe.target))


# -- protocol pieces --------------------------------------------------------------------------


def test_websocket_accept_matches_rfc6455_example() -> None:
    # RFC 6455 section 1.3: the sample nonce and the answer a server must give
    assert websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
        (b"HTTP/1.1 204\r\n", 204),
        (b"HTTP/1.1 101 Switching Protocols\n", 101),
        (b"HTTP/2 404 Not Found\r\n", 404),
    ],
)
def test_status_line_parsing(line: bytes, status: int) -> None:
    assert parse_status_line(line) == status


@pytest.mark.parametrize(
    "line", [b"", b"\r\n", b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 20 OK\r\n", b"HTTP/1.1 600 Odd\r\n", b"http 200\r\n"]
)
def test_malformed_status_lines_fail(line: bytes) -> None:
    with pytest.raises(ProbeFailed):
        parse_status_line(line)


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (f"https://admin:{PASSWORD}@api.internal:8443/health", "https://api.internal:8443/health"),
        (f"wss://token-{PASSWORD}@ws.internal/feed", "wss://ws.internal/feed"),
        ("http://h/health?token=abc&verbose", "http://h/health?token=***&verbose"),
        ("http://h/p#frag", "http://h/p"),
        ("db.internal:5432", "db.internal:5432"),
        (f"user:{PASSWORD}@db:5432", "db:5432"),
        ("http://[::1]:8080/", "http://[::1]:8080/"),
        (f"not a url at all {PASSWORD}@x", "x"),
    ],
)
def test_display_target_drops_credentials(target: str, shown: str) -> None:
    assert display_target(target) == shown


def test_parse_target_splits_urls() -> None:
    t = parse_target("http", "http://user:p%40ss@Example.COM:8080/a/b?x=1")
    assert (t.scheme, t.host, t.port, t.tls) == ("http", "example.com", 8080, False)
    assert (t.request_path, t.host_header, t.username, t.password) == ("/a/b?x=1", "Example.COM:8080", "user", "p@ss")
    t = parse_target("websocket", "wss://[::1]/")
    assert (t.host, t.port, t.tls, t.host_header) == ("::1", 443, True, "[::1]")
    assert parse_target("http", "http://h").request_path == "/"


def test_ring_capacity_keeps_the_window_of_every_probe() -> None:
    fast = ProbeSection(name="a", kind="tcp", target="h:1", component="api", interval_s=1)
    slow = ProbeSection(name="b", kind="tcp", target="h:1", component="api", interval_s=60)
    assert ring_capacity([fast, slow], 900) == (900 + 2) + (15 + 2)
    assert ring_capacity([], 900) == 1
    assert probe_ring([fast], 10).capacity == 12


# -- checks over fake streams -----------------------------------------------------------------


class FakeWriter:
    def __init__(self, on_write: Callable[[bytes], None] | None = None) -> None:
        self.data = b""
        self.closed = False
        self._on_write = on_write

    def write(self, data: bytes) -> None:
        self.data += data
        if self._on_write is not None:
            self._on_write(data)

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        pass


class FakeOpener:
    """Stands in for ``asyncio.open_connection``: canned answer bytes, or a function of the request."""

    def __init__(self, answer: bytes | Callable[[bytes], bytes] | BaseException | None, eof: bool = True) -> None:
        self.answer = answer
        self.eof = eof
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        self.writer: FakeWriter | None = None

    async def __call__(self, host: str, port: int, **kwargs: Any) -> tuple[Any, Any]:
        self.calls.append((host, port, kwargs))
        if isinstance(self.answer, BaseException):
            raise self.answer
        reader = asyncio.StreamReader()

        def respond(request: bytes) -> None:
            if callable(self.answer) and b"\r\n\r\n" in request:
                reader.feed_data(self.answer(request))
                if self.eof:
                    reader.feed_eof()

        self.writer = FakeWriter(respond)
        if isinstance(self.answer, bytes):
            reader.feed_data(self.answer)
            if self.eof:
                reader.feed_eof()
        return reader, self.writer


def probe(kind: str = "http", target: str = "http://svc.local:8080/health?deep=1", **kw: Any) -> ProbeSection:
    return ProbeSection(name="svc", kind=kind, target=target, component="api", **kw)


def run_check(p: ProbeSection, opener: FakeOpener, **kw: Any) -> dict[str, Any]:
    return asyncio.run(check(p, opener=opener, **kw))


def test_http_up_sends_a_minimal_get_and_measures_latency() -> None:
    opener = FakeOpener(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    ticks = iter([10.0, 10.25])
    result = run_check(probe(), opener, clock=lambda: 1234.5, monotonic=lambda: next(ticks))
    assert result == {"ts": 1234.5, "name": "svc", "kind": "http", "component": "api", "ok": True,
                      "latency_ms": 250.0, "status": 200, "error": None}
    assert opener.calls == [("svc.local", 8080, {})]
    assert opener.writer is not None and opener.writer.closed
    request = opener.writer.data.decode()
    assert request.startswith("GET /health?deep=1 HTTP/1.1\r\n")
    assert "\r\nHost: svc.local:8080\r\n" in request and "\r\nConnection: close\r\n" in request
    assert request.endswith("\r\n\r\n") and "Authorization" not in request


def test_http_unexpected_status_is_down_with_the_status() -> None:
    result = run_check(probe(), FakeOpener(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"))
    assert (result["ok"], result["status"], result["error"]) == (False, 503, "HTTP status 503, expected 200")


def test_http_expect_status_list_and_interim_answers() -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    result = run_check(probe(expect_status=(200, 204)), FakeOpener(answer))
    assert (result["ok"], result["status"]) == (True, 204)


def test_https_uses_tls_with_the_host_name_and_basic_auth_from_userinfo() -> None:
    opener = FakeOpener(b"HTTP/1.1 200 OK\r\n\r\n")
    result = run_check(probe(target=f"https://svc:{PASSWORD}@api.internal/health"), opener)
    assert result["ok"]
    host, port, kwargs = opener.calls[0]
    assert (host, port, kwargs["server_hostname"]) == ("api.internal", 443, "api.internal")
    assert isinstance(kwargs["ssl"], ssl.SSLContext) and kwargs["ssl"].verify_mode == ssl.CERT_REQUIRED
    assert opener.writer is not None
    expected = base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
    assert f"\r\nAuthorization: Basic {expected}\r\n".encode() in opener.writer.data
    assert b"Host: api.internal\r\n" in opener.writer.data  # never the userinfo


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset by the server"),
        (OSError(101, "Network is unreachable"), "Network is unreachable"),
        (b"", "connection closed by the server before the status line"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP response: 'SSH-2.0-OpenSSH_9.2'"),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", "malformed response header line"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100 response header lines"),
        (b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * 70000 + b"\r\n\r\n", "a response line is longer than 64 KiB"),
    ],
)
def test_failures_have_short_errors(answer: Any, error: str) -> None:
    result = run_check(probe(), FakeOpener(answer))
    assert result["ok"] is False and result["error"] == error


def test_timeout_is_honoured_and_says_where_it_stopped() -> None:
    # The server accepts but never answers: the reader never gets data nor EOF.
    result = run_check(probe(timeout_s=0.05), FakeOpener(b"", eof=False))
    assert result["ok"] is False
    assert result["error"] == "timed out after 0.05 s waiting for the response"
    assert result["status"] is None


def test_timeout_while_connecting() -> None:
    async def never(host: str, port: int, **kwargs: Any) -> tuple[Any, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    result = asyncio.run(check(probe("tcp", "db:5432", timeout_s=0.05), opener=never))
    assert result["error"] == "timed out after 0.05 s connecting"


def test_errors_never_carry_credentials() -> None:
    leak = OSError(f"proxy said: bad password {PASSWORD}")
    result = run_check(probe(target=f"http://admin:{PASSWORD}@svc/"), FakeOpener(leak))
    assert result["ok"] is False and PASSWORD not in result["error"] and "***" in result["error"]


def test_tcp_up_when_connected() -> None:
    opener = FakeOpener(b"")
    result = run_check(probe("tcp", "10.0.0.5:5432"), opener)
    assert (result["ok"], result["status"], result["error"]) == (True, None, None)
    assert opener.calls == [("10.0.0.5", 5432, {})]
    assert opener.writer is not None and opener.writer.data == b"" and opener.writer.closed


def websocket_server(accept_fn: Callable[[str], str] = websocket_accept, status: bytes = b"101 Switching Protocols",
                     extra: bytes = b"") -> Callable[[bytes], bytes]:
    def answer(request: bytes) -> bytes:
        key = re.search(rb"\r\nSec-WebSocket-Key: (\S+)\r\n", request)
        assert key is not None
        return (b"HTTP/1.1 " + status + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + b"Sec-WebSocket-Accept: " + accept_fn(key.group(1).decode()).encode() + b"\r\n" + extra + b"\r\n")
    return answer


def test_websocket_handshake_up_then_close_frame() -> None:
    opener = FakeOpener(websocket_server(), eof=False)
    result = run_check(probe("websocket", "ws://feed.local:9000/stream"), opener)
    assert (result["ok"], result["status"], result["error"]) == (True, 101, None)
    assert opener.writer is not None
    head, _, frame = opener.writer.data.partition(b"\r\n\r\n")
    text = head.decode()
    assert text.startswith("GET /stream HTTP/1.1\r\n")
    for header in ("Host: feed.local:9000", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"):
        assert f"\r\n{header}" in text
    key = re.search(r"Sec-WebSocket-Key: (\S+)", text)
    assert key is not None and len(base64.b64decode(key.group(1))) == 16
    # A masked close frame with code 1000 after the handshake.
    assert frame[0] == 0x88 and frame[1] == 0x82 and len(frame) == 8
    mask, payload = frame[2:6], frame[6:]
    assert bytes(b ^ mask[i] for i, b in enumerate(payload)) == b"\x03\xe8"


def test_websocket_keys_are_random() -> None:
    keys = set()
    for _ in range(3):
        opener = FakeOpener(websocket_server(), eof=False)
        run_check(probe("websocket", "ws://h/"), opener)
        assert opener.writer is not None
        found = re.search(rb"Sec-WebSocket-Key: (\S+)", opener.writer.data)
        assert found is not None
        keys.add(found.group(1))
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("server", "error"),
    [
        (websocket_server(lambda key: websocket_accept(key + "x")), "wrong Sec-WebSocket-Accept in the 101 answer"),
        (websocket_server(status=b"200 OK"), "HTTP status 200, expected 101 (switching protocols)"),
        (lambda request: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
         "the 101 answer has no Sec-WebSocket-Accept header"),
        (lambda request: b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
         "the 101 answer has no 'Upgrade: websocket' header"),
    ],
)
def test_websocket_handshake_failures(server: Callable[[bytes], bytes], error: str) -> None:
    result = run_check(probe("websocket", "wss://h/feed"), FakeOpener(server, eof=False))
    assert result["ok"] is False and result["error"] == error


# -- the runner -------------------------------------------------------------------------------


class Recorder:
    def __init__(self, probes: list[ProbeSection], window_s: float = 60.0) -> None:
        self.probes = probe_ring(probes, window_s)


class ScriptedChecker:
    """Answers per probe from a list of ok flags; sets ``done`` once every probe had ``want`` checks."""

    def __init__(self, script: dict[str, list[bool]], want: int = 0) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: dict[str, int] = {k: 0 for k in script}
        self.want = want
        self.done = asyncio.Event()

    async def __call__(self, p: ProbeSection) -> dict[str, Any]:
        i = self.calls[p.name]
        self.calls[p.name] += 1
        if self.want and all(n >= self.want for n in self.calls.values()):
            self.done.set()
        ok = self.script[p.name][min(i, len(self.script[p.name]) - 1)]
        return {"ts": 0.0, "name": p.name, "kind": p.kind, "component": p.component, "ok": ok,
                "latency_ms": 1.5, "status": 200 if ok else 503, "error": None if ok else "HTTP status 503, expected 200"}


def test_runner_records_results_and_tracks_failures(caplog: pytest.LogCaptureFixture) -> None:
    p = probe(target=f"http://admin:{PASSWORD}@svc/health")
    recorder = Recorder([p])
    times = iter(float(t) for t in range(100, 200))
    checker = ScriptedChecker({"svc": [True, False, False, True, False]})
    runner = ProbeRunner([p], recorder, clock=lambda: next(times), checker=checker)

    async def go() -> None:
        for _ in range(5):
            await runner.check_once(p)

    with caplog.at_level(logging.INFO, logger="hostdiag.agent.probes"):
        asyncio.run(go())
    rows = recorder.probes.since(0)
    assert [r["ts"] for r in rows] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert [r["ok"] for r in rows] == [True, False, False, True, False]
    status = runner.status()
    assert status["ring_samples"] == 5 and status["ring_capacity"] == recorder.probes.capacity
    (row,) = status["probes"]
    assert row["target"] == "http://svc/health"
    assert (row["checks"], row["failures"], row["consecutive_failures"], row["failing_since"]) == (5, 3, 1, 104.0)
    assert (row["last_ok"], row["last_status"], row["last_ts"]) == (False, 503, 104.0)
    events = [r.__dict__.get("event") for r in caplog.records]
    assert events == ["probe_failing", "probe_recovered", "probe_failing"]  # state changes only
    assert all(PASSWORD not in r.getMessage() and PASSWORD not in str(r.__dict__) for r in caplog.records)


def test_runner_survives_a_checker_that_raises() -> None:
    p = probe()
    recorder = Recorder([p])

    async def broken(_: ProbeSection) -> dict[str, Any]:
        raise RuntimeError("bug")

    runner = ProbeRunner([p], recorder, clock=lambda: 5.0, checker=broken)
    result = asyncio.run(runner.check_once(p))
    assert result["ok"] is False and result["error"] == "internal error: RuntimeError"
    assert recorder.probes.since(0)[0]["ts"] == 5.0


def test_runner_checks_every_probe_on_its_cadence() -> None:
    fast = ProbeSection(name="fast", kind="tcp", target="h:1", component="database", interval_s=0.1)
    slow = ProbeSection(name="slow", kind="tcp", target="h:2", component="api", interval_s=0.1)
    recorder = Recorder([fast, slow])
    checker = ScriptedChecker({"fast": [True], "slow": [False]}, want=3)
    runner = ProbeRunner([fast, slow], recorder, checker=checker, jitter=lambda: 0.0)

    async def go() -> None:
        task = asyncio.create_task(runner.run())
        await asyncio.wait_for(checker.done.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    rows = recorder.probes.since(0)
    assert {r["name"] for r in rows} == {"fast", "slow"}
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    by_name = {r["name"]: r for r in runner.status()["probes"]}
    assert by_name["fast"]["checks"] >= 3 and by_name["fast"]["failures"] == 0
    assert by_name["slow"]["consecutive_failures"] == by_name["slow"]["checks"] >= 3
