"""TailManager: reading, rotation, truncation, checkpoints, globs, errors, multiline, redaction."""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.agent.config import LogSection
from hostdiag.agent.tail import TailManager
from hostdiag.agent.tail import manager as manager_mod
from hostdiag.agent.tail.checkpoint import load_checkpoint

T0 = 1_714_564_800.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class PassThrough:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
        self.calls.append(text)
        return text


def make(tmp_path: Path, logs: list[LogSection], **kw: Any) -> TailManager:
    args: dict[str, Any] = dict(
        checkpoint_path=str(tmp_path / "state" / "tail.json"),
        redactor=PassThrough(),
        ring_bytes=256 * 1024,
        max_line_bytes=1024,
        poll_interval_s=0.01,
        window_s=900.0,
        clock=Clock(),
    )
    args.update(kw)
    return TailManager(logs, **args)


def lines(m: TailManager, name: str) -> list[str]:
    return [text for _, text in m.rings()[name].lines_since(0)]


def row(m: TailManager, name: str) -> dict[str, Any]:
    return next(r for r in m.status() if r["name"] == name)


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def numbered(a: int, b: int) -> str:
    return "".join(f"line {i}\n" for i in range(a, b + 1))


def test_new_lines_are_read_and_an_incomplete_line_waits(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log), name="app")])
    m.poll_once()
    assert row(m, "app")["error"] == f"{log}: not found"
    append(log, "one\ntwo\nthr")
    m.poll_once()
    assert lines(m, "app") == ["one", "two"]
    append(log, "ee\n")
    m.poll_once()
    assert lines(m, "app") == ["one", "two", "three"]
    r = row(m, "app")
    assert r["lines"] == 3 and r["offset"] == r["size"] == log.stat().st_size and r["lag_bytes"] == 0
    assert r["error"] is None and r["path"] == str(log)


def test_a_file_present_at_start_is_backlog_and_not_counted_per_minute(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("ERROR old\nERROR old\n")
    m = make(tmp_path, [LogSection(path=str(log))])
    m.poll_once()
    append(log, "ERROR new\nWARN new\ninfo\n")
    m.poll_once()
    assert lines(m, str(log)) == ["ERROR old", "ERROR old", "ERROR new", "WARN new", "info"]
    counts = m.rings()[str(log)].level_counts(T0)
    assert counts[-1] == {"minute": int(T0), "error": 1, "warning": 1, "lines": 3}


def test_a_big_file_seen_for_the_first_time_is_read_from_its_last_ring_bytes(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text(numbered(1, 20000))
    m = make(tmp_path, [LogSection(path=str(log))], ring_bytes=8192)
    m.poll_once()
    got = lines(m, str(log))
    assert got[-1] == "line 20000"
    assert all(g.startswith("line ") for g in got)  # starts at a line boundary
    numbers = [int(g.split()[1]) for g in got]
    assert numbers == list(range(numbers[0], 20001))
    assert row(m, str(log))["lag_bytes"] == 0


def test_over_long_lines_are_cut_and_flagged_never_dropped(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log))], max_line_bytes=256)
    m.poll_once()
    append(log, "short\n" + "A" * 1000 + "\nafter\n")
    m.poll_once()
    # A very long line arriving in pieces with no newline for a while.
    append(log, "B" * 3000)
    m.poll_once()
    append(log, "B" * 3000)
    m.poll_once()
    append(log, "BBB\nend\n")
    m.poll_once()
    assert lines(m, str(log)) == [
        "short",
        "A" * 256 + " …[truncated 744 bytes]",
        "after",
        "B" * 256 + " …[truncated 5747 bytes]",
        "end",
    ]
    r = row(m, str(log))
    assert r["truncated_lines"] == 2 and r["lines"] == 5 and r["lag_bytes"] == 0


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log))])
    m.poll_once()
    with open(log, "ab") as f:
        f.write(b"ok\nbad \xff byte\nlatin1 caf\xe9\nfine\n")
    m.poll_once()
    assert lines(m, str(log)) == ["ok", "bad \ufffd byte", "latin1 caf\ufffd", "fine"]
    assert row(m, str(log))["invalid_utf8"] == 2


