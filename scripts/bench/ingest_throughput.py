#!/usr/bin/env python3
"""Ingest throughput of one collector on loopback, next to a bare gRPC floor.

Usage:
    .venv/bin/python scripts/bench/ingest_throughput.py [--concurrency 8] [--bundle-mib 32]
        [--chunk-kib 256] [--rounds 5]

Two servers run as subprocesses, each on 127.0.0.1 with its own uvloop event
loop, so the client (this process) shares neither's interpreter:

- ``hostdiag-collector`` with a temporary data directory: every chunk goes
  through ``AgentService.Upload`` as an agent sends it (``write_offset``, the
  last message with ``finish_write``, the total size and the sha256), and the
  collector stages, hashes, verifies, reads the manifest and stores the bundle;
- a bare ``grpc.aio`` server (this script with ``--serve-bare``) whose
  ``Upload`` only counts the bytes, with the collector's own gRPC server
  options: the floor any gRPC ingest on this machine can reach.

Each round uploads ``--concurrency`` real bundles of ``--bundle-mib`` MiB at
once, in ``--chunk-kib`` chunks read from disk one at a time, with the same
client code against both servers; rounds alternate between the servers (and
which goes first), and every collector round uses new bundles so nothing is
deduplicated.  Throughput is bundle bytes / wall time of the round, in MB/s
(10^6 bytes per second).  Target: collector >= 0.5 x the bare floor.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop  # noqa: E402
from grpc import aio  # noqa: E402

from swarm import Bundle, CollectorProcess, build_bundles, cpu_seconds, memory_mb, upload_chunks  # noqa: E402

from hostdiag.v1 import agent_pb2 as apb  # noqa: E402
from hostdiag.v1 import agent_pb2_grpc  # noqa: E402

KiB = 1024
MiB = 1024 * 1024
TARGET_RATIO = 0.5


# -- the bare server ----------------------------------------------------------------------------
def serve_bare(ready_file: str) -> int:
    """A gRPC server whose Upload counts bytes and answers complete; runs until SIGTERM."""
    import uvloop

    from hostdiag.collector.config import CollectorConfig
    from hostdiag.collector.server import grpc_server_options

    class CountingUpload(agent_pb2_grpc.AgentServiceServicer):
        def __init__(self) -> None:
            self.bytes_total = 0

        async def Upload(self, request_iterator: Any, context: Any) -> apb.UploadResponse:  # noqa: N802
            received = 0
            bundle_id = ""
            async for message in request_iterator:
                bundle_id = bundle_id or message.bundle_id
                received += len(message.data)
            self.bytes_total += received
            return apb.UploadResponse(bundle_id=bundle_id, committed_size_bytes=received, complete=True)

        async def QueryUpload(self, request: Any, context: Any) -> apb.QueryUploadResponse:  # noqa: N802
            return apb.QueryUploadResponse(bundle_id=request.bundle_id)

    async def run() -> None:
        server = aio.server(options=grpc_server_options(CollectorConfig()))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(CountingUpload(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tmp = ready_file + ".tmp"
        Path(tmp).write_text(json.dumps({"grpc": f"127.0.0.1:{port}", "pid": os.getpid()}))
        os.replace(tmp, ready_file)
        await stop.wait()
        await server.stop(1)

    uvloop.run(run())
    return 0


class BareProcess:
    def __init__(self, work: Path) -> None:
        self.ready = work / "bare-ready.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.grpc_address = ""

    def start(self, timeout_s: float = 30.0) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(self.ready)],
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare gRPC server did not start")
            time.sleep(0.05)
        doc = json.loads(self.ready.read_text())
        self.pid, self.grpc_address = int(doc["pid"]), doc["grpc"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- what storing costs on this machine -------------------------------------------------------
def storing_costs(work: Path, total_bytes: int = 256 * MiB, chunk_bytes: int = 256 * KiB) -> tuple[float, float]:
    """CPU seconds per 100 MB (this thread) to sha256, and to write + fsync every 16 MiB, new data.

    The collector does both for every bundle byte; the bare floor does neither.
    """
    block = os.urandom(chunk_bytes)
    r0 = resource.getrusage(resource.RUSAGE_THREAD)
    digest = hashlib.sha256()
    for _ in range(total_bytes // chunk_bytes):
        digest.update(block)
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    path = work / "storing-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = 0
        while written < total_bytes:
            written += os.pwrite(fd, block, written)
            if written % (16 * MiB) == 0:
                os.fsync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)
    r2 = resource.getrusage(resource.RUSAGE_THREAD)

    def cpu(a: Any, b: Any) -> float:
        return (b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime)

    per_100mb = 100e6 / total_bytes
    return cpu(r0, r1) * per_100mb, cpu(r1, r2) * per_100mb


# -- the client ---------------------------------------------------------------------------------
async def upload_round(address: str, bundles: list[Bundle], chunk_bytes: int, timeout_s: float) -> float:
    """Upload ``bundles`` at once (one channel, one stream each); the wall time in seconds."""
    async with aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        await channel.channel_ready()

        async def one(bundle: Bundle) -> None:
            response = await stub.Upload(upload_chunks(bundle, 0, chunk_bytes), timeout=timeout_s)
            if not (response.complete and response.committed_size_bytes == bundle.size_bytes):
                raise RuntimeError(f"upload of {bundle.bundle_id} not confirmed: {response}")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bundles))
        return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8, help="uploads at once")
    parser.add_argument("--bundle-mib", type=int, default=32, help="size of each bundle")
    parser.add_argument("--chunk-kib", type=int, default=256, help="Upload chunk size")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per server")
    parser.add_argument("--timeout", type=float, default=300.0, help="one round's deadline")
    parser.add_argument("--serve-bare", metavar="READY_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        return serve_bare(args.serve_bare)
    if not 1 <= args.concurrency <= 64 or not 1 <= args.bundle_mib <= 256 or not 1 <= args.rounds <= 20:
        parser.error("need 1 <= --concurrency <= 64, 1 <= --bundle-mib <= 256, 1 <= --rounds <= 20")
    if not 4 <= args.chunk_kib <= 1024:
        parser.error("need 4 <= --chunk-kib <= 1024")
    work = Path(tempfile.mkdtemp(prefix="hostdiag-ingest-"))
    collector = CollectorProcess(work, {"max_concurrent_uploads": max(16, args.concurrency)})
    bare = BareProcess(work)
    try:
        t = time.perf_counter()
        hosts = [f"ingest-{i:03d}" for i in range(args.concurrency * args.rounds)]
        bundles = build_bundles(str(work / "bundles"), hosts, args.bundle_mib * MiB, workers=2)
        round_bytes = [sum(b.size_bytes for b in bundles[r * args.concurrency:(r + 1) * args.concurrency])
                       for r in range(args.rounds)]
        print(f"built {len(bundles)} bundles of {bundles[0].size_bytes / MiB:.1f} MiB in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        sha_cpu, write_cpu = storing_costs(work)
        collector.start()
        bare.start()
        servers = {"collector": (collector.grpc_address, collector.pid), "bare": (bare.grpc_address, bare.pid)}
        rates: dict[str, list[float]] = {"collector": [], "bare": []}
        cpu: dict[str, float] = {"collector": 0.0, "bare": 0.0}
        load0 = os.getloadavg()
        for r in range(args.rounds):
            batch = bundles[r * args.concurrency:(r + 1) * args.concurrency]
            order = ["bare", "collector"] if r % 2 == 0 else ["collector", "bare"]
            for name in order:
                address, pid = servers[name]
                cpu0 = cpu_seconds(pid)
                wall = uvloop.run(upload_round(address, batch, args.chunk_kib * KiB, args.timeout))
                cpu[name] += cpu_seconds(pid) - cpu0
                rates[name].append(round_bytes[r] / wall / 1e6)
                print(f"  round {r + 1} {name:9s} {round_bytes[r] / 1e6:7.1f} MB in {wall:6.2f} s = "
                      f"{rates[name][-1]:7.1f} MB/s", file=sys.stderr, flush=True)
        load1 = os.getloadavg()
        hwm = memory_mb(collector.pid)[0]
        total = sum(round_bytes) / 1e6
        c_med, b_med = statistics.median(rates["collector"]), statistics.median(rates["bare"])
        ratio = c_med / b_med
        print()
        print(f"machine                {os.cpu_count()} cores; load average before/after {load0[0]:.2f} / {load1[0]:.2f}")
        print(f"workload               {args.rounds} rounds x {args.concurrency} concurrent uploads of "
              f"{bundles[0].size_bytes / MiB:.1f} MiB bundles, {args.chunk_kib} KiB chunks, loopback")
        print(f"bare gRPC floor        median {b_med:7.1f} MB/s  (rounds: "
              + ", ".join(f"{v:.0f}" for v in rates["bare"]) + f"); server CPU {cpu['bare'] / total * 100:.2f} s/100 MB")
        print(f"collector              median {c_med:7.1f} MB/s  (rounds: "
              + ", ".join(f"{v:.0f}" for v in rates["collector"])
              + f"); server CPU {cpu['collector'] / total * 100:.2f} s/100 MB; peak RSS {hwm:.0f} MB")
        print(f"storing on this machine sha256 {sha_cpu:.2f} s/100 MB, write + fsync {write_cpu:.2f} s/100 MB of CPU "
              "(one thread; the collector pays both, the bare floor neither)")
        print(f"ratio collector/bare   {ratio:.2f}  (target >= {TARGET_RATIO}) -> "
              + ("met" if ratio >= TARGET_RATIO else f"MISSED by {(TARGET_RATIO - ratio) / TARGET_RATIO * 100:.0f}%"))
        return 0
    finally:
        bare.stop()
        status = collector.stop()
        if status not in (0, None):
            print(f"collector exited with status {status}; log: {collector.log_path}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
