"""The journald follower, driven by a fake journalctl (a script that prints canned JSON)."""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.agent.config import JournalSection
from hostdiag.agent.tail import TailManager
from hostdiag.agent.tail.checkpoint import load_checkpoint
from hostdiag.agent.tail.journal import JournalFollower, entry_line, message_text, redact_many
from hostdiag.agent.tail.ring import LogRing

T0 = 1_714_564_800.0

FAKE = """#!{python}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
cfg = json.load(open(os.path.join(here, "fake.json")))
args = sys.argv[1:]
with open(os.path.join(here, "argv.ndjson"), "a") as f:
    f.write(json.dumps(args) + "\\n")
if "--follow" not in args and "-n" in args and args[args.index("-n") + 1] == "1":
    sys.exit(cfg.get("probe_rc", 0))
for e in cfg.get("entries", []):
    sys.stdout.write(json.dumps(e) + "\\n")
sys.stdout.flush()
if cfg.get("stderr"):
    sys.stderr.write(cfg["stderr"])
    sys.stderr.flush()
if cfg.get("exit") is not None:
    sys.exit(cfg["exit"])
deadline = time.time() + 30
while time.time() < deadline:
    time.sleep(0.05)
"""


def fake_journalctl(tmp_path: Path, **cfg: Any) -> Path:
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    script = d / "journalctl"
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(0o755)
    (d / "fake.json").write_text(orjson.dumps(cfg).decode())
    return script


def invocations(script: Path) -> list[list[str]]:
    path = script.parent / "argv.ndjson"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_text().splitlines()]


def entry(i: int, message: Any, priority: int = 6, **extra: Any) -> dict[str, Any]:
    return {
        "__CURSOR": f"s=abc;i={i}",
        "__REALTIME_TIMESTAMP": str(int((T0 + i) * 1e6)),
        "PRIORITY": str(priority),
        "SYSLOG_IDENTIFIER": "sshd",
        "_PID": "42",
        "MESSAGE": message,
        **extra,
    }


