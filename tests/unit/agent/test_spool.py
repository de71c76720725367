"""The spool: atomic writes, oldest-first bounds, refusal of oversize bundles, recovery, quarantine."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostdiag.agent.spool import BundleTooLargeError, Spool, SpoolError

KiB = 1024
MiB = 1024 * KiB


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Log records of the spool's logger, whatever the global logging setup is."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    logger = logging.getLogger("hostdiag.agent.spool")
    handler = Keep(level=logging.DEBUG)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield got
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def make_bundle(directory: Path, name: str, size: int, fill: bytes = b"x") -> tuple[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.tar.zst"
    data = (fill * (size // max(1, len(fill)) + 1))[:size]
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


def spool_files(spool: Spool) -> list[str]:
    return sorted(p.name for p in Path(spool.dir).iterdir() if p.is_file())


def new_spool(tmp_path: Path, **kw: object) -> Spool:
    kw.setdefault("max_bytes", 100 * MiB)
    kw.setdefault("max_items", 100)
    kw.setdefault("clock", Clock())
    return Spool(str(tmp_path / "spool"), **kw)  # type: ignore[arg-type]


def test_put_places_bundle_and_sidecar_and_keeps_the_original(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    path, sha = make_bundle(tmp_path / "bundles", "b1", 5000)
    item = spool.put(path, {"bundle_id": "b1", "incident_id": "INC-7", "request_id": "r-1"})
    assert item.sha256 == sha  # computed when not given
    assert item.size_bytes == 5000
    assert os.path.exists(path), "the local bundle stays where it was"
    assert Path(item.path).read_bytes() == Path(path).read_bytes()
    assert spool_files(spool) == ["b1.json", "b1.tar.zst"]
    meta = json.loads((Path(spool.dir) / "b1.json").read_text())
    assert meta["bundle_id"] == "b1"
    assert meta["sha256"] == sha
    assert meta["size_bytes"] == 5000
    assert meta["incident_id"] == "INC-7"
    assert meta["request_id"] == "r-1"
    assert meta["attempts"] == 0
    assert meta["enqueued_at"] > 0
    assert spool.get("b1") == item
    assert spool.items() == [item]
    assert spool.status()["depth"] == 1
    assert spool.status()["bytes"] == 5000


def test_writes_are_fsynced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = new_spool(tmp_path)
    path, sha = make_bundle(tmp_path / "bundles", "b1", 100)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("rename", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    spool.put(path, {"bundle_id": "b1", "sha256": sha})
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert len(renames) == 2  # bundle, then sidecar
    for i in renames:
        tmp = events[i][1]
        assert os.path.basename(tmp).startswith(".tmp-")
        synced = [j for j, e in enumerate(events) if e == ("fsync", tmp)]
        assert synced and synced[0] < i, f"{tmp} renamed before it was fsynced"
        dir_syncs = [j for j, e in enumerate(events) if e == ("fsync", spool.dir)]
        assert any(j > i for j in dir_syncs), "directory not fsynced after the rename"
    assert events[renames[0]][1].endswith(".tar.zst") and events[renames[1]][1].endswith(".json")


def test_a_failed_sidecar_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = new_spool(tmp_path)
    path, _ = make_bundle(tmp_path / "bundles", "b1", 100)
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SpoolError, match="No space left"):
        spool.put(path, {"bundle_id": "b1"})
    monkeypatch.undo()
    assert spool.items() == []
    assert spool_files(spool) == []
    again = Spool(spool.dir, 100 * MiB, 100)
    assert again.items() == []


def test_evicts_oldest_first_by_bytes_and_counts_it(tmp_path: Path, records: list[logging.LogRecord]) -> None:
    spool = new_spool(tmp_path, max_bytes=1 * MiB)
    for name in ("a", "b"):
        path, _ = make_bundle(tmp_path / "bundles", name, 400 * KiB)
        spool.put(path, {"bundle_id": name, "incident_id": "INC-1"})
    path, _ = make_bundle(tmp_path / "bundles", "c", 400 * KiB)
    spool.put(path, {"bundle_id": "c"})
    assert [i.bundle_id for i in spool.items()] == ["b", "c"]
    assert spool.bytes == 800 * KiB
    assert spool_files(spool) == ["b.json", "b.tar.zst", "c.json", "c.tar.zst"]
    status = spool.status()
    assert status["evictions"] == 1
    assert status["evicted_bytes"] == 400 * KiB
    evicted = [r for r in records if getattr(r, "event", None) == "spool_evicted"]
    assert len(evicted) == 1
    assert evicted[0].bundle_id == "a"  # type: ignore[attr-defined]
    assert evicted[0].incident_id == "INC-1"  # type: ignore[attr-defined]
    assert evicted[0].limit == "bytes"  # type: ignore[attr-defined]
    assert evicted[0].levelno == logging.WARNING


def test_evicts_oldest_first_by_count(tmp_path: Path, records: list[logging.LogRecord]) -> None:
    spool = new_spool(tmp_path, max_items=3)
    for n in range(5):
        path, _ = make_bundle(tmp_path / "bundles", f"b{n}", 10)
        spool.put(path, {"bundle_id": f"b{n}"})
    assert [i.bundle_id for i in spool.items()] == ["b2", "b3", "b4"]
    assert spool.status()["evictions"] == 2
    assert [r.bundle_id for r in records if getattr(r, "event", None) == "spool_evicted"] == ["b0", "b1"]  # type: ignore[attr-defined]
    assert [getattr(r, "limit", None) for r in records if getattr(r, "event", None) == "spool_evicted"] == ["items"] * 2


def test_a_bundle_larger_than_the_spool_is_refused(tmp_path: Path) -> None:
    spool = new_spool(tmp_path, max_bytes=1 * MiB)
    small, _ = make_bundle(tmp_path / "bundles", "small", 100)
    spool.put(small, {"bundle_id": "small"})
    big, _ = make_bundle(tmp_path / "bundles", "big", 1 * MiB + 1)
    with pytest.raises(BundleTooLargeError) as info:
        spool.put(big, {"bundle_id": "big"})
    assert "spool.max_bytes" in str(info.value)
    assert str(1 * MiB + 1) in str(info.value)
    assert [i.bundle_id for i in spool.items()] == ["small"], "nothing evicted for a bundle that cannot fit"
    assert spool.status()["refused"] == 1
    assert spool.status()["evictions"] == 0


def test_bad_metadata_is_refused(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    path, sha = make_bundle(tmp_path / "bundles", "b1", 10)
    for bad in ("../etc/passwd", "", ".hidden", "a/b", "x" * 200):
        with pytest.raises(SpoolError, match="bundle_id"):
            spool.put(path, {"bundle_id": bad})
    with pytest.raises(SpoolError, match="unknown spool metadata"):
        spool.put(path, {"bundle_id": "b1", "path": "/etc/shadow"})
    with pytest.raises(SpoolError, match="metadata says 11"):
        spool.put(path, {"bundle_id": "b1", "size_bytes": 11})
    with pytest.raises(SpoolError, match="sha256"):
        spool.put(path, {"bundle_id": "b1", "sha256": "nothex"})
    with pytest.raises(SpoolError, match="cannot read bundle"):
        spool.put(str(tmp_path / "missing.tar.zst"), {"bundle_id": "b2"})
    assert spool.items() == []
    assert spool_files(spool) == []


def test_putting_the_same_bundle_twice_is_idempotent(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    path, sha = make_bundle(tmp_path / "bundles", "b1", 10)
    first = spool.put(path, {"bundle_id": "b1", "sha256": sha})
    assert spool.put(path, {"bundle_id": "b1", "sha256": sha}) == first
    other, other_sha = make_bundle(tmp_path / "other", "b1", 10, fill=b"y")
    with pytest.raises(SpoolError, match="different content"):
        spool.put(other, {"bundle_id": "b1", "sha256": other_sha})
    assert len(spool) == 1


def test_delete_and_mark_attempt(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    path, _ = make_bundle(tmp_path / "bundles", "b1", 10)
    spool.put(path, {"bundle_id": "b1"})
    updated = spool.mark_attempt("b1", "UNAVAILABLE: connection refused")
    assert updated is not None and updated.attempts == 1
    assert updated.last_error == "UNAVAILABLE: connection refused"
    meta = json.loads((Path(spool.dir) / "b1.json").read_text())
    assert meta["attempts"] == 1 and meta["last_error"].startswith("UNAVAILABLE")
    assert spool.mark_attempt("nope", "x") is None
    assert spool.delete("b1") is True
    assert spool.delete("b1") is False
    assert spool_files(spool) == []
    assert spool.status()["bytes"] == 0


def test_items_survive_a_restart_in_order(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    for name in ("c", "a", "b"):  # queue order, not name order
        path, _ = make_bundle(tmp_path / "bundles", name, 10)
        spool.put(path, {"bundle_id": name, "request_id": f"r-{name}"})
    spool.mark_attempt("a", "boom")
    again = Spool(spool.dir, 100 * MiB, 100)
    assert [i.bundle_id for i in again.items()] == ["c", "a", "b"]
    assert again.get("a").attempts == 1  # type: ignore[union-attr]
    assert again.get("b").request_id == "r-b"  # type: ignore[union-attr]
    path, _ = make_bundle(tmp_path / "bundles", "d", 10)
    again.put(path, {"bundle_id": "d"})
    assert [i.bundle_id for i in again.items()] == ["c", "a", "b", "d"]


def test_recovery_removes_leftovers_and_counts_them(tmp_path: Path, records: list[logging.LogRecord]) -> None:
    spool = new_spool(tmp_path)
    path, _ = make_bundle(tmp_path / "bundles", "good", 10)
    spool.put(path, {"bundle_id": "good"})
    d = Path(spool.dir)
    (d / ".tmp-half.tar.zst").write_bytes(b"partial")
    (d / ".tmp-half.json").write_bytes(b"{")
    (d / "nometa.tar.zst").write_bytes(b"bundle without sidecar")
    (d / "nobundle.json").write_text(json.dumps({"bundle_id": "nobundle", "size_bytes": 1, "sha256": "0" * 64, "seq": 9}))
    (d / "corrupt.tar.zst").write_bytes(b"abc")
    (d / "corrupt.json").write_bytes(b"not json")
    (d / "short.tar.zst").write_bytes(b"abc")
    (d / "short.json").write_text(json.dumps({"bundle_id": "short", "size_bytes": 99, "sha256": "0" * 64, "seq": 3}))
    (d / "quarantine" / ".tmp-q.tar.zst").write_bytes(b"x")
    (d / "quarantine" / "lonely.tar.zst").write_bytes(b"x")
    again = Spool(spool.dir, 100 * MiB, 100)
    assert [i.bundle_id for i in again.items()] == ["good"]
    assert spool_files(again) == ["good.json", "good.tar.zst"]
    assert os.listdir(d / "quarantine") == []
    status = again.status()
    assert status["recovered_tmp_files"] == 3
    assert status["recovered_orphans"] == 5  # nometa, nobundle, corrupt, short, quarantine/lonely
    assert status["bytes"] == 10
    assert any(getattr(r, "event", None) == "spool_recovered" for r in records)


def test_recovery_applies_smaller_bounds(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    for n in range(4):
        path, _ = make_bundle(tmp_path / "bundles", f"b{n}", 10)
        spool.put(path, {"bundle_id": f"b{n}"})
    again = Spool(spool.dir, 100 * MiB, 2)
    assert [i.bundle_id for i in again.items()] == ["b2", "b3"]
    assert again.status()["evictions"] == 2


def test_quarantine_moves_the_item_with_its_reason(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    path, sha = make_bundle(tmp_path / "bundles", "bad", 50)
    spool.put(path, {"bundle_id": "bad", "incident_id": "INC-2"})
    assert spool.quarantine("bad", "DATA_LOSS: sha256 mismatch") is True
    assert spool.items() == []
    assert spool_files(spool) == []
    qdir = Path(spool.quarantine_dir)
    assert sorted(os.listdir(qdir)) == ["bad.json", "bad.tar.zst"]
    assert hashlib.sha256((qdir / "bad.tar.zst").read_bytes()).hexdigest() == sha
    [entry] = spool.quarantined_items()
    assert entry["reason"] == "DATA_LOSS: sha256 mismatch"
    assert entry["incident_id"] == "INC-2"
    status = spool.status()
    assert status["quarantined"] == 1 and status["quarantine_depth"] == 1 and status["bytes"] == 0
    assert spool.quarantine("bad", "again") is False
    # A restart keeps the quarantine.
    again = Spool(spool.dir, 100 * MiB, 100)
    assert again.status()["quarantine_depth"] == 1
    assert again.items() == []


def test_quarantine_is_bounded(tmp_path: Path) -> None:
    spool = new_spool(tmp_path, quarantine_max_items=2, quarantine_max_bytes=1000)
    for n in range(3):
        path, _ = make_bundle(tmp_path / "bundles", f"q{n}", 100)
        spool.put(path, {"bundle_id": f"q{n}"})
        spool.quarantine(f"q{n}", "INVALID_ARGUMENT")
    assert sorted(os.listdir(spool.quarantine_dir)) == ["q1.json", "q1.tar.zst", "q2.json", "q2.tar.zst"]
    big, _ = make_bundle(tmp_path / "bundles", "huge", 2000)
    spool.put(big, {"bundle_id": "huge"})
    spool.quarantine("huge", "INVALID_ARGUMENT")  # larger than the quarantine: dropped, not kept
    assert "huge.tar.zst" not in os.listdir(spool.quarantine_dir)
    assert spool.items() == []
    status = spool.status()
    assert status["quarantined"] == 4
    assert status["quarantine_depth"] == 2
    assert status["quarantine_evictions"] == 1


def test_copies_in_pieces_when_a_hard_link_is_impossible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = new_spool(tmp_path)
    path, sha = make_bundle(tmp_path / "bundles", "big", 8 * MiB, fill=os.urandom(4096))

    def no_link(src: str, dst: str) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    tracemalloc.start()
    try:
        item = spool.put(path, {"bundle_id": "big", "sha256": sha})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MiB, f"copying an 8 MiB bundle took {peak} bytes of memory"
    assert os.stat(item.path).st_ino != os.stat(path).st_ino
    assert hashlib.sha256(Path(item.path).read_bytes()).hexdigest() == sha


def test_memory_does_not_grow_with_the_backlog(tmp_path: Path) -> None:
    """A large backlog costs only a small index entry per item, never the bundle bytes."""
    spool = new_spool(tmp_path, max_items=1000, max_bytes=1024 * MiB)
    paths = []
    for n in range(300):
        path, sha = make_bundle(tmp_path / "bundles", f"b{n:03d}", 64 * KiB, fill=bytes([n % 256]))
        paths.append((f"b{n:03d}", path, sha))
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for bundle_id, path, sha in paths:
            spool.put(path, {"bundle_id": bundle_id, "sha256": sha, "incident_id": "INC-9"})
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(spool) == 300 and spool.bytes == 300 * 64 * KiB  # 19 MiB queued
    per_item = (after - before) / 300
    assert per_item < 2 * KiB, f"{per_item:.0f} bytes retained per queued item"
    assert peak - before < 1 * MiB
