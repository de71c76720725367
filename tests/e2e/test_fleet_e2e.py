"""Both daemons and both CLIs as subprocesses: the project's main job end to end,
and the reliability promises (collector killed mid-upload, collector down for a while)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CollectorProcess:
    def __init__(self, cli, tmp: Path, grpc_port: int) -> None:
        self.cli = cli
        self.dir = tmp / "collector"
        self.dir.mkdir(exist_ok=True)
        self.config = self.dir / "collector.toml"
        self.config.write_text(
            f'[collector]\nlisten = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:0"\n'
            f'data_dir = "{self.dir / "data"}"\ninsecure = true\n'
        )
        self.address = f"127.0.0.1:{grpc_port}"
        # An operator's admin token, made offline on the collector's host before it starts.
        self.token = cli.run("hostdiag-collector", "token", "create", "--config", str(self.config), "--role", "admin",
                             "--name", "fleet-operator", check=True).stdout.strip()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = self.dir / "ready.json"

    def start(self) -> None:
        self.ready.unlink(missing_ok=True)
        with open(self.dir / "collector.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.cli.script("hostdiag-collector"), "--config", str(self.config), "--ready-file", str(self.ready)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while not self.ready.exists():
            assert self.proc.poll() is None, (self.dir / "collector.log").read_text()
            assert time.monotonic() < deadline, "collector never became ready"
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=10)

    def ctl(self, *args: str, check: bool = True) -> object:
        proc = self.cli.run("collectorctl", "--collector", self.address, "--json", *args,
                            env={**os.environ, "HOSTDIAG_TOKEN": self.token})
        if check:
            assert proc.returncode == 0, f"collectorctl {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            return orjson.loads(proc.stdout)
        return proc


@pytest.fixture
def collector(tmp_path: Path, cli) -> Iterator[CollectorProcess]:
    col = CollectorProcess(cli, tmp_path, free_port())
    col.start()
    yield col
    if col.proc is not None and col.proc.poll() is None:
        col.proc.kill()
        col.proc.wait()


def agent_config(cli, tmp: Path, collector: CollectorProcess, extra: str = "") -> Path:
    return cli.write_agent_config(
        tmp,
        labels='role = "api", env = "e2e"',
        extra=f'[collector]\naddress = "{collector.address}"\ninsecure = true\nbackoff_initial_s = 0.2\n'
        f"backoff_max_s = 1.0\n{extra}",
    )


def connected(collector: CollectorProcess) -> bool:
    agents = collector.ctl("agents", "list")
    return any(a.get("host_id") == "e2e-host" and a.get("connected") for a in agents)


def host_states(collector: CollectorProcess, incident: str) -> list[dict]:
    return collector.ctl("incident", "show", incident)["hosts"]


def test_incident_fans_out_bundle_attaches_downloads_and_verifies(tmp_path: Path, cli, collector, start_agent, wait_for) -> None:
    agent = start_agent(agent_config(cli, tmp_path, collector))
    wait_for(lambda: connected(collector), what="agent connected")
    incident = collector.ctl(
        "incident", "open", "--title", "checkout latency", "--severity", "P2", "--service", "api", "--select", "role=api"
    )
    inc_id = incident["id"]
    hosts = wait_for(
        lambda: [h for h in host_states(collector, inc_id) if h["state"] == "attached"], timeout_s=30, what="attached"
    )
    bundle_id = hosts[0]["bundle_id"]
    out = tmp_path / "download.tar.zst"
    collector.ctl("bundle", "download", bundle_id, "-o", str(out))
    inspect = cli.run("agentctl", "inspect", str(out), "--json")
    assert inspect.returncode == 0, inspect.stdout
    report = orjson.loads(inspect.stdout)
    manifest = report.get("manifest", report)
    assert manifest["incident_id"] == inc_id
    assert manifest["trigger"] == "collector"
    assert manifest["recorder"] == "daemon"
    timeline = [e["kind"] for e in collector.ctl("incident", "show", inc_id)["timeline"]]
    assert timeline[0].startswith("open")

    # An engineer on the host adds a bundle to the same incident with agentctl.
    result = orjson.loads(
        cli.run("agentctl", "collect", "--config", str(agent.config), "--incident", inc_id, "--json", check=True).stdout
    )
    assert "queued" in result["upload"]
    wait_for(
        lambda: result["bundle_id"] in [b["bundle_id"] for b in collector.ctl("bundle", "list", "--incident", inc_id)],
        timeout_s=30,
        what="agentctl's bundle attached",
    )
    agent.stop()


def _big_log(path: Path, mib: int) -> None:
    """Incompressible log lines, so bundles are several MiB and uploads take many chunks."""
    with open(path, "w") as fh:
        for _ in range(mib * 1024 * 1024 // 120):
            fh.write("INFO blob " + base64.b64encode(os.urandom(81)).decode() + "\n")


def test_collector_killed_mid_upload_every_bundle_arrives_once(tmp_path: Path, cli, collector, start_agent, wait_for) -> None:
    log_file = tmp_path / "big.log"
    _big_log(log_file, 6)
    cfg = agent_config(
        cli, tmp_path, collector,
        extra=f'[[logs]]\npath = "{log_file}"\n',
    )
    cfg.write_text(cfg.read_text().replace("[recorder]\n", '[recorder]\nlog_ring_bytes = "8 MiB"\n'))
    agent = start_agent(cfg)
    wait_for(lambda: connected(collector), what="agent connected")
    wait_for(lambda: any(f.get("lines", 0) > 1000 for f in agent.status()["logs"]), what="big log tailed")
    inc_id = collector.ctl("incident", "open", "--title", "kill test", "--severity", "P1", "--host", "e2e-host")["id"]
    uploads = collector.dir / "data" / "uploads"
    wait_for(
        lambda: any(p.stat().st_size > 0 for p in uploads.glob("*.part")) if uploads.exists() else False,
        timeout_s=30,
        interval_s=0.005,
        what="an upload in progress",
    )
    collector.kill(signal.SIGKILL)
    collector.start()
    hosts = wait_for(
        lambda: [h for h in host_states(collector, inc_id) if h["state"] == "attached"], timeout_s=60, what="attached"
    )
    bundles = collector.ctl("bundle", "list", "--incident", inc_id)
    assert [b["bundle_id"] for b in bundles] == [hosts[0]["bundle_id"]], "attached exactly once"
    out = tmp_path / "after-kill.tar.zst"
    collector.ctl("bundle", "download", bundles[0]["bundle_id"], "-o", str(out))
    assert cli.run("agentctl", "inspect", str(out)).returncode == 0
    assert bundles[0]["size_bytes"] > 1024 * 1024
    agent.stop()


def _rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_collector_outage_spool_holds_bundles_memory_flat_all_arrive(tmp_path: Path, cli, collector, start_agent, wait_for) -> None:
    log_file = tmp_path / "big.log"
    _big_log(log_file, 4)
    cfg = agent_config(cli, tmp_path, collector, extra=f'[[logs]]\npath = "{log_file}"\n')
    cfg.write_text(cfg.read_text().replace("[recorder]\n", '[recorder]\nlog_ring_bytes = "8 MiB"\n'))
    agent = start_agent(cfg)
    wait_for(lambda: connected(collector), what="agent connected")
    wait_for(lambda: any(f.get("lines", 0) > 1000 for f in agent.status()["logs"]), what="log tailed")
    inc_id = collector.ctl("incident", "open", "--title", "outage", "--severity", "P3", "--host", "e2e-host")["id"]
    wait_for(lambda: [h for h in host_states(collector, inc_id) if h["state"] == "attached"], timeout_s=30, what="first")

    collector.kill(signal.SIGTERM)
    wait_for(lambda: not agent.status()["collector"]["connected"], what="agent noticed the outage")
    # Warm up twice, then measure: the backlog must live on disk, not in the agent's memory.
    for _ in range(2):
        cli.run("agentctl", "collect", "--config", str(cfg), "--incident", inc_id, "--json", check=True)
    rss_before = _rss(agent.proc.pid)
    spooled_before = agent.status()["spool"]["bytes"]
    made = []
    for _ in range(8):
        out = cli.run("agentctl", "collect", "--config", str(cfg), "--incident", inc_id, "--json", check=True)
        result = orjson.loads(out.stdout)
        assert "spool" in result["upload"]
        made.append(result["bundle_id"])
    status = agent.status()
    assert status["spool"]["depth"] == 10
    backlog = status["spool"]["bytes"] - spooled_before
    growth = _rss(agent.proc.pid) - rss_before
    assert backlog > 16 * 1024 * 1024
    # A spool that held bundles in memory would grow RSS by about the backlog; a few MB of
    # heap noise from eight snapshots is expected and stays well under half of it.
    assert growth < backlog / 2, f"agent RSS grew {growth} bytes while the backlog grew {backlog} bytes"

    collector.start()
    wait_for(
        lambda: set(made) <= {b["bundle_id"] for b in collector.ctl("bundle", "list", "--incident", inc_id)},
        timeout_s=90,
        what="every spooled bundle arrived",
    )
    wait_for(lambda: agent.status()["spool"]["depth"] == 0, what="spool drained")
    agent.stop()
