"""The ``psi`` source and the PSI reader, against fixture /proc trees."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.agent import procfs
from hostdiag.agent.config import AgentConfig
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.sources.base import SnapshotContext, SourceSkipped
from hostdiag.agent.sources.psi import PsiSource


class MemorySink:
    def __init__(self) -> None:
        self.members: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        raise AssertionError("sources here write whole JSON members")

    def write_json(self, name: str, obj: Any) -> None:
        self.members[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        self.members[name] = [orjson.loads(orjson.dumps(r)) for r in rows]


def make_ctx(proc_root: Path) -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(), host_id="web-1", labels={}, now=1_700_000_000.0, window_s=900.0,
        proc_root=str(proc_root), probe=FakeProbe(), redactor=load_redactor(), members=MemorySink(),
    )


def test_parse_pressure_reads_some_and_full() -> None:
    text = "some avg10=2.35 avg60=0.71 avg300=0.39 total=2904891\nfull avg10=0.00 avg60=0.10 avg300=0.00 total=17\n"
    assert procfs.parse_pressure(text) == {
        "some": {"avg10": 2.35, "avg60": 0.71, "avg300": 0.39, "total_us": 2904891},
        "full": {"avg10": 0.0, "avg60": 0.1, "avg300": 0.0, "total_us": 17},
    }


def test_parse_pressure_without_full_line() -> None:
    assert procfs.parse_pressure("some avg10=1.00 avg60=2.00 avg300=3.00 total=4\n") == {
        "some": {"avg10": 1.0, "avg60": 2.0, "avg300": 3.0, "total_us": 4}
    }


def test_collect_writes_member_and_evidence(fixtures_dir: Path) -> None:
    ctx = make_ctx(fixtures_dir / "proc")
    notes = asyncio.run(PsiSource(PsiSource.Config()).collect(ctx))
    assert notes == {"resources": ["cpu", "io", "memory"]}
    member = ctx.members.members["psi.json"]  # type: ignore[attr-defined]
    assert member["memory"]["full"] == {"avg10": 8.9, "avg60": 3.21, "avg300": 0.75, "total_us": 45678901}
    assert member["cpu"]["some"]["avg300"] == 0.25
    evidence = ctx.evidence["psi"]
    assert evidence["memory_some_avg10"] == 12.34
    assert evidence["memory_full_avg60"] == 3.21
    assert evidence["io_full_avg10"] == 0.1
    assert evidence["cpu_some_avg60"] == 0.8
    assert "cpu_some_avg300" not in evidence


def test_skipped_without_pressure_directory(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    with pytest.raises(SourceSkipped, match="no pressure stall information"):
        asyncio.run(PsiSource(PsiSource.Config()).collect(ctx))
    assert "psi" not in ctx.evidence


def test_partial_pressure_directory_reports_what_exists(tmp_path: Path, fixtures_dir: Path) -> None:
    (tmp_path / "pressure").mkdir()
    shutil.copy(fixtures_dir / "proc" / "pressure" / "io", tmp_path / "pressure" / "io")
    ctx = make_ctx(tmp_path)
    notes = asyncio.run(PsiSource(PsiSource.Config()).collect(ctx))
    assert notes == {"resources": ["io"]}
    assert set(ctx.evidence["psi"]) == {"io_some_avg10", "io_some_avg60", "io_full_avg10", "io_full_avg60"}


def test_read_all_pressure_leaves_out_missing_resources(tmp_path: Path) -> None:
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "cpu").write_text("some avg10=5.00 avg60=4.00 avg300=3.00 total=9\n")
    assert procfs.read_all_pressure(str(tmp_path)) == {
        "cpu": {"some": {"avg10": 5.0, "avg60": 4.0, "avg300": 3.0, "total_us": 9}}
    }


def test_skipped_when_kernel_has_psi_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With psi=0 on the kernel command line the files exist but reading them fails.
    import errno

    (tmp_path / "pressure").mkdir()
    for res in ("cpu", "memory", "io"):
        (tmp_path / "pressure" / res).write_text("")

    def refuse(resource: str, proc_root: str = "/proc") -> Any:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(procfs, "read_pressure", refuse)
    with pytest.raises(SourceSkipped, match="disabled"):
        asyncio.run(PsiSource(PsiSource.Config()).collect(make_ctx(tmp_path)))
