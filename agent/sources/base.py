"""What every snapshot source is, and what a snapshot hands it.

A source is one small module under ``agent/sources/`` with:

* a class attribute ``name`` (the registry key, the manifest key and the
  ``[sources.<name>]`` config table),
* a nested frozen dataclass ``Config`` deriving from :class:`SourceConfig`,
* ``__init__(self, config)`` taking that ``Config``,
* ``async def collect(self, ctx: SnapshotContext) -> dict`` that writes its
  members through ``ctx.members``, adds compact numbers to ``ctx.evidence`` and
  returns a small dict of notes for the manifest (counts, what was skipped).

A source raises to say it failed; the snapshot records the error text and goes
on with the others.  :class:`SourceSkipped` says "not applicable on this host"
(no systemd, no ``/proc/pressure``) and is recorded as ``skipped``.  Blocking
work (psutil, file reads) goes through ``ctx.run_blocking`` so the event loop
never stalls.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

if TYPE_CHECKING:
    from hostdiag.agent.config import AgentConfig
    from hostdiag.agent.probe import SystemProbe
    from hostdiag.agent.redact import Redactor

__all__ = [
    "SourceConfig",
    "SourceSkipped",
    "Source",
    "MemberWriter",
    "MemberSink",
    "RecorderView",
    "SnapshotContext",
]

R = TypeVar("R")


@dataclass(frozen=True)
class SourceConfig:
    """Keys every ``[sources.<name>]`` table has."""

    enabled: bool = field(default=True, metadata={"doc": "collect this source in snapshots"})
    timeout_s: float = field(
        default=5.0, metadata={"min": 0.1, "max": 600, "doc": "give up on the source after this long"}
    )


class SourceSkipped(Exception):
    """The source does not apply on this host; the reason goes to the manifest."""


class MemberWriter(Protocol):
    """One bundle member being written.  Blocking; call it from ``run_blocking``."""

    def write(self, data: bytes) -> bool:
        """Append bytes; returns False once the member cap cut the data (truncated)."""

    def close(self) -> None: ...


class MemberSink(Protocol):
    """Where a source puts its bundle members (e.g. ``processes.json``)."""

    def open(self, name: str) -> MemberWriter: ...

    def write_json(self, name: str, obj: Any) -> None: ...

    def write_ndjson(self, name: str, rows: Iterable[Any]) -> None: ...


class RecorderView(Protocol):
    """Read-only view of the flight recorder for snapshot sources."""

    def metrics_since(self, since: float) -> list[dict[str, Any]]: ...

    def top_since(self, since: float) -> list[dict[str, Any]]: ...

    def log_rings(self) -> Mapping[str, Any]: ...

    def probes_since(self, since: float) -> list[dict[str, Any]]: ...


@dataclass
class SnapshotContext:
    """Everything a source may use during one snapshot."""

    config: AgentConfig
    host_id: str
    labels: Mapping[str, str]
    now: float  # wall-clock time the snapshot started (seconds since the epoch)
    window_s: float  # how far back recorder-based sources look
    proc_root: str
    probe: SystemProbe
    redactor: Redactor
    members: MemberSink
    recorder: RecorderView | None = None  # None when agentctl collects standalone
    evidence: dict[str, Any] = field(default_factory=dict)
    redaction_counts: collections.Counter[str] = field(default_factory=collections.Counter)
    executor: Any = None  # concurrent.futures.Executor; None means asyncio's default

    async def run_blocking(self, fn: Callable[..., R], *args: Any) -> R:
        """Run blocking work (psutil, file reads) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)


class Source(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type[SourceConfig]]

    def __init__(self, config: Any) -> None: ...

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]: ...
