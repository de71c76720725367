"""collectorctl against the real collector, served in-process on 127.0.0.1:0.

The collector runs on its own event loop in a background thread, with real
SQLite and blob files in ``tmp_path``; collectorctl runs in the test thread
through :func:`hostdiag.collector.ctl.main`, exactly as the console script
does.  Bundles reach the collector the way an agent sends them: built with
the agent's ``BundleWriter`` and streamed through ``AgentService.Upload``.

One stand-in ``BundleService`` (breaks its stream once, mid-bundle) covers the
resume path, which the real collector cannot be asked to exercise.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import queue
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import zstandard

from hostdiag.agent.bundle import BundleWriter
from hostdiag.collector.config import parse_config
from hostdiag.collector.ctl import main
from hostdiag.collector.server import Collector
from hostdiag.v1 import agent_pb2, agent_pb2_grpc, bundle_pb2, bundle_pb2_grpc

KiB = 1024
MiB = 1024 * KiB


# -- the collector, in a thread ------------------------------------------------------------


class RunningCollector:
    def __init__(self, data_dir: Path) -> None:
        config = parse_config(
            {"collector": {"listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0", "data_dir": str(data_dir),
                           "auth": "none"}},
            "<test>",
        )
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="collector-loop", daemon=True)
        self.thread.start()
        self.collector: Collector = self._run(self._make(config))
        self._run(self.collector.start())
        self.address = self.collector.grpc_address
        self.channel = grpc.insecure_channel(self.address)

    async def _make(self, config: Any) -> Collector:
        return Collector(config)

    def _run(self, coro: Any, timeout_s: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.channel.close()
        try:
            self._run(self.collector.stop(0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def blob_path(self, sha256: str) -> Path:
        return self.data_dir / "blobs" / "sha256" / sha256[:2] / sha256


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[RunningCollector]:
    running = RunningCollector(tmp_path / "collector")
    try:
        yield running
    finally:
        running.stop()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


def ctl(collector: RunningCollector | str, *args: str) -> Result:
    address = collector if isinstance(collector, str) else collector.address
    out, err = io.StringIO(), io.StringIO()
    code = main(["--collector", address, *args], out, err, env={})
    return Result(code, out.getvalue(), err.getvalue())


# -- bundles, as an agent makes and sends them ---------------------------------------------


@dataclass(frozen=True)
class Built:
    bundle_id: str
    host_id: str
    data: bytes
    sha256: str
    file_name: str


def build_bundle(out_dir: Path, host_id: str = "web-1", *, filler_bytes: int = 0, incident_id: str = "") -> Built:
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = BundleWriter(str(out_dir), host_id=host_id, max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        writer.write_json("host.json", {"host_id": host_id})
        writer.write_ndjson("logs/app.log.ndjson", [{"line": f"request {i} failed"} for i in range(50)])
        if filler_bytes:
            with writer.open("filler.bin") as member:
                member.write(hashlib.shake_256(host_id.encode()).digest(filler_bytes))
        info = writer.finish(
            {"trigger": "collector", "profile": "default", "agent_version": "0.1.0", "labels": {"role": "api"},
             "incident_id": incident_id or None,
             "sources": {"host": {"status": "ok", "duration_s": 0.01, "error": None, "notes": {}}}},
            {"host": {"cpu_count": 2}},
        )
    data = Path(info.path).read_bytes()
    return Built(info.bundle_id, host_id, data, hashlib.sha256(data).hexdigest(), os.path.basename(info.path))


def upload(channel: grpc.Channel, bundle_id: str, data: bytes, *, incident_id: str = "",
           chunk_bytes: int = 256 * KiB, sha256: str | None = None) -> agent_pb2.UploadResponse:
    """Stream ``data`` through AgentService.Upload: offsets, then finish with size and sha256."""
    def messages() -> Iterator[agent_pb2.UploadRequest]:
        offset = 0
        first = True
        while True:
            chunk = data[offset : offset + chunk_bytes]
            last = offset + len(chunk) >= len(data)
            msg = agent_pb2.UploadRequest(bundle_id=bundle_id, write_offset=offset, data=chunk)
            if first:
                msg.incident_id = incident_id
                first = False
            if last:
                msg.finish_write = True
                msg.total_size_bytes = len(data)
                msg.sha256 = sha256 or hashlib.sha256(data).hexdigest()
            yield msg
            offset += len(chunk)
            if last:
                return

    response: agent_pb2.UploadResponse = agent_pb2_grpc.AgentServiceStub(channel).Upload(messages(), timeout=30)
    assert response.complete, response
    return response


def upload_built(collector: RunningCollector, built: Built, incident_id: str = "") -> None:
    upload(collector.channel, built.bundle_id, built.data, incident_id=incident_id)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- incidents -----------------------------------------------------------------------------


def test_incident_life_cycle(collector: RunningCollector) -> None:
    opened = ctl(collector, "incident", "open", "--title", "API down", "--severity", "P1", "--service", "api",
                 "--select", "role=api", "--host", "web-1", "--host", "web-2", "--window", "120")
    assert opened.code == 0, opened.err
    incident_id = opened.out.strip()
    assert incident_id.startswith("inc-") and "\n" not in incident_id

    listed = ctl(collector, "incident", "list", "--json")
    assert listed.code == 0, listed.err
    [row] = listed.json()
    assert row["id"] == incident_id
    assert (row["severity"], row["state"], row["service"]) == ("P1", "open", "api")
    assert row["selector"] == {"labels": {"role": "api"}, "host_ids": ["web-1", "web-2"]}
    assert row["window_seconds"] == 120
    assert [h["host_id"] for h in row["hosts"]] == ["web-1", "web-2"]
    assert {h["state"] for h in row["hosts"]} == {"requested"}

    table = ctl(collector, "incident", "list")
    assert table.out.splitlines()[0].split() == ["ID", "SEV", "STATE", "OPENED", "BUNDLES", "SERVICE", "TITLE"]
    assert incident_id in table.out and "API down" in table.out

    acked = ctl(collector, "incident", "ack", incident_id)
    assert acked.code == 0, acked.err
    assert acked.out.startswith(f"{incident_id} acknowledged at ")

    updated = ctl(collector, "incident", "update", incident_id, "--message", "failing over to the replica")
    assert updated.code == 0, updated.err

    resolved = ctl(collector, "incident", "resolve", incident_id, "--message", "replica promoted", "--json")
    assert resolved.code == 0, resolved.err
    doc = resolved.json()
    assert doc["state"] == "resolved"
    assert doc["acknowledged_at_unix_ms"] <= doc["resolved_at_unix_ms"]
    kinds = [e["kind"] for e in doc["timeline"]]
    assert kinds[0] == "opened" and kinds[-1] == "resolved"
    assert "status_update" in kinds
    assert [e["message"] for e in doc["timeline"] if e["kind"] == "status_update"] == ["failing over to the replica"]

    shown = ctl(collector, "incident", "show", incident_id)
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    assert lines[0].split() == ["incident", incident_id]
    assert ["state", "resolved"] == next(line.split() for line in lines if line.startswith("state"))
    assert any(line.split()[:2] == ["web-1", "requested"] for line in lines)
    assert any("replica promoted" in line and "resolved" in line for line in lines)
    assert any(line.startswith("acknowledged") and "T" in line for line in lines)

    only_open = ctl(collector, "incident", "list", "--state", "open", "--json")
    assert only_open.json() == []
    only_resolved = ctl(collector, "incident", "list", "--state", "resolved", "--json")
    assert [i["id"] for i in only_resolved.json()] == [incident_id]


def test_a_resolved_incident_refuses_changes(collector: RunningCollector) -> None:
    incident_id = ctl(collector, "incident", "open", "--title", "t", "--severity", "P3", "--host", "db-1").out.strip()
    assert ctl(collector, "incident", "resolve", incident_id).code == 0
    again = ctl(collector, "incident", "update", incident_id, "-m", "late news")
    assert again.code == 1
    assert "already resolved" in again.err and "Traceback" not in again.err


def test_incident_list_limit(collector: RunningCollector) -> None:
    for n in range(3):
        assert ctl(collector, "incident", "open", "--title", f"t{n}", "--severity", "P4", "--host", "h1").code == 0
    assert len(ctl(collector, "incident", "list", "--limit", "2", "--json").json()) == 2
    assert len(ctl(collector, "incident", "list", "--json").json()) == 3


@pytest.mark.parametrize("command", [("incident", "show"), ("incident", "ack"), ("incident", "resolve")])
def test_unknown_incident(collector: RunningCollector, command: tuple[str, str]) -> None:
    result = ctl(collector, *command, "inc-aaaaaaaa")
    assert result.code == 1
    assert result.err.strip() == "collectorctl: no incident inc-aaaaaaaa"
    assert result.out == ""


def test_unknown_incident_update(collector: RunningCollector) -> None:
    result = ctl(collector, "incident", "update", "inc-aaaaaaaa", "-m", "hello")
    assert (result.code, result.err.strip()) == (1, "collectorctl: no incident inc-aaaaaaaa")


def test_the_collectors_invalid_argument_is_exit_2_with_its_message(collector: RunningCollector) -> None:
    result = ctl(collector, "incident", "open", "--title", "t", "--severity", "P2", "--host", "bad host!")
    assert result.code == 2
    assert "selector.host_ids" in result.err and "bad host!" in result.err
    assert "Traceback" not in result.err
    assert ctl(collector, "incident", "list", "--json").json() == []


def test_unreachable_collector() -> None:
    port = closed_port()
    result = ctl(f"127.0.0.1:{port}", "--timeout", "60", "incident", "list")
    assert result.code == 1
    assert result.err.startswith(f"collectorctl: cannot reach the collector at 127.0.0.1:{port}: ")
    assert "Traceback" not in result.err and result.out == ""
    # The refusal itself is reported (at once), not the end of the 60 s connect timeout.
    assert "refused" in result.err.lower() and "no answer within" not in result.err


def test_a_collector_that_never_answers_is_reported_after_the_timeout() -> None:
    """A socket that accepts connections (the kernel does) but never speaks gRPC."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = ctl(f"127.0.0.1:{port}", "--timeout", "0.5", "incident", "list")
    assert result.code == 1
    assert result.err == f"collectorctl: cannot reach the collector at 127.0.0.1:{port}: no answer within 0.5 s\n"