def test_multiline_events_flush_on_the_next_start_or_after_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    clock = Clock()
    sec = LogSection(path=str(log), name="app", multiline_start=r"\d{4}-\d\d-\d\d ", multiline_timeout_s=2.0)
    m = make(tmp_path, [sec], clock=clock)
    m.poll_once()
    append(log, "2024-05-01 INFO start\n2024-05-01 ERROR boom\nTraceback (most recent call last):\n"
                "  File \"x.py\", line 1\nValueError: bad\n")
    m.poll_once()
    # The first event was closed by the second start line; the second is still open.
    assert lines(m, "app") == ["2024-05-01 INFO start"]
    clock.t += 1.0
    append(log, "  more context\n")
    m.poll_once()
    clock.t += 1.5  # 1.5 s since the last line: not yet
    m.poll_once()
    assert len(lines(m, "app")) == 1
    clock.t += 0.5
    m.poll_once()
    assert lines(m, "app") == [
        "2024-05-01 INFO start",
        "2024-05-01 ERROR boom\nTraceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad\n"
        "  more context",
    ]
    counts = m.rings()["app"].level_counts(T0)
    assert sum(c["error"] for c in counts) == 1 and sum(c["lines"] for c in counts) == 2
    assert row(m, "app")["lines"] == 6  # raw lines read


def test_glob_discovers_files_created_later(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    pattern = str(d / "*.log")
    m = make(tmp_path, [LogSection(path=pattern)])
    m.poll_once()
    assert row(m, pattern)["error"] == "no file matches yet"
    (d / "a.log").write_text("a1\n")
    (d / "ignored.txt").write_text("x\n")
    (d / "dir.log").mkdir()  # not a file: ignored
    m.poll_once()
    assert lines(m, str(d / "a.log")) == ["a1"]
    (d / "b.log").write_text("b1\nb2\n")
    append(d / "a.log", "a2\n")
    m.poll_once()
    assert lines(m, str(d / "a.log")) == ["a1", "a2"]
    assert lines(m, str(d / "b.log")) == ["b1", "b2"]
    assert set(m.rings()) == {str(d / "a.log"), str(d / "b.log")}
    assert all(r["error"] is None for r in m.status())


def test_an_unreadable_log_is_reported_retried_and_does_not_stop_others(tmp_path: Path) -> None:
    # Tests run as root, which file modes do not stop: inject the refusal instead.
    good, bad = tmp_path / "good.log", tmp_path / "bad.log"
    good.write_text("")
    bad.write_text("")
    denied = {str(bad)}

    def opener(path: str) -> int:
        if path in denied:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return os.open(path, os.O_RDONLY)

    m = make(tmp_path, [LogSection(path=str(bad), name="bad"), LogSection(path=str(good), name="good")],
             opener=opener)
    m.poll_once()
    append(good, "g1\n")
    append(bad, "b1\n")
    m.poll_once()
    assert lines(m, "good") == ["g1"]
    assert lines(m, "bad") == []
    assert row(m, "bad")["error"] == f"{bad}: Permission denied"
    assert row(m, "good")["error"] is None
    denied.clear()
    m.poll_once()
    assert lines(m, "bad") == ["b1"]  # a file never opened before is new: read from the start
    assert row(m, "bad")["error"] is None


def test_truncation_restarts_from_the_beginning(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log))])
    m.poll_once()
    append(log, numbered(1, 50))
    m.poll_once()
    with open(log, "w") as f:
        f.write("after truncate 1\n")
    m.poll_once()
    append(log, "after truncate 2\n")
    m.poll_once()
    assert lines(m, str(log))[-3:] == ["line 50", "after truncate 1", "after truncate 2"]
    assert row(m, str(log))["rotations"] == 1


