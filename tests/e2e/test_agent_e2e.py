"""The agent and agentctl as an engineer uses them on a host."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import orjson
import pytest
import zstandard

SECRET_PASSWORD = "Tr0ub4dor-e2e-secret"
SECRET_TOKEN = "ghp_" + "e2eE2Ee2eE2Ee2eE2Ee2eE2Ee2eE2Ee2eE2E"


def bundle_members(path: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    with open(path, "rb") as raw:
        with zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    fileobj = tar.extractfile(info)
                    members[info.name] = fileobj.read() if fileobj else b""
    return members


def test_standalone_collect_inspect_and_tar(tmp_path: Path, cli) -> None:
    cfg = cli.write_agent_config(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = cli.run("agentctl", "collect", "--config", str(cfg), "--output", str(out_dir), "--json", check=True)
    result = orjson.loads(proc.stdout)
    assert result["mode"] == "standalone"
    path = Path(result["path"])
    assert path.parent == out_dir and path.name.endswith(".tar.zst") and path.exists()
    assert path.stat().st_size == result["size_bytes"]
    assert sorted(os.listdir(out_dir)) == [path.name], "no temporary files may be left behind"

    listing = subprocess.run(["tar", "--zstd", "-tf", str(path)], capture_output=True, text=True, check=True)
    names = listing.stdout.split()
    assert names[:2] == ["manifest.json", "evidence.json"]
    assert "processes.json" in names and "host.json" in names

    inspect = cli.run("agentctl", "inspect", str(path), "--json")
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    manifest = orjson.loads(bundle_members(str(path))["manifest.json"])
    assert manifest["recorder"] == "none"
    assert manifest["bundle_id"] == result["bundle_id"]
    assert manifest["host_id"] == "e2e-host"
    assert manifest["sources"]["processes"]["status"] == "ok"


def test_agent_daemon_collect_has_history_and_stops_cleanly(tmp_path: Path, cli, start_agent, wait_for) -> None:
    log_file = tmp_path / "app.log"
    log_file.write_text("2026-11-26T10:00:00Z INFO service started\n")
    cfg = cli.write_agent_config(tmp_path, extra=f'[[logs]]\npath = "{log_file}"\nname = "app"\n')
    agent = start_agent(cfg)
    with open(log_file, "a") as fh:
        fh.write(f"2026-11-26T10:00:01Z ERROR login failed password={SECRET_PASSWORD}\n")
        fh.write(f"2026-11-26T10:00:02Z WARN token {SECRET_TOKEN} used from 10.0.0.1\n")
    wait_for(lambda: agent.status()["recorder"]["metrics_samples"] >= 3, what="three recorder samples")
    wait_for(lambda: any(f.get("lines", 0) >= 3 for f in agent.status()["logs"]), what="log lines tailed")

    proc = cli.run("agentctl", "collect", "--config", str(cfg), "--json", "--window", "30", check=True)
    result = orjson.loads(proc.stdout)
    assert result["mode"] == "agent"
    members = bundle_members(result["path"])
    manifest = orjson.loads(members["manifest.json"])
    assert manifest["recorder"] == "daemon"
    assert manifest["window"]["seconds"] == 30
    metrics = members["recorder/metrics.ndjson"].splitlines()
    assert len(metrics) >= 3
    logs = b"".join(v for k, v in members.items() if k.startswith("logs/"))
    assert b"login failed" in logs
    everything = b"".join(members.values())
    assert SECRET_PASSWORD.encode() not in everything
    assert SECRET_TOKEN.encode() not in everything
    assert cli.run("agentctl", "inspect", result["path"]).returncode == 0

    took = agent.stop(signal.SIGTERM)
    assert agent.proc.returncode == 0
    assert took < 2.0, f"agent took {took:.2f}s to stop"
    assert not agent.socket.exists()
    assert (agent.data_dir / "tail-checkpoint.json").exists()
    agent_log = agent.log.read_text()
    assert SECRET_PASSWORD not in agent_log and SECRET_TOKEN not in agent_log
    for line in agent_log.splitlines():
        orjson.loads(line)  # structured JSON logs, one event per line


def test_secrets_in_command_line_and_environment_are_redacted(tmp_path: Path, cli, start_agent, wait_for) -> None:
    cfg = cli.write_agent_config(tmp_path)
    agent = start_agent(cfg)
    victim = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.sleep(60)", f"--password={SECRET_PASSWORD}"],
        env={"PATH": "/usr/bin:/bin", "DB_PASSWORD": SECRET_PASSWORD, "GITHUB_TOKEN": SECRET_TOKEN},
    )
    try:
        result = orjson.loads(cli.run("agentctl", "collect", "--config", str(cfg), "--json", check=True).stdout)
        members = bundle_members(result["path"])
        processes = orjson.loads(members["processes.json"])
        rows = processes["processes"] if isinstance(processes, dict) else processes
        mine = [p for p in rows if p.get("pid") == victim.pid]
        assert mine, "the planted process is in the table"
        everything = b"".join(members.values())
        assert SECRET_PASSWORD.encode() not in everything
        assert SECRET_TOKEN.encode() not in everything
        manifest = orjson.loads(members["manifest.json"])
        assert sum(manifest["redaction"].values()) >= 3
    finally:
        victim.kill()
        victim.wait()
        agent.stop()


def test_config_error_exits_2_with_one_line(tmp_path: Path, cli) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[recorder]\nwindow_s = -3\n")
    for tool in (("hostdiag-agent",), ("agentctl", "collect")):
        proc = cli.run(*tool, "--config", str(bad))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1
        assert str(bad) in lines[0] and "recorder.window_s" in lines[0] and "at least 10" in lines[0]


def test_unknown_profile_is_a_usage_error(tmp_path: Path, cli) -> None:
    cfg = cli.write_agent_config(tmp_path)
    proc = cli.run("agentctl", "collect", "--config", str(cfg), "--profile", "nope", "--output", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown profile 'nope'" in proc.stderr
    assert not list(tmp_path.glob("*.tar.zst"))


def test_status_when_agent_is_down(tmp_path: Path, cli) -> None:
    cfg = cli.write_agent_config(tmp_path)
    proc = cli.run("agentctl", "status", "--config", str(cfg), "--json")
    assert proc.returncode == 1
    assert orjson.loads(proc.stdout)["up"] is False


def test_inspect_detects_tampering(tmp_path: Path, cli) -> None:
    cfg = cli.write_agent_config(tmp_path)
    result = orjson.loads(
        cli.run("agentctl", "collect", "--config", str(cfg), "--output", str(tmp_path), "--json", check=True).stdout
    )
    members = bundle_members(result["path"])
    tampered = tmp_path / "tampered.tar.zst"
    with open(tampered, "wb") as raw:
        with zstandard.ZstdCompressor().stream_writer(raw) as zw:
            with tarfile.open(fileobj=zw, mode="w|") as tar:
                for name, data in members.items():
                    if name == "host.json":
                        data = data.replace(b"e2e-host", b"evil-host")
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    proc = cli.run("agentctl", "inspect", str(tampered))
    assert proc.returncode == 1
    assert "host.json" in proc.stdout + proc.stderr


def _mount_tiny_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_disk_full_on_output_gives_clear_error_and_no_file(tmp_path: Path, cli) -> None:
    full = tmp_path / "full"
    if not _mount_tiny_tmpfs(full):
        pytest.skip("needs root to mount a tiny tmpfs")
    try:
        cfg = cli.write_agent_config(tmp_path)
        proc = cli.run("agentctl", "collect", "--config", str(cfg), "--output", str(full))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "no space left on device" in proc.stderr.lower()
        assert os.listdir(full) == [], f"partial files left: {os.listdir(full)}"
    finally:
        subprocess.run(["umount", str(full)], check=False)
