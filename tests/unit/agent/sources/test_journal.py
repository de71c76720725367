"""The ``journal`` source, driven by a fake journalctl (a script printing canned JSON)."""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.agent.config import AgentConfig, JournalSection
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.sources.base import SnapshotContext, SourceSkipped
from hostdiag.agent.sources.journal import JournalSource

NOW = 1_714_565_100.0
WINDOW = 300.0

FAKE = """#!{python}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
cfg = json.load(open(os.path.join(here, "fake.json")))
with open(os.path.join(here, "argv.json"), "w") as f:
    json.dump(sys.argv[1:], f)
with open(os.path.join(here, "pid"), "w") as f:
    f.write(str(os.getpid()))
for e in cfg.get("entries", []):
    sys.stdout.write(json.dumps(e) + "\\n")
sys.stdout.flush()
if cfg.get("stderr"):
    sys.stderr.write(cfg["stderr"])
if cfg.get("hang"):
    time.sleep(60)
sys.exit(cfg.get("exit", 0))
"""


def fake_journalctl(tmp_path: Path, **cfg: Any) -> Path:
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    script = d / "journalctl"
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(0o755)
    (d / "fake.json").write_text(orjson.dumps(cfg).decode())
    return script


def entry(t: float, message: Any, priority: int = 6, **extra: Any) -> dict[str, Any]:
    return {"__CURSOR": f"c{t}", "__REALTIME_TIMESTAMP": str(int(t * 1e6)), "PRIORITY": str(priority),
            "_PID": "7", "_SYSTEMD_UNIT": "app.service", "SYSLOG_IDENTIFIER": "app", "MESSAGE": message, **extra}


class Writer:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> bool:
        self.data += data
        return True

    def close(self) -> None:
        self.closed = True


class MemberSink:
    def __init__(self) -> None:
        self.writers: dict[str, Writer] = {}

    def open(self, name: str) -> Writer:
        self.writers[name] = Writer()
        return self.writers[name]

    def write_json(self, name: str, obj: Any) -> None:
        raise AssertionError("not used")

    def write_ndjson(self, name: str, rows: Any) -> None:
        raise AssertionError("not used")

    def rows(self, name: str) -> list[dict[str, Any]]:
        assert self.writers[name].closed
        return [orjson.loads(line) for line in bytes(self.writers[name].data).splitlines()]


class Masking:
    def __init__(self) -> None:
        self.calls = 0

    def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
        self.calls += 1
        n = text.count("hunter2")
        if n and counts is not None:
            counts["password"] += n
        return text.replace("hunter2", "[REDACTED]")

    def redact_argv(self, argv: Any, counts: Any = None) -> list[str]:
        return list(argv)

    def redact_env(self, env: Any, counts: Any = None) -> dict[str, str]:
        return dict(env)


def ctx_for(sink: MemberSink, journal: JournalSection | None = None) -> SnapshotContext:
    return SnapshotContext(
        config=AgentConfig(journal=journal or JournalSection()), host_id="web-1", labels={}, now=NOW,
        window_s=WINDOW, proc_root="/nonexistent", probe=FakeProbe(), redactor=Masking(), members=sink,
    )


def test_skipped_when_journalctl_is_absent(tmp_path: Path) -> None:
    source = JournalSource(JournalSource.Config(journalctl=str(tmp_path / "no" / "journalctl")))
    with pytest.raises(SourceSkipped, match="not found"):
        asyncio.run(source.collect(ctx_for(MemberSink())))
    assert not (tmp_path / "no").exists()


def test_skipped_when_the_journal_is_off(tmp_path: Path) -> None:
    script = fake_journalctl(tmp_path)
    source = JournalSource(JournalSource.Config(journalctl=str(script)))
    with pytest.raises(SourceSkipped, match="off"):
        asyncio.run(source.collect(ctx_for(MemberSink(), JournalSection(enabled="off"))))
    assert not (script.parent / "argv.json").exists()


