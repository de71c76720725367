#!/usr/bin/env python3
"""Agent steady-state cost: CPU share of one core and RSS, with default settings
while tailing three files that receive 100 lines/s each.

Usage: .venv/bin/python scripts/bench/agent_steady_state.py [--seconds 120] [--rate 100]

Side by side in the same run, a Python process that has only imported the
agent's dependencies gives the RSS floor.  Budget: <= 0.5% of one core and
<= 64 MB RSS over 2 minutes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rate", type=int, default=100, help="lines per second per file")
    parser.add_argument("--warmup", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostdiag-steady-") as tmp:
        work = Path(tmp)
        logs = [work / f"app{i}.log" for i in range(3)]
        for path in logs:
            path.write_text("")
        cfg = work / "agent.toml"
        cfg.write_text(
            f'[agent]\ndata_dir = "{work / "data"}"\nsocket = "{work / "agent.sock"}"\n'
            + "".join(f'[[logs]]\npath = "{p}"\n' for p in logs)
        )
        agent = subprocess.Popen([str(BIN / "hostdiag-agent"), "--config", str(cfg)], stderr=subprocess.DEVNULL)
        floor = subprocess.Popen(
            [sys.executable, "-c", "import psutil, grpc, orjson, zstandard, uvloop, sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
        )
        handles = [open(p, "a", buffering=1) for p in logs]
        try:
            deadline = time.monotonic() + 20
            while not (work / "agent.sock").exists():
                if time.monotonic() > deadline or agent.poll() is not None:
                    print("agent did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            seq = 0
            tick = 1.0 / args.rate

            def write_for(seconds: float) -> None:
                nonlocal seq
                end = time.monotonic() + seconds
                next_at = time.monotonic()
                while time.monotonic() < end:
                    for h in handles:
                        h.write(f"2026-11-26T10:00:00.000Z INFO request id={seq} path=/api/v1/items status=200 "
                                f"duration_ms=12 user=u{seq % 97}\n")
                    seq += 1
                    next_at += tick
                    pause = next_at - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)

            write_for(args.warmup)
            cpu0, wall0 = cpu_seconds(agent.pid), time.monotonic()
            rss_max = 0
            remaining = args.seconds
            while remaining > 0:
                step = min(1.0, remaining)
                write_for(step)
                remaining -= step
                rss_max = max(rss_max, rss_bytes(agent.pid))
            cpu1, wall1 = cpu_seconds(agent.pid), time.monotonic()
            floor_rss = rss_bytes(floor.pid)
        finally:
            for h in handles:
                h.close()
            agent.terminate()
            agent.wait(timeout=10)
            floor.kill()
            floor.wait()
    share = (cpu1 - cpu0) / (wall1 - wall0) * 100
    print(f"window: {wall1 - wall0:.1f} s, 3 files x {args.rate} lines/s ({seq * 3} lines written)")
    print(f"agent CPU: {share:.3f}% of one core (budget 0.5%: {share / 0.5:.2f}x of budget)")
    print(f"agent RSS max: {rss_max / 1e6:.1f} MB (budget 64 MB: {rss_max / 64e6:.2f}x of budget)")
    print(f"import-only Python floor RSS: {floor_rss / 1e6:.1f} MB (agent/floor: {rss_max / floor_rss:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
