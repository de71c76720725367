"""The connected agents: one session per host id, each with a bounded command queue.

A session is created when an agent's ``Connect`` stream says Hello and ends
when the stream ends.  A second Connect for the same host id replaces the
first: the old session is closed (its stream ends with ABORTED) and the new
one takes its place, so commands always go to the newest stream.

Commands wait in a per-session ``asyncio.Queue`` of ``command_queue_length``
entries; when it is full the command is not queued and the request stays
``requested`` (it is delivered again when the agent next connects, until its
TTL).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = ["Command", "AgentSession", "Fleet", "labels_match"]

log = logging.getLogger("hostdiag.collector.fleet")


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every selector label is present in ``labels`` with the same value.

    An empty selector matches nothing here: "all hosts" is never implied.
    """
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class Command:
    """A snapshot command for one agent (becomes a ``SnapshotCommand``)."""

    request_id: str
    incident_id: str
    profile: str
    window_s: float


@dataclass
class AgentSession:
    host_id: str
    labels: Mapping[str, str]
    agent_version: str
    profiles: tuple[str, ...]
    capabilities: tuple[str, ...]
    max_window_s: float
    boot_id: str
    peer: str
    connected_at_ms: int
    queue_length: int = 64
    last_heartbeat_ms: int = 0
    session_id: str = field(default_factory=lambda: secrets.token_hex(8))

    def __post_init__(self) -> None:
        self.queue: asyncio.Queue[Command] = asyncio.Queue(maxsize=self.queue_length)
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.close_code: Any = None
        # Request ids queued or sent on this session (no duplicate delivery).
        self.delivered: set[str] = set()

    def enqueue(self, command: Command) -> bool:
        """Queue ``command``; False when the session is closed, full, or already has it."""
        if self.closed.is_set() or command.request_id in self.delivered:
            return False
        try:
            self.queue.put_nowait(command)
        except asyncio.QueueFull:
            log.warning(
                "command queue full",
                extra={"event": "command_queue_full", "host_id": self.host_id, "request_id": command.request_id},
            )
            return False
        self.delivered.add(command.request_id)
        return True

    def close(self, reason: str, code: Any = None) -> None:
        """End the session; ``code`` is the status its stream ends with (default ABORTED)."""
        if not self.closed.is_set():
            self.close_reason = reason
            self.close_code = code if code is not None else grpc.StatusCode.ABORTED
            self.closed.set()


class Fleet:
    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}

    def register(self, session: AgentSession) -> AgentSession | None:
        """Make ``session`` the host's current one; returns (and closes) the one it replaced."""
        old = self._sessions.get(session.host_id)
        self._sessions[session.host_id] = session
        if old is not None:
            old.close("replaced by a newer connection from the same host")
            log.info(
                "agent session replaced",
                extra={"event": "agent_replaced", "host_id": session.host_id, "old_session": old.session_id},
            )
        return old

    def unregister(self, session: AgentSession) -> bool:
        """Forget ``session`` if it is still the host's current one."""
        if self._sessions.get(session.host_id) is session:
            del self._sessions[session.host_id]
            return True
        return False

    def get(self, host_id: str) -> AgentSession | None:
        return self._sessions.get(host_id)

    def sessions(self) -> list[AgentSession]:
        return [self._sessions[h] for h in sorted(self._sessions)]

    def __len__(self) -> int:
        return len(self._sessions)

    def close_all(self, reason: str, code: Any = None) -> None:
        for session in list(self._sessions.values()):
            session.close(reason, code)
