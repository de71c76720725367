"""The ``logs`` source: from the recorder's rings, and standalone from the files."""

from __future__ import annotations

import asyncio
import collections
import errno
import io
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pytest

from hostdiag.agent.config import AgentConfig, LogSection, RecorderSection
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.sources.base import SnapshotContext, SourceSkipped
from hostdiag.agent.sources.logs import LogsSource, read_recent, safe_name
from hostdiag.agent.tail.lines import LEVEL_ERROR
from hostdiag.agent.tail.ring import LogRing

NOW = 1_714_565_100.0  # 5 minutes after T0
T0 = 1_714_564_800.0


class Writer:
    def __init__(self, cap: int) -> None:
        self.data = bytearray()
        self.cap = cap
        self.closed = False

    def write(self, data: bytes) -> bool:
        room = self.cap - len(self.data)
        self.data += data[: max(0, room)]
        return len(data) <= room

    def close(self) -> None:
        self.closed = True


class MemberSink:
    def __init__(self, cap: int = 1 << 30) -> None:
        self.cap = cap
        self.writers: dict[str, Writer] = {}
        self.json: dict[str, Any] = {}

    def open(self, name: str) -> Writer:
        assert name not in self.writers, f"member {name} written twice"
        self.writers[name] = Writer(self.cap)
        return self.writers[name]

    def write_json(self, name: str, obj: Any) -> None:
        self.json[name] = orjson.loads(orjson.dumps(obj))

    def write_ndjson(self, name: str, rows: Any) -> None:
        raise AssertionError("not used")

    def text(self, name: str) -> str:
        w = self.writers[name]
        assert w.closed
        return w.data.decode()


class Recorder:
    def __init__(self, rings: dict[str, Any]) -> None:
        self.rings = rings

    def metrics_since(self, since: float) -> list[dict[str, Any]]:
        return []

    def top_since(self, since: float) -> list[dict[str, Any]]:
        return []

    def probes_since(self, since: float) -> list[dict[str, Any]]:
        return []

    def log_rings(self) -> dict[str, Any]:
        return self.rings


class Masking:
    def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
        n = text.count("hunter2")
        if n and counts is not None:
            counts["password"] += n
        return text.replace("hunter2", "[REDACTED]")

    def redact_argv(self, argv: Any, counts: Any = None) -> list[str]:
        return list(argv)

    def redact_env(self, env: Any, counts: Any = None) -> dict[str, str]:
        return dict(env)


def ctx_for(config: AgentConfig, sink: MemberSink, recorder: Any = None, window_s: float = 120.0) -> SnapshotContext:
    return SnapshotContext(
        config=config, host_id="web-1", labels={}, now=NOW, window_s=window_s, proc_root="/nonexistent",
        probe=FakeProbe(), redactor=Masking(), members=sink, recorder=recorder,
    )


def test_safe_names() -> None:
    assert safe_name("/var/log/nginx/access.log") == "_var_log_nginx_access.log"
    assert safe_name("app logs (prod)") == "app_logs__prod_"
    assert safe_name("..") == "log.."
    assert safe_name("ünï") == "_n_"


def test_recorder_mode_writes_the_window_of_each_ring_and_the_evidence() -> None:
    clock = lambda: NOW  # noqa: E731
    app = LogRing(65536, 900, clock)
    app.append_block(NOW - 200, "too old\n", lines=1, errors=1)
    app.append_block(NOW - 100, "ERROR in window\nplain\n", lines=2, errors=1)
    app.append_event(NOW - 30, "WARN recent\n  detail", 1)
    app.append_block(NOW + 5, "after the snapshot started\n", lines=1)
    journal = LogRing(65536, 900, clock)
    journal.append_event(NOW - 10, "sshd[1]: hello", 0)
    sink = MemberSink()
    ctx = ctx_for(AgentConfig(), sink, Recorder({"/var/log/app.log": app, "journal": journal}))
    notes = asyncio.run(LogsSource(LogsSource.Config()).collect(ctx))
    assert sink.text("logs/var_log_app.log") == "ERROR in window\nplain\nWARN recent\n  detail\n"
    assert sink.text("logs/journal.log") == "sshd[1]: hello\n"
    index = {e["name"]: e for e in sink.json["logs/index.json"]}
    assert index["/var/log/app.log"] == {
        "name": "/var/log/app.log", "path": "/var/log/app.log", "member": "logs/var_log_app.log",
        "lines": 3, "bytes": len("ERROR in window\nplain\nWARN recent\n  detail\n"), "truncated": False,
        "source": "recorder",
    }
    assert index["journal"]["path"] == "journald"
    ev = ctx.evidence["logs"]["/var/log/app.log"]
    # The window starts 120 s before NOW: three minutes, NOW's included.
    assert ev["error_lines_per_min"] == [1, 0, 0]
    assert ev["warning_lines_per_min"] == [0, 1, 0]
    assert ev["error_lines_total"] == 1
    assert notes["source"] == "recorder" and notes["logs"] == 2 and notes["lines"] == 4