def test_truncation_and_regrowth_past_the_offset_between_passes_is_seen(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log))])
    m.poll_once()
    append(log, numbered(1, 5))
    m.poll_once()
    with open(log, "w") as f:
        f.write(numbered(100, 140))  # longer than before: size alone would not tell
    m.poll_once()
    got = lines(m, str(log))
    assert got == [f"line {i}" for i in range(1, 6)] + [f"line {i}" for i in range(100, 141)]


def test_rename_and_create_reads_the_old_file_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log), name="app")])
    m.poll_once()
    append(log, numbered(1, 3))
    m.poll_once()
    old = open(log, "a")  # the application's handle
    old.write(numbered(4, 5))
    old.flush()
    os.rename(log, tmp_path / "app.log.1")
    append(log, numbered(8, 9))  # the new file
    old.write(numbered(6, 7))  # the application writes the old file a little longer
    old.close()
    m.poll_once()
    # The old file is finished before the new one is started.
    assert lines(m, "app") == [f"line {i}" for i in range(1, 10)]
    assert row(m, "app")["rotations"] == 1


def test_a_glob_that_also_matches_the_rotated_name_reads_nothing_twice(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    pattern = str(tmp_path / "app.log*")
    m = make(tmp_path, [LogSection(path=pattern)])
    m.poll_once()
    append(log, numbered(1, 3))
    m.poll_once()
    append(log, numbered(4, 5))
    os.rename(log, tmp_path / "app.log.1")
    append(log, numbered(6, 7))
    m.poll_once()
    append(tmp_path / "app.log.1", "line 5b\n")  # a late write to the rotated file
    m.poll_once()
    assert lines(m, str(log)) == [f"line {i}" for i in range(1, 8)] + ["line 5b"]
    assert str(tmp_path / "app.log.1") not in m.rings()  # the renamed file is still the old log's


def test_a_rotated_file_is_let_go_after_the_rotate_wait(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    clock = Clock()
    m = make(tmp_path, [LogSection(path=str(log), name="app")], clock=clock)
    log.write_text("")
    m.poll_once()
    old = open(log, "a")
    os.rename(log, tmp_path / "app.log.1")
    m.poll_once()
    old.write("late 1\n")
    old.flush()
    clock.t += manager_mod.ROTATE_WAIT_S - 1
    m.poll_once()
    assert lines(m, "app") == ["late 1"]  # still followed
    clock.t += manager_mod.ROTATE_WAIT_S
    m.poll_once()  # idle long enough: closed
    old.write("too late\n")
    old.close()
    m.poll_once()
    assert lines(m, "app") == ["late 1"]


def test_a_deleted_file_is_read_to_its_end_and_a_new_one_followed(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log), name="app")])
    m.poll_once()
    append(log, "a\n")
    m.poll_once()
    append(log, "b\n")
    os.unlink(log)
    m.poll_once()
    assert lines(m, "app") == ["a", "b"]
    assert row(m, "app")["error"] == f"{log}: not found"
    append(log, "c\n")
    m.poll_once()
    assert lines(m, "app") == ["a", "b", "c"]
    assert row(m, "app")["error"] is None


def test_copytruncate_without_a_writer_loses_and_repeats_nothing(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log), name="app")])
    m.poll_once()
    append(log, numbered(1, 5))
    m.poll_once()
    append(log, numbered(6, 7))
    shutil.copyfile(log, tmp_path / "app.log.1")
    os.truncate(log, 0)
    append(log, numbered(8, 9))
    m.poll_once()
    # 6 and 7 were only in the file between our pass and the truncation: copytruncate's own
    # window. Everything that was read is read once.
    got = lines(m, "app")
    assert got == [f"line {i}" for i in (1, 2, 3, 4, 5, 8, 9)]


