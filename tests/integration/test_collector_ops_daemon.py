"""``hostdiag-collector`` operations as a process: SIGTERM mid-upload, JSON logs, /metrics format."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from hostdiag.agent.bundle import BundleWriter
from hostdiag.v1 import agent_pb2 as apb
from hostdiag.v1 import agent_pb2_grpc

DEADLINE_S = 20.0
CHUNK = 64 * 1024


def launch(tmp_path: Path, stderr_file: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    cfg = tmp_path / "collector.toml"
    cfg.write_text(
        '[collector]\nlisten = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\nauth = "none"\ninsecure = true\n'
        f'shutdown_grace_s = 1\ndata_dir = "{tmp_path / "data"}"\n'
    )
    ready = tmp_path / "ready.json"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostdiag.collector.daemon", "--config", str(cfg), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=stderr_file.open("ab"),
    )
    deadline = time.monotonic() + DEADLINE_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"collector did not become ready: {stderr_file.read_text()}")
        time.sleep(0.02)
    return proc, json.loads(ready.read_text())


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=DEADLINE_S) as resp:
        return resp.read().decode()


def test_sigterm_mid_upload_resumes_after_restart_with_json_logs_and_valid_metrics(tmp_path: Path) -> None:
    out = tmp_path / "agent"
    out.mkdir()
    writer = BundleWriter(str(out), host_id="web-1", max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        with writer.open("filler.bin") as member:
            member.write(os.urandom(512 * 1024))
        info = writer.finish({"trigger": "agentctl"}, {"schema_version": 1})
    data = Path(info.path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    stderr_file = tmp_path / "collector.stderr"

    async def query(address: str) -> apb.QueryUploadResponse:
        async with aio.insecure_channel(address) as ch:
            return await agent_pb2_grpc.AgentServiceStub(ch).QueryUpload(apb.QueryUploadRequest(bundle_id=info.bundle_id))

    async def send(address: str, start: int, finish: bool, hang: asyncio.Event | None, stop: int) -> Any:
        async def requests() -> AsyncIterator[apb.UploadRequest]:
            for offset in range(start, stop, CHUNK):
                piece = data[offset: offset + CHUNK]
                last = finish and offset + len(piece) >= len(data)
                yield apb.UploadRequest(bundle_id=info.bundle_id, write_offset=offset, data=piece, finish_write=last,
                                        total_size_bytes=len(data) if last else 0, sha256=digest if last else "")
            if hang is not None:
                await hang.wait()

        async with aio.insecure_channel(address) as ch:
            return await agent_pb2_grpc.AgentServiceStub(ch).Upload(requests())

    async def first_half(address: str) -> None:
        hang = asyncio.Event()
        call = asyncio.create_task(send(address, 0, False, hang, 4 * CHUNK))
        deadline = time.monotonic() + DEADLINE_S
        while (await query(address)).committed_size_bytes != 4 * CHUNK:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # graceful stop with the upload stream open
        with pytest.raises(grpc.RpcError):
            await call  # the stream is ended within the grace, never completed

    proc, ready = launch(tmp_path, stderr_file)
    try:
        asyncio.run(first_half(ready["grpc"]))
        assert proc.wait(DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    proc, ready = launch(tmp_path, stderr_file)
    try:
        async def resume(address: str) -> None:
            q = await query(address)
            assert (q.committed_size_bytes, q.complete) == (4 * CHUNK, False)
            resp = await send(address, q.committed_size_bytes, True, None, len(data))
            assert resp.complete and resp.committed_size_bytes == len(data)
            again = await query(address)  # a retried finish finds it complete: stored once
            assert again.complete and again.committed_size_bytes == len(data)

        asyncio.run(resume(ready["grpc"]))
        with urllib.request.urlopen(f"http://{ready['http']}/api/v1/bundles/{info.bundle_id}",
                                    timeout=DEADLINE_S) as resp:
            assert resp.read() == data
        metrics = get(f"http://{ready['http']}/metrics")
        lines = metrics.splitlines()
        assert "hostdiag_collector_bundles_received_total 1" in lines
        assert any(line.startswith('hostdiag_collector_grpc_request_duration_seconds_count{'
                                   'method="/hostdiag.v1.AgentService/Upload",code="OK"}') for line in lines)
        assert any(line.startswith('hostdiag_collector_http_request_duration_seconds_count{'
                                   'route="/api/v1/bundles/{id}",method="GET",status="200"}') for line in lines)
        assert 'hostdiag_collector_incidents{state="open",severity="P1"} 0' in lines
        assert "hostdiag_collector_bundles_expired_total 0" in lines
        promtool = shutil.which("promtool")
        assert promtool, "promtool is missing: scripts/setup-env --dev installs it (Debian package prometheus)"
        check = subprocess.run([promtool, "check", "metrics"], input=metrics.encode(), capture_output=True,
                               timeout=DEADLINE_S)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Both runs logged only JSON objects on stderr, one per line, and named their start and stop.
    events = []
    for line in stderr_file.read_text().splitlines():
        doc = json.loads(line)
        assert isinstance(doc, dict) and {"ts", "level", "msg"} <= doc.keys()
        events.append(doc.get("event"))
    assert events.count("collector_started") == 2 and events.count("collector_stopped") == 2