class Masking:
    def __init__(self) -> None:
        self.calls = 0

    def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
        self.calls += 1
        n = text.count("hunter2")
        if n and counts is not None:
            counts["password"] += n
        return text.replace("hunter2", "[REDACTED]")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def until(predicate: Any, what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def follower(tmp_path: Path, script: Path | str, *, enabled: str = "on", **kw: Any) -> JournalFollower:
    ring = LogRing(64 * 1024, 900, Clock(T0 + 60))
    args: dict[str, Any] = dict(journalctl=str(script), redactor=Masking(), counts=collections.Counter(),
                                window_s=900.0, clock=Clock(T0 + 60), retry_initial_s=0.01)
    args.update(kw)
    return JournalFollower(JournalSection(enabled=enabled, units=("ssh.service",)), ring, **args)


def test_entries_reach_the_ring_redacted_with_their_time_and_level(tmp_path: Path) -> None:
    script = fake_journalctl(tmp_path, entries=[
        entry(1, "Accepted publickey for alice"),
        entry(2, "bad password=hunter2 for bob", priority=4),
        entry(3, [104, 105, 0xFF], priority=3),  # a binary MESSAGE
    ])
    f = follower(tmp_path, script)

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(f.run())
        await until(lambda: f.entries == 3, "three entries")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    got = f.ring.lines_since(0)
    assert [t for t, _ in got] == [T0 + 1, T0 + 2, T0 + 3]
    assert got[0][1] == "2024-05-01T12:00:01.000000Z sshd[42]: Accepted publickey for alice"
    assert got[1][1].endswith("bad password=[REDACTED] for bob")
    assert got[2][1].endswith("sshd[42]: hi\ufffd")
    counts = f.ring.level_counts(T0)
    assert counts[0]["error"] == 1 and counts[0]["warning"] == 1 and counts[0]["lines"] == 3
    assert f.cursor == "s=abc;i=3" and f.cursor_changed
    assert f._counts["password"] == 1
    [argv] = [a for a in invocations(script) if "--follow" in a]
    assert argv[:6] == ["-o", "json", "--follow", "--no-tail", "--no-pager", "--quiet"]
    assert f"--since=@{int(T0 + 60 - 900)}" in argv
    assert argv[-2:] == ["--unit", "ssh.service"]


def test_a_saved_cursor_is_resumed_and_a_stale_one_is_not(tmp_path: Path) -> None:
    f = follower(tmp_path, "journalctl", cursor="s=abc;i=9", cursor_saved_at=T0)
    assert "--after-cursor=s=abc;i=9" in f.command("journalctl")
    stale = follower(tmp_path, "journalctl", cursor="s=abc;i=9", cursor_saved_at=T0 - 3600)
    cmd = stale.command("journalctl")
    assert not any(a.startswith("--after-cursor") for a in cmd)
    assert f"--since=@{int(T0 + 60 - 900)}" in cmd


def test_journalctl_failing_is_recorded_and_retried_not_raised(tmp_path: Path) -> None:
    script = fake_journalctl(tmp_path, exit=1, stderr="Failed to open journal: No such file")
    f = follower(tmp_path, script)

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(f.run())
        await until(lambda: f.restarts >= 2, "two attempts")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert f.error == "journalctl exited with status 1: Failed to open journal: No such file"
    assert f.status()["error"] == f.error and f.status()["name"] == "journal"


def test_missing_journalctl_is_an_error_when_on_and_quietly_off_when_auto(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "journalctl")
    on = follower(tmp_path, missing, enabled="on")
    auto = follower(tmp_path, missing, enabled="auto")
    asyncio.run(on.run())
    asyncio.run(auto.run())
    assert on.error == f"{missing} not found"
    assert auto.error is None and auto.state == "off: journalctl not found"


def test_auto_stays_off_when_the_journal_is_not_readable(tmp_path: Path) -> None:
    script = fake_journalctl(tmp_path, probe_rc=1, entries=[entry(1, "x")])
    f = follower(tmp_path, script, enabled="auto")
    asyncio.run(f.run())
    assert f.state.startswith("off: journal not readable")
    assert not any("--follow" in a for a in invocations(script))


def test_the_manager_runs_the_follower_and_checkpoints_the_cursor(tmp_path: Path) -> None:
    script = fake_journalctl(tmp_path, entries=[entry(1, "one"), entry(2, "two")])
    m = TailManager([], checkpoint_path=str(tmp_path / "tail.json"), redactor=Masking(), ring_bytes=65536,
                    max_line_bytes=1024, poll_interval_s=0.01, window_s=900.0,
                    journal=JournalSection(enabled="on"), journalctl=str(script))
    assert "journal" in m.rings()

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(m.run())
        await until(lambda: len(m.rings()["journal"].lines_since(0)) == 2, "journal lines")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    doc, _ = load_checkpoint(str(tmp_path / "tail.json"))
    assert doc["journal"]["cursor"] == "s=abc;i=2"
    [row] = [r for r in m.status() if r["name"] == "journal"]
    assert row["lines"] == 2 and row["error"] is None
    # A new manager resumes after the cursor.
    m2 = TailManager([], checkpoint_path=str(tmp_path / "tail.json"), redactor=Masking(), ring_bytes=65536,
                     max_line_bytes=1024, poll_interval_s=0.01, window_s=900.0,
                     journal=JournalSection(enabled="on"), journalctl=str(script))
    assert "--after-cursor=s=abc;i=2" in m2._journal.command(str(script))  # type: ignore[union-attr]


def test_journal_off_means_no_follower_and_no_ring(tmp_path: Path) -> None:
    m = TailManager([], checkpoint_path=str(tmp_path / "tail.json"), redactor=Masking(), ring_bytes=65536,
                    max_line_bytes=1024, poll_interval_s=0.01, window_s=900.0, journal=JournalSection(enabled="off"))
    assert "journal" not in m.rings()
    assert m.status() == []


def test_entry_helpers() -> None:
    assert message_text(None) == "" and message_text([104, 105]) == "hi" and message_text(["a", "b"]) == "a\nb"
    assert entry_line({"MESSAGE": "m", "_COMM": "cron"}) == "- cron: m"
    red = Masking()
    counts: collections.Counter[str] = collections.Counter()
    out = redact_many(red, ["a hunter2", "b", "multi\nline hunter2", "c hunter2"], counts)
    assert out == ["a [REDACTED]", "b", "multi\nline [REDACTED]", "c [REDACTED]"]
    assert red.calls == 2 and counts["password"] == 3