def test_restart_resumes_at_the_checkpoint_without_rereading_or_skipping(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m1 = make(tmp_path, [LogSection(path=str(log), name="app")])
    m1.poll_once()
    append(log, numbered(1, 10) + "partial li")
    m1.poll_once()
    m1.save_checkpoint()
    append(log, "ne\n" + numbered(11, 12))
    m2 = make(tmp_path, [LogSection(path=str(log), name="app")])
    m2.poll_once()
    assert lines(m2, "app") == ["partial line", "line 11", "line 12"]
    assert row(m2, "app")["offset"] == log.stat().st_size


def test_a_file_rotated_while_the_agent_was_down_is_finished_first(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m1 = make(tmp_path, [LogSection(path=str(log), name="app")])
    m1.poll_once()
    append(log, numbered(1, 3))
    m1.poll_once()
    m1.save_checkpoint()
    del m1
    append(log, numbered(4, 5))  # written after the last checkpoint
    os.rename(log, tmp_path / "app.log.1")
    append(log, numbered(6, 7))
    m2 = make(tmp_path, [LogSection(path=str(log), name="app")])
    m2.poll_once()
    assert lines(m2, "app") == [f"line {i}" for i in range(4, 8)]


def test_a_different_file_behind_a_checkpointed_identity_starts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m1 = make(tmp_path, [LogSection(path=str(log), name="app")])
    m1.poll_once()
    append(log, numbered(1, 3))
    m1.poll_once()
    m1.save_checkpoint()
    # Same inode, other content (rewritten in place while the agent was down).
    with open(log, "r+") as f:
        f.write("rewritten 1\nrewritten 2\nrewritten 3\n")
    m2 = make(tmp_path, [LogSection(path=str(log), name="app")])
    m2.poll_once()
    assert lines(m2, "app") == ["rewritten 1", "rewritten 2", "rewritten 3"]


def test_checkpoint_records_identity_and_committed_offset(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log), name="app")])
    m.poll_once()
    append(log, "x\nincomplete")
    m.poll_once()
    m.save_checkpoint()
    doc, error = load_checkpoint(m.checkpoint_path)
    assert error is None
    [entry] = doc["files"]
    st = log.stat()
    assert (entry["dev"], entry["ino"], entry["offset"]) == (st.st_dev, st.st_ino, 2)
    assert entry["fp_len"] == st.st_size and entry["name"] == "app" and entry["state"] == "active"


def test_the_redactor_sees_whole_blocks_and_counts_hits(tmp_path: Path) -> None:
    class Masking:
        def __init__(self) -> None:
            self.calls = 0

        def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
            self.calls += 1
            n = text.count("password=hunter2")
            if counts is not None and n:
                counts["password"] += n
            return text.replace("password=hunter2", "password=[REDACTED]")

    log = tmp_path / "app.log"
    red = Masking()
    m = make(tmp_path, [LogSection(path=str(log))], redactor=red)
    m.poll_once()
    append(log, "".join(f"user=u{i} password=hunter2\n" if i % 10 == 0 else f"ok {i}\n" for i in range(1000)))
    m.poll_once()
    got = lines(m, str(log))
    assert len(got) == 1000 and "hunter2" not in "".join(got)
    assert red.calls == 1
    assert m.redaction_counts["password"] == 100


def test_a_redactor_with_streams_gets_one_stream_per_file(tmp_path: Path) -> None:
    class Stream:
        def __init__(self, owner: Any, n: int) -> None:
            self.owner, self.n = owner, n

        def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
            self.owner.seen.append((self.n, text))
            return text.upper()

    class Streaming:
        def __init__(self) -> None:
            self.seen: list[tuple[int, str]] = []
            self.streams = 0

        def stream(self) -> Stream:
            self.streams += 1
            return Stream(self, self.streams)

        def redact(self, text: str, counts: Any = None) -> str:
            raise AssertionError("the per-file stream should be used")

    a, b = tmp_path / "a.log", tmp_path / "b.log"
    red = Streaming()
    m = make(tmp_path, [LogSection(path=str(a)), LogSection(path=str(b))], redactor=red)
    m.poll_once()
    append(a, "from a\n")
    append(b, "from b\n")
    m.poll_once()
    append(a, "again a\n")
    m.poll_once()
    assert lines(m, str(a)) == ["FROM A", "AGAIN A"]
    assert red.streams == 2
    by_stream = collections.defaultdict(list)
    for n, text in red.seen:
        by_stream[n].append(text)
    assert sorted(by_stream.values()) == [["from a\n", "again a\n"], ["from b\n"]]


