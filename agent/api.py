"""The agent's local API: newline-delimited JSON over a Unix socket.

``agentctl`` sends one request line and reads response lines until one has
``"event": "done"`` or ``"event": "error"``.  Requests:

* ``{"op": "status"}`` -> one ``done`` line with the agent's status;
* ``{"op": "metrics"}`` -> one ``done`` line whose ``metrics`` is the same
  status in the Prometheus text format (``agent/metrics.py``);
* ``{"op": "collect", "profile": "default", "window_s": 300, "incident_id": null}``
  -> ``source_started`` / ``source_finished`` progress lines, then ``done``
  with the bundle (path, id, size, sha256) or ``error``.

The socket is created with mode 0660 (owner and ``agent.socket_group``).  A
request line is capped at 64 KiB; unknown ops and bad fields get an ``error``
line that names the problem.  Snapshots run one at a time; a bounded number of
callers may wait for their turn, the rest are told the agent is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from hostdiag.agent.metrics import CONTENT_TYPE, render_metrics

__all__ = ["LocalApiServer", "ApiError", "MAX_REQUEST_BYTES", "MAX_WAITING_COLLECTS"]

log = logging.getLogger("hostdiag.agent.api")

MAX_REQUEST_BYTES = 64 * 1024
MAX_WAITING_COLLECTS = 4


class ApiError(Exception):
    """A request the agent refuses; the message goes back to the caller."""


StatusFn = Callable[[], dict[str, Any]]
CollectFn = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], Awaitable[dict[str, Any]]]


class LocalApiServer:
    def __init__(self, path: str, *, status: StatusFn, collect: CollectFn, group: str = "") -> None:
        self.path = path
        self.group = group
        self._status = status
        self._collect = collect
        self._server: asyncio.AbstractServer | None = None
        self._collect_lock = asyncio.Lock()
        self._waiting = 0
        self.requests = 0

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o750, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket from a previous run
        old_umask = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=self.path, limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o660)
        if self.group:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1

        def send(doc: dict[str, Any]) -> None:
            if not writer.is_closing():
                writer.write(orjson.dumps(doc, default=str) + b"\n")

        try:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                send({"event": "error", "message": f"request line longer than {MAX_REQUEST_BYTES} bytes"})
                return
            if not line:
                return
            try:
                request = orjson.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                send({"event": "error", "message": "request is not a JSON object"})
                return
            op = request.get("op")
            if op == "status":
                send({"event": "done", "status": self._status()})
            elif op == "metrics":
                send({"event": "done", "metrics": render_metrics(self._status()), "content_type": CONTENT_TYPE})
            elif op == "collect":
                await self._do_collect(request, send)
            else:
                send({"event": "error", "message": f"unknown op {op!r} (known: status, metrics, collect)"})
            await writer.drain()
        except (ConnectionError, BrokenPipeError):
            pass  # the caller went away; nothing to tell
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()

    async def _do_collect(self, request: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
        if self._collect_lock.locked() and self._waiting >= MAX_WAITING_COLLECTS:
            send({"event": "error", "message": "agent busy: too many snapshots waiting, try again shortly"})
            return
        self._waiting += 1
        try:
            await self._collect_lock.acquire()
        finally:
            self._waiting -= 1
        try:
            result = await self._collect(request, send)
        except ApiError as exc:
            send({"event": "error", "message": str(exc)})
            return
        except Exception as exc:
            log.exception("collect failed", extra={"event": "collect_failed"})
            send({"event": "error", "message": f"{type(exc).__name__}: {exc}", "write_failed": True})
            return
        finally:
            self._collect_lock.release()
        send({"event": "done", "bundle": result})
