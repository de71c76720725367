"""Operations end to end: agent metrics (promtool-clean) and a SIGTERM restart that loses and repeats nothing."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import orjson

SECRET = "hunter2-ops-e2e-Zq81"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Collector:
    """A real hostdiag-collector (auth = "none", plaintext on loopback) that can stop and start again."""

    def __init__(self, cli, tmp: Path) -> None:
        self.cli = cli
        self.dir = tmp / "collector"
        self.dir.mkdir()
        self.address = f"127.0.0.1:{free_port()}"
        self.config = self.dir / "collector.toml"
        self.config.write_text(
            f'[collector]\nlisten = "{self.address}"\nhttp_listen = "127.0.0.1:0"\nauth = "none"\ninsecure = true\n'
            f'data_dir = "{self.dir / "data"}"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ready = self.dir / "ready.json"
        ready.unlink(missing_ok=True)
        with open(self.dir / "collector.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.cli.script("hostdiag-collector"), "--config", str(self.config), "--ready-file", str(ready)],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert self.proc.poll() is None, (self.dir / "collector.log").read_text()
            assert time.monotonic() < deadline, "collector never became ready"
            time.sleep(0.02)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0

    def ctl(self, *args: str) -> object:
        proc = self.cli.run("collectorctl", "--collector", self.address, "--json", *args)
        assert proc.returncode == 0, f"collectorctl {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return orjson.loads(proc.stdout)


def test_agentctl_metrics_is_prometheus_text_that_promtool_accepts(tmp_path: Path, cli, start_agent, wait_for) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("2026-11-26T10:00:00Z INFO started\n")
    cfg = cli.write_agent_config(tmp_path, extra=f'[[logs]]\npath = "{log_file}"\nname = "app"\n')
    agent = start_agent(cfg)
    with open(log_file, "a") as fh:
        fh.write(f"2026-11-26T10:00:01Z ERROR login failed password={SECRET}\n")
    wait_for(lambda: any(f.get("lines", 0) >= 2 for f in agent.status()["logs"]), what="log lines tailed")
    wait_for(lambda: agent.status()["redaction_hits"], what="a redaction hit")

    proc = cli.run("agentctl", "metrics", "--config", str(cfg), check=True)
    text = proc.stdout
    lines = text.splitlines()
    assert f'hostdiag_agent_tail_lag_bytes{{file="{log_file}"}} 0' in lines
    assert any(line.startswith(f'hostdiag_agent_tail_lines_total{{file="{log_file}"}} ') for line in lines)
    assert any(line.startswith('hostdiag_agent_redaction_hits_total{rule="') for line in lines)
    assert any(line.startswith("hostdiag_agent_recorder_samples{ring=\"metrics\"} ") for line in lines)
    assert SECRET not in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup-env --dev installs it (Debian package prometheus)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check


def test_sigterm_restart_resumes_tail_without_rereading_and_uploads_the_spooled_bundle(
    tmp_path: Path, cli, start_agent, wait_for
) -> None:
    collector = Collector(cli, tmp_path)
    collector.start()
    try:
        inc_id = collector.ctl("incident", "open", "--title", "restart", "--severity", "P3", "--host", "nowhere")["id"]
        collector.stop()  # the collector is down while the agent stops and starts

        log_file = tmp_path / "app.log"
        log_file.write_text("".join(f"2026-11-26T10:00:{i:02d}Z INFO line {i}\n" for i in range(50)))
        cfg = cli.write_agent_config(
            tmp_path,
            extra=f'[[logs]]\npath = "{log_file}"\nname = "app"\n'
                  f'[collector]\naddress = "{collector.address}"\ninsecure = true\n'
                  "backoff_initial_s = 0.2\nbackoff_max_s = 0.5\n",
        )
        agent = start_agent(cfg)
        wait_for(lambda: any(f.get("lines", 0) == 50 for f in agent.status()["logs"]), what="50 lines tailed")
        result = orjson.loads(
            cli.run("agentctl", "collect", "--config", str(cfg), "--incident", inc_id, "--json", check=True).stdout
        )
        assert agent.status()["spool"]["depth"] == 1
        assert agent.stop(signal.SIGTERM, timeout=10) < 10 and agent.proc.returncode == 0

        with open(log_file, "a") as fh:
            fh.write("2026-11-26T10:01:00Z INFO after the restart\n")
        agent = start_agent(cfg)
        # The checkpoint brings the tail to where it stopped: only the new line is read.
        wait_for(lambda: any(f.get("lines", 0) >= 1 and f.get("lag_bytes") == 0 for f in agent.status()["logs"]),
                 what="the new line tailed")
        assert [f["lines"] for f in agent.status()["logs"] if f.get("path") == str(log_file)] == [1]
        # The spooled bundle survived the stop and goes up once the collector is back.
        assert agent.status()["spool"]["depth"] == 1
        collector.start()
        wait_for(lambda: agent.status()["spool"]["depth"] == 0, timeout_s=30, what="the spool drained")
        bundles = collector.ctl("bundle", "list", "--incident", inc_id)
        assert [b["bundle_id"] for b in bundles] == [result["bundle_id"]]
    finally:
        if collector.proc is not None and collector.proc.poll() is None:
            collector.proc.kill()
            collector.proc.wait()
