"""Snapshot source ``psi``: pressure stall information from ``<proc_root>/pressure``.

Member ``psi.json``::

    {"cpu":    {"some": {"avg10": 1.2, "avg60": 0.8, "avg300": 0.3, "total_us": 123}, "full": {...}},
     "memory": {...}, "io": {...}}

``avgN`` is the percent of the last N seconds in which some (or all) runnable
tasks were stalled on that resource; ``total_us`` the stalled time since boot.

Evidence ``evidence["psi"]``: flat numbers ``<resource>_<some|full>_avg10`` and
``..._avg60`` (e.g. ``memory_full_avg10``).

Skipped when the kernel has no PSI (no ``pressure`` directory, before 4.20) or
has it disabled (``psi=0``: the files exist but cannot be read).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from hostdiag.agent import procfs
from hostdiag.agent.sources.base import SnapshotContext, SourceConfig, SourceSkipped

__all__ = ["PsiSource", "psi_evidence"]


def psi_evidence(pressure: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for resource, kinds in pressure.items():
        for kind, values in kinds.items():
            for avg in ("avg10", "avg60"):
                if avg in values:
                    out[f"{resource}_{kind}_{avg}"] = values[avg]
    return out


def _read(proc_root: str) -> dict[str, dict[str, dict[str, float]]]:
    directory = os.path.join(proc_root, "pressure")
    if not os.path.isdir(directory):
        raise SourceSkipped(f"no pressure stall information ({directory} does not exist; kernel before 4.20?)")
    out = {}
    disabled = False
    for resource in procfs.PSI_RESOURCES:
        try:
            out[resource] = procfs.read_pressure(resource, proc_root)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                disabled = True
                continue
            raise
    if not out:
        if disabled:
            raise SourceSkipped("pressure stall information is disabled in the kernel (boot with psi=1)")
        raise SourceSkipped(f"no pressure files in {directory}")
    return out


class PsiSource:
    name = "psi"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        pass

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        pressure = await ctx.run_blocking(_read, ctx.proc_root)
        await ctx.run_blocking(ctx.members.write_json, "psi.json", pressure)
        ctx.evidence[self.name] = psi_evidence(pressure)
        return {"resources": sorted(pressure)}
