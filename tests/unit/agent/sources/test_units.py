"""The ``units`` source: parsing captured systemctl output, and running a stand-in systemctl."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext, SourceSkipped
from hostdiag.agent.sources.units import UnitsSource, parse_list_units, parse_show


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("sources here write whole JSON members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        self.members[name] = [orjson.loads(orjson.dumps(r)) for r in rows]


def make_ctx(tmp_path: Path) -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(), host_id="web-1", labels={}, now=1_700_000_000.0, window_s=900.0,
        proc_root=str(tmp_path), probe=FakeProbe(), redactor=load_redactor(), members=MemorySink(),
    )


def config(fixtures: Path, tmp_path: Path, script: str = "fake-systemctl") -> UnitsSource.Config:
    (tmp_path / "systemd").mkdir(exist_ok=True)
    return UnitsSource.Config(systemctl=str(fixtures / "systemctl" / script), systemd_dir=str(tmp_path / "systemd"))


def test_parse_list_units_json(fixtures_dir: Path) -> None:
    fmt, units = parse_list_units((fixtures_dir / "systemctl" / "list-units.json").read_text())
    assert fmt == "json"
    assert units[0] == {
        "unit": "api.service", "load": "loaded", "active": "failed", "sub": "failed", "description": "Example API server"
    }
    assert [u["unit"] for u in units] == ["api.service", "worker@2.service", "backup.timer"]


def test_parse_list_units_plain(fixtures_dir: Path) -> None:
    fmt, units = parse_list_units((fixtures_dir / "systemctl" / "list-units.plain").read_text())
    assert fmt == "plain"
    assert units[1] == {
        "unit": "worker@2.service", "load": "loaded", "active": "activating", "sub": "auto-restart",
        "description": "Queue worker 2",
    }


def test_parse_list_units_table_with_markers_and_legend(fixtures_dir: Path) -> None:
    fmt, units = parse_list_units((fixtures_dir / "systemctl" / "list-units.bullets").read_text())
    assert fmt == "plain"
    assert units == [
        {"unit": "api.service", "load": "loaded", "active": "failed", "sub": "failed", "description": "Example API server"}
    ]


def test_parse_list_units_empty() -> None:
    assert parse_list_units("[]\n") == ("json", [])
    assert parse_list_units("") == ("plain", [])


def test_parse_show_blocks(fixtures_dir: Path) -> None:
    show = parse_show((fixtures_dir / "systemctl" / "show.txt").read_text())
    assert show["worker@2.service"]["NRestarts"] == "17"
    assert show["api.service"]["ExecMainStatus"] == "1"
    assert "NRestarts" not in show["backup.timer"]


def test_collect_reports_failed_and_restarting_units(fixtures_dir: Path, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    notes = asyncio.run(UnitsSource(config(fixtures_dir, tmp_path)).collect(ctx))
    assert notes == {"format": "json", "failed": 2, "units": 3}
    member = ctx.members.members["units.json"]  # type: ignore[attr-defined]
    api = member["units"][0]
    assert api["unit"] == "api.service"
    assert api["restarts"] == 5
    assert api["result"] == "exit-code"
    assert api["exit_status"] == 1
    assert api["state_since"] == "Tue 2023-11-14 22:05:00 UTC"
    assert member["units"][2]["restarts"] is None  # timers have no restart counter
    assert ctx.evidence["units"] == {
        "failed_units": ["api.service", "backup.timer"],
        "restarting_units": ["worker@2.service"],
        "restarts": {"api.service": 5, "worker@2.service": 17},
    }


def test_collect_parses_plain_output_of_older_systemd(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SYSTEMCTL_LIST", "list-units.plain")
    ctx = make_ctx(tmp_path)
    notes = asyncio.run(UnitsSource(config(fixtures_dir, tmp_path)).collect(ctx))
    assert notes["format"] == "plain"
    assert ctx.evidence["units"]["failed_units"] == ["api.service"]
    assert ctx.evidence["units"]["restarts"] == {"api.service": 5, "worker@2.service": 17}


def test_max_units_caps_the_list(fixtures_dir: Path, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    cfg = UnitsSource.Config(
        systemctl=str(fixtures_dir / "systemctl" / "fake-systemctl"), systemd_dir=str(tmp_path), max_units=1
    )
    notes = asyncio.run(UnitsSource(cfg).collect(ctx))
    assert notes["units_omitted"] == 2
    assert [u["unit"] for u in ctx.members.members["units.json"]["units"]] == ["api.service"]  # type: ignore[attr-defined]


def test_skipped_without_systemd(tmp_path: Path) -> None:
    cfg = UnitsSource.Config(systemd_dir=str(tmp_path / "no-systemd"))
    with pytest.raises(SourceSkipped, match="systemd is not running"):
        asyncio.run(UnitsSource(cfg).collect(make_ctx(tmp_path)))


def test_skipped_without_systemctl(tmp_path: Path) -> None:
    cfg = UnitsSource.Config(systemctl=str(tmp_path / "no-systemctl"), systemd_dir=str(tmp_path))
    with pytest.raises(SourceSkipped, match="not found"):
        asyncio.run(UnitsSource(cfg).collect(make_ctx(tmp_path)))


def test_failing_systemctl_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "broken-systemctl"
    script.write_text("#!/bin/sh\necho 'Failed to connect to bus: No such file or directory' >&2\nexit 1\n")
    script.chmod(0o755)
    cfg = UnitsSource.Config(systemctl=str(script), systemd_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="status 1: Failed to connect to bus"):
        asyncio.run(UnitsSource(cfg).collect(make_ctx(tmp_path)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancellation_kills_systemctl(fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      wait_for: Any) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("FAKE_SYSTEMCTL_PIDFILE", str(pidfile))
    cfg = config(fixtures_dir, tmp_path, script="hanging-systemctl")
    pid: int | None = None

    async def main() -> None:
        nonlocal pid
        task = asyncio.create_task(UnitsSource(cfg).collect(make_ctx(tmp_path)))
        await asyncio.to_thread(wait_for, lambda: pidfile.exists() and pidfile.read_text().strip(), 10.0,
                                what="stand-in systemctl started")
        pid = int(pidfile.read_text())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
        assert pid is not None
        assert not _alive(pid)  # killed and reaped before the cancellation finished
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, 9)
