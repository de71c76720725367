#!/usr/bin/env python3
"""Cost per process of the top-processes sample and of the processes source.

Spawns N idle processes (``sleep``; default 1000, at most 4000), then times:

* ``TopSampler.sample`` (the recorder's 0.1 Hz top-N sample) through
  ``SystemProbe`` -- reads ``/proc/<pid>/stat`` directly;
* the same sample computed through psutil (``process_iter`` with the same
  numbers), to show why the sampler reads /proc itself;
* the ``processes`` snapshot source (full table with environments, redacted;
  ``cpu_sample_s = 0`` so only the blocking work is timed).

Prints microseconds per process and the ratio to the 50 us/process budget of
``TopSampler.sample``.  The spawned processes are killed in a ``finally``
block, whatever happens.

Usage: .venv/bin/python scripts/bench/proc_snapshot.py [--processes 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import heapq
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil

from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import SystemProbe
from hostdiag.agent.recorder.sampler import TopSampler
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext
from hostdiag.agent.sources.processes import ProcessesSource

BUDGET_US = 50.0
MAX_SPAWN = 4000


class NullSink:
    def open(self, name: str) -> Any:
        raise NotImplementedError

    def write_json(self, name: str, obj: Any) -> None:
        pass

    def write_ndjson(self, name: str, rows: Any) -> None:
        pass


def psutil_top(prev: dict[int, float], n: int) -> dict[str, Any]:
    """The top sample computed the obvious way, through psutil (for comparison only)."""
    rows = []
    current = {}
    for p in psutil.process_iter(["pid", "name", "cpu_times", "memory_info", "num_threads"]):
        info = p.info
        cpu = info["cpu_times"]
        total = (cpu.user + cpu.system) if cpu else 0.0
        current[info["pid"]] = total
        rss = info["memory_info"].rss if info["memory_info"] else 0
        rows.append((total - prev.get(info["pid"], total), rss, info))
    prev.clear()
    prev.update(current)
    return {
        "top_cpu": heapq.nlargest(n, rows, key=lambda r: r[0]),
        "top_rss": heapq.nlargest(n, rows, key=lambda r: r[1]),
    }


def timed(fn: Any, rounds: int) -> float:
    fn()  # warm-up: the first call fills caches (psutil's Process table, the sampler's ticks)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=1000, help=f"idle processes to spawn (max {MAX_SPAWN})")
    ap.add_argument("--rounds", type=int, default=5, help="timed runs of each measurement (median reported)")
    ap.add_argument("--top-n", type=int, default=15)
    args = ap.parse_args()
    count = max(0, min(args.processes, MAX_SPAWN))

    children: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            children.append(subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL))
        probe = SystemProbe()
        nproc = len(probe.process_stats())
        print(f"processes on this host during the run: {nproc} ({len(children)} spawned)")

        top = TopSampler(probe)
        t_top = timed(lambda: top.sample(args.top_n), args.rounds)
        prev: dict[int, float] = {}
        t_psutil = timed(lambda: psutil_top(prev, args.top_n), args.rounds)

        source = ProcessesSource(ProcessesSource.Config(cpu_sample_s=0.0, include_environ=True))
        redactor = load_redactor()

        def collect() -> None:
            ctx = SnapshotContext(
                config=AgentConfig(), host_id="bench", labels={}, now=time.time(), window_s=900.0,
                proc_root="/proc", probe=probe, redactor=redactor, members=NullSink(),
                redaction_counts=collections.Counter(),
            )
            asyncio.run(source.collect(ctx))

        t_source = timed(collect, max(1, args.rounds // 2))

        def report(label: str, seconds: float, budget: bool) -> None:
            per_us = seconds / nproc * 1e6
            line = f"{label:<44} {seconds * 1e3:8.1f} ms total  {per_us:7.1f} us/process"
            if budget:
                line += f"  ({per_us / BUDGET_US:.2f} x the {BUDGET_US:.0f} us budget)"
            print(line)

        report("TopSampler.sample (SystemProbe, /proc/stat)", t_top, True)
        report("same sample through psutil.process_iter", t_psutil, True)
        report("processes source (table + environ, redacted)", t_source, False)
        return 0 if t_top / nproc * 1e6 <= BUDGET_US else 1
    finally:
        for c in children:
            c.kill()
        for c in children:
            c.wait()


if __name__ == "__main__":
    sys.exit(main())