def test_run_polls_saves_the_checkpoint_and_saves_again_when_cancelled(tmp_path: Path, wait_for: Any) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    m = make(tmp_path, [LogSection(path=str(log), name="app")])

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(m.run())
        append(log, numbered(1, 3))
        deadline = asyncio.get_running_loop().time() + 10
        while len(lines(m, "app")) < 3:
            assert asyncio.get_running_loop().time() < deadline, "lines were not read"
            await asyncio.sleep(0.01)
        while not os.path.exists(m.checkpoint_path):
            assert asyncio.get_running_loop().time() < deadline, "checkpoint not written"
            await asyncio.sleep(0.01)
        append(log, "line 4\n")
        while len(lines(m, "app")) < 4:
            assert asyncio.get_running_loop().time() < deadline, "line 4 was not read"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    doc, _ = load_checkpoint(m.checkpoint_path)
    assert doc["files"][0]["offset"] == log.stat().st_size


def test_status_rows_have_the_documented_fields(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("x\n")
    m = make(tmp_path, [LogSection(path=str(log), name="app")])
    m.poll_once()
    [r] = m.status()
    assert set(r) == {"name", "path", "offset", "size", "lag_bytes", "lines", "truncated_lines", "invalid_utf8",
                      "rotations", "error"}
    orjson.dumps(m.status())  # serialisable for the local API


def test_a_corrupt_checkpoint_does_not_stop_tailing(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "tail.json").write_text("{garbage")
    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log), name="app")])
    assert m.checkpoint_error and "not valid JSON" in m.checkpoint_error
    m.poll_once()
    append(log, "a\n")
    m.poll_once()
    m.save_checkpoint()
    assert lines(m, "app") == ["a"]
    assert load_checkpoint(m.checkpoint_path)[1] is None


def test_a_stream_is_reset_when_its_file_is_truncated(tmp_path: Path) -> None:
    class Stream:
        def __init__(self) -> None:
            self.resets = 0

        def redact(self, text: str, counts: Any = None) -> str:
            return text

        def reset(self) -> None:
            self.resets += 1

    stream = Stream()

    class Streaming:
        def stream(self) -> Stream:
            return stream

        def redact(self, text: str, counts: Any = None) -> str:
            return text

    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log))], redactor=Streaming())
    m.poll_once()
    append(log, numbered(1, 20))
    m.poll_once()
    os.truncate(log, 0)
    m.poll_once()
    assert stream.resets == 1


def test_a_private_key_split_across_two_reads_is_redacted_with_the_default_rules(tmp_path: Path) -> None:
    from hostdiag.agent.redact import load_redactor

    log = tmp_path / "app.log"
    m = make(tmp_path, [LogSection(path=str(log))], redactor=load_redactor())
    m.poll_once()
    append(log, "loading key\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretbodyline1\n")
    m.poll_once()
    append(log, "c2VjcmV0Ym9keWxpbmUy\n-----END RSA PRIVATE KEY-----\nkey loaded\n")
    m.poll_once()
    text = "\n".join(lines(m, str(log)))
    assert "secretbodyline1" not in text and "c2VjcmV0Ym9keWxpbmUy" not in text
    assert "loading key" in text and "key loaded" in text
    assert sum(m.redaction_counts.values()) >= 1
