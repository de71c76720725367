"""verify_bundle / read_manifest_and_evidence on good, damaged and hostile bundles."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from hostdiag.agent.bundle import BundleFormatError, ReadLimits, read_manifest_and_evidence, verify_bundle

# ``crafted`` (conftest.py) builds bundles by hand: .entries(), .build(), .tar(), .zstd().
Crafted = Any


def problems_of(data: bytes, **limits: Any) -> list[str]:
    report = verify_bundle(io.BytesIO(data), limits=ReadLimits(**limits))
    assert report.ok is (not report.problems)
    return report.problems


def one_problem(data: bytes, **limits: Any) -> str:
    problems = problems_of(data, **limits)
    assert len(problems) == 1, problems
    return problems[0]


# --------------------------------------------------------------------------
# Good bundles


def test_good_bundle_verifies(good_bundle: str) -> None:
    report = verify_bundle(good_bundle)
    assert report.ok and report.problems == []
    assert report.manifest is not None and report.manifest["host_id"] == "web-1"
    assert report.evidence == {"cpu": {"util_max": 0.93}, "mem": {"psi_some_avg10": 1.5}}
    names = [m["name"] for m in report.members]
    assert names == ["manifest.json", "evidence.json", "processes.json", "recorder/metrics.ndjson", "logs/app.log"]
    assert all(m["ok"] for m in report.members)
    listed = {e["name"]: e["sha256"] for e in report.manifest["members"]}
    for m in report.members[1:]:
        assert m["sha256"] == m["expected_sha256"] == listed[m["name"]]
    data = Path(good_bundle).read_bytes()
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.compressed_bytes == len(data)


def test_sources_can_be_path_bytes_or_file(good_bundle: str) -> None:
    data = Path(good_bundle).read_bytes()
    assert verify_bundle(Path(good_bundle)).ok
    assert verify_bundle(data).ok
    with open(good_bundle, "rb") as fh:
        assert verify_bundle(fh).ok


def test_crafted_bundle_verifies(crafted: Crafted) -> None:
    assert problems_of(crafted.build()) == []


def test_read_manifest_and_evidence(good_bundle: str) -> None:
    manifest, evidence = read_manifest_and_evidence(good_bundle)
    assert manifest["bundle_id"] and manifest["format_version"] == 1
    assert evidence["cpu"]["util_max"] == 0.93


class CountingReader(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._inner.read(size)
        self.consumed += len(chunk)
        return chunk


def test_read_manifest_and_evidence_stops_after_two_members(crafted: Crafted) -> None:
    crafted.members.append(("big.bin", random.Random(7).randbytes(6_000_000)))  # incompressible
    data = crafted.build()
    source = CountingReader(data)
    manifest, evidence = read_manifest_and_evidence(source)
    assert evidence == {"cpu": {"util_max": 0.93}}
    assert source.consumed < len(data) // 4


# --------------------------------------------------------------------------
# Member order and membership


def test_manifest_not_first(crafted: Crafted) -> None:
    entries = crafted.entries()
    data = crafted.zstd(crafted.tar([entries[1], entries[0], *entries[2:]]))
    problems = problems_of(data)
    assert "manifest.json is not the first member (the first is 'evidence.json')" in problems
    assert "evidence.json is not the second member (the second is 'manifest.json')" in problems
    assert len(problems) == 2  # hashes still checked, and they match
    with pytest.raises(BundleFormatError, match="manifest.json is not the first member"):
        read_manifest_and_evidence(data)


def test_evidence_not_second(crafted: Crafted) -> None:
    entries = crafted.entries()
    data = crafted.zstd(crafted.tar([entries[0], entries[2], entries[1], entries[3]]))
    assert one_problem(data) == "evidence.json is not the second member (the second is 'processes.json')"
    with pytest.raises(BundleFormatError, match="evidence.json is not the second member"):
        read_manifest_and_evidence(data)


def test_member_hash_mismatch(crafted: Crafted) -> None:
    manifest = crafted.manifest()
    crafted.members[0] = ("processes.json", b'{"count": 4}\n')  # same size, other bytes
    report = verify_bundle(crafted.build(manifest))
    assert not report.ok
    assert len(report.problems) == 1
    assert report.problems[0].startswith("member 'processes.json': sha256 mismatch (manifest ")
    bad = next(m for m in report.members if m["name"] == "processes.json")
    assert bad["ok"] is False and bad["sha256"] != bad["expected_sha256"]


def test_member_size_mismatch(crafted: Crafted) -> None:
    manifest = crafted.manifest()
    crafted.members[1] = ("logs/app.log", b"started\n")
    problems = problems_of(crafted.build(manifest))
    assert "member 'logs/app.log': size mismatch (manifest 16 bytes, archive 8 bytes)" in problems


def test_evidence_mismatch_fails_read_manifest_and_evidence(crafted: Crafted) -> None:
    manifest = crafted.manifest()
    crafted.evidence = orjson.dumps({"cpu": {"util_max": 0.01}})
    data = crafted.build(manifest)
    with pytest.raises(BundleFormatError, match="member 'evidence.json': sha256 mismatch"):
        read_manifest_and_evidence(data)


def test_member_listed_but_missing(crafted: Crafted) -> None:
    manifest = crafted.manifest()
    crafted.members.pop()
    report = verify_bundle(crafted.build(manifest))
    assert report.problems == ["member 'logs/app.log' is listed in the manifest but missing from the archive"]
    assert report.members[-1] == {
        "name": "logs/app.log", "size_bytes": None, "sha256": None,
        "expected_sha256": manifest["members"][-1]["sha256"], "ok": False,
    }


def test_member_present_but_not_listed(crafted: Crafted) -> None:
    manifest = crafted.manifest()
    crafted.members.append(("extra.txt", b"surprise"))
    assert one_problem(crafted.build(manifest)) == "member 'extra.txt' is in the archive but not listed in the manifest"


def test_duplicated_member(crafted: Crafted) -> None:
    manifest = crafted.manifest()
    crafted.members.append(("processes.json", b"second copy"))
    assert one_problem(crafted.build(manifest)) == "member 'processes.json' appears more than once in the archive"


def test_duplicated_entry_in_manifest(crafted: Crafted) -> None:
    manifest = crafted.manifest()
    manifest["members"].append(dict(manifest["members"][1]))
    assert one_problem(crafted.build(manifest)) == "manifest.json lists member 'processes.json' more than once"


def test_file_and_directory_clash(crafted: Crafted) -> None:
    crafted.members = [("logs", b"a file"), ("logs/app.log", b"x")]
    assert one_problem(crafted.build()) == "member 'logs/app.log' clashes with member 'logs' (file vs directory)"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../escape.txt", "contains a '..' segment"),
        ("logs/../../escape.txt", "contains a '..' segment"),
        ("/etc/cron.d/evil", "absolute path"),
        ("sp ace.txt", "only [A-Za-z0-9._-] segments joined by '/' are allowed"),
        ("x" * 250, "longer than 200 bytes"),
    ],
)
def test_unsafe_names(crafted: Crafted, name: str, why: str) -> None:
    crafted.members.append((name, b"payload"))
    manifest = crafted.manifest()
    manifest["members"].pop()  # a manifest cannot list such a name validly
    problems = problems_of(crafted.build(manifest))
    shown = repr(name) if len(repr(name)) <= 120 else repr(name)[:116] + "...'"
    assert f"member {shown} has an unsafe or invalid name: {why}" in problems


def test_undecodable_name_is_reported_safely(crafted: Crafted) -> None:
    info = tarfile.TarInfo("caf\udce9.txt")  # a raw 0xE9 byte in the header
    info.size = 0
    data = crafted.zstd(crafted.tar([*crafted.entries(), info], fmt=tarfile.GNU_FORMAT))
    report = verify_bundle(data)
    assert "member 'caf\\\\xe9.txt' has an unsafe or invalid name: only [A-Za-z0-9._-] segments joined by '/' are " \
           "allowed" in report.problems
    orjson.dumps(report.members)  # names in the report are plain text


@pytest.mark.parametrize(
    ("kind", "setup"),
    [
        ("symbolic link", lambda i: (setattr(i, "type", tarfile.SYMTYPE), setattr(i, "linkname", "/etc/shadow"))),
        ("hard link", lambda i: (setattr(i, "type", tarfile.LNKTYPE), setattr(i, "linkname", "manifest.json"))),
        ("character device", lambda i: (setattr(i, "type", tarfile.CHRTYPE), setattr(i, "devmajor", 1))),
        ("block device", lambda i: setattr(i, "type", tarfile.BLKTYPE)),
        ("directory", lambda i: setattr(i, "type", tarfile.DIRTYPE)),
        ("fifo", lambda i: setattr(i, "type", tarfile.FIFOTYPE)),
    ],
)
def test_non_regular_members(crafted: Crafted, kind: str, setup: Any) -> None:
    info = tarfile.TarInfo("logs/link")
    setup(info)
    data = crafted.zstd(crafted.tar([*crafted.entries(), info]))
    problems = problems_of(data)
    assert problems == [f"member 'logs/link' is a {kind}; only regular files are allowed"]


def test_non_regular_manifest(crafted: Crafted) -> None:
    info = tarfile.TarInfo("manifest.json")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    entries = crafted.entries()
    data = crafted.zstd(crafted.tar([info, *entries[1:]]))
    problems = problems_of(data)
    assert problems[0] == "member 'manifest.json' is a symbolic link; only regular files are allowed"
    with pytest.raises(BundleFormatError, match="symbolic link"):
        read_manifest_and_evidence(data)


# --------------------------------------------------------------------------
# Damaged streams


@pytest.mark.parametrize("cut", [1, 4, 100, 500, -1])
def test_truncated_zstd_frame(good_bundle: str, cut: int) -> None:
    data = Path(good_bundle).read_bytes()
    keep = len(data) - cut if cut > 0 else len(data) // 2
    problems = problems_of(data[:keep])
    assert problems, "a truncated bundle must not verify"
    assert any(p.startswith("truncated zstd frame: the compressed stream ends mid-frame") for p in problems), problems


def test_truncated_before_the_evidence(good_bundle: str) -> None:
    data = Path(good_bundle).read_bytes()[:40]
    with pytest.raises(BundleFormatError, match="truncated zstd frame"):
        read_manifest_and_evidence(data)


def test_bad_tar_header_in_the_middle(crafted: Crafted) -> None:
    plain = bytearray(crafted.tar(crafted.entries()))
    # The third member's header follows manifest and evidence: find it and break its checksum.
    offset = plain.index(b"processes.json\0")
    plain[offset + 148 : offset + 156] = b"0000000\x00"
    problems = problems_of(crafted.zstd(bytes(plain)))
    assert problems[0] == f"bad tar header at offset {offset}"


def test_bad_tar_header_at_the_start(crafted: Crafted) -> None:
    problem = one_problem(crafted.zstd(b"this is not a tar archive at all" * 100))
    assert problem.startswith("bad tar data at the start of the archive:")


def test_tar_without_end_marker(crafted: Crafted) -> None:
    plain = crafted.tar(crafted.entries())
    end = len(plain.rstrip(b"\x00"))
    end += -end % 512
    problem = one_problem(crafted.zstd(plain[:end]))
    assert problem == f"tar archive truncated: no end-of-archive marker at offset {end}"


def test_tar_cut_inside_a_member(crafted: Crafted) -> None:
    crafted.members.append(("big.bin", b"z" * 5000))
    plain = crafted.tar(crafted.entries())
    cut = plain.index(b"z" * 5000) + 1000
    problems = problems_of(crafted.zstd(plain[:cut]))
    assert problems[0].startswith("bad tar data inside member 'big.bin': unexpected end of data")


def test_not_zstd() -> None:
    assert one_problem(b"PK\x03\x04 a zip file perhaps") == (
        "not a zstd-compressed bundle (not a zstd frame at compressed offset 0)"
    )


def test_empty_inputs(crafted: Crafted) -> None:
    assert one_problem(b"") == "empty file (0 bytes)"
    assert one_problem(crafted.zstd(b"")) == "empty archive: the zstd stream holds no tar data"
    with pytest.raises(BundleFormatError, match="empty file"):
        read_manifest_and_evidence(b"")


def test_corrupt_zstd_data(good_bundle: str) -> None:
    data = bytearray(Path(good_bundle).read_bytes())
    data[len(data) // 2] ^= 0xFF
    problems = problems_of(bytes(data))
    assert any(p.startswith("corrupt zstd data") or p.startswith("bad tar") for p in problems), problems


def test_garbage_after_the_zstd_frame(good_bundle: str) -> None:
    data = Path(good_bundle).read_bytes() + b"trailing garbage"
    problem = one_problem(data)
    assert problem.startswith("unexpected data after the zstd frame (not a zstd frame at compressed offset")


def test_data_hidden_after_the_tar_end(crafted: Crafted) -> None:
    plain = crafted.tar(crafted.entries()) + b"hidden payload"
    problem = one_problem(crafted.zstd(plain))
    assert problem.startswith("unexpected data after the end of the tar archive")


def test_two_frames_are_accepted(crafted: Crafted) -> None:
    plain = crafted.tar(crafted.entries())
    half = len(plain) // 2
    assert problems_of(crafted.zstd(plain[:half]) + crafted.zstd(plain[half:])) == []


def test_zstd_window_limit(crafted: Crafted) -> None:
    params = zstandard.ZstdCompressionParameters(window_log=27, compression_level=3, write_checksum=True)
    data = crafted.zstd(crafted.tar(crafted.entries()), compression_params=params)
    problem = one_problem(data, max_zstd_window_bytes=1 << 20)
    assert problem == "the zstd frame needs a bigger window than the limit of 1048576 bytes"


# --------------------------------------------------------------------------
# JSON documents


def test_manifest_not_json(crafted: Crafted) -> None:
    problem = problems_of(crafted.build(b"{not json"))[0]
    assert problem.startswith("manifest.json is not valid JSON:")
    with pytest.raises(BundleFormatError, match="manifest.json is not valid JSON"):
        read_manifest_and_evidence(crafted.build(b"{not json"))


def test_manifest_not_an_object(crafted: Crafted) -> None:
    assert problems_of(crafted.build(b"[1, 2, 3]"))[0] == "manifest.json is not a JSON object"


def test_manifest_too_deep(crafted: Crafted) -> None:
    manifest = crafted.manifest()
    deep: Any = "bottom"
    for _ in range(70):
        deep = {"d": deep}
    manifest["notes"] = deep
    assert problems_of(crafted.build(manifest))[0] == "manifest.json is nested too deeply (limit 64)"
    very_deep = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert problems_of(crafted.build(very_deep))[0] == "manifest.json is nested too deeply (limit 64)"


def test_manifest_too_big(crafted: Crafted) -> None:
    manifest = crafted.manifest(padding="x" * 5000)
    data = crafted.build(manifest)
    size = len(orjson.dumps(manifest))
    problems = problems_of(data, max_manifest_bytes=4096)
    assert problems[0] == f"manifest.json is too big: {size} bytes (limit 4096)"
    with pytest.raises(BundleFormatError, match="manifest.json is too big"):
        read_manifest_and_evidence(data, ReadLimits(max_manifest_bytes=4096))


def test_evidence_too_big_and_not_json(crafted: Crafted) -> None:
    crafted.evidence = b"[" * 10
    assert problems_of(crafted.build())[0].startswith("evidence.json is not valid JSON")
    crafted.evidence = orjson.dumps({"x": "y" * 3000})
    assert problems_of(crafted.build(), max_evidence_bytes=1000)[0].startswith("evidence.json is too big:")


@pytest.mark.parametrize(
    "field", ["format_version", "bundle_id", "host_id", "created_at", "members", "caps", "truncations"]
)
def test_missing_required_manifest_field(crafted: Crafted, field: str) -> None:
    manifest = crafted.manifest()
    del manifest[field]
    problems = problems_of(crafted.build(manifest))
    assert f"manifest.json is missing the required field {field!r}" in problems
    with pytest.raises(BundleFormatError, match="missing the required field"):
        read_manifest_and_evidence(crafted.build(manifest))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"format_version": 2}, "unsupported format_version 2 (this reader knows 1)"),
        ({"format_version": "1"}, "manifest.json: format_version must be an integer, got '1'"),
        ({"host_id": ""}, "manifest.json: host_id must be a non-empty string"),
        ({"caps": []}, "manifest.json: caps must hold integer max_member_bytes and max_bundle_bytes"),
        ({"truncations": {}}, "manifest.json: truncations must be a list"),
        ({"members": {}}, "manifest.json: members must be a list"),
    ],
)
def test_bad_manifest_fields(crafted: Crafted, change: dict[str, Any], expected: str) -> None:
    manifest = crafted.manifest()
    manifest.update(change)
    assert expected in problems_of(crafted.build(manifest))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("just a string", "manifest.json members[3] is not an object"),
        ({"name": 7}, "manifest.json members[3]: name must be a string"),
        ({"name": "../x", "size_bytes": 1, "sha256": "0" * 64},
         "manifest.json members[3]: invalid member name '../x': contains a '..' segment"),
        ({"name": "x", "size_bytes": -1, "sha256": "0" * 64},
         "manifest.json members[3] (x): size_bytes must be a non-negative integer"),
        ({"name": "x", "size_bytes": 1, "sha256": "ABC"},
         "manifest.json members[3] (x): sha256 must be 64 lowercase hex digits"),
        ({"name": "manifest.json", "size_bytes": 1, "sha256": "0" * 64},
         "manifest.json members[3]: the manifest must not list itself"),
    ],
)
def test_bad_manifest_member_entries(crafted: Crafted, entry: Any, expected: str) -> None:
    manifest = crafted.manifest()
    manifest["members"].append(entry)
    assert expected in problems_of(crafted.build(manifest))


# --------------------------------------------------------------------------
# Caps against hostile input


def bomb(member_bytes: int, count: int, padding_bytes: int = 0) -> bytes:
    """``count`` members of ``member_bytes`` zeros (then zero padding), compressed to almost nothing."""
    out = io.BytesIO()
    zeros = b"\0" * (1 << 20)
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as w:
        manifest = orjson.dumps({"format_version": 1})
        m_info = tarfile.TarInfo("manifest.json")
        m_info.size = len(manifest)
        w.write(m_info.tobuf(format=tarfile.PAX_FORMAT) + manifest + b"\0" * (-len(manifest) % 512))
        for i in range(count):
            info = tarfile.TarInfo(f"zeros{i}.bin")
            info.size = member_bytes
            w.write(info.tobuf(format=tarfile.PAX_FORMAT))
            left = member_bytes
            while left:
                w.write(zeros[: min(left, len(zeros))])
                left -= min(left, len(zeros))
        for _ in range(padding_bytes // len(zeros)):
            w.write(zeros)
        w.write(b"\0" * 1024)
    return out.getvalue()


CAP = 8 << 20
CAP_PROBLEM = (
    f"decompressed size exceeds the limit of {CAP} bytes; stopped reading (a compression bomb or a bundle "
    "too big for this reader)"
)


def test_zstd_bomb_of_many_members_stops_at_the_cap() -> None:
    data = bomb(5 << 20, 20)  # 100 MB
    assert len(data) < 64 * 1024
    report = verify_bundle(data, limits=ReadLimits(max_total_bytes=CAP))
    assert CAP_PROBLEM in report.problems
    assert report.decompressed_bytes <= CAP


def test_zstd_bomb_in_the_padding_stops_at_the_cap() -> None:
    data = bomb(1024, 1, padding_bytes=100 << 20)
    report = verify_bundle(data, limits=ReadLimits(max_total_bytes=CAP))
    assert CAP_PROBLEM in report.problems
    assert report.decompressed_bytes <= CAP


def test_one_huge_member_is_refused_before_decompressing_it() -> None:
    data = bomb(100 << 20, 1)
    report = verify_bundle(data, limits=ReadLimits(max_total_bytes=CAP))
    assert f"bad tar header at offset 1024: member size {100 << 20} is impossible (decompressed limit {CAP})" \
        in report.problems
    assert report.decompressed_bytes < 1 << 20


def test_member_size_beyond_the_cap_is_refused_at_the_header(crafted: Crafted) -> None:
    info = tarfile.TarInfo("huge.bin")
    info.size = 1 << 40
    plain = crafted.tar(crafted.entries()[:2])
    plain = plain.rstrip(b"\0")
    plain += b"\0" * (-len(plain) % 512)
    offset = len(plain)
    data = crafted.zstd(plain + info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096)
    problems = problems_of(data, max_total_bytes=1 << 30)
    assert problems[0] == (
        f"bad tar header at offset {offset}: member size {1 << 40} is impossible (decompressed limit {1 << 30})"
    )


def test_oversized_pax_header_is_refused(crafted: Crafted) -> None:
    info = tarfile.TarInfo("x.txt")
    info.pax_headers = {"comment": "c" * 10_000}
    entries = crafted.entries()
    data = crafted.zstd(crafted.tar([*entries, info]))
    problems = problems_of(data)
    assert any("extended header of" in p and "(limit 4096)" in p for p in problems), problems


def test_too_many_members(crafted: Crafted) -> None:
    crafted.members = [(f"m{i}.txt", b"x") for i in range(20)]
    problems = problems_of(crafted.build(), max_members=10)
    assert "more than 10 members; stopped reading" in problems
    assert "manifest.json lists 21 members (limit 10)" in problems


def test_missing_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    report = verify_bundle(str(tmp_path / "absent.tar.zst"))
    assert not report.ok
    assert report.problems == [f"cannot open {tmp_path / 'absent.tar.zst'}: No such file or directory"]
    with pytest.raises(FileNotFoundError):
        read_manifest_and_evidence(str(tmp_path / "absent.tar.zst"))


def test_read_error_is_a_problem() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            raise OSError(5, "Input/output error")

    report = verify_bundle(Broken())
    assert report.problems == ["read error: Input/output error"]
