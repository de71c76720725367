#!/usr/bin/env python3
"""The agent's resident memory across snapshots in a row: does it keep the peak of
its largest snapshot? Starts hostdiag-agent tailing one 2 MiB incompressible log
(4 MiB ring), runs `agentctl collect` N times and prints the agent's RSS after each.

Usage: .venv/bin/python scripts/bench/snapshot_rss.py [--collects 12]
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collects", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostdiag-rss-") as tmp:
        work = Path(tmp)
        log = work / "big.log"
        with open(log, "w") as fh:
            for _ in range(2 * 1024 * 1024 // 120):
                fh.write("INFO blob " + base64.b64encode(os.urandom(81)).decode() + "\n")
        cfg = work / "agent.toml"
        cfg.write_text(
            f'[agent]\ndata_dir = "{work / "data"}"\nsocket = "{work / "agent.sock"}"\n'
            f'[recorder]\nlog_ring_bytes = "4 MiB"\n[[logs]]\npath = "{log}"\n'
        )
        agent = subprocess.Popen([str(BIN / "hostdiag-agent"), "--config", str(cfg)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not (work / "agent.sock").exists():
                if time.monotonic() > deadline or agent.poll() is not None:
                    print("agent did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            time.sleep(2)  # let the first tail pass fill the ring
            sizes = [rss_mb(agent.pid)]
            for _ in range(args.collects):
                subprocess.run([str(BIN / "agentctl"), "collect", "--config", str(cfg), "--json"],
                               check=True, stdout=subprocess.DEVNULL)
                sizes.append(rss_mb(agent.pid))
        finally:
            agent.terminate()
            agent.wait(timeout=10)
    print("agent RSS (MB) before and after each collect:", " ".join(f"{s:.0f}" for s in sizes))
    print(f"first collect -> last: {sizes[1]:.0f} -> {sizes[-1]:.0f} MB; growth over the last half: "
          f"{sizes[-1] - sizes[len(sizes) // 2]:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
