"""The tail checkpoint file is replaced atomically and survives a crash mid-write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.agent.tail import checkpoint as ck


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "tail.json")  # the directory is created
    files = [{"name": "app", "watch_path": "/l/app.log", "path": "/l/app.log", "dev": 1, "ino": 2,
              "fp": "ab", "fp_len": 3, "offset": 10, "state": "active", "seen_at": 5.0}]
    ck.save_checkpoint(path, files, {"cursor": "s=1", "saved_at": 5.0}, 5.0)
    doc, error = ck.load_checkpoint(path)
    assert error is None
    assert doc["files"] == files
    assert doc["journal"] == {"cursor": "s=1", "saved_at": 5.0}
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    assert not os.path.exists(path + ".tmp")


def test_write_is_tmp_fsync_rename_then_directory_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "tail.json")
    calls: list[tuple[str, Any]] = []
    real_open, real_fsync, real_replace, real_write = os.open, os.fsync, os.replace, os.write
    fd_names: dict[int, str] = {}

    def spy_open(p: str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(p, flags, mode)
        fd_names[fd] = os.path.basename(p)
        return fd

    def spy_write(fd: int, data: Any) -> int:
        calls.append(("write", fd_names.get(fd)))
        return real_write(fd, data)

    def spy_fsync(fd: int) -> None:
        calls.append(("fsync", fd_names.get(fd)))
        real_fsync(fd)

    def spy_replace(a: str, b: str) -> None:
        calls.append(("replace", (os.path.basename(a), os.path.basename(b))))
        real_replace(a, b)

    monkeypatch.setattr(ck.os, "open", spy_open)
    monkeypatch.setattr(ck.os, "write", spy_write)
    monkeypatch.setattr(ck.os, "fsync", spy_fsync)
    monkeypatch.setattr(ck.os, "replace", spy_replace)
    ck.write_atomic(path, b"{}")
    assert calls == [
        ("write", "tail.json.tmp"),
        ("fsync", "tail.json.tmp"),
        ("replace", ("tail.json.tmp", "tail.json")),
        ("fsync", tmp_path.name),
    ]


def test_a_crash_before_the_rename_leaves_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "tail.json")
    old = [{"dev": 1, "ino": 2, "fp": "aa", "fp_len": 1, "offset": 100, "path": "/x", "watch_path": "/x"}]
    ck.save_checkpoint(path, old, {}, 1.0)

    def crash(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.os, "replace", crash)
    with pytest.raises(OSError):
        ck.save_checkpoint(path, [{**old[0], "offset": 999}], {}, 2.0)
    doc, error = ck.load_checkpoint(path)
    assert error is None
    assert doc["files"][0]["offset"] == 100
    assert not os.path.exists(path + ".tmp")


def test_a_crash_while_writing_the_tmp_file_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "tail.json")
    ck.save_checkpoint(path, [], {"cursor": "old"}, 1.0)

    def crash(*_: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ck.os, "fsync", crash)
    with pytest.raises(OSError):
        ck.save_checkpoint(path, [], {"cursor": "new"}, 2.0)
    assert ck.load_checkpoint(path)[0]["journal"] == {"cursor": "old"}


def test_missing_checkpoint_is_empty_without_error(tmp_path: Path) -> None:
    doc, error = ck.load_checkpoint(str(tmp_path / "none.json"))
    assert doc["files"] == [] and error is None


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 99, "files": []}'])
def test_corrupt_checkpoint_is_ignored_with_a_reason(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tail.json"
    path.write_bytes(content)
    doc, error = ck.load_checkpoint(str(path))
    assert doc["files"] == []
    assert error and "tail.json" in error


def test_malformed_entries_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "tail.json"
    good = {"dev": 1, "ino": 2, "fp": "aa", "fp_len": 1, "offset": 5}
    path.write_bytes(orjson.dumps({"version": 1, "files": [good, {"dev": "x"}, 7, {**good, "offset": -1}]}))
    doc, error = ck.load_checkpoint(str(path))
    assert error is None
    assert doc["files"] == [good]
