"""The outgoing escalation webhook against a real HTTP server on 127.0.0.1: success, retries
with backoff, permanent refusals, timeouts, the bounded queue, https, and no secret in any log."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.collector.metrics import Registry
from hostdiag.collector.webhook import WebhookNotifier, parse_webhook_url

DEADLINE_S = 10.0


class Receiver:
    """A tiny HTTP server: records each request, answers from a script (None: never answers)."""

    def __init__(self, answers: list[int | None], ssl_context: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.ssl = ssl_context
        self._release = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def url(self, path: str = "/hook", scheme: str = "http", host: str = "127.0.0.1", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo}{host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((lines[0], headers, body))
            answer = self.answers.pop(0) if self.answers else 200
            if answer is None:
                await self._release.wait()
                return
            writer.write(f"HTTP/1.1 {answer} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


class Sleeps:
    """Backoff without waiting: records each delay."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def notifier(url: str, **kw: Any) -> tuple[WebhookNotifier, list[int], Sleeps, Any]:
    delivered: list[int] = []

    async def on_delivered(key: int) -> None:
        delivered.append(key)

    sleeps = Sleeps()
    results = Registry().counter("results", "test", ["result"])
    n = WebhookNotifier(url, on_delivered=on_delivered, sleep=sleeps, results=results, **kw)
    return n, delivered, sleeps, results


DOC = {"kind": "ack_overdue", "incident": {"id": "inc-abcdefgh", "severity": "P1"}, "message": "P1 not acknowledged"}


def test_accepted_notification_is_marked_delivered() -> None:
    async def main() -> None:
        async with Receiver([204]) as rx:
            n, delivered, sleeps, results = notifier(rx.url("/hooks/hostdiag?token=s3cret&x=1"))
            n.submit(7, DOC)
            await n.drain_once()
            [(line, headers, body)] = rx.requests
            assert line == "POST /hooks/hostdiag?token=s3cret&x=1 HTTP/1.1"
            assert headers["content-type"] == "application/json"
            assert headers["host"] == f"127.0.0.1:{rx.port}"
            assert headers["user-agent"].startswith("hostdiag-collector/")
            assert "authorization" not in headers
            assert orjson.loads(body) == DOC
            assert delivered == [7] and sleeps.delays == []
            assert results.value(result="delivered") == 1 and len(n) == 0

    asyncio.run(main())


def test_server_error_then_success_retries_with_backoff() -> None:
    async def main() -> None:
        async with Receiver([500, 503, 200]) as rx:
            n, delivered, sleeps, results = notifier(rx.url(), backoff_initial_s=0.5)
            n.submit(1, DOC)
            await n.drain_once()
            assert len(rx.requests) == 3 and {r[2] for r in rx.requests} == {orjson.dumps(DOC)}
            assert sleeps.delays == [0.5, 1.0] and delivered == [1]
            assert results.value(result="delivered") == 1 and results.value(result="failed") == 0

    asyncio.run(main())


def test_retries_are_bounded_and_backoff_is_capped() -> None:
    async def main() -> None:
        async with Receiver([502] * 5) as rx:
            n, delivered, sleeps, results = notifier(rx.url(), max_attempts=5, backoff_initial_s=1, backoff_max_s=3)
            n.submit(1, DOC)
            await n.drain_once()
            assert len(rx.requests) == 5
            assert sleeps.delays == [1, 2, 3, 3]
            assert delivered == [] and results.value(result="failed") == 1

    asyncio.run(main())


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_a_client_error_is_permanent(status: int) -> None:
    async def main() -> None:
        async with Receiver([status, 200]) as rx:
            n, delivered, sleeps, results = notifier(rx.url())
            n.submit(1, DOC)
            await n.drain_once()
            assert len(rx.requests) == 1 and sleeps.delays == [] and delivered == []
            assert results.value(result="failed") == 1

    asyncio.run(main())


def test_too_many_requests_is_retried() -> None:
    async def main() -> None:
        async with Receiver([429, 200]) as rx:
            n, delivered, _, _ = notifier(rx.url())
            n.submit(1, DOC)
            await n.drain_once()
            assert delivered == [1]

    asyncio.run(main())


def test_a_silent_server_times_out_and_is_retried() -> None:
    async def main() -> None:
        async with Receiver([None, None]) as rx:
            n, delivered, sleeps, results = notifier(rx.url(), timeout_s=0.2, max_attempts=2)
            n.submit(1, DOC)
            await asyncio.wait_for(n.drain_once(), DEADLINE_S)
            assert len(rx.requests) == 2 and sleeps.delays == [1.0]
            assert delivered == [] and results.value(result="failed") == 1

    asyncio.run(main())


