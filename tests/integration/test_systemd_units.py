"""The shipped systemd units: they verify, and their sandbox exposure stays low.

``systemd-analyze verify`` insists that ExecStart's program exists and is
executable.  The units name ``/opt/hostdiag/bin/...`` (docs/operations.md), which
a development machine does not have, so the test verifies a copy whose
ExecStart points at this virtualenv's console scripts; nothing else changes.
The exposure score does not depend on that path and is measured on the
shipped files as they are (``--offline=yes``: no running systemd needed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
VENV_BIN = Path(sys.executable).parent
INSTALLED_BIN = "/opt/hostdiag/bin/"

# Targets from the operations issue; docs/operations.md records the measured scores.
MAX_EXPOSURE = {"hostdiag-agent.service": 4.5, "hostdiag-collector.service": 2.5}


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is not installed: run scripts/test (it installs the systemd package)")
    return path


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, f"no exposure line (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_unit_runs_the_installed_console_script(name: str) -> None:
    text = (UNITS / name).read_text()
    program = name.removesuffix(".service")
    exec_start = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == [f"ExecStart={INSTALLED_BIN}{program} --config /etc/hostdiag/{program.split('-')[1]}.toml"]
    assert (VENV_BIN / program).exists(), f"{program} is not installed in {VENV_BIN}"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for name in MAX_EXPOSURE:
        text = (UNITS / name).read_text()
        (tmp_path / name).write_text(text.replace(f"ExecStart={INSTALLED_BIN}", f"ExecStart={VENV_BIN}/"))
    proc = subprocess.run(
        [systemd_analyze(), "verify", *(str(tmp_path / name) for name in MAX_EXPOSURE)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", f"verify printed warnings:\n{proc.stderr}"


@pytest.mark.parametrize("name", sorted(MAX_EXPOSURE))
def test_exposure_score_is_within_target(name: str) -> None:
    score = exposure(UNITS / name)
    assert score <= MAX_EXPOSURE[name], f"{name}: exposure {score} > {MAX_EXPOSURE[name]}"


def test_agent_unit_keeps_only_the_capabilities_its_job_takes() -> None:
    text = (UNITS / "hostdiag-agent.service").read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M)
    assert caps and set(caps.group(1).split()) == {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_SYSLOG", "CAP_CHOWN"}
    for directive in ("Type=notify", "WatchdogSec=30s", "RuntimeDirectory=hostdiag", "StateDirectory=hostdiag",
                      "Environment=MALLOC_ARENA_MAX=2", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert re.search(rf"^{re.escape(directive)}$", text, re.M), directive


def test_collector_unit_has_no_capabilities_and_no_root() -> None:
    text = (UNITS / "hostdiag-collector.service").read_text()
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M)
    assert re.search(r"^User=hostdiag-collector$", text, re.M)
    assert "StateDirectory=hostdiag-collector" in text