def test_recorder_mode_marks_a_member_cut_by_its_cap() -> None:
    ring = LogRing(1 << 20, 900, lambda: NOW)
    ring.append_block(NOW - 1, "x" * 100 + "\n" * 1, lines=1)
    ring.append_block(NOW - 1, "".join(f"line {i}\n" for i in range(1000)), lines=1000)
    sink = MemberSink(cap=500)
    ctx = ctx_for(AgentConfig(), sink, Recorder({"app": ring}))
    notes = asyncio.run(LogsSource(LogsSource.Config()).collect(ctx))
    assert sink.json["logs/index.json"][0]["truncated"] is True
    assert notes["truncated"] == ["app"]


def test_recorder_mode_with_no_rings_is_skipped() -> None:
    ctx = ctx_for(AgentConfig(), MemberSink(), Recorder({}))
    with pytest.raises(SourceSkipped):
        asyncio.run(LogsSource(LogsSource.Config()).collect(ctx))


def standalone_config(logs: list[LogSection], ring_bytes: int = 4096) -> AgentConfig:
    return AgentConfig(logs=tuple(logs), recorder=RecorderSection(log_ring_bytes=ring_bytes, max_line_bytes=256))


def test_standalone_reads_the_end_of_each_file_redacted(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    app.write_text("".join(f"line {i:05d} ERROR\n" if i % 100 == 0 else f"line {i:05d} ok\n" for i in range(2000))
                   + "login password=hunter2\n" + "L" * 400 + "\n")
    d = tmp_path / "svc"
    d.mkdir()
    (d / "a.log").write_text("a WARN\n")
    (d / "b.log").write_bytes(b"b \xff\n")
    config = standalone_config([LogSection(path=str(app), name="app"), LogSection(path=str(d / "*.log"))])
    sink = MemberSink()
    ctx = ctx_for(config, sink)
    notes = asyncio.run(LogsSource(LogsSource.Config()).collect(ctx))
    text = sink.text("logs/app.log")
    assert len(text.encode()) <= 4096
    got = text.split("\n")
    assert got[0].startswith("line ") and got[0].split()[2] in ("ok", "ERROR")  # a whole line
    assert got[-3] == "login password=[REDACTED]"
    assert got[-2] == "L" * 256 + " …[truncated 144 bytes]"
    assert ctx.redaction_counts["password"] == 1
    index = {e["name"]: e for e in sink.json["logs/index.json"]}
    assert index["app"]["source"] == "file-tail" and index["app"]["truncated"] is True  # older lines left out
    assert index["app"]["cut_lines"] == 1
    assert index[str(d / "b.log")]["invalid_utf8_lines"] == 1
    assert sink.text(f"logs/{safe_name(str(d / 'a.log')).lstrip('_')}") == "a WARN\n"
    assert ctx.evidence["logs"][str(d / "a.log")]["warning_lines_total"] == 1
    assert ctx.evidence["logs"]["app"]["error_lines_total"] == sum(1 for line in got if line.endswith("ERROR"))
    assert notes["logs"] == 3 and "errors" not in notes


def test_standalone_an_unreadable_file_is_a_note_not_a_failure(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.log", tmp_path / "bad.log"
    good.write_text("fine\n")
    bad.write_text("secret\n")

    def opener(path: str) -> BinaryIO:
        if path == str(bad):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return open(path, "rb")

    config = standalone_config([LogSection(path=str(bad), name="bad"), LogSection(path=str(good), name="good"),
                                LogSection(path=str(tmp_path / "missing.log"), name="missing")])
    sink = MemberSink()
    notes = asyncio.run(LogsSource(LogsSource.Config(), opener=opener).collect(ctx_for(config, sink)))
    assert sink.text("logs/good.log") == "fine\n"
    assert "logs/bad.log" not in sink.writers
    assert notes["errors"]["bad"] == f"{bad}: Permission denied"
    assert "No such file" in notes["errors"]["missing"]
    assert [e["name"] for e in sink.json["logs/index.json"]] == ["good"]


def test_standalone_fails_when_every_file_fails(tmp_path: Path) -> None:
    config = standalone_config([LogSection(path=str(tmp_path / "none.log"))])
    with pytest.raises(RuntimeError, match="no log could be read"):
        asyncio.run(LogsSource(LogsSource.Config()).collect(ctx_for(config, MemberSink())))


def test_standalone_without_logs_configured_is_skipped() -> None:
    with pytest.raises(SourceSkipped):
        asyncio.run(LogsSource(LogsSource.Config()).collect(ctx_for(AgentConfig(), MemberSink())))


@pytest.mark.parametrize(
    "content, max_bytes, expected, cut",
    [
        (b"a\nb\nc\n", 100, b"a\nb\nc\n", False),
        (b"aaa\nbbb\nccc\n", 6, b"ccc\n", True),  # starts inside "bbb": dropped
        (b"aaa\nbbb\nccc\n", 8, b"bbb\nccc\n", True),  # starts exactly at a line
        (b"x" * 50, 10, b"", True),  # no line start inside the tail
    ],
)
def test_read_recent(content: bytes, max_bytes: int, expected: bytes, cut: bool) -> None:
    assert read_recent(io.BytesIO(content), max_bytes) == (expected, cut)


def test_member_names_are_readable_and_unique() -> None:
    from hostdiag.agent.sources.logs import _member

    taken: set[str] = set()
    assert _member("/var/log/app.log", taken) == "logs/var_log_app.log"
    assert _member("checkout", taken) == "logs/checkout.log"
    assert _member("/var/log/app.log", taken) == "logs/var_log_app-2.log"
    assert _member("..", taken) == "logs/log...log"  # never a bare "." or ".." segment
