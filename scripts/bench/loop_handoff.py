#!/usr/bin/env python3
"""What it costs an idle agent to wake up: an event loop handing periodic jobs to a
thread pool, against one thread that sleeps between the same jobs (the design the
recorder uses, agent/recorder/scheduler.py). The jobs themselves do nothing, so the
figures are pure wake-up overhead.

Usage: .venv/bin/python scripts/bench/loop_handoff.py [--seconds 20]

Each variant runs in its own process, one after the other, and reports its CPU
share of one core over the same wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

PERIODS_S = (0.25, 1.0, 10.0, 0.5)  # tail poll, metrics, top processes, loop watcher (the old cadences)

CHILD = r"""
import asyncio, concurrent.futures, sys, threading, time
import uvloop
mode, seconds = sys.argv[1], float(sys.argv[2])
periods = %r
def noop():
    return None
async def handoff():
    pool = concurrent.futures.ThreadPoolExecutor(4)
    loop = asyncio.get_running_loop()
    async def every(p):
        while True:
            await loop.run_in_executor(pool, noop)
            await asyncio.sleep(p)
    for p in periods:
        asyncio.create_task(every(p))
    await asyncio.sleep(seconds)
async def one_thread():
    stop = threading.Event()
    def run():
        due = [time.monotonic()] * len(periods)
        while not stop.is_set():
            now = time.monotonic()
            for i, p in enumerate(periods):
                if due[i] <= now + 0.05:
                    noop()
                    due[i] += p
            stop.wait(max(0.0, min(due) - time.monotonic()))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    async def watcher():
        while True:
            await asyncio.sleep(1.0)
    asyncio.create_task(watcher())
    await asyncio.sleep(seconds)
    stop.set()
cpu0 = time.process_time()
uvloop.run(handoff() if mode == "handoff" else one_thread())
print((time.process_time() - cpu0) / seconds * 100)
""" % (PERIODS_S,)


def share(mode: str, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(seconds)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    handoff = share("handoff", args.seconds)
    thread = share("thread", args.seconds)
    print(f"loop + thread-pool hand-off per job ({len(PERIODS_S)} cadences): {handoff:.3f}% of one core")
    print(f"one scheduler thread, same jobs, plus a 1 Hz loop timer:      {thread:.3f}% of one core")
    print(f"ratio: {handoff / thread:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
