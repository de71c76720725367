"""Property tests: no input makes the reader raise anything but BundleFormatError.

``verify_bundle`` must return a report (ok=False with problems) for any bytes;
``read_manifest_and_evidence`` may only raise BundleFormatError.  Examples are
derandomized so every run checks the same cases; set HOSTDIAG_FUZZ_EXAMPLES
to search wider with random seeds.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile

import orjson
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostdiag.agent.bundle import BundleFormatError, BundleWriter, ReadLimits, read_manifest_and_evidence, verify_bundle

_WIDE = int(os.environ.get("HOSTDIAG_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_WIDE or 150,
    derandomize=not _WIDE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Small caps so that mutations hitting sizes and counts reach the limit paths quickly.
LIMITS = ReadLimits(max_manifest_bytes=64 * 1024, max_evidence_bytes=64 * 1024, max_members=50,
                    max_total_bytes=4 << 20, max_json_depth=16)


@functools.lru_cache(maxsize=1)
def valid_bundle() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        w = BundleWriter(tmp, host_id="fuzz", max_member_bytes=4096, max_bundle_bytes=16384, now=1_764_000_000.0)
        w.write_json("processes.json", {"count": 2, "rows": [{"pid": 1, "cmd": "init"}, {"pid": 2, "cmd": "sh"}]})
        w.write_ndjson("recorder/metrics.ndjson", ({"t": i, "cpu": i / 7} for i in range(20)))
        with w.open("logs/a-long-directory-name/" + "n" * 120 + ".log") as m:  # long name: a pax header
            m.write(b"hello\n" * 30)
        info = w.finish({"labels": {"env": "test"}}, {"cpu": {"util_max": 0.5}})
        with open(info.path, "rb") as fh:
            return fh.read()


@functools.lru_cache(maxsize=1)
def valid_tar() -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(valid_bundle())).read()


def recompress(plain: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(plain)


def check_never_raises(data: bytes) -> None:
    report = verify_bundle(data, limits=LIMITS)
    assert isinstance(report.problems, list)
    assert report.ok is (not report.problems)
    assert not any(p.startswith("internal error") for p in report.problems), report.problems
    orjson.dumps({"problems": report.problems, "members": report.members})  # always printable as JSON
    try:
        read_manifest_and_evidence(data, LIMITS)
    except BundleFormatError as exc:
        assert str(exc)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "zero"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "zero":
            data[pos : pos + 512] = bytes(len(data[pos : pos + 512]))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    check_never_raises(data)
    assert not verify_bundle(data, limits=LIMITS).ok


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_behind_a_zstd_magic(data: bytes) -> None:
    check_never_raises(b"\x28\xb5\x2f\xfd" + data)


@FUZZ
@given(st.binary(max_size=8192))
def test_arbitrary_tar_stream(data: bytes) -> None:
    check_never_raises(recompress(data))


@FUZZ
@given(st.data())
def test_mutated_compressed_bundle(data: st.DataObject) -> None:
    check_never_raises(data.draw(mutated(valid_bundle())))


@FUZZ
@given(st.data())
def test_mutated_tar_inside_valid_zstd(data: st.DataObject) -> None:
    check_never_raises(recompress(data.draw(mutated(valid_tar()))))


@FUZZ
@given(st.integers(0, 6 * 512 - 1), st.binary(min_size=1, max_size=16))
def test_overwritten_header_fields(offset: int, patch: bytes) -> None:
    # Aim at the first few headers, where numeric fields, types and pax records live.
    plain = bytearray(valid_tar())
    plain[offset : offset + len(patch)] = patch
    check_never_raises(recompress(bytes(plain)))


def test_the_valid_bundle_is_valid() -> None:
    report = verify_bundle(valid_bundle(), limits=LIMITS)
    assert report.ok, report.problems