def test_env_var_names_the_collector(collector: RunningCollector) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["incident", "list", "--json"], out, err, env={"HOSTDIAG_COLLECTOR": collector.address})
    assert (code, orjson.loads(out.getvalue())) == (0, [])


# -- bundles -------------------------------------------------------------------------------


def test_bundle_list_show_and_download(collector: RunningCollector, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    incident_id = ctl(collector, "incident", "open", "--title", "slow", "--severity", "P2",
                      "--host", "web-1").out.strip()
    # Bigger than one 1 MiB download chunk, so the stream carries several messages.
    built = build_bundle(tmp_path / "agent", "web-1", filler_bytes=2 * MiB + 12345, incident_id=incident_id)
    upload_built(collector, built, incident_id=incident_id)
    other = build_bundle(tmp_path / "agent2", "web-2")
    upload_built(collector, other)

    listed = ctl(collector, "bundle", "list", "--json")
    assert {b["bundle_id"] for b in listed.json()} == {built.bundle_id, other.bundle_id}
    by_incident = ctl(collector, "bundle", "list", "--incident", incident_id, "--json").json()
    assert [b["bundle_id"] for b in by_incident] == [built.bundle_id]
    assert by_incident[0]["size_bytes"] == len(built.data) and by_incident[0]["sha256"] == built.sha256
    by_host = ctl(collector, "bundle", "list", "--host", "web-2", "--json").json()
    assert [b["bundle_id"] for b in by_host] == [other.bundle_id]
    table = ctl(collector, "bundle", "list")
    assert table.out.splitlines()[0].split()[:3] == ["BUNDLE", "HOST", "INCIDENT"]

    shown = ctl(collector, "bundle", "show", built.bundle_id)
    assert shown.code == 0, shown.err
    assert f"sha256    {built.sha256}" in shown.out
    # evidence.json, host.json, the log and the filler
    assert any(line.split()[:2] == ["members", "4"] for line in shown.out.splitlines())
    shown_json = ctl(collector, "bundle", "show", built.bundle_id, "--json").json()
    assert shown_json["manifest"]["bundle_id"] == built.bundle_id
    assert shown_json["summary"]["members"] == 4
    assert shown_json["summary"]["sources"]["host"]["status"] == "ok"

    incident = ctl(collector, "incident", "show", incident_id, "--json").json()
    assert incident["bundle_ids"] == [built.bundle_id]
    assert incident["bundles"][0]["host_id"] == "web-1"

    # Default target: ./<the agent's file name>, in the current directory.
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    got = ctl(collector, "bundle", "download", built.bundle_id, "--json")
    assert got.code == 0, got.err
    doc = got.json()
    assert doc["path"] == os.path.join(".", built.file_name)
    assert (work / built.file_name).read_bytes() == built.data
    assert doc["sha256"] == built.sha256 and doc["size_bytes"] == len(built.data)
    assert doc["members_verified"] == 4
    assert leftovers(work) == [built.file_name]

    # Never over an existing file without --force.
    again = ctl(collector, "bundle", "download", built.bundle_id)
    assert again.code == 1 and "already exists" in again.err and "--force" in again.err
    (work / built.file_name).write_bytes(b"old")
    forced = ctl(collector, "bundle", "download", built.bundle_id, "--force")
    assert forced.code == 0, forced.err
    assert (work / built.file_name).read_bytes() == built.data
    assert "matches the collector's record" in forced.out

    # -o: a file path, or an existing directory.
    target = tmp_path / "out" / "b.tar.zst"
    target.parent.mkdir()
    assert ctl(collector, "bundle", "download", built.bundle_id, "-o", str(target)).code == 0
    assert target.read_bytes() == built.data
    assert ctl(collector, "bundle", "download", other.bundle_id, "-o", str(target.parent)).code == 0
    assert (target.parent / other.file_name).read_bytes() == other.data
    assert leftovers(target.parent) == sorted(["b.tar.zst", other.file_name])


def test_unknown_bundle(collector: RunningCollector, tmp_path: Path) -> None:
    unknown = "01890a5d-ac96-774b-bcce-b302099a8057"
    for command in (("bundle", "show"), ("bundle", "download")):
        result = ctl(collector, *command, unknown, *(("-o", str(tmp_path / "x")) if command[1] == "download" else ()))
        assert (result.code, result.err.strip()) == (1, f"collectorctl: no bundle {unknown}")
    assert leftovers(tmp_path) == ["collector"]
    not_an_id = ctl(collector, "bundle", "show", "not-a-uuid")
    assert not_an_id.code == 2 and "bundle_id" in not_an_id.err


def tamper(path: Path, position: int) -> None:
    """Flip one byte of a stored blob (the collector's files are 0640; the test owns them)."""
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))


