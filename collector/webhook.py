"""The outgoing escalation webhook: a JSON POST per runbook breach.

:class:`WebhookNotifier` keeps a bounded in-memory queue and one worker task:

- :meth:`WebhookNotifier.submit` never blocks and never waits for the network;
  when the queue is full the *oldest* waiting notification is dropped and
  counted (``result="dropped"``).
- The worker POSTs one notification at a time with a minimal HTTP/1.1 client on
  asyncio streams (``https://`` through the default SSL context, which checks
  the certificate and the host name).  Each attempt has ``timeout_s`` for
  connecting, sending and reading the status line.
- A 2xx answer is success: the ``on_delivered`` callback marks the breach
  ``notified``.  Connection errors, timeouts, 408, 425, 429 and 5xx are retried
  with exponential backoff (``backoff_initial_s`` doubling up to
  ``backoff_max_s``) until ``max_attempts``; any other answer is permanent.
  Either way a failure is logged and counted (``result="failed"``) and the
  breach stays un-notified (a restarted collector sends it again while the
  incident is unresolved).
- The URL may carry a secret (a token in the query, or user:password, which is
  sent as HTTP basic authentication): logs name only the scheme and host.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import orjson

import hostdiag

if TYPE_CHECKING:
    from hostdiag.collector.metrics import Counter

__all__ = ["WebhookTarget", "parse_webhook_url", "WebhookNotifier", "RETRYABLE_STATUSES"]

log = logging.getLogger("hostdiag.collector.webhook")

RETRYABLE_STATUSES = frozenset({408, 425, 429})
MAX_RESPONSE_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class WebhookTarget:
    scheme: str
    host: str
    port: int
    # Path and query, as sent in the request line.
    target: str
    # ``Basic ...`` when the URL carries user:password, else empty.
    authorization: str = ""

    @property
    def safe(self) -> str:
        """What logs may show: scheme and host, never the path, query or credentials."""
        return f"{self.scheme}://{self.host}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_webhook_url(url: str) -> WebhookTarget:
    """Check and split an ``http://`` or ``https://`` URL; ``ValueError`` says what is wrong.

    Error messages never repeat the URL (it may hold a token).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("names no host")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise ValueError("must be ASCII without spaces or control characters (percent-encode them)")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    authorization = ""
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode()
    return WebhookTarget(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        target=target,
        authorization=authorization,
    )


class _BadResponse(Exception):
    pass


class WebhookNotifier:
    """Deliver JSON notifications to one URL; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        queue_length: int = 1000,
        on_delivered: Callable[[int], Awaitable[None]] | None = None,
        results: Counter | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.target = parse_webhook_url(url)
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.queue_length = max(1, queue_length)
        self.on_delivered = on_delivered
        self.results = results
        self._sleep = sleep
        self._ssl = ssl_context
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._wakeup = asyncio.Event()
        self.dropped = 0
        self.delivered = 0
        self.failed = 0

    # -- the queue ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, key: int, body: Mapping[str, Any]) -> None:
        """Queue ``body`` for delivery; ``key`` is passed to ``on_delivered``.  Never blocks."""
        if len(self._queue) >= self.queue_length:
            old_key, _ = self._queue.popleft()
            self.dropped += 1
            self._count("dropped")
            log.warning(
                "escalation webhook queue full; oldest notification dropped",
                extra={"event": "webhook_dropped", "target": self.target.safe, "key": old_key},
            )
        self._queue.append((key, orjson.dumps(dict(body))))
        self._wakeup.set()

    def _count(self, result: str) -> None:
        if self.results is not None:
            self.results.inc(result=result)

    # -- the worker -----------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver queued notifications, one at a time, until cancelled."""
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            key, body = self._queue.popleft()
            await self._deliver_safely(key, body)

    async def drain_once(self) -> None:
        """Deliver everything queued now, then return (for tests and tools)."""
        while self._queue:
            key, body = self._queue.popleft()
            await self._deliver_safely(key, body)

    async def _deliver_safely(self, key: int, body: bytes) -> None:
        """One notification; nothing it raises stops the worker."""
        try:
            await self._deliver(key, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The exception's text is not logged: it could echo part of the URL.
            self.failed += 1
            self._count("failed")
            log.error("escalation webhook delivery broke",
                      extra={"event": "webhook_failed", "target": self.target.safe, "problem": type(exc).__name__,
                             "key": key})

    async def _deliver(self, key: int, body: bytes) -> bool:
        delay = self.backoff_initial_s
        problem = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                status = await asyncio.wait_for(self.post(body), self.timeout_s)
            except (TimeoutError, asyncio.TimeoutError):
                problem = f"no answer within {self.timeout_s:g} s"
            except (OSError, ssl.SSLError, _BadResponse, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else (
                    exc.strerror or type(exc).__name__)
            else:
                if 200 <= status < 300:
                    self.delivered += 1
                    self._count("delivered")
                    if self.on_delivered is not None:
                        try:
                            await self.on_delivered(key)
                        except Exception:
                            log.exception("recording a delivered notification failed",
                                          extra={"event": "webhook_record_failed", "key": key})
                    return True
                problem = f"HTTP {status}"
                if not (status >= 500 or status in RETRYABLE_STATUSES):
                    break
            if attempt < self.max_attempts:
                log.info(
                    "escalation webhook attempt failed; retrying",
                    extra={"event": "webhook_retry", "target": self.target.safe, "attempt": attempt,
                           "problem": problem, "retry_in_s": delay},
                )
                await self._sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
        self.failed += 1
        self._count("failed")
        log.warning(
            "escalation webhook gave up",
            extra={"event": "webhook_failed", "target": self.target.safe, "problem": problem, "key": key},
        )
        return False

    async def post(self, body: bytes) -> int:
        """One POST of ``body``; returns the final status code (1xx answers are skipped)."""
        t = self.target
        context = None
        if t.scheme == "https":
            context = self._ssl or ssl.create_default_context()
        reader, writer = await asyncio.open_connection(
            t.host, t.port, ssl=context, server_hostname=t.host if context else None,
            limit=MAX_RESPONSE_HEAD_BYTES,
        )
        try:
            head = [
                f"POST {t.target} HTTP/1.1",
                f"Host: {t.host_header}",
                f"User-Agent: hostdiag-collector/{hostdiag.__version__}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                "Connection: close",
            ]
            if t.authorization:
                head.append(f"Authorization: {t.authorization}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
            await writer.drain()
            while True:
                response_head = await reader.readuntil(b"\r\n\r\n")
                status = _status_code(response_head)
                if status >= 200:
                    return status
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


def _status_code(head: bytes) -> int:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise _BadResponse(f"not an HTTP/1.x status line: {line[:80]!r}")
    return int(parts[1])
