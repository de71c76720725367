"""BundleWriter: round trip, caps, sealing, names, and failures that leave nothing behind."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from hostdiag.agent.bundle import (
    BundleWriteError,
    BundleWriter,
    is_uuid7,
    remove_stale_temp,
    uuid7_unix_ms,
    verify_bundle,
)

NOW = 1_764_000_000.25
MakeWriter = Callable[..., BundleWriter]


def tar_members(path: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    with open(path, "rb") as fh:
        plain = zstandard.ZstdDecompressor().stream_reader(fh).read()
    out = []
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
        for info in tar.getmembers():
            fobj = tar.extractfile(info)
            out.append((info, fobj.read() if fobj else b""))
    return out


def manifest_of(path: str) -> dict[str, Any]:
    return orjson.loads(tar_members(path)[0][1])


def leftovers(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --------------------------------------------------------------------------
# Round trip


def test_round_trip_from_many_threads(make_writer: MakeWriter, tmp_path: Path) -> None:
    w = make_writer()
    barrier = threading.Barrier(6)
    expected: dict[str, bytes] = {}

    def source(i: int) -> None:
        name = f"logs/source{i}.log"
        chunks = [f"source {i} line {j}\n".encode() * (j + 1) for j in range(200)]
        expected[name] = b"".join(chunks)
        barrier.wait()
        with w.open(name) as member:
            for chunk in chunks:
                assert member.write(chunk)

    threads = [threading.Thread(target=source, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.write_json("processes.json", {"count": 2, "rows": [{"pid": 1}, {"pid": 2}]})
    info = w.finish({"agent_version": "0.1.0", "labels": {"env": "prod"}}, {"cpu": {"util_max": 0.5}})

    # The file: final name, sha256 and size as reported, nothing temporary left.
    assert info.path == os.path.join(str(tmp_path / "bundles"), os.path.basename(info.path))
    assert re.fullmatch(r"web-1-20251124T160000Z-[0-9a-f]{8}\.tar\.zst", os.path.basename(info.path))
    assert leftovers(tmp_path / "bundles") == [os.path.basename(info.path)]
    data = Path(info.path).read_bytes()
    assert info.size_bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()

    report = verify_bundle(info.path)
    assert report.ok, report.problems
    assert report.sha256 == info.sha256

    members = tar_members(info.path)
    names = [i.name for i, _ in members]
    assert names[:2] == ["manifest.json", "evidence.json"]
    assert sorted(names[2:-1]) == sorted(expected)
    assert names[-1] == "processes.json"
    for tinfo, content in members:
        assert tinfo.isreg() and tinfo.mode == 0o644 and tinfo.uid == 0 and tinfo.gid == 0
        assert tinfo.uname == "" and tinfo.gname == "" and tinfo.mtime == int(NOW)
        if tinfo.name in expected:
            assert content == expected[tinfo.name]
    assert orjson.loads(members[1][1]) == {"cpu": {"util_max": 0.5}}


def test_manifest_fields(make_writer: MakeWriter) -> None:
    w = make_writer(max_member_bytes=5000, max_bundle_bytes=1 << 20)
    w.write_json("a.json", {"x": 1})
    info = w.finish({"agent_version": "0.1.0", "host_id": "ignored", "members": "ignored"}, {"k": 1})
    m = manifest_of(info.path)
    assert m == info.manifest
    assert m["format_version"] == 1
    assert m["bundle_id"] == info.bundle_id == w.bundle_id and is_uuid7(m["bundle_id"])
    assert uuid7_unix_ms(m["bundle_id"]) == int(NOW * 1000)
    assert m["host_id"] == "web-1"
    assert m["created_at"] == "2025-11-24T16:00:00.250Z"
    assert m["agent_version"] == "0.1.0"
    assert m["caps"] == {"max_member_bytes": 5000, "max_bundle_bytes": 1 << 20}
    assert m["truncations"] == []
    assert [e["name"] for e in m["members"]] == ["evidence.json", "a.json"]
    for entry in m["members"]:
        assert set(entry) == {"name", "size_bytes", "sha256", "truncated", "truncated_reason"}
        assert entry["truncated"] is False and entry["truncated_reason"] is None
    assert info.members == m["members"]


def test_standard_tar_opens_it_with_manifest_first(good_bundle: str, tmp_path: Path) -> None:
    listing = subprocess.run(["tar", "--zstd", "-tf", good_bundle], check=True, capture_output=True, text=True)
    names = listing.stdout.split()
    assert names[0] == "manifest.json" and names[1] == "evidence.json"
    dest = tmp_path / "extract"
    dest.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", good_bundle, "-C", str(dest)], check=True, capture_output=True)
    manifest = orjson.loads((dest / "manifest.json").read_bytes())
    for entry in manifest["members"]:
        content = (dest / entry["name"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == entry["sha256"]
        assert len(content) == entry["size_bytes"]
    assert (dest / "logs" / "app.log").read_bytes() == b"started\nstopped\n"


def test_zstd_cli_sees_one_frame(good_bundle: str) -> None:
    with open(good_bundle, "rb") as fh:
        data = fh.read()
    # One frame: its header starts the file and decompressing it alone consumes everything.
    dobj = zstandard.ZstdDecompressor().decompressobj()
    dobj.decompress(data)
    assert dobj.eof and dobj.unused_data == b""
    subprocess.run(["zstd", "-t", "-q", good_bundle], check=True)


def test_bundle_id_given_and_clock_default(make_writer: MakeWriter) -> None:
    w = make_writer(bundle_id="0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    assert w.bundle_id == "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    assert w.path.endswith("-2e3f4a5b.tar.zst")
    w.abort()
    w2 = make_writer(now=None)
    assert is_uuid7(w2.bundle_id)
    assert w2.created_at.endswith("Z")
    w2.abort()


# --------------------------------------------------------------------------
# Caps


def test_member_cap_cuts_and_is_recorded(make_writer: MakeWriter, tmp_path: Path) -> None:
    w = make_writer(max_member_bytes=4096)
    with w.open("big.log") as m:
        assert m.write(b"a" * 4000)
        assert not m.write(b"b" * 200)  # cut at 4096
        assert not m.write(b"c" * 10)  # dropped
    w.write_json("small.json", {"ok": True})
    info = w.finish({}, {})
    big = next(e for e in info.members if e["name"] == "big.log")
    assert big["size_bytes"] == 4096 and big["truncated"] and big["truncated_reason"] == "member cap"
    assert info.manifest["truncations"] == [{"member": "big.log", "reason": "member cap", "kept_bytes": 4096}]
    content = dict((i.name, d) for i, d in tar_members(info.path))["big.log"]
    assert content == b"a" * 4000 + b"b" * 96
    assert verify_bundle(info.path).ok


def test_bundle_cap_cuts_later_writes(make_writer: MakeWriter) -> None:
    w = make_writer(max_member_bytes=10_000, max_bundle_bytes=15_000)
    with w.open("one.bin") as m:
        assert m.write(b"1" * 10_000)
    with w.open("two.bin") as m:
        assert not m.write(b"2" * 8_000)
    with w.open("three.bin") as m:
        assert not m.write(b"3")
    info = w.finish({}, {})
    sizes = {e["name"]: e for e in info.members}
    assert sizes["one.bin"]["size_bytes"] == 10_000 and not sizes["one.bin"]["truncated"]
    assert sizes["two.bin"]["size_bytes"] == 5_000 and sizes["two.bin"]["truncated_reason"] == "bundle cap"
    assert sizes["three.bin"]["size_bytes"] == 0 and sizes["three.bin"]["truncated_reason"] == "bundle cap"
    assert sum(e["size_bytes"] for e in info.members if e["name"] != "evidence.json") <= 15_000
    reasons = [(t["member"], t["reason"]) for t in info.manifest["truncations"]]
    assert reasons == [("two.bin", "bundle cap"), ("three.bin", "bundle cap")]
    assert verify_bundle(info.path).ok


def test_bundle_cap_holds_under_concurrent_writers(make_writer: MakeWriter) -> None:
    w = make_writer(max_member_bytes=1 << 20, max_bundle_bytes=50_000)

    def source(i: int) -> None:
        with w.open(f"m{i}.bin") as m:
            for _ in range(100):
                if not m.write(b"x" * 997):
                    break

    threads = [threading.Thread(target=source, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    info = w.finish({}, {})
    total = sum(e["size_bytes"] for e in info.members if e["name"] != "evidence.json")
    assert total == 50_000
    assert all(t["reason"] == "bundle cap" for t in info.manifest["truncations"])
    assert verify_bundle(info.path).ok


def test_ndjson_is_cut_at_a_whole_line(make_writer: MakeWriter) -> None:
    w = make_writer(max_member_bytes=4096)
    w.write_ndjson("rows.ndjson", ({"i": i, "pad": "x" * 20} for i in range(10_000)))
    info = w.finish({}, {})
    entry = next(e for e in info.members if e["name"] == "rows.ndjson")
    assert entry["truncated_reason"] == "member cap" and 0 < entry["size_bytes"] <= 4096
    content = dict((i.name, d) for i, d in tar_members(info.path))["rows.ndjson"]
    assert content.endswith(b"\n")
    rows = [orjson.loads(line) for line in content.splitlines()]
    assert [r["i"] for r in rows] == list(range(len(rows)))


def test_ndjson_and_json_content(make_writer: MakeWriter) -> None:
    w = make_writer()
    w.write_ndjson("rows.ndjson", ({"i": i} for i in range(3)))
    w.write_json("doc.json", {1: "int keys are fine", "nested": {"a": [1, 2]}})
    info = w.finish({}, {})
    content = dict((i.name, d) for i, d in tar_members(info.path))
    assert content["rows.ndjson"] == b'{"i":0}\n{"i":1}\n{"i":2}\n'
    assert orjson.loads(content["doc.json"]) == {"1": "int keys are fine", "nested": {"a": [1, 2]}}


def test_write_json_that_cannot_serialize_leaves_no_member(make_writer: MakeWriter) -> None:
    w = make_writer()
    with pytest.raises(TypeError):
        w.write_json("bad.json", {"x": object()})
    w.write_json("bad.json", {"x": 1})  # the name is still free
    info = w.finish({}, {})
    assert [e["name"] for e in info.members] == ["evidence.json", "bad.json"]


# --------------------------------------------------------------------------
# Sealing (source timeouts)


def test_seal_drops_late_writes_and_marks_member(make_writer: MakeWriter) -> None:
    w = make_writer()
    w.write_json("done.json", {"ok": 1})
    started = threading.Event()
    sealed = threading.Event()
    late_results: list[bool] = []

    def slow_source() -> None:
        member = w.open("slow.log")
        member.write(b"before the timeout\n")
        started.set()
        sealed.wait(10)
        late_results.append(member.write(b"after the timeout\n"))
        late_results.append(w.open("opened-late.log").write(b"x"))
        w.write_json("late.json", {"late": True})
        member.close()

    t = threading.Thread(target=slow_source)
    t.start()
    assert started.wait(10)
    w.seal()
    sealed.set()
    t.join(10)
    info = w.finish({}, {})
    assert late_results == [False, False]
    entries = {e["name"]: e for e in info.members}
    assert set(entries) == {"evidence.json", "done.json", "slow.log"}
    assert entries["slow.log"]["truncated_reason"] == "source timed out"
    assert not entries["done.json"]["truncated"]
    assert {"member": "slow.log", "reason": "source timed out", "kept_bytes": 19} in info.manifest["truncations"]
    content = dict((i.name, d) for i, d in tar_members(info.path))
    assert content["slow.log"] == b"before the timeout\n"
    assert verify_bundle(info.path).ok


def test_writes_after_finish_are_dropped_quietly(make_writer: MakeWriter) -> None:
    w = make_writer()
    member = w.open("orphan.log")
    member.write(b"partial")
    info = w.finish({}, {})
    assert member.write(b"more") is False
    member.close()
    assert verify_bundle(info.path).ok


def test_write_to_closed_member_is_an_error(make_writer: MakeWriter) -> None:
    w = make_writer()
    member = w.open("a.log")
    member.close()
    with pytest.raises(ValueError, match="closed"):
        member.write(b"x")
    w.abort()


# --------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../up", "a/../b", "a/./b", "./a", "a//b", "a/", "sp ace", "uni\u00e9", "x" * 201,
     "back\\slash", "new\nline"],
)
def test_bad_member_names_are_refused(make_writer: MakeWriter, name: str) -> None:
    w = make_writer()
    with pytest.raises(ValueError, match="invalid bundle member name"):
        w.open(name)
    w.abort()


def test_duplicate_reserved_and_clashing_names(make_writer: MakeWriter) -> None:
    w = make_writer()
    w.open("logs/app.log").close()
    with pytest.raises(ValueError, match="duplicate"):
        w.open("logs/app.log")
    for reserved in ("manifest.json", "evidence.json"):
        with pytest.raises(ValueError, match="reserved"):
            w.open(reserved)
    with pytest.raises(ValueError, match="directory"):
        w.open("logs")
    with pytest.raises(ValueError, match="directory"):
        w.open("logs/app.log/inner")
    w.open("a" * 200).close()  # exactly at the limit
    info = w.finish({}, {})
    assert verify_bundle(info.path).ok
    assert any(i.name == "a" * 200 for i, _ in tar_members(info.path))


def test_constructor_checks_arguments(make_writer: MakeWriter) -> None:
    with pytest.raises(ValueError, match="host_id"):
        make_writer(host_id="")
    with pytest.raises(ValueError, match="max_member_bytes"):
        make_writer(max_member_bytes=0)
    with pytest.raises(ValueError, match="zstd_level"):
        make_writer(zstd_level=0)
    with pytest.raises(ValueError, match="bundle_id"):
        make_writer(bundle_id="../../etc")


def test_host_id_is_made_safe_for_the_file_name(make_writer: MakeWriter) -> None:
    w = make_writer(host_id="db/1 prod")
    info = w.finish({}, {})
    assert os.path.basename(info.path).startswith("db_1_prod-20251124T160000Z-")
    assert info.manifest["host_id"] == "db/1 prod"


# --------------------------------------------------------------------------
# Failures leave nothing behind


class FailingFile(io.FileIO):
    """A real output file that fails with ``err`` once ``budget`` bytes were written."""

    def __init__(self, path: str, budget: int, err: int = errno.ENOSPC) -> None:
        super().__init__(path, "xb")
        self.budget = budget
        self.err = err

    def write(self, data: Any) -> int:
        if self.budget <= 0:
            raise OSError(self.err, os.strerror(self.err))
        n = super().write(bytes(data)[: self.budget])
        self.budget -= n
        return n


def filled_writer(make_writer: MakeWriter) -> BundleWriter:
    w = make_writer(zstd_level=1)
    with w.open("random.bin") as m:
        m.write(os.urandom(300_000))  # incompressible: the output must be big
    w.write_json("small.json", {"x": 1})
    return w


def test_disk_full_while_writing_the_bundle(make_writer: MakeWriter, tmp_path: Path) -> None:
    w = filled_writer(make_writer)
    w._open_output = lambda path: FailingFile(path, 100_000)  # type: ignore[method-assign]
    with pytest.raises(BundleWriteError) as caught:
        w.finish({}, {})
    tmp_name = os.path.join(str(tmp_path / "bundles"), os.path.basename(w.path) + ".tmp")
    assert str(caught.value) == f"no space left on device writing {tmp_name}"
    assert caught.value.errno == errno.ENOSPC
    assert leftovers(tmp_path / "bundles") == []


def test_disk_full_on_the_first_byte(make_writer: MakeWriter, tmp_path: Path) -> None:
    w = filled_writer(make_writer)
    w._open_output = lambda path: FailingFile(path, 0)  # type: ignore[method-assign]
    with pytest.raises(BundleWriteError, match="no space left on device writing"):
        w.finish({}, {})
    assert leftovers(tmp_path / "bundles") == []


def test_permission_denied_creating_the_bundle(make_writer: MakeWriter, tmp_path: Path) -> None:
    w = filled_writer(make_writer)

    def deny(path: str) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    w._open_output = deny  # type: ignore[method-assign]
    with pytest.raises(BundleWriteError, match=r"^permission denied creating .*\.tar\.zst\.tmp$"):
        w.finish({}, {})
    assert leftovers(tmp_path / "bundles") == []


def test_fsync_failure(make_writer: MakeWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = filled_writer(make_writer)

    class NoSync(io.FileIO):
        def fileno(self) -> int:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    w._open_output = lambda path: NoSync(path, "xb")  # type: ignore[method-assign]
    with pytest.raises(BundleWriteError, match=r"^input/output error syncing .*\.tmp$"):
        w.finish({}, {})
    assert leftovers(tmp_path / "bundles") == []


def test_directory_sync_failure_removes_the_renamed_bundle(make_writer: MakeWriter, tmp_path: Path) -> None:
    w = filled_writer(make_writer)

    def fail(path: str) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    w._sync_dir = fail  # type: ignore[method-assign]
    with pytest.raises(BundleWriteError, match="syncing directory"):
        w.finish({}, {})
    assert leftovers(tmp_path / "bundles") == []


def test_out_dir_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(BundleWriteError, match=f"bundle directory {missing} does not exist"):
        BundleWriter(str(missing), host_id="h", max_member_bytes=10, max_bundle_bytes=10)
    assert not missing.exists()


def test_out_dir_removed_before_finish(tmp_path: Path) -> None:
    out = tmp_path / "out"
    work = tmp_path / "work"
    out.mkdir()
    work.mkdir()
    w = BundleWriter(str(out), host_id="h", max_member_bytes=1000, max_bundle_bytes=1000, work_dir=str(work))
    w.write_json("a.json", {"a": 1})
    out.rmdir()
    with pytest.raises(BundleWriteError, match="does not exist"):
        w.finish({}, {})
    assert not out.exists()
    assert leftovers(work) == []


def test_out_dir_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(BundleWriteError, match="is not a directory"):
        BundleWriter(str(target), host_id="h", max_member_bytes=10, max_bundle_bytes=10)


def test_spool_write_failure_is_reported_and_recorded(make_writer: MakeWriter) -> None:
    w = make_writer()
    member = w.open("broken.log")
    assert member.write(b"kept\n")

    class Full:
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self) -> None:
            pass

    member._raw = Full()  # type: ignore[attr-defined]  # the spool disk fills up
    with pytest.raises(BundleWriteError, match=r"^no space left on device writing .*\.member$"):
        member.write(b"lost\n")
    assert member.write(b"also lost\n") is False
    member.close()
    info = w.finish({}, {})
    entry = next(e for e in info.members if e["name"] == "broken.log")
    assert entry["size_bytes"] == 5
    assert entry["truncated_reason"] == "spool write failed: No space left on device"
    assert verify_bundle(info.path).ok


def test_oversized_evidence_is_refused_and_cleaned_up(make_writer: MakeWriter, tmp_path: Path) -> None:
    w = make_writer()
    w.write_json("a.json", {})
    with pytest.raises(BundleWriteError, match="evidence.json would be"):
        w.finish({}, {"blob": "x" * (5 << 20)})
    assert leftovers(tmp_path / "bundles") == []


def test_unserializable_manifest_is_refused_and_cleaned_up(make_writer: MakeWriter, tmp_path: Path) -> None:
    w = make_writer()
    with pytest.raises(BundleWriteError, match="manifest is not JSON-serializable"):
        w.finish({"when": object()}, {})
    assert leftovers(tmp_path / "bundles") == []


def test_finish_twice_and_finish_after_abort(make_writer: MakeWriter) -> None:
    w = make_writer()
    w.finish({}, {})
    with pytest.raises(BundleWriteError, match="already finished"):
        w.finish({}, {})
    w2 = make_writer(bundle_id="0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    w2.abort()
    with pytest.raises(BundleWriteError, match="already aborted"):
        w2.finish({}, {})


def test_existing_bundle_is_never_overwritten(make_writer: MakeWriter, tmp_path: Path) -> None:
    first = make_writer(bundle_id="0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").finish({}, {})
    before = Path(first.path).read_bytes()
    # Same id and time again: same file name (its work dir is free again).
    again = make_writer(bundle_id="0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    with pytest.raises(BundleWriteError, match="already exists"):
        again.finish({}, {})
    assert Path(first.path).read_bytes() == before
    assert leftovers(tmp_path / "bundles") == [os.path.basename(first.path)]


def test_abort_and_context_manager_remove_the_work_dir(make_writer: MakeWriter, tmp_path: Path) -> None:
    w = make_writer()
    w.write_json("a.json", {"a": 1})
    assert len(leftovers(tmp_path / "bundles")) == 1  # the .tmp-<id> work dir
    w.abort()
    w.abort()  # idempotent
    assert leftovers(tmp_path / "bundles") == []
    with pytest.raises(RuntimeError):
        with make_writer() as w2:
            w2.write_json("a.json", {"a": 1})
            raise RuntimeError("snapshot failed")
    assert leftovers(tmp_path / "bundles") == []


def test_remove_stale_temp(tmp_path: Path) -> None:
    (tmp_path / ".tmp-old").mkdir()
    (tmp_path / ".tmp-old" / "00000.member").write_bytes(b"x")
    (tmp_path / "h-20250101T000000Z-abcdef12.tar.zst.tmp").write_bytes(b"x")
    (tmp_path / "h-20250101T000000Z-abcdef12.tar.zst").write_bytes(b"keep")
    (tmp_path / ".tmp-fresh").mkdir()
    old = 1_000_000.0
    for name in (".tmp-old", "h-20250101T000000Z-abcdef12.tar.zst.tmp", "h-20250101T000000Z-abcdef12.tar.zst"):
        os.utime(tmp_path / name, (old, old))
    removed = remove_stale_temp(str(tmp_path), older_than_s=3600)
    assert sorted(os.path.basename(p) for p in removed) == [".tmp-old", "h-20250101T000000Z-abcdef12.tar.zst.tmp"]
    assert leftovers(tmp_path) == [".tmp-fresh", "h-20250101T000000Z-abcdef12.tar.zst"]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["shorten", "change"])
def test_spool_damaged_before_finish(make_writer: MakeWriter, tmp_path: Path, damage: str) -> None:
    w = make_writer()
    with w.open("a.log") as m:
        m.write(b"0123456789" * 1000)
    work = tmp_path / "bundles" / f".tmp-{w.bundle_id}"
    (spool,) = list(work.iterdir())
    if damage == "shorten":
        spool.write_bytes(b"0123")
        expected = "shorter than spooled"
    else:
        spool.write_bytes(b"x" * 10_000)
        expected = "changed after it was written"
    with pytest.raises(BundleWriteError, match=expected):
        w.finish({}, {})
    assert leftovers(tmp_path / "bundles") == []
