"""collectorctl as an operator runs it: console scripts as subprocesses.

``hostdiag-collector`` runs on 127.0.0.1 with port 0 and tells its ports
through ``--ready-file``.  One test feeds it a bundle the way an agent's
upload does; the last one runs a real ``hostdiag-agent`` and follows an
incident from ``incident open`` to a verified ``bundle download``.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import zstandard

from hostdiag.agent.bundle import BundleWriter
from hostdiag.v1 import agent_pb2, agent_pb2_grpc

KiB = 1024


class CollectorProcess:
    def __init__(self, proc: subprocess.Popen[bytes], ready: dict[str, Any], data_dir: Path, log: Path,
                 token: str) -> None:
        self.proc = proc
        self.token = token
        self.grpc = str(ready["grpc"])
        self.data_dir = data_dir
        self.log = log

    def env(self) -> dict[str, str]:
        return {**os.environ, "HOSTDIAG_COLLECTOR": self.grpc, "HOSTDIAG_TOKEN": self.token}


@pytest.fixture
def collector(tmp_path: Path, cli: Any) -> Iterator[CollectorProcess]:
    config = tmp_path / "collector.toml"
    data_dir = tmp_path / "collector-data"
    config.write_text(
        f'[collector]\nlisten = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\ndata_dir = "{data_dir}"\n'
    )
    # The first admin token, the way an operator makes it: offline, on the collector's host.
    token = cli.run("hostdiag-collector", "token", "create", "--config", str(config), "--role", "admin",
                    "--name", "e2e-admin", check=True).stdout.strip()
    ready_file = tmp_path / "ready.json"
    log = tmp_path / "collector.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [cli.script("hostdiag-collector"), "--config", str(config), "--ready-file", str(ready_file)],
            stdout=subprocess.DEVNULL, stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 30
        while not ready_file.exists():
            if proc.poll() is not None:
                raise AssertionError(f"collector exited {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"collector never wrote its ready file: {log.read_text()}")
            time.sleep(0.02)
        yield CollectorProcess(proc, orjson.loads(ready_file.read_bytes()), data_dir, log, token)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def ctl(cli: Any, collector: CollectorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return cli.run("collectorctl", *args, env=collector.env())


def upload_bundle(address: str, out_dir: Path, host_id: str) -> tuple[str, bytes]:
    """Build a bundle with the agent's writer and send it as an agent's Upload does."""
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = BundleWriter(str(out_dir), host_id=host_id, max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        writer.write_json("host.json", {"host_id": host_id})
        with writer.open("filler.bin") as member:
            member.write(hashlib.shake_256(host_id.encode()).digest(1500 * KiB))
        info = writer.finish({"trigger": "agentctl", "profile": "default"}, {"host": {}})
    data = Path(info.path).read_bytes()
    chunk = 256 * KiB
    messages = [
        agent_pb2.UploadRequest(bundle_id=info.bundle_id, write_offset=offset, data=data[offset : offset + chunk])
        for offset in range(0, len(data), chunk)
    ]
    messages[-1].finish_write = True
    messages[-1].total_size_bytes = len(data)
    messages[-1].sha256 = hashlib.sha256(data).hexdigest()
    with grpc.insecure_channel(address) as channel:
        response = agent_pb2_grpc.AgentServiceStub(channel).Upload(iter(messages), timeout=30)
    assert response.complete
    return info.bundle_id, data


def test_incident_commands(cli: Any, collector: CollectorProcess) -> None:
    opened = ctl(cli, collector, "incident", "open", "--title", "checkout errors", "--severity", "P2",
                 "--service", "checkout", "--select", "role=api", "--host", "web-7")
    assert opened.returncode == 0, opened.stderr
    incident_id = opened.stdout.strip()

    listed = ctl(cli, collector, "incident", "list", "--json")
    assert [i["id"] for i in orjson.loads(listed.stdout)] == [incident_id]

    assert ctl(cli, collector, "incident", "ack", incident_id).returncode == 0
    assert ctl(cli, collector, "incident", "update", incident_id, "-m", "rolled back 4.2.1").returncode == 0
    assert ctl(cli, collector, "incident", "resolve", incident_id, "-m", "error rate normal").returncode == 0

    shown = ctl(cli, collector, "incident", "show", incident_id, "--json")
    doc = orjson.loads(shown.stdout)
    assert doc["state"] == "resolved" and doc["severity"] == "P2" and doc["service"] == "checkout"
    assert [h["host_id"] for h in doc["hosts"]] == ["web-7"]
    messages = [e["message"] for e in doc["timeline"]]
    assert "rolled back 4.2.1" in messages and "error rate normal" in messages
    actors = {e["actor"] for e in doc["timeline"] if e["kind"] in ("opened", "status_update", "resolved")}
    assert len(actors) == 1 and None not in actors  # the operator's user name

    human = ctl(cli, collector, "incident", "show", incident_id)
    assert human.returncode == 0 and "rolled back 4.2.1" in human.stdout and human.stderr == ""

    unknown = ctl(cli, collector, "incident", "show", "inc-aaaaaaaa")
    assert (unknown.returncode, unknown.stderr) == (1, "collectorctl: no incident inc-aaaaaaaa\n")

    bad = ctl(cli, collector, "incident", "open", "--title", "t", "--severity", "P9", "--host", "x")
    assert bad.returncode == 2 and "argument --severity" in bad.stderr


def test_unreachable_collector(cli: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = cli.run("collectorctl", "--collector", f"127.0.0.1:{port}", "agents", "list")
    assert result.returncode == 1
    assert result.stderr.startswith(f"collectorctl: cannot reach the collector at 127.0.0.1:{port}: ")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_bundle_download(cli: Any, collector: CollectorProcess, tmp_path: Path) -> None:
    bundle_id, data = upload_bundle(collector.grpc, tmp_path / "agent", "web-3")
    listed = orjson.loads(ctl(cli, collector, "bundle", "list", "--host", "web-3", "--json").stdout)
    assert [b["bundle_id"] for b in listed] == [bundle_id]

    out_dir = tmp_path / "postmortem"
    out_dir.mkdir()
    got = ctl(cli, collector, "bundle", "download", bundle_id, "-o", str(out_dir), "--json")
    assert got.returncode == 0, got.stderr
    doc = orjson.loads(got.stdout)
    assert Path(doc["path"]).read_bytes() == data
    assert os.listdir(out_dir) == [os.path.basename(doc["path"])]
    assert got.stderr == ""  # no progress bar without a terminal
    # What a postmortem author does next: standard tar opens it, manifest first.
    with _open_zst(doc["path"]) as tar:
        assert tar.getnames()[:2] == ["manifest.json", "evidence.json"]

    # The stored file damaged on disk: the download is refused and leaves nothing.
    blob = collector.data_dir / "blobs" / "sha256" / doc["sha256"][:2] / doc["sha256"]
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 3] ^= 0x01
    os.chmod(blob, 0o600)
    blob.write_bytes(bytes(damaged))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    refused = ctl(cli, collector, "bundle", "download", bundle_id, "-o", str(fresh))
    assert refused.returncode == 1
    assert f"collectorctl: bundle {bundle_id} not saved: sha256 mismatch" in refused.stderr
    assert os.listdir(fresh) == []


def _open_zst(path: str) -> tarfile.TarFile:
    raw = zstandard.ZstdDecompressor().decompress(Path(path).read_bytes(), max_output_size=64 << 20)
    return tarfile.open(fileobj=io.BytesIO(raw), mode="r:")


@pytest.mark.slow
def test_incident_to_verified_bundle_with_a_real_agent(cli: Any, collector: CollectorProcess, start_agent: Any,
                                                       tmp_path: Path, wait_for: Callable[..., object]) -> None:
    agent_dir = tmp_path / "agent-host"
    agent_dir.mkdir()
    config = cli.write_agent_config(
        agent_dir, extra=f'\n[collector]\naddress = "{collector.grpc}"\ninsecure = true\n'
    )
    start_agent(config)

    def connected() -> bool:
        agents = orjson.loads(ctl(cli, collector, "agents", "list", "--json").stdout)
        return any(a["host_id"] == "e2e-host" and a["connected"] for a in agents)

    wait_for(connected, timeout_s=60, what="the agent in collectorctl agents list")

    incident_id = ctl(cli, collector, "incident", "open", "--title", "latency", "--severity", "P3",
                      "--select", "role=api", "--window", "10").stdout.strip()

    def attached() -> Any:
        doc = orjson.loads(ctl(cli, collector, "incident", "show", incident_id, "--json").stdout)
        hosts = doc["hosts"]
        assert hosts and hosts[0]["state"] not in ("failed", "expired"), hosts
        return doc if hosts[0]["state"] == "attached" else None

    doc = wait_for(attached, timeout_s=90, what="the agent's bundle to attach")
    assert isinstance(doc, dict)
    [bundle] = doc["bundles"]
    assert bundle["host_id"] == "e2e-host"

    out_dir = tmp_path / "postmortem"
    out_dir.mkdir()
    got = ctl(cli, collector, "bundle", "download", bundle["bundle_id"], "-o", str(out_dir), "--json")
    assert got.returncode == 0, got.stderr
    result = orjson.loads(got.stdout)
    assert result["sha256"] == bundle["sha256"] and result["members_verified"] >= 2
    assert hashlib.sha256(Path(result["path"]).read_bytes()).hexdigest() == bundle["sha256"]
