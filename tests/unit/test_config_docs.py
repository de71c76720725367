"""docs/configuration.md lists every config key with its real default and bounds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_reference_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-config-docs"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_every_key_has_a_meaning() -> None:
    rows = [line for line in (REPO / "docs" / "configuration.md").read_text().splitlines() if line.startswith("| `")]
    assert len(rows) > 80
    cells = [row.split("|")[1:-1] for row in rows]
    assert all(len(c) == 5 for c in cells)
    undocumented = [c[0].strip() for c in cells if not c[4].strip()]
    assert undocumented == []