def test_download_of_tampered_bytes_fails_and_leaves_nothing(collector: RunningCollector, tmp_path: Path) -> None:
    built = build_bundle(tmp_path / "agent", "web-1", filler_bytes=300 * KiB)
    upload_built(collector, built)
    tamper(collector.blob_path(built.sha256), len(built.data) // 2)
    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    result = ctl(collector, "bundle", "download", built.bundle_id, "-o", str(out_dir))
    assert result.code == 1
    assert f"bundle {built.bundle_id} not saved: sha256 mismatch" in result.err
    assert built.sha256 in result.err
    assert leftovers(out_dir) == []


def test_download_of_a_short_stored_file_fails(collector: RunningCollector, tmp_path: Path) -> None:
    built = build_bundle(tmp_path / "agent", "web-1")
    upload_built(collector, built)
    blob = collector.blob_path(built.sha256)
    os.chmod(blob, 0o600)
    blob.write_bytes(built.data[:100])
    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    result = ctl(collector, "bundle", "download", built.bundle_id, "-o", str(out_dir))
    assert result.code == 1 and "not saved" in result.err and "Traceback" not in result.err
    assert leftovers(out_dir) == []


def hand_made_bundle(bundle_id: str, host_id: str, *, listed_sha256_of_extra: str | None = None) -> bytes:
    """A bundle whose extra member does not match its manifest entry (when told to lie).

    The whole file's sha256 is honest (the agent hashed what it sent), and the
    manifest and evidence read cleanly; only a full member check, which the
    collector makes at upload, finds the lie.
    """
    evidence = b'{"host": {}}\n'
    extra = b"the member as it really is\n"
    manifest = {
        "format_version": 1, "bundle_id": bundle_id, "host_id": host_id, "created_at": "2025-11-24T16:00:00.000Z",
        "caps": {"max_member_bytes": 1 << 20, "max_bundle_bytes": 1 << 20}, "truncations": [],
        "members": [
            {"name": "evidence.json", "size_bytes": len(evidence), "sha256": hashlib.sha256(evidence).hexdigest(),
             "truncated": False, "truncated_reason": None},
            {"name": "extra.txt", "size_bytes": len(extra),
             "sha256": listed_sha256_of_extra or hashlib.sha256(extra).hexdigest(),
             "truncated": False, "truncated_reason": None},
        ],
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("manifest.json", orjson.dumps(manifest)), ("evidence.json", evidence),
                           ("extra.txt", extra)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1764000000
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor(write_checksum=True).compress(raw.getvalue())


def test_a_bundle_whose_members_do_not_match_the_manifest_is_never_stored(
    collector: RunningCollector, tmp_path: Path
) -> None:
    """The collector checks every member at upload, so such a bundle never reaches a download.

    collectorctl's own check of downloaded members stays as a second line
    (tests/unit/collector/test_ctl.py covers it against a lying server).
    """
    bundle_id = "01890a5d-ac96-774b-bcce-b302099a8058"
    data = hand_made_bundle(bundle_id, "web-9", listed_sha256_of_extra="0" * 64)
    with pytest.raises(grpc.RpcError) as info:
        upload(collector.channel, bundle_id, data)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "extra.txt" in (info.value.details() or "") and "sha256 mismatch" in (info.value.details() or "")
    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    result = ctl(collector, "bundle", "download", bundle_id, "-o", str(out_dir))
    assert result.code != 0
    assert leftovers(out_dir) == []


def test_hand_made_bundle_that_is_honest_downloads(collector: RunningCollector, tmp_path: Path) -> None:
    """The control for the test above: the same bundle with a true manifest verifies."""
    bundle_id = "01890a5d-ac96-774b-bcce-b302099a8059"
    data = hand_made_bundle(bundle_id, "web-9")
    upload(collector.channel, bundle_id, data)
    target = tmp_path / "ok.tar.zst"
    result = ctl(collector, "bundle", "download", bundle_id, "-o", str(target))
    assert result.code == 0, result.err
    assert target.read_bytes() == data


# -- agents --------------------------------------------------------------------------------


class FakeAgent:
    """An agent's control stream: Hello, then heartbeats on demand, then hang up."""

    def __init__(self, channel: grpc.Channel, host_id: str, labels: dict[str, str]) -> None:
        self._outbox: queue.Queue[agent_pb2.ConnectRequest | None] = queue.Queue()
        self._outbox.put(agent_pb2.ConnectRequest(hello=agent_pb2.Hello(
            host_id=host_id, labels=labels, agent_version="0.1.0-test", profiles=["default"],
            max_window_seconds=900, boot_id="boot-1")))
        self.welcomed = threading.Event()
        self._call = agent_pb2_grpc.AgentServiceStub(channel).Connect(self._requests())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[agent_pb2.ConnectRequest]:
        while (msg := self._outbox.get()) is not None:
            yield msg

    def _read(self) -> None:
        try:
            for msg in self._call:
                if msg.WhichOneof("message") == "welcome":
                    self.welcomed.set()
        except grpc.RpcError:
            pass

    def heartbeat(self) -> None:
        self._outbox.put(agent_pb2.ConnectRequest(heartbeat=agent_pb2.Heartbeat(sent_at_unix_ms=int(time.time() * 1000))))

    def close(self) -> None:
        self._outbox.put(None)
        self._reader.join(10)


def test_agents_list(collector: RunningCollector, wait_for: Callable[..., object]) -> None:
    assert ctl(collector, "agents", "list").out.strip() == "no agents"
    agent = FakeAgent(collector.channel, "web-1", {"role": "api", "zone": "a"})
    try:
        assert agent.welcomed.wait(10)
        agent.heartbeat()

        def listed() -> Any:
            rows = ctl(collector, "agents", "list", "--json").json()
            return rows if rows and rows[0]["last_heartbeat_unix_ms"] else None

        [row] = wait_for(listed, what="the agent with a heartbeat in agents list")  # type: ignore[misc]
        assert row["host_id"] == "web-1" and row["connected"] is True
        assert row["labels"] == {"role": "api", "zone": "a"}
        assert row["agent_version"] == "0.1.0-test"
        assert 0 <= row["last_heartbeat_age_s"] < 60
        table = ctl(collector, "agents", "list")
        header, line = table.out.splitlines()
        assert header.split() == ["HOST", "LABELS", "VERSION", "CONNECTED", "LAST", "HEARTBEAT"]
        assert line.split()[:4] == ["web-1", "role=api,zone=a", "0.1.0-test", "yes"]
        assert line.endswith("s ago")
    finally:
        agent.close()
    wait_for(lambda: ctl(collector, "agents", "list", "--json").json() == [], what="the agent to disconnect")
    [gone] = ctl(collector, "agents", "list", "--all", "--json").json()
    assert (gone["host_id"], gone["connected"]) == ("web-1", False)


# -- resuming a broken download ------------------------------------------------------------


class BreakingBundleService(bundle_pb2_grpc.BundleServiceServicer):
    """Serves one bundle; the first DownloadBundle stream dies after ``break_after`` bytes."""

    def __init__(self, bundle: bundle_pb2.Bundle, data: bytes, break_after: int, chunk_bytes: int = 64 * KiB) -> None:
        self.bundle = bundle
        self.data = data
        self.break_after = break_after
        self.chunk_bytes = chunk_bytes
        self.offsets: list[int] = []

    def GetBundle(self, request: Any, context: Any) -> Any:  # noqa: N802
        return bundle_pb2.GetBundleResponse(bundle=self.bundle, manifest_json="{}")

    def DownloadBundle(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        self.offsets.append(request.offset)
        first = len(self.offsets) == 1
        offset = request.offset
        while offset < len(self.data):
            if first and offset >= self.break_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost (test)")
            chunk = self.data[offset : offset + self.chunk_bytes]
            yield bundle_pb2.DownloadBundleResponse(offset=offset, data=chunk)
            offset += len(chunk)


def test_a_broken_download_resumes_from_the_bytes_on_disk(tmp_path: Path) -> None:
    from concurrent import futures

    built = build_bundle(tmp_path / "agent", "web-1", filler_bytes=400 * KiB)
    record = bundle_pb2.Bundle(bundle_id=built.bundle_id, host_id="web-1", size_bytes=len(built.data),
                               sha256=built.sha256, created_at_unix_ms=1764000000000)
    service = BreakingBundleService(record, built.data, break_after=192 * KiB)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    bundle_pb2_grpc.add_BundleServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        target = tmp_path / "b.tar.zst"
        result = ctl(f"127.0.0.1:{port}", "bundle", "download", built.bundle_id, "-o", str(target), "--json")
        assert result.code == 0, result.err
        assert target.read_bytes() == built.data
        assert result.json()["resumed"] == 1
        assert service.offsets == [0, 192 * KiB]
        assert leftovers(tmp_path) == ["agent", "b.tar.zst"]
    finally:
        server.stop(0)