def test_entries_of_the_window_are_written_redacted_with_known_fields(tmp_path: Path) -> None:
    script = fake_journalctl(tmp_path, entries=[
        entry(NOW - 400, "before the window"),  # journalctl -n may reach back this far
        entry(NOW - 200, "login password=hunter2", priority=3, _CMDLINE="app --password=hunter2",
              CUSTOM_FIELD="dropped"),
        entry(NOW - 10, [104, 117, 110, 116, 101, 114, 50], priority=4),  # binary: "hunter2"
        entry(NOW - 5, "multi\nline hunter2"),
    ])
    sink = MemberSink()
    ctx = ctx_for(sink, JournalSection(units=("app.service", "db.service"), max_entries=100))
    notes = asyncio.run(JournalSource(JournalSource.Config(journalctl=str(script))).collect(ctx))
    rows = sink.rows("journal.ndjson")
    assert [r["MESSAGE"] for r in rows] == ["login password=[REDACTED]", "[REDACTED]", "multi\nline [REDACTED]"]
    assert rows[0]["_CMDLINE"] == "app --password=[REDACTED]"
    assert "CUSTOM_FIELD" not in rows[0] and rows[0]["_SYSTEMD_UNIT"] == "app.service"
    assert ctx.redaction_counts["password"] == 4
    argv = orjson.loads((script.parent / "argv.json").read_text())
    assert argv[:2] == ["-o", "json"]
    assert f"--since=@{int(NOW - WINDOW)}" in argv and f"--until=@{int(NOW) + 1}" in argv
    assert argv[argv.index("-n") + 1] == "100"
    assert argv[-4:] == ["--unit", "app.service", "--unit", "db.service"]
    assert notes["entries"] == 3 and notes["capped"] is False and notes["dropped_fields"] == {"CUSTOM_FIELD": 1}
    ev = ctx.evidence["journal"]
    assert ev["entries"] == 3 and ev["error_entries"] == 1 and ev["warning_entries"] == 1
    assert len(ev["error_entries_per_min"]) == 6 and sum(ev["error_entries_per_min"]) == 1


def test_at_most_max_entries_are_kept_and_journalctl_is_stopped(tmp_path: Path) -> None:
    script = fake_journalctl(tmp_path, entries=[entry(NOW - 100 + i * 0.01, f"m{i}") for i in range(50)], hang=True)
    sink = MemberSink()
    ctx = ctx_for(sink, JournalSection(max_entries=10))
    notes = asyncio.run(asyncio.wait_for(JournalSource(JournalSource.Config(journalctl=str(script))).collect(ctx), 20))
    assert [r["MESSAGE"] for r in sink.rows("journal.ndjson")] == [f"m{i}" for i in range(10)]
    assert notes["capped"] is True
    pid = int((script.parent / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_failing_journalctl_fails_the_source_with_its_message(tmp_path: Path) -> None:
    script = fake_journalctl(tmp_path, exit=1, stderr="Failed to get journal access: Permission denied")
    with pytest.raises(RuntimeError, match="status 1: Failed to get journal access: Permission denied"):
        asyncio.run(JournalSource(JournalSource.Config(journalctl=str(script))).collect(ctx_for(MemberSink())))


def test_the_subprocess_is_killed_when_the_snapshot_gives_up(tmp_path: Path, wait_for: Any) -> None:
    script = fake_journalctl(tmp_path, entries=[], hang=True)
    source = JournalSource(JournalSource.Config(journalctl=str(script)))

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(source.collect(ctx_for(MemberSink())))
        deadline = asyncio.get_running_loop().time() + 10
        while not (script.parent / "pid").exists():
            assert asyncio.get_running_loop().time() < deadline, "journalctl did not start"
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(task, 0.2)

    asyncio.run(scenario())
    pid = int((script.parent / "pid").read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout_s=10, what="the journalctl subprocess to be gone")