def test_connection_refused_is_retried_then_given_up() -> None:
    async def main() -> None:
        async with Receiver([]) as rx:
            url = rx.url()
        n, delivered, sleeps, results = notifier(url, max_attempts=3)  # nobody listens there any more
        n.submit(1, DOC)
        await asyncio.wait_for(n.drain_once(), DEADLINE_S)
        assert sleeps.delays == [1.0, 2.0] and delivered == [] and results.value(result="failed") == 1

    asyncio.run(main())


def test_full_queue_drops_the_oldest_and_counts_it() -> None:
    async def main() -> None:
        async with Receiver([]) as rx:
            n, delivered, _, results = notifier(rx.url(), queue_length=2)
            for key in (1, 2, 3):
                n.submit(key, {**DOC, "key": key})
            assert len(n) == 2 and n.dropped == 1 and results.value(result="dropped") == 1
            await n.drain_once()
            assert [orjson.loads(r[2])["key"] for r in rx.requests] == [2, 3]
            assert delivered == [2, 3]

    asyncio.run(main())


def test_the_worker_delivers_in_the_background() -> None:
    async def main() -> None:
        async with Receiver([200, 200]) as rx:
            n, delivered, _, _ = notifier(rx.url())
            worker = asyncio.create_task(n.run())
            try:
                n.submit(1, DOC)  # returns at once: nothing waits for the network
                n.submit(2, DOC)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + DEADLINE_S
                while delivered != [1, 2]:
                    assert loop.time() < deadline, "not delivered"
                    await asyncio.sleep(0.01)
            finally:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

    asyncio.run(main())


def test_an_unexpected_error_does_not_stop_the_worker() -> None:
    async def main() -> None:
        async with Receiver([200]) as rx:
            n, delivered, _, results = notifier(rx.url())
            real_post = n.post
            calls = 0

            async def flaky_post(body: bytes) -> int:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("something nobody expected")
                return await real_post(body)

            n.post = flaky_post  # type: ignore[method-assign]
            n.submit(1, DOC)
            n.submit(2, DOC)
            await n.drain_once()
            assert results.value(result="failed") == 1 and delivered == [2]

    asyncio.run(main())


def test_credentials_are_sent_but_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hostdiag")

    async def main() -> None:
        async with Receiver([500, 403]) as rx:
            n, _, _, _ = notifier(rx.url("/hook?token=s3cret-token", userinfo="ops:pa%24%24word@"))
            n.submit(1, DOC)
            n.queue_length = 1
            n.submit(2, DOC)  # drops 1: the drop is logged too
            await n.drain_once()
            headers = rx.requests[0][1]
            assert headers["authorization"] == "Basic " + base64.b64encode(b"ops:pa$$word").decode()
            assert n.target.safe == "http://127.0.0.1"

    asyncio.run(main())
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "webhook_retry" in logged and "webhook_failed" in logged and "webhook_dropped" in logged
    assert "http://127.0.0.1" in logged
    for secret in ("s3cret-token", "pa$$word", "pa%24%24word", "hook?token"):
        assert secret not in logged


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://hooks.example/x?token=s3cret", "http:// or https://"),
        ("https:///path?token=s3cret", "names no host"),
        ("https://hooks.example/x?token=s3cret#frag", "fragment"),
        ("https://hooks.example:99999/?token=s3cret", "not a valid URL"),
        ("https://hooks.example/a b?token=s3cret", "ASCII"),
    ],
)
def test_bad_urls_are_refused_without_repeating_them(url: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_webhook_url(url)
    assert words in str(info.value) and "s3cret" not in str(info.value)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@contextlib.asynccontextmanager
async def tls_receiver(answers: list[int | None], cert: Path, key: Path) -> AsyncIterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    async with Receiver(answers, context) as rx:
        yield rx


def test_https_with_a_trusted_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files

    async def main() -> None:
        async with tls_receiver([200], cert, key) as rx:
            trust = ssl.create_default_context(cafile=str(cert))
            n, delivered, _, _ = notifier(rx.url(scheme="https", host="localhost"), ssl_context=trust)
            n.submit(1, DOC)
            await asyncio.wait_for(n.drain_once(), DEADLINE_S)
            assert delivered == [1] and orjson.loads(rx.requests[0][2]) == DOC

    asyncio.run(main())


def test_https_refuses_an_untrusted_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files

    async def main() -> None:
        async with tls_receiver([200], cert, key) as rx:
            n, delivered, _, results = notifier(rx.url(scheme="https", host="localhost"), max_attempts=1)
            n.submit(1, DOC)
            await asyncio.wait_for(n.drain_once(), DEADLINE_S)
            assert delivered == [] and rx.requests == [] and results.value(result="failed") == 1

    asyncio.run(main())
