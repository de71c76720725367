"""One background thread for the flight recorder's periodic blocking work.

System metrics, top processes and the log tail pass are short blocking jobs
(psutil, /proc, file reads) on fixed cadences.  Handing each one to a thread
pool from the event loop costs a thread wake-up and a loop wake-up per job,
which on a small VM is most of an idle agent's CPU.  So they run here instead,
in one thread that sleeps until the next job is due and runs every job that is
due within ``coalesce_s`` of it in the same wake-up.  The event loop stays free
for the local API, the uploader and the probes.

A late job skips its missed ticks rather than bursting; a job that returns
True ("more work is waiting", e.g. a tail pass that hit its per-pass budget) is
run again at once.  A job that raises is counted and logged, never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Scheduler"]

log = logging.getLogger("hostdiag.agent.scheduler")


@dataclass
class _Job:
    name: str
    period_s: float
    fn: Callable[[], Any]
    next_at: float = 0.0
    runs: int = 0
    errors: int = 0
    skipped: int = 0
    max_run_s: float = 0.0
    last_error: str | None = field(default=None)


class Scheduler:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, coalesce_s: float = 0.05) -> None:
        self._clock = clock
        self._coalesce_s = coalesce_s
        self._jobs: list[_Job] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, period_s: float, fn: Callable[[], Any], name: str) -> None:
        if period_s <= 0:
            raise ValueError(f"period of {name} must be positive, got {period_s}")
        self._jobs.append(_Job(name, period_s, fn))

    def run_due(self) -> float:
        """Run the jobs that are due now; returns how long until the next one."""
        now = self._clock()
        for job in self._jobs:
            if job.next_at > now + self._coalesce_s:
                continue
            started = self._clock()
            more = False
            try:
                more = job.fn() is True
            except Exception as exc:  # one job's bug must not stop the recorder
                job.errors += 1
                job.last_error = f"{type(exc).__name__}: {exc}"
                if job.errors <= 5 or job.errors % 100 == 0:
                    log.warning("recorder job failed", extra={"event": "job_failed", "job": job.name,
                                                               "error": job.last_error})
            finished = self._clock()
            job.runs += 1
            job.max_run_s = max(job.max_run_s, finished - started)
            if more:
                job.next_at = finished
                continue
            job.next_at += job.period_s
            if job.next_at <= finished:  # late: skip the missed ticks instead of bursting
                missed = int((finished - job.next_at) // job.period_s) + 1
                job.skipped += missed
                job.next_at += missed * job.period_s
        if not self._jobs:
            return 1.0
        return max(0.0, min(job.next_at for job in self._jobs) - self._clock())

    def _loop(self) -> None:
        start = self._clock()
        for job in self._jobs:
            job.next_at = start
        while not self._stop.is_set():
            wait = self.run_due()
            if wait > 0:
                self._stop.wait(wait)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hostdiag-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop after the job in progress; False if it did not finish within ``timeout_s``."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        return {
            job.name: {
                "period_s": job.period_s,
                "runs": job.runs,
                "errors": job.errors,
                "skipped_ticks": job.skipped,
                "max_run_ms": round(job.max_run_s * 1000, 2),
                "last_error": job.last_error,
            }
            for job in self._jobs
        }
