"""Snapshot source `sockets`: listening sockets with owning process and TCP state counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hostdiag.agent.sources.base import SnapshotContext, SourceConfig, SourceSkipped

__all__ = ["SocketsSource"]


class SocketsSource:
    name = "sockets"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        pass

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        raise SourceSkipped("not implemented yet")
