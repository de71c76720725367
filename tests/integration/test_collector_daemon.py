"""``hostdiag-collector`` as a process: ready file, config errors, SIGTERM, and kill -9 mid-upload."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from hostdiag.agent.bundle import BundleWriter
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc

DEADLINE_S = 20.0
KiB = 1024


def start(tmp_path: Path, extra: str = "") -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(
        f'[collector]\nlisten = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\nauth = "none"\ndata_dir = "{tmp_path / "data"}"\n{extra}'
    )
    ready = tmp_path / "ready.json"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostdiag.collector.daemon", "--config", str(cfg), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + DEADLINE_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"collector did not become ready: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.02)
    return proc, json.loads(ready.read_text())


def test_ready_file_healthz_and_clean_sigterm(tmp_path: Path) -> None:
    proc, ready = start(tmp_path)
    try:
        assert ready["pid"] == proc.pid
        assert ready["grpc"].startswith("127.0.0.1:") and not ready["grpc"].endswith(":0")
        with urllib.request.urlopen(f"http://{ready['http']}/healthz", timeout=DEADLINE_S) as resp:
            assert resp.status == 200 and resp.read() == b"ok\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0
        assert not (tmp_path / "ready.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_config_error_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[collector]\nlisten = "0.0.0.0:7443"\n')
    res = subprocess.run([sys.executable, "-m", "hostdiag.collector.daemon", "--config", str(cfg)],
                         capture_output=True, timeout=DEADLINE_S)
    assert res.returncode == 2
    err = res.stderr.decode().strip()
    assert err.startswith(f"hostdiag-collector: {cfg}: collector.listen: ")
    assert "loopback" in err and len(err.splitlines()) == 1


def test_kill_9_mid_upload_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "agent"
    out.mkdir()
    writer = BundleWriter(str(out), host_id="web-1", max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        with writer.open("filler.bin") as member:
            member.write(os.urandom(512 * KiB))
        info = writer.finish({"trigger": "agentctl"}, {"schema_version": 1})
    data = Path(info.path).read_bytes()
    chunk = 64 * KiB

    async def query(address: str) -> apb.QueryUploadResponse:
        async with aio.insecure_channel(address) as ch:
            return await agent_pb2_grpc.AgentServiceStub(ch).QueryUpload(
                apb.QueryUploadRequest(bundle_id=info.bundle_id))

    async def send(address: str, start: int, stop: int, finish: bool, hang: asyncio.Event | None) -> Any:
        async def gen() -> AsyncIterator[apb.UploadRequest]:
            for offset in range(start, stop, chunk):
                piece = data[offset: offset + chunk]
                last = finish and offset + len(piece) >= len(data)
                yield apb.UploadRequest(bundle_id=info.bundle_id, write_offset=offset, data=piece,
                                        finish_write=last, total_size_bytes=len(data) if last else 0,
                                        sha256=hashlib.sha256(data).hexdigest() if last else "")
            if hang is not None:
                await hang.wait()

        async with aio.insecure_channel(address) as ch:
            return await agent_pb2_grpc.AgentServiceStub(ch).Upload(gen())

    async def first_half(address: str) -> None:
        hang = asyncio.Event()
        call = asyncio.create_task(send(address, 0, 4 * chunk, False, hang))
        deadline = time.monotonic() + DEADLINE_S
        while (await query(address)).committed_size_bytes != 4 * chunk:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        proc.kill()  # SIGKILL with the upload stream open
        proc.wait()
        try:
            await call
        except grpc.RpcError:
            pass

    proc, ready = start(tmp_path)
    try:
        asyncio.run(first_half(ready["grpc"]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc, ready = start(tmp_path)
    try:
        async def resume(address: str) -> None:
            q = await query(address)
            assert (q.committed_size_bytes, q.complete) == (4 * chunk, False)
            resp = await send(address, q.committed_size_bytes, len(data), True, None)
            assert resp.complete and resp.committed_size_bytes == len(data)

        asyncio.run(resume(ready["grpc"]))
        with urllib.request.urlopen(f"http://{ready['http']}/api/v1/bundles/{info.bundle_id}",
                                    timeout=DEADLINE_S) as resp:
            assert resp.read() == data
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
