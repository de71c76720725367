#!/usr/bin/env python3
"""Swarm: N simulated agents against one collector, one incident for all of them.

Usage:
    .venv/bin/python scripts/bench/swarm.py [--agents 1000] [--bundle-kib 256]
        [--max-concurrent-uploads 0] [--agents-per-channel 50] [--collector HOST:PORT]

Without ``--collector`` the script starts ``hostdiag-collector`` as a subprocess
(127.0.0.1, port 0, a temporary data directory, addresses read from
``--ready-file``), so the collector's CPU time and RSS come from
``/proc/<pid>``.  With ``--collector`` it uses a running one and cannot
measure its CPU or memory (unless ``--collector-pid`` is given).

Every simulated agent is one real ``AgentService.Connect`` stream that behaves
like ``hostdiag.agent.uploader``: Hello (host id ``swarm-0001``..., labels
``{swarm: "1"}``, profile ``default``), heartbeats at the Welcome's interval,
and for a SnapshotCommand: SnapshotAck, SnapshotProgress ``collecting`` /
``packed`` / ``uploading``, ``QueryUpload``, a client-streaming ``Upload`` of
a real bundle in 256 KiB chunks (``write_offset``, the last one with
``finish_write``, the total size and the sha256), then SnapshotResult.
Retryable refusals (``RESOURCE_EXHAUSTED`` when the collector serves its
``max_concurrent_uploads`` already, ``UNAVAILABLE`` ...) are retried with the
agent's own jittered backoff (:class:`hostdiag.agent.uploader.Backoff`, 1 s
doubling to 60 s).

Each agent's bundle (its own bundle id and host id, which the collector
checks) is built with ``BundleWriter`` before anything is timed: one member of
random bytes sized so the ``.tar.zst`` is about ``--bundle-kib`` KiB.

Streams share a few gRPC channels (``--agents-per-channel``, each channel its
own HTTP/2 connection).  The clock starts right before ``OpenIncident`` (a
selector of ``swarm=1``) and stops when the last agent's ``Upload`` answered
``complete`` -- by then the collector has committed the bundle row and marked
the host's request attached in the same transaction, so this is an upper
bound of the attach time; ``GetIncident`` then confirms how many requests are
``attached``.

Targets: all 1,000 attached within 10 s of the incident opening; collector
RSS under 400 MB.  The simulated agents share the machine with the collector:
the script prints both processes' CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

import hostdiag
from hostdiag.agent.bundle.writer import BundleWriter
from hostdiag.agent.uploader import KEEPALIVE_OPTIONS, RETRYABLE_CODES, Backoff
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc, bundle_pb2, bundle_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from hostdiag.v1 import incident_pb2, incident_pb2_grpc

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
KiB = 1024
MiB = 1024 * 1024
CHUNK_BYTES = 256 * KiB
TARGET_ATTACH_S = 10.0
TARGET_RSS_MB = 400.0


# -- the collector process ---------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MB (10^6 bytes)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024 / 1e6
    return values["VmHWM"], values["VmRSS"]


class CollectorProcess:
    """``hostdiag-collector`` as a subprocess on 127.0.0.1 with a temporary data directory."""

    def __init__(self, work: Path, settings: dict[str, Any]) -> None:
        self.work = work
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.grpc_address = ""
        self.log_path = work / "collector.log"

    def start(self, timeout_s: float = 30.0) -> None:
        lines = ["[collector]", 'listen = "127.0.0.1:0"', 'http_listen = "127.0.0.1:0"', 'auth = "none"',
                 f'data_dir = "{self.work / "data"}"']
        for key, value in self.settings.items():
            lines.append(f"{key} = {json.dumps(value)}")
        config = self.work / "collector.toml"
        config.write_text("\n".join(lines) + "\n")
        ready = self.work / "ready.json"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "hostdiag-collector"), "--config", str(config), "--ready-file", str(ready)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hostdiag-collector did not start; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-2000:])
            time.sleep(0.05)
        doc = json.loads(ready.read_text())
        self.pid = int(doc["pid"])
        self.grpc_address = doc["grpc"]

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# -- bundles ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    host_id: str
    bundle_id: str
    path: str
    size_bytes: int
    sha256: str


def build_bundle(out_dir: str, host_id: str, filler_bytes: int) -> Bundle:
    """One real bundle of ``host_id`` with one incompressible member of ``filler_bytes``."""
    writer = BundleWriter(out_dir, host_id=host_id, max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        with writer.open("bench/filler.bin") as member:
            member.write(os.urandom(filler_bytes))
        info = writer.finish({"trigger": "collector", "profile": "default", "labels": {"swarm": "1"}},
                             {"schema_version": 1, "host_id": host_id})
    return Bundle(host_id, info.bundle_id, info.path, info.size_bytes, info.sha256)


def build_bundles(out_dir: str, host_ids: list[str], target_bytes: int, workers: int = 4) -> list[Bundle]:
    """A bundle per host, each about ``target_bytes`` (the first one measures the overhead)."""
    os.makedirs(out_dir, exist_ok=True)
    probe = build_bundle(out_dir, host_ids[0], target_bytes)
    overhead = probe.size_bytes - target_bytes
    filler = max(1, target_bytes - overhead)
    os.unlink(probe.path)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda h: build_bundle(out_dir, h, filler), host_ids))


async def upload_chunks(bundle: Bundle, offset: int, chunk_bytes: int, request_id: str = "",
                        incident_id: str = "") -> Any:
    """Upload messages from ``offset``, one chunk read from the file at a time (like the agent)."""
    with open(bundle.path, "rb") as fh:
        fh.seek(offset)
        position = offset
        first = True
        while True:
            data = fh.read(min(chunk_bytes, bundle.size_bytes - position))
            last = position + len(data) >= bundle.size_bytes
            message = apb.UploadRequest(bundle_id=bundle.bundle_id, write_offset=position, data=data)
            if first:
                message.request_id = request_id
                message.incident_id = incident_id
                first = False
            if last:
                message.finish_write = True
                message.total_size_bytes = bundle.size_bytes
                message.sha256 = bundle.sha256
            yield message
            position += len(data)
            if last:
                return


# -- one simulated agent --------------------------------------------------------------------
@dataclass
class AgentStats:
    connected_at: float = 0.0
    command_at: float = 0.0
    done_at: float = 0.0
    upload_attempts: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    error: str = ""


class SimAgent:
    def __init__(self, bundle: Bundle, stub: agent_pb2_grpc.AgentServiceStub, chunk_bytes: int,
                 deadline: float, done: asyncio.Event, remaining: list[int]) -> None:
        self.bundle = bundle
        self.stub = stub
        self.chunk_bytes = chunk_bytes
        self.deadline = deadline
        self.stats = AgentStats()
        self.connected = asyncio.Event()
        self._done = done
        self._remaining = remaining
        self._out: asyncio.Queue[apb.ConnectRequest] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seen: set[str] = set()

    def _send(self, **message: Any) -> None:
        self._out.put_nowait(apb.ConnectRequest(**message))

    async def run(self) -> None:
        call = self.stub.Connect()
        try:
            await call.write(apb.ConnectRequest(hello=apb.Hello(
                host_id=self.bundle.host_id, labels={"swarm": "1"}, agent_version=hostdiag.__version__,
                capabilities=["snapshot", "upload-resume"], profiles=["default"], max_window_seconds=900.0,
                boot_id=hashlib.sha256(self.bundle.host_id.encode()).hexdigest()[:32],
            )))
            first = await call.read()
            if first is aio.EOF or first.WhichOneof("message") != "welcome":
                self.stats.error = "no Welcome"
                return
            self.stats.connected_at = time.perf_counter()
            self.connected.set()
            interval = first.welcome.heartbeat_interval_seconds or 15.0
            writer = asyncio.create_task(self._write(call))
            beats = asyncio.create_task(self._heartbeats(interval))
            try:
                while True:
                    response = await call.read()
                    if response is aio.EOF:
                        return
                    if response.WhichOneof("message") == "snapshot":
                        self._on_command(response.snapshot)
            finally:
                for task in (writer, beats, *self._tasks):
                    task.cancel()
                await asyncio.gather(writer, beats, *self._tasks, return_exceptions=True)
        except aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.stats.error = f"Connect: {exc.code().name}: {exc.details()}"
        finally:
            call.cancel()

    async def _write(self, call: Any) -> None:
        while True:
            await call.write(await self._out.get())

    async def _heartbeats(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self._send(heartbeat=apb.Heartbeat(sent_at_unix_ms=int(time.time() * 1000)))

    def _on_command(self, cmd: Any) -> None:
        if cmd.request_id in self._seen:  # a re-delivered command is acknowledged, never run twice
            self._send(ack=apb.SnapshotAck(request_id=cmd.request_id, accepted=True, reason="already accepted"))
            return
        self._seen.add(cmd.request_id)
        self.stats.command_at = time.perf_counter()
        self._send(ack=apb.SnapshotAck(request_id=cmd.request_id, accepted=True))
        task = asyncio.create_task(self._answer(cmd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, cmd: Any) -> None:
        b = self.bundle
        progress = apb.SnapshotProgress
        self._send(progress=progress(request_id=cmd.request_id, stage="collecting",
                                     detail=f"profile {cmd.profile}, {cmd.window_seconds:g} s"))
        self._send(progress=progress(request_id=cmd.request_id, stage="packed", bundle_id=b.bundle_id,
                                     detail=f"{b.size_bytes} bytes"))
        self._send(progress=progress(request_id=cmd.request_id, stage="uploading", bundle_id=b.bundle_id,
                                     detail="queued; 0 bundles ahead"))
        backoff = Backoff(1.0, 60.0)
        while time.perf_counter() < self.deadline:
            self.stats.upload_attempts += 1
            try:
                status = await self.stub.QueryUpload(apb.QueryUploadRequest(bundle_id=b.bundle_id), timeout=10)
                if status.complete:
                    break
                response = await self.stub.Upload(
                    upload_chunks(b, status.committed_size_bytes, self.chunk_bytes, cmd.request_id, cmd.incident_id),
                    timeout=60,
                )
                if response.complete:
                    break
            except aio.AioRpcError as exc:
                code = exc.code()
                self.stats.refusals[code.name] = self.stats.refusals.get(code.name, 0) + 1
                if code not in RETRYABLE_CODES:
                    self.stats.error = f"Upload: {code.name}: {exc.details()}"
                    self._send(result=apb.SnapshotResult(request_id=cmd.request_id, ok=False, bundle_id=b.bundle_id,
                                                         error=self.stats.error))
                    return
            await asyncio.sleep(min(backoff.next_delay(), max(0.0, self.deadline - time.perf_counter())))
        else:
            self.stats.error = "gave up at the deadline"
            return
        self.stats.done_at = time.perf_counter()
        self._remaining[0] -= 1
        if self._remaining[0] == 0:
            self._done.set()
        self._send(result=apb.SnapshotResult(request_id=cmd.request_id, ok=True, bundle_id=b.bundle_id))


# -- the run --------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def swarm(args: argparse.Namespace, address: str, bundles: list[Bundle], pid: int) -> dict[str, Any]:
    n = len(bundles)
    n_channels = max(1, -(-n // args.agents_per_channel))
    options = [*KEEPALIVE_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [aio.insecure_channel(address, options=options) for _ in range(n_channels)]
    api = aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    fleet = fleet_pb2_grpc.FleetServiceStub(api)
    incidents = incident_pb2_grpc.IncidentServiceStub(api)
    stubs = [agent_pb2_grpc.AgentServiceStub(ch) for ch in channels]
    done = asyncio.Event()
    remaining = [n]
    hard_deadline = time.perf_counter() + args.connect_timeout + args.timeout + 30
    agents = [SimAgent(b, stubs[i % n_channels], args.chunk_kib * KiB, hard_deadline, done, remaining)
              for i, b in enumerate(bundles)]
    result: dict[str, Any] = {"channels": n_channels}
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        # 1. every agent connected, as the collector sees it
        t_start = time.perf_counter()
        deadline = t_start + args.connect_timeout
        connected = 0
        while time.perf_counter() < deadline:
            listed = await fleet.ListAgents(fleet_pb2.ListAgentsRequest(), timeout=30)
            connected = sum(1 for a in listed.agents if a.labels.get("swarm") == "1")
            if connected >= n:
                break
            await asyncio.sleep(0.25)
        result["connect_s"] = time.perf_counter() - t_start
        result["connected"] = connected
        if connected < n:
            errors = [a.stats.error for a in agents if a.stats.error]
            result["error"] = f"only {connected}/{n} agents connected; first errors: {errors[:3]}"
            return result
        await asyncio.sleep(args.settle)
        result["rss_connected"] = memory_mb(pid)[1] if pid else float("nan")
        # 2. one incident for all of them
        cpu0 = cpu_seconds(pid) if pid else 0.0
        own0 = time.process_time()
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        opened = await incidents.OpenIncident(incident_pb2.OpenIncidentRequest(
            title="swarm benchmark", severity=incident_pb2.SEVERITY_P2, service="bench",
            selector=incident_pb2.HostSelector(labels={"swarm": "1"}),
        ), timeout=60)
        result["open_s"] = time.perf_counter() - t0
        incident_id = opened.incident.id
        result["selected"] = len(opened.incident.hosts)
        # 3. wait for every upload to be confirmed, printing progress
        next_note = t0 + 2.0
        while not done.is_set() and time.perf_counter() - t0 < args.timeout:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), 0.25)
            if time.perf_counter() >= next_note and not done.is_set():
                print(f"  t+{time.perf_counter() - t0:5.1f} s: {n - remaining[0]}/{n} uploads confirmed",
                      file=sys.stderr, flush=True)
                next_note += 2.0
        t_end = time.perf_counter()
        result["cpu_s"] = (cpu_seconds(pid) - cpu0) if pid else float("nan")
        result["client_cpu_s"] = time.process_time() - own0
        result["wall_s"] = t_end - t0
        result["load"] = (load0, os.getloadavg())
        done_times = [a.stats.done_at - t0 for a in agents if a.stats.done_at]
        cmd_times = [a.stats.command_at - t0 for a in agents if a.stats.command_at]
        result["all_done_s"] = max(done_times) if len(done_times) == n else float("nan")
        result["done"] = len(done_times)
        result["done_p50_s"], result["done_p95_s"] = pct(done_times, 0.5), pct(done_times, 0.95)
        result["cmd_p50_s"], result["cmd_max_s"] = pct(cmd_times, 0.5), max(cmd_times, default=float("nan"))
        result["attempts"] = sum(a.stats.upload_attempts for a in agents)
        refusals: dict[str, int] = {}
        for a in agents:
            for code, count in a.stats.refusals.items():
                refusals[code] = refusals.get(code, 0) + count
        result["refusals"] = refusals
        result["errors"] = [f"{a.bundle.host_id}: {a.stats.error}" for a in agents if a.stats.error][:5]
        # 4. the collector's own word: requests attached, bundles listed
        await asyncio.sleep(0.5)  # results still on their way do not change "attached"
        view = await incidents.GetIncident(incident_pb2.GetIncidentRequest(id=incident_id), timeout=60)
        result["attached"] = sum(1 for h in view.incident.hosts if h.state == incident_pb2.HOST_REQUEST_STATE_ATTACHED)
        listed_b = await bundle_pb2_grpc.BundleServiceStub(api).ListBundles(
            bundle_pb2.ListBundlesRequest(incident_id=incident_id, limit=1000), timeout=60)
        result["bundles_listed"] = len(listed_b.bundles)
        result["incident_id"] = incident_id
        return result
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in (*channels, api):
            with contextlib.suppress(Exception):
                await ch.close(grace=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--bundle-kib", type=int, default=256, help="size of each agent's bundle")
    parser.add_argument("--chunk-kib", type=int, default=256, help="Upload chunk size")
    parser.add_argument("--agents-per-channel", type=int, default=50,
                        help="Connect streams sharing one gRPC channel (one HTTP/2 connection)")
    parser.add_argument("--max-concurrent-uploads", type=int, default=0,
                        help="collector setting for the collector this script starts (0: its default, 16)")
    parser.add_argument("--log-level", default="info", help="collector log level (its logs go to a file)")
    parser.add_argument("--collector", metavar="HOST:PORT", help="use this running collector instead")
    parser.add_argument("--collector-pid", type=int, default=0, help="its pid, to measure CPU and RSS")
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="all agents connected within")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up waiting for uploads after")
    parser.add_argument("--settle", type=float, default=1.0, help="pause between all connected and the incident")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if not 1 <= args.agents <= 10000 or args.bundle_kib < 16 or not 4 <= args.chunk_kib <= 1024:
        parser.error("need 1 <= --agents <= 10000, --bundle-kib >= 16, 4 <= --chunk-kib <= 1024")
    work = Path(tempfile.mkdtemp(prefix="hostdiag-swarm-"))
    collector: CollectorProcess | None = None
    try:
        width = max(4, len(str(args.agents)))
        host_ids = [f"swarm-{i:0{width}d}" for i in range(1, args.agents + 1)]
        t = time.perf_counter()
        bundles = build_bundles(str(work / "bundles"), host_ids, args.bundle_kib * KiB)
        mean_kib = statistics.fmean(b.size_bytes for b in bundles) / KiB
        print(f"built {len(bundles)} bundles of {mean_kib:.1f} KiB on average in {time.perf_counter() - t:.1f} s",
              file=sys.stderr, flush=True)
        settings: dict[str, Any] = {"log_level": args.log_level}
        if args.max_concurrent_uploads:
            settings["max_concurrent_uploads"] = args.max_concurrent_uploads
        if args.collector:
            address, pid = args.collector, args.collector_pid
        else:
            collector = CollectorProcess(work, settings)
            collector.start()
            address, pid = collector.grpc_address, collector.pid
        rss_idle = memory_mb(pid)[1] if pid else float("nan")
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            run = asyncio.run
        result = run(swarm(args, address, bundles, pid))
        hwm, rss_end = memory_mb(pid) if pid else (float("nan"), float("nan"))
        n = args.agents
        setting = args.max_concurrent_uploads or "16 (default)"
        print()
        print(f"collector                {'subprocess pid %d' % pid if collector else address}; "
              f"max_concurrent_uploads {setting if collector else 'as configured'}")
        print(f"machine                  {os.cpu_count()} cores; load average before/after "
              + (" / ".join(f"{a[0]:.2f}" for a in result["load"]) if "load" in result else "n/a"))
        print(f"agents                   {n} on {result['channels']} channels "
              f"({args.agents_per_channel} per channel); connected in {result.get('connect_s', 0):.1f} s")
        print(f"bundle size              {mean_kib:.1f} KiB (chunks of {args.chunk_kib} KiB)")
        if "error" in result:
            print(f"FAILED: {result['error']}")
            return 1
        print(f"OpenIncident             {result['open_s'] * 1000:.0f} ms; {result['selected']} hosts selected")
        print(f"commands received        p50 {result['cmd_p50_s']:.2f} s, last {result['cmd_max_s']:.2f} s")
        print(f"uploads confirmed        {result['done']}/{n}; p50 {result['done_p50_s']:.2f} s, "
              f"p95 {result['done_p95_s']:.2f} s")
        print(f"upload attempts          {result['attempts']} (refused: {result['refusals'] or 'none'})")
        if result["errors"]:
            print(f"agent errors             {result['errors']}")
        print(f"time to all attached     {result['all_done_s']:.2f} s")
        print(f"attached / N             {result['attached']}/{n} (GetIncident); "
              f"{result['bundles_listed']} bundles listed")
        print(f"collector CPU            {result['cpu_s']:.2f} s over {result['wall_s']:.2f} s "
              f"({result['cpu_s'] / result['wall_s'] * 100:.0f}% of one core)")
        print(f"simulated agents CPU     {result['client_cpu_s']:.2f} s (this process)")
        print(f"collector RSS            idle {rss_idle:.1f} MB, all connected {result['rss_connected']:.1f} MB, "
              f"end {rss_end:.1f} MB, peak (VmHWM) {hwm:.1f} MB")
        ok_time = result["all_done_s"] <= TARGET_ATTACH_S and result["attached"] == n
        print(f"target attach  <= {TARGET_ATTACH_S:g} s   {result['all_done_s'] / TARGET_ATTACH_S:.2f} x target "
              f"-> {'met' if ok_time else 'MISSED'}")
        print(f"target RSS     < {TARGET_RSS_MB:g} MB  {hwm / TARGET_RSS_MB:.2f} x target -> "
              f"{'met' if hwm < TARGET_RSS_MB else ('MISSED' if hwm == hwm else 'not measured')}")
        return 0
    finally:
        if collector is not None:
            status = collector.stop()
            if status not in (0, None):
                print(f"collector exited with status {status}; log: {collector.log_path}", file=sys.stderr)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
