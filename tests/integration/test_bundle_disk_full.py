"""A real full disk: a 64 KiB tmpfs.  Skipped where tmpfs cannot be mounted (not root, no privilege)."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostdiag.agent.bundle import BundleWriteError, BundleWriter, verify_bundle


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def incompressible(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def test_bundle_file_does_not_fit(small_disk: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    w = BundleWriter(str(small_disk), host_id="web-1", max_member_bytes=1 << 20, max_bundle_bytes=1 << 20,
                     work_dir=str(work))
    with w.open("random.bin") as m:
        assert m.write(incompressible(200_000))
    with pytest.raises(BundleWriteError) as caught:
        w.finish({}, {})
    message = str(caught.value)
    assert message.startswith(f"no space left on device writing {small_disk}/web-1-")
    assert message.endswith(".tar.zst.tmp")
    assert os.listdir(small_disk) == []
    assert os.listdir(work) == []


def test_spool_does_not_fit(small_disk: Path) -> None:
    w = BundleWriter(str(small_disk), host_id="web-1", max_member_bytes=1 << 20, max_bundle_bytes=1 << 20)
    member = w.open("random.bin")
    with pytest.raises(BundleWriteError, match=r"^no space left on device writing .*/\.tmp-.*\.member$"):
        member.write(incompressible(200_000))
    member.close()
    with pytest.raises(BundleWriteError, match="no space left on device"):
        w.finish({}, {})
    assert os.listdir(small_disk) == []


def test_small_bundle_fits(small_disk: Path) -> None:
    w = BundleWriter(str(small_disk), host_id="web-1", max_member_bytes=1 << 20, max_bundle_bytes=1 << 20)
    w.write_json("small.json", {"ok": True})
    info = w.finish({}, {})
    assert os.listdir(small_disk) == [os.path.basename(info.path)]
    assert verify_bundle(info.path).ok
