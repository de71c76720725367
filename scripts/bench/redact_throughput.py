#!/usr/bin/env python3
"""Throughput of host-side redaction on log blocks, next to a bare line split.

Builds a ~1 MiB block of ~120-byte log lines in memory (nginx access lines, text
and JSON application logs), where 5% of the lines are look-alikes that contain
a rule keyword without a secret (cache keys, token buckets, e-mail addresses,
"password reset" ...), once clean and once with 1% of the lines carrying a
secret, and times:

* ``str.splitlines()`` on the block (the floor: what any line pipeline pays),
* ``Redactor.redact(block)`` on the clean block,
* ``Redactor.redact(block)`` on the 1%-secret block,
* the same with 20% look-alike lines (a pessimistic log),

printing MB/s and lines/s for each and the ratios.  Runs for a few seconds.

    .venv/bin/python scripts/bench/redact_throughput.py [--block-mib 1] [--repeat 15] [--fallback]

``--fallback`` uses the pure-Python ``str.find`` keyword prefilter even when
``ahocorasick_rs`` is installed.
"""

from __future__ import annotations

import argparse
import collections
import random
import statistics
import time
from collections.abc import Callable

from hostdiag.agent.redact import engine
from hostdiag.agent.redact.engine import load_redactor

PATHS = ["/api/v1/orders", "/api/v1/items", "/healthz", "/static/app.4f3a2b9c.js", "/api/v2/users/42/profile",
         "/metrics", "/api/v1/search", "/login", "/api/v1/cart/items/17"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "Go-http-client/1.1", "kube-probe/1.29",
          "python-requests/2.31.0"]
SERVICES = ["order.service", "billing.worker", "cart.api", "search.indexer", "mailer", "scheduler"]


def plain_line(rng: random.Random, i: int) -> str:
    """A line with no redaction keyword at all."""
    ts = f"2024-05-01T12:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    kind = rng.random()
    if kind < 0.35:
        return (f'{ip} - - [01/May/2024:12:00:{i % 60:02d} +0000] "GET {rng.choice(PATHS)}?page={rng.randrange(9)} '
                f'HTTP/1.1" {rng.choice((200, 200, 200, 304, 404, 500))} {rng.randrange(90000)} "-" '
                f'"{rng.choice(AGENTS)}"')
    if kind < 0.65:
        return (f"{ts} INFO  [{rng.choice(SERVICES)}] processed order_id={rng.randrange(10**6)} "
                f"items={rng.randrange(1, 9)} in {rng.randrange(1, 900)}ms worker={rng.randrange(16)}")
    if kind < 0.95:
        return (f'{{"ts":"{ts}","level":"info","svc":"{rng.choice(SERVICES)}","msg":"request done",'
                f'"path":"{rng.choice(PATHS)}","status":200,"dur_ms":{rng.randrange(300)}}}')
    return f"{ts} ERROR [db] query timeout after 5000ms on replica db-{rng.randrange(3)}.internal:5432"


def lookalike_line(rng: random.Random, i: int) -> str:
    """A clean line that does contain a keyword (key, auth, e-mail @, token, password...)."""
    ts = f"2024-05-01T12:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return rng.choice((
        f"{ts} DEBUG [cache] key=user:{rng.randrange(10**5)} miss, loading from db (ttl=300s, size={rng.randrange(4096)}B)",
        f"{ts} INFO  [auth] user bob{rng.randrange(999)}@example.com signed in from {ip} (mfa=totp, session ttl 8h)",
        f"{ts} WARN  [ratelimit] token bucket for client {rng.randrange(999)} empty, refill in {rng.randrange(1000)}ms",
        f"{ts} INFO  [mailer] password reset email sent to user {rng.randrange(10**5)} via smtp relay",
        f'{{"ts":"{ts}","level":"info","msg":"token refreshed","client_id":"web","expires_in":3600}}',
    ))


def secret_line(rng: random.Random, i: int) -> str:
    token = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(36))
    ts = f"2024-05-01T12:00:{i % 60:02d}Z"
    return rng.choice((
        f"{ts} DEBUG [http] > GET /api/v1/me Authorization: Bearer {token}",
        f"{ts} INFO  [db] connecting to postgres://app:{token[:14]}@db-1.internal:5432/orders",
        f'{{"ts":"{ts}","level":"debug","msg":"config","password":"{token[:16]}","user":"svc"}}',
        f"{ts} DEBUG [ci] using token ghp_{token} for clone",
        f"{ts} WARN  [aws] credentials AKIA{token[:16].upper()} from env",
    ))


def build_block(rng: random.Random, target_bytes: int, secret_share: float, lookalike_share: float) -> tuple[str, int]:
    lines: list[str] = []
    size = 0
    i = 0
    while size < target_bytes:
        r = rng.random()
        if r < secret_share:
            line = secret_line(rng, i)
        elif r < secret_share + lookalike_share:
            line = lookalike_line(rng, i)
        else:
            line = plain_line(rng, i)
        lines.append(line)
        size += len(line) + 1
        i += 1
    return "\n".join(lines) + "\n", len(lines)


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    # min is the least disturbed run; on a shared machine the median is printed too
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-mib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--fallback", action="store_true", help="force the str.find keyword prefilter")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lookalikes", type=float, default=0.05,
                        help="share of clean lines that contain a keyword (default 0.05)")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    target = int(args.block_mib * 1024 * 1024)
    clean, clean_lines = build_block(rng, target, 0.0, args.lookalikes)
    dirty, dirty_lines = build_block(rng, target, 0.01, args.lookalikes)
    heavy, heavy_lines = build_block(rng, target, 0.01, 0.20)

    redactor = load_redactor()
    if args.fallback:
        redactor = engine.Redactor(redactor._rules, redactor._placeholders, use_automaton=False)
    counts: collections.Counter[str] = collections.Counter()
    redactor.redact(dirty, counts)  # warm up, and show what the secret block holds

    rows = [
        ("str.splitlines()", clean, clean_lines, lambda: clean.splitlines()),
        ("redact() clean", clean, clean_lines, lambda: redactor.redact(clean)),
        ("redact() 1% secrets", dirty, dirty_lines, lambda: redactor.redact(dirty)),
        ("  same, 20% look-alike", heavy, heavy_lines, lambda: redactor.redact(heavy)),
    ]
    print(f"prefilter: {redactor.prefilter_backend}; rules: {len(redactor.rule_names)}; "
          f"block: {len(clean) / 2**20:.2f} MiB, {clean_lines} lines of {len(clean) / clean_lines:.0f} B avg")
    print(f"hits in the secret block: {sum(counts.values())} ({', '.join(f'{k}={v}' for k, v in counts.most_common())})")
    print(f"{'pass':<22}{'MB/s':>10}{'lines/s':>14}{'median MB/s':>14}{'vs split':>10}")
    base = None
    for label, text, nlines, fn in rows:
        best, median = best_time(fn, args.repeat)
        mbps = len(text.encode()) / best / 1e6
        if base is None:
            base = best
        print(f"{label:<22}{mbps:>10.0f}{nlines / best:>14,.0f}{len(text.encode()) / median / 1e6:>14.0f}"
              f"{best / base:>9.1f}x")


if __name__ == "__main__":
    main()
