#!/usr/bin/env python3
"""How fast does the log tailer read a busy log, next to a bare Python read loop?

Generates (in a temporary directory) a log of realistic lines — ISO timestamps,
levels, logger names, key=value pairs, and about 1% lines that hold a secret
(passwords, bearer tokens, API keys, connection strings) — then measures, in
the same run:

  (a) a bare ``for line in f: pass`` over the file (text mode, UTF-8);
  (b) a TailManager tailing the file with the default redaction rules
      (``load_redactor()``), calling ``poll_once()`` until it has read it all.

The file is moved into the watched path after the manager's first pass, so the
manager sees a new file and reads it from the start (a file already present at
startup would only be read from its last ``log_ring_bytes``).

Usage:  .venv/bin/python scripts/bench/tail_throughput.py [--lines N] [--no-redact]
Budget: (b) >= 500,000 lines/s on one core.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import time

from hostdiag.agent.config import LogSection
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.tail import TailManager

LOGGERS = ["api.handler", "db.pool", "auth.session", "ws.gateway", "billing.worker", "cache.client", "scheduler"]
PATHS = ["/api/v1/items", "/api/v1/orders", "/api/v1/users/me", "/healthz", "/api/v2/search", "/ws/events"]
LEVELS = ["INFO"] * 80 + ["DEBUG"] * 9 + ["WARN"] * 6 + ["ERROR"] * 4 + ["FATAL"]
SECRETS = [
    "login attempt user=alice password=Hunter2-{n:06d} from=10.0.{a}.{b}",
    "outbound call Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{n:06d}In0.c2lnbmF0dXJlX{a}{b}",
    "connecting to postgresql://app:S3cr3t{n}@db-{a}.internal:5432/orders",
    "config reload api_key=sk_live_{n:08d}abcdef{a}{b}0123456789 region=eu-west-1",
    "aws client init AKIAIOSFODNN7{n:07d} secret=wJalrXUtnFEMI/K7MDENG/bPxRfiCY{a}{b}",
]


def generate(path: str, n_lines: int, seed: int = 7) -> int:
    """Write ``n_lines`` lines to ``path``; returns the size in bytes.

    Message bodies come from a pool of a few thousand, drawn at random per line,
    so that generating a million lines takes a second or two.
    """
    rnd = random.Random(seed)
    bodies: dict[str, list[str]] = {"ok": [], "bad": [], "secret": []}
    for i in range(4000):
        bodies["ok"].append(
            f"request done method=GET path={rnd.choice(PATHS)}/{rnd.randrange(100000)} status=200 "
            f"dur_ms={rnd.randrange(1, 900)} bytes={rnd.randrange(100, 90000)}")
        bodies["bad"].append(
            f"request failed method=POST path={rnd.choice(PATHS)} status=503 "
            f"err=\"upstream timeout after {rnd.randrange(100, 5000)}ms\" attempt={rnd.randrange(1, 4)}")
        bodies["secret"].append(
            rnd.choice(SECRETS).format(n=i, a=rnd.randrange(256), b=rnd.randrange(256)))
    base = 1714564800
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n_lines, 50000):
            n = min(50000, n_lines - start)
            levels = rnd.choices(LEVELS, k=n)
            loggers = rnd.choices(LOGGERS, k=n)
            picks = rnd.choices(range(4000), k=n)
            secret = [rnd.random() < 0.01 for _ in range(n)]
            out = []
            second = -1
            stamp = ""
            for j in range(n):
                i = start + j
                level = levels[j]
                kind = "secret" if secret[j] else ("bad" if level in ("ERROR", "FATAL") else "ok")
                if i // 1400 != second:  # about 1400 lines a second
                    second = i // 1400
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + second))
                out.append(f"{stamp}.{i % 1000:03d}Z {level:<5} [{loggers[j]}] req={i * 2654435761 % 16**12:012x} "
                           f"{bodies[kind][picks[j]]}\n")
            chunk = "".join(out)
            size += len(chunk.encode())
            f.write(chunk)
    return size


class _PassThrough:
    def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
        return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--no-redact", action="store_true", help="measure the tailer alone, without redaction")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="hostdiag-bench-") as tmp:
        staged = os.path.join(tmp, "staged.log")
        watched = os.path.join(tmp, "app.log")
        t0 = time.perf_counter()
        size = generate(staged, args.lines)
        print(f"generated {args.lines:,} lines, {size / 1e6:.1f} MB ({size / args.lines:.0f} bytes/line) "
              f"in {time.perf_counter() - t0:.1f} s")

        # (a) bare read loop (twice; the second run is the one measured, with a warm page cache)
        for _ in range(2):
            t0 = time.perf_counter()
            with open(staged, encoding="utf-8") as f:
                for _line in f:
                    pass
            bare_s = time.perf_counter() - t0
        bare_rate = args.lines / bare_s

        # (b) the tailer
        redactor = _PassThrough() if args.no_redact else load_redactor()
        manager = TailManager(
            [LogSection(path=watched, name="app")],
            checkpoint_path=os.path.join(tmp, "checkpoint.json"),
            redactor=redactor,
            ring_bytes=1024 * 1024,
            max_line_bytes=16384,
            poll_interval_s=0.25,
            window_s=900.0,
        )
        manager.poll_once()  # the file does not exist yet
        os.rename(staged, watched)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        passes = 0
        while True:
            manager.poll_once()
            passes += 1
            row = manager.status()[0]
            if row["lag_bytes"] == 0 and row["offset"] == size:
                break
        tail_s = time.perf_counter() - t0
        tail_cpu = time.process_time() - cpu0
        lines = row["lines"]
        tail_rate = lines / tail_s

        ring = manager.rings()["app"]
        redactor_name = "pass-through (--no-redact)" if args.no_redact else type(redactor).__module__
        print(f"(a) bare `for line in f: pass`: {bare_rate:>12,.0f} lines/s  ({bare_s:.2f} s)")
        print(f"(b) TailManager.poll_once():    {tail_rate:>12,.0f} lines/s  ({tail_s:.2f} s wall, "
              f"{tail_cpu:.2f} s CPU, {passes} passes, {lines:,} lines)")
        print(f"    per CPU second: {lines / tail_cpu:,.0f} lines/s (the machine may be shared; CPU time is steadier)")
        print(f"    ratio (a)/(b): {bare_rate / tail_rate:.1f}x   budget 500,000 lines/s: "
              f"{'met' if tail_rate >= 500_000 else 'NOT met'}")
        print(f"    redactor: {redactor_name}; hits: {dict(manager.redaction_counts) or 'none'}")
        print(f"    ring: {ring.bytes_used:,} of {ring.capacity_bytes:,} bytes; "
              f"errors/warnings counted: {sum(r['error'] for r in ring.level_counts(0))}/"
              f"{sum(r['warning'] for r in ring.level_counts(0))}")
        if lines != args.lines:
            print(f"ERROR: read {lines} lines, expected {args.lines}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
