"""Helpers for end-to-end tests: the real console scripts as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"console script {name} is not installed in {BIN}: run scripts/test")
    return str(path)


def run(*args: str, timeout: float = 60, check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [script(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    config: Path
    socket: Path
    data_dir: Path
    log: Path

    def status(self) -> dict:
        out = run("agentctl", "status", "--json", "--config", str(self.config))
        return orjson.loads(out.stdout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5) -> float:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=timeout)
        return time.monotonic() - started


def write_agent_config(tmp: Path, extra: str = "", labels: str = 'role = "api"') -> Path:
    data = tmp / "data"
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f"""
[agent]
host_id = "e2e-host"
labels = {{ {labels} }}
data_dir = "{data}"
socket = "{tmp / 'agent.sock'}"

[recorder]
window_s = 60
interval_s = 0.2
top_interval_s = 1
poll_interval_s = 0.05
{extra}
"""
    )
    return cfg


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator:
    started: list[AgentProcess] = []

    def _start(config: Path, env: dict[str, str] | None = None) -> AgentProcess:
        log = config.parent / "agent.log"
        sock = config.parent / "agent.sock"
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(
                [script("hostdiag-agent"), "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env={**os.environ, **(env or {})},
            )
        agent = AgentProcess(proc, config, sock, config.parent / "data", log)
        started.append(agent)
        deadline = time.monotonic() + 20
        while not sock.exists():
            if proc.poll() is not None:
                raise AssertionError(f"agent exited {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"agent socket never appeared: {log.read_text()}")
            time.sleep(0.02)
        return agent

    yield _start
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(timeout=5)


class Cli:
    """What e2e tests use: run console scripts, write configs."""

    run = staticmethod(run)
    script = staticmethod(script)
    write_agent_config = staticmethod(write_agent_config)


@pytest.fixture
def cli() -> Cli:
    return Cli()
