"""Snapshot source `processes`: full process table with redacted command lines and environments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hostdiag.agent.sources.base import SnapshotContext, SourceConfig, SourceSkipped

__all__ = ["ProcessesSource"]


class ProcessesSource:
    name = "processes"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        pass

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        raise SourceSkipped("not implemented yet")
