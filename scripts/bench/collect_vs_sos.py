#!/usr/bin/env python3
"""Wall-clock time of `agentctl collect` (standalone, default profile) against
`sos report --batch` on the same host, measured side by side in one run.

Usage: .venv/bin/python scripts/bench/collect_vs_sos.py [--runs N] [--sos-runs N]

Needs Debian's `sosreport` package (`apt-get install sosreport`) and root (sos
refuses to run otherwise).  Budget: agentctl at least 20 times faster than sos.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


# An installed hostdiag has its byte code compiled (pip does it at install time).
# Development shells sometimes set PYTHONDONTWRITEBYTECODE, which would make every
# run recompile every module (~0.1 s here): measure the tool as it is installed.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="agentctl runs (median reported)")
    parser.add_argument("--sos-runs", type=int, default=2, help="sos report runs (median reported)")
    args = parser.parse_args()
    sos = shutil.which("sos")
    if sos is None:
        print("sos is not installed: apt-get install sosreport", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hostdiag-bench-") as tmp:
        work = Path(tmp)
        cfg = work / "agent.toml"
        cfg.write_text(f'[agent]\ndata_dir = "{work / "data"}"\nsocket = "{work / "none.sock"}"\n')
        agentctl = [str(BIN / "agentctl"), "collect", "--config", str(cfg), "--output", str(work)]
        timed(agentctl)  # warm the page cache and write the byte-code caches
        ours = [timed(agentctl) for _ in range(args.runs)]
        sos_dir = work / "sos"
        sos_dir.mkdir()
        theirs = [timed([sos, "report", "--batch", "-q", "--tmp-dir", str(sos_dir)]) for _ in range(args.sos_runs)]
    ours_med = statistics.median(ours)
    theirs_med = statistics.median(theirs)
    print(f"agentctl collect (standalone): median {ours_med:.3f} s over {len(ours)} runs "
          f"(min {min(ours):.3f}, max {max(ours):.3f})")
    print(f"sos report --batch:            median {theirs_med:.3f} s over {len(theirs)} runs")
    print(f"ratio sos/agentctl: {theirs_med / ours_med:.1f}x faster (budget: >= 20x; agentctl budget 0.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
