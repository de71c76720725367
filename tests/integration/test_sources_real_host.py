"""The probe, the samplers and the host-side sources on the real host."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import SystemProbe
from hostdiag.agent.recorder.sampler import MetricsSampler, TopSampler
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources import REGISTRY
from hostdiag.agent.sources.base import SnapshotContext, SourceSkipped


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("sources here write whole JSON members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        self.members[name] = [orjson.loads(orjson.dumps(r)) for r in rows]


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, HOSTDIAG_TEST_MARKER="present")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "--token-file=/dev/null"],
        stdin=subprocess.PIPE, env=env,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def make_ctx(probe: SystemProbe) -> SnapshotContext:
    import time

    return SnapshotContext(
        config=AgentConfig(), host_id="itest", labels={"suite": "integration"}, now=time.time(), window_s=900.0,
        proc_root="/proc", probe=probe, redactor=load_redactor(), members=MemorySink(),
    )


def run(name: str, ctx: SnapshotContext, **config: Any) -> dict[str, Any] | str:
    source = REGISTRY[name](REGISTRY[name].Config(**config))
    try:
        return asyncio.run(source.collect(ctx))
    except SourceSkipped as exc:
        return f"skipped: {exc}"


def test_probe_reads_this_process() -> None:
    probe = SystemProbe()
    me = next(p for p in probe.iter_processes() if p.pid == os.getpid())
    info, unavailable = probe.process_info(me, ["pid", "name", "cmdline", "memory_info", "num_fds", "cpu_times"])
    assert info["pid"] == os.getpid()
    assert info["memory_info"]["rss"] > 0
    assert info["num_fds"] > 0
    assert not unavailable
    stats = {s.pid: s for s in probe.process_stats()}
    assert stats[os.getpid()].rss_bytes > 0
    assert probe.virtual_memory()["total"] > 0
    assert probe.cpu_count()["logical"] >= 1
    assert probe.uname()["sysname"] == "Linux"


def test_tcp_state_counts_see_our_listener(listener: int) -> None:
    from hostdiag.agent import procfs

    assert SystemProbe().tcp_state_counts()["listen"] >= 1  # sock_diag netlink where allowed
    assert procfs.tcp_state_counts()["listen"] >= 1


def test_processes_source_sees_a_child_and_its_environment(child: subprocess.Popen[bytes]) -> None:
    ctx = make_ctx(SystemProbe())
    notes = run("processes", ctx, cpu_sample_s=0.1)
    assert isinstance(notes, dict)
    rows = {r["pid"]: r for r in ctx.members.members["processes.json"]["processes"]}  # type: ignore[attr-defined]
    row = rows[child.pid]
    assert row["ppid"] == os.getpid()
    assert row["cmdline"][-1].startswith("--token-file")
    if os.geteuid() == 0 or row.get("environ") is not None:
        assert row["environ"]["HOSTDIAG_TEST_MARKER"] == "present"
    ev = ctx.evidence["processes"]
    assert ev["process_count"] >= 2
    assert ev["top_rss"]
    # Kernel threads have no environment (reading it fails with ESRCH): they are kept, not "vanished".
    kthreadd = "/proc/2/stat"
    if os.path.exists(kthreadd) and open(kthreadd).read().startswith("2 (kthreadd)"):
        assert 2 in rows


def test_processes_that_exit_during_collection_are_not_errors() -> None:
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            subprocess.run(["true"], check=False)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(3):
            ctx = make_ctx(SystemProbe())
            assert isinstance(run("processes", ctx, cpu_sample_s=0.05), dict)
            top = TopSampler(SystemProbe())
            top.sample(5)
            assert top.sample(5)["process_count"] > 0
    finally:
        stop.set()
        thread.join()


def test_sockets_source_lists_our_listener(listener: int) -> None:
    ctx = make_ctx(SystemProbe())
    run("sockets", ctx)
    listening = ctx.members.members["sockets.json"]["listening"]  # type: ignore[attr-defined]
    ours = [r for r in listening if r["port"] == listener and r["proto"] == "tcp"]
    assert ours and ours[0]["address"] == "127.0.0.1"
    if ours[0]["pid"] is not None:
        assert ours[0]["pid"] == os.getpid()
    assert listener in ctx.evidence["sockets"]["listening_tcp_ports"]
    assert ctx.evidence["sockets"]["tcp_states"]["listen"] >= 1


def test_host_psi_kernel_units_run_or_say_why_not() -> None:
    for name in ("host", "psi", "kernel", "units"):
        ctx = make_ctx(SystemProbe())
        try:
            outcome = run(name, ctx)
        except PermissionError as exc:  # kernel log not readable for this user: a clear message
            assert "kernel log" in str(exc)
            continue
        if isinstance(outcome, str):
            assert outcome.startswith("skipped: ")
            continue
        member = {"host": "host.json", "psi": "psi.json", "kernel": "kernel.json", "units": "units.json"}[name]
        assert member in ctx.members.members  # type: ignore[attr-defined]
        assert name in ctx.evidence
    host_ctx = make_ctx(SystemProbe())
    run("host", host_ctx)
    assert host_ctx.evidence["host"]["cpu_count"] >= 1
    assert host_ctx.evidence["host"]["uptime_s"] > 0


def test_samplers_on_the_real_host() -> None:
    probe = SystemProbe()
    metrics = MetricsSampler(probe)
    top = TopSampler(probe)
    metrics.sample()
    top.sample(5)
    busy = threading.Thread(target=lambda: sum(i * i for i in range(300_000)))
    busy.start()
    busy.join()
    m = metrics.sample()
    t = top.sample(5)
    assert m["mem_total_bytes"] > 0
    assert m["cpu_idle_pct"] is not None
    assert 99.0 <= sum(m[f"cpu_{k}_pct"] for k in ("user", "nice", "system", "iowait", "irq", "softirq", "steal", "idle")) <= 101.0
    assert m["open_fds"] > 0
    assert isinstance(m["filesystems"], list)
    assert t["process_count"] > 0
    assert len(t["top_rss"]) <= 5
    orjson.dumps(m)
    orjson.dumps(t)
