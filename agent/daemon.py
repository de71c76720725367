"""``hostdiag-agent``: the host-resident daemon.

One uvloop event loop runs the flight recorder, the log tailer and the local
API under one ``asyncio.TaskGroup``.  Blocking work (psutil, /proc, files)
goes through a small thread pool.  SIGTERM/SIGINT stop it cleanly: tasks are
cancelled, the tail checkpoint is saved and the socket removed, within 2 s.
Under systemd it sends ``READY=1`` once serving and ``WATCHDOG=1`` only while
the loop is responsive and the recorder keeps sampling.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import glob
import logging
import os
import signal
import sys
import time
from typing import Any

# The agent forks only to exec helpers (journalctl, systemctl). gRPC's fork
# handlers, on by default in recent grpcio, can stall a channel that is being set
# up at that moment ("skipping fork() handlers"); gRPC's own docs say to turn them
# off when every fork is followed by exec. This must precede the first grpc import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import hostdiag
from hostdiag.agent import memory
from hostdiag.agent.api import LocalApiServer
from hostdiag.agent.bundle import remove_stale_temp
from hostdiag.agent.config import AgentConfig, ConfigError, load_config
from hostdiag.agent.logsetup import setup_logging
from hostdiag.agent.probes import ProbeRunner, probe_ring
from hostdiag.agent.recorder.recorder import FlightRecorder
from hostdiag.agent.recorder.scheduler import Scheduler
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sdnotify import Notifier
from hostdiag.agent.snapshot import SnapshotRequest, take_snapshot, validate_collect_request
from hostdiag.agent.spool import Spool, SpoolError
from hostdiag.agent.uploader import HostInfo, Uploader

__all__ = ["Agent", "main"]

log = logging.getLogger("hostdiag.agent")

def prune_bundles(bundle_dir: str, keep: int) -> list[str]:
    """Delete the oldest local bundles beyond ``keep``; returns what was deleted."""
    paths = sorted(glob.glob(os.path.join(glob.escape(bundle_dir), "*.tar.zst")), key=os.path.getmtime)
    removed = []
    for path in paths[: max(0, len(paths) - keep)]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


class Agent:
    def __init__(self, config: AgentConfig, *, probe: Any = None, notifier: Notifier | None = None) -> None:
        from hostdiag.agent.probe import SystemProbe
        from hostdiag.agent.recorder.sampler import MetricsSampler, TopSampler
        from hostdiag.agent.tail import TailManager

        self.config = config
        self.redactor = load_redactor(config.redaction.rules_file, config.redaction.disable)
        self.probe = probe if probe is not None else SystemProbe(proc_root=config.agent.proc_root)
        self.notifier = notifier or Notifier()
        self.executor = concurrent.futures.ThreadPoolExecutor(config.agent.threads, thread_name_prefix="hostdiag-io")
        os.makedirs(config.data_dir, mode=0o750, exist_ok=True)
        rec = config.recorder
        self.tail = TailManager(
            config.logs,
            checkpoint_path=os.path.join(config.data_dir, "tail-checkpoint.json"),
            redactor=self.redactor,
            ring_bytes=rec.log_ring_bytes,
            max_line_bytes=rec.max_line_bytes,
            poll_interval_s=rec.poll_interval_s,
            window_s=rec.window_s,
            journal=config.journal,
        )
        self.recorder = FlightRecorder(
            rec,
            MetricsSampler(self.probe, proc_root=config.agent.proc_root),
            TopSampler(self.probe),
            self.tail,
        )
        # Health probes: the recorder's probes ring holds the window's results of all of them.
        self.probe_runner: ProbeRunner | None = None
        if config.probes:
            self.recorder.probes = probe_ring(config.probes, rec.window_s)
            self.probe_runner = ProbeRunner(config.probes, self.recorder)
        # The recorder's periodic blocking work runs on one thread of its own (see scheduler.py).
        self.scheduler = Scheduler()
        self.scheduler.every(rec.interval_s, self.recorder.sample_metrics, "metrics")
        self.scheduler.every(rec.top_interval_s, self.recorder.sample_top, "top")
        self.scheduler.every(rec.poll_interval_s, self.tail.pass_once, "tail")
        self.api = LocalApiServer(
            config.socket_path, status=self.status, collect=self.collect, group=config.agent.socket_group
        )
        # agentctl's and the collector's snapshots run one at a time.
        self.snapshot_lock = asyncio.Lock()
        self.spool: Spool | None = None
        self.uploader: Uploader | None = None
        if config.collector.address:
            sp = config.spool
            self.spool = Spool(
                config.spool_dir,
                sp.max_bytes,
                sp.max_items,
                quarantine_max_bytes=sp.quarantine_max_bytes,
                quarantine_max_items=sp.quarantine_max_items,
            )
            self.uploader = Uploader(
                config,
                self.spool,
                snapshot_fn=self.collector_snapshot,
                host_info=HostInfo.from_config(config),
                executor=self.executor,
            )
        self.started_at = time.time()
        self.last_bundle: dict[str, Any] | None = None
        self.bundles_written = 0
        self.bundle_failures = 0
        self.max_loop_lag_s = 0.0

    # -- local API -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "agent_version": hostdiag.__version__,
            "pid": os.getpid(),
            "host_id": self.config.host_id,
            "labels": dict(self.config.agent.labels),
            "config_file": self.config.file,
            "uptime_s": round(time.time() - self.started_at, 1),
            "profiles": sorted(self.config.profiles),
            "recorder": {**self.recorder.status(), "jobs": self.scheduler.status()},
            "logs": self.tail.status(),
            "redaction_hits": dict(self.tail.redaction_counts),
            "bundles_written": self.bundles_written,
            "bundle_failures": self.bundle_failures,
            "last_bundle": self.last_bundle,
            "max_loop_lag_ms": round(self.max_loop_lag_s * 1000, 2),
            "collector": self.uploader.status() if self.uploader is not None else None,
            "spool": self.spool.status() if self.spool is not None else None,
            "probes": self.probe_runner.status() if self.probe_runner is not None else None,
            "bundle_dir": self.config.bundle_dir,
        }

    async def _snapshot(self, snap: SnapshotRequest, progress: Any = None) -> Any:
        async with self.snapshot_lock:
            try:
                info = await take_snapshot(
                    self.config,
                    snap,
                    out_dir=self.config.bundle_dir,
                    probe=self.probe,
                    redactor=self.redactor,
                    recorder=self.recorder,
                    executor=self.executor,
                    progress=progress,
                )
            except Exception:
                self.bundle_failures += 1
                raise
        self.bundles_written += 1
        self.last_bundle = {
            "path": info.path,
            "bundle_id": info.bundle_id,
            "size_bytes": info.size_bytes,
            "sha256": info.sha256,
            "at": time.time(),
            "trigger": snap.trigger,
        }
        # The spool holds its own hard link, so pruning local copies never loses an upload.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, prune_bundles, self.config.bundle_dir, self.config.bundle.keep)
        await loop.run_in_executor(self.executor, memory.trim)  # give the snapshot's buffers back
        return info

    async def collect(self, request: dict[str, Any], send: Any) -> dict[str, Any]:
        """agentctl's collect: a bundle now, queued for upload when it names an incident."""
        snap = validate_collect_request(self.config, request, trigger="agentctl")
        info = await self._snapshot(snap, progress=send)
        result = {"path": info.path, "bundle_id": info.bundle_id, "size_bytes": info.size_bytes, "sha256": info.sha256}
        if snap.incident_id:
            if self.uploader is None:
                result["upload"] = "no collector configured: the bundle stays on this host"
            else:
                try:
                    await self.uploader.enqueue(info, incident_id=snap.incident_id)
                    connected = self.uploader.connected
                    result["upload"] = (
                        "queued: uploading to the collector"
                        if connected
                        else "queued in the spool: the collector is unreachable, it goes up when it is back"
                    )
                except SpoolError as exc:
                    result["upload"] = f"not queued: {exc}"
        return result

    async def collector_snapshot(
        self, profile: str, window_s: float, incident_id: str | None, request_id: str | None
    ) -> Any:
        """The uploader's hook for a collector's snapshot command (profile already validated)."""
        snap = SnapshotRequest(
            profile=profile, window_s=window_s, trigger="collector", incident_id=incident_id, request_id=request_id
        )
        return await self._snapshot(snap)

    # -- life cycle -------------------------------------------------------------------
    async def _watch_loop(self) -> None:
        """Measure event-loop lag and feed systemd's watchdog while healthy."""
        loop = asyncio.get_running_loop()
        period = 1.0  # each wake-up costs CPU on an idle host; once a second is enough to see a stall
        ping_every = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        last_ping = 0.0
        stale_after = max(10.0, 5 * self.config.recorder.interval_s)
        while True:
            before = loop.time()
            await asyncio.sleep(period)
            lag = loop.time() - before - period
            self.max_loop_lag_s = max(self.max_loop_lag_s, lag)
            if ping_every and loop.time() - last_ping >= ping_every:
                latest = self.recorder.metrics.latest()
                fresh = latest is None and time.time() - self.started_at < stale_after
                if latest is not None:
                    fresh = time.time() - float(latest.get("ts", 0)) < stale_after
                if fresh and lag < ping_every:
                    self.notifier.watchdog()
                    last_ping = loop.time()

    async def run(self, stop: asyncio.Event) -> None:
        removed = remove_stale_temp(self.config.bundle_dir) if os.path.isdir(self.config.bundle_dir) else []
        if removed:
            log.info("removed temporary bundle files left by a crash", extra={"event": "stale_temp_removed", "count": len(removed)})
        await self.api.start()
        log.info(
            "agent started",
            extra={"event": "agent_started", "host_id": self.config.host_id, "socket": self.config.socket_path},
        )
        self.notifier.ready(f"recording; socket {self.config.socket_path}")
        try:
            async with asyncio.TaskGroup() as tg:
                self.scheduler.start()
                tasks = [
                    tg.create_task(self.tail.run_journal(), name="journal"),
                    tg.create_task(self._watch_loop(), name="watch"),
                ]
                if self.uploader is not None:
                    tasks.append(tg.create_task(self.uploader.run(), name="uploader"))
                if self.probe_runner is not None:
                    tasks.append(tg.create_task(self.probe_runner.run(), name="probes"))
                await stop.wait()
                self.notifier.stopping()
                for task in tasks:
                    task.cancel()
        finally:
            self.scheduler.stop(timeout_s=1.0)
            await self.api.close()
            with contextlib.suppress(Exception):
                self.tail.save_checkpoint()
            self.executor.shutdown(wait=False, cancel_futures=True)
            log.info("agent stopped", extra={"event": "agent_stopped"})


async def _amain(config: AgentConfig) -> int:
    memory.limit_arenas(2)  # before the worker threads exist
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(config)
    await agent.run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostdiag-agent", description="hostdiag host agent (flight recorder)")
    parser.add_argument("--config", metavar="PATH", help="TOML config file (default: built-in defaults)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument("--version", action="version", version=f"hostdiag-agent {hostdiag.__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.check_config:
            load_redactor(config.redaction.rules_file, config.redaction.disable)
            print(f"{config.file}: ok")
            return 0
    except ConfigError as exc:
        print(f"hostdiag-agent: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.agent.log_level)
    try:
        import uvloop

        return uvloop.run(_amain(config))
    except ConfigError as exc:
        print(f"hostdiag-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hostdiag-agent: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
