"""scripts/incident/collect-diagnostics.sh, the command the incident runbook names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import orjson
import pytest
import zstandard

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "incident" / "collect-diagnostics.sh"


def manifest_of(path: Path) -> dict:
    with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            first = tar.next()
            assert first is not None and first.name == "manifest.json"
            fileobj = tar.extractfile(first)
            assert fileobj is not None
            return orjson.loads(fileobj.read())


def run_script(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=120, env=env)


def script_env(config: Path, out_dir: Path) -> dict[str, str]:
    # The venv's bin first on PATH: the script must find this checkout's agentctl.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOSTDIAG_CONFIG": str(config), "HOSTDIAG_OUTPUT_DIR": str(out_dir)}


def bundle_path(stdout: str) -> Path:
    lines = [line for line in stdout.splitlines() if line.startswith("bundle:")]
    assert len(lines) == 1, stdout
    return Path(lines[0].split(":", 1)[1].strip())


def test_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: run scripts/test (scripts/setup-env --dev installs it)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_with_the_agent_running_the_bundle_has_recorder_history(tmp_path: Path, cli, start_agent, wait_for) -> None:
    cfg = cli.write_agent_config(tmp_path)
    agent = start_agent(cfg)
    wait_for(lambda: agent.status()["recorder"]["metrics_samples"] >= 2, what="two recorder samples")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    proc = run_script(SCRIPT, "INC-42", env=script_env(cfg, out_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = bundle_path(proc.stdout)
    assert path.parent == out_dir and path.exists()
    assert "the running agent" in proc.stdout
    assert f"tar --zstd -xf {path}" in proc.stdout and f"inspect {path}" in proc.stdout
    manifest = manifest_of(path)
    assert manifest["recorder"] == "daemon"
    assert manifest["incident_id"] == "INC-42"
    assert os.listdir(out_dir) == [path.name]


def test_with_no_agent_it_collects_standalone(tmp_path: Path, cli) -> None:
    cfg = cli.write_agent_config(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    proc = run_script(SCRIPT, env=script_env(cfg, out_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = bundle_path(proc.stdout)
    assert "standalone" in proc.stdout
    manifest = manifest_of(path)
    assert manifest["recorder"] == "none"
    assert not manifest.get("incident_id")
    listing = subprocess.run(["tar", "--zstd", "-tf", str(path)], capture_output=True, text=True, check=True)
    assert listing.stdout.split()[0] == "manifest.json"


def test_an_unwritable_output_fails_clearly_and_leaves_no_file(tmp_path: Path, cli) -> None:
    # Root may write anywhere, so "unwritable" is a directory under a regular file:
    # the agent's bundle directory in the config cannot be created.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    cfg = cli.write_agent_config(tmp_path, extra=f'[bundle]\noutput_dir = "{blocker}/bundles"\n')
    env = script_env(cfg, tmp_path)
    del env["HOSTDIAG_OUTPUT_DIR"]

    proc = run_script(SCRIPT, "INC-7", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nothing collected" in proc.stderr and "bundle" in proc.stderr
    assert "bundle:" not in proc.stdout
    assert blocker.read_text() == "" and not list(tmp_path.rglob("*.tar.zst*"))


def test_without_agentctl_it_fails_clearly(tmp_path: Path, cli) -> None:
    if Path("/opt/hostdiag/bin/agentctl").exists():
        pytest.skip("hostdiag is installed under /opt/hostdiag on this machine")
    # A copy outside the repository: no .venv/bin next to it, and agentctl not on PATH.
    copy = tmp_path / "scripts" / "incident" / SCRIPT.name
    copy.parent.mkdir(parents=True)
    shutil.copy2(SCRIPT, copy)
    cfg = cli.write_agent_config(tmp_path)
    env = {**script_env(cfg, tmp_path), "PATH": "/usr/bin:/bin"}

    proc = run_script(copy, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "agentctl not found" in proc.stderr and "nothing collected" in proc.stderr
    assert not list(tmp_path.rglob("*.tar.zst*"))
