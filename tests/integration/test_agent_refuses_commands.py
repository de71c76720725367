"""No remote execution, the agent's side: a real Uploader against a hostile control stream.

The collector here is a stand-in on 127.0.0.1 that sends whatever
``SnapshotCommand`` a compromised collector might: profile names shaped like
commands and paths, windows beyond the agent's recorder window, NaN and
infinities.  The agent must refuse each with a reason in its ``SnapshotAck``
and run nothing: the snapshot function is never called and the spool stays
empty.  See docs/security.md, "No remote execution".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from grpc import aio

from hostdiag.agent.config import parse_config
from hostdiag.agent.spool import Spool
from hostdiag.agent.uploader import HostInfo, Uploader
from hostdiag.v1 import agent_pb2 as pb
from hostdiag.v1 import agent_pb2_grpc as pb_grpc

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)  # refusals are logged as warnings on purpose

RECORDER_WINDOW_S = 600


class HostileCollector(pb_grpc.AgentServiceServicer):
    """Welcomes the agent, sends the given commands, records everything the agent says."""

    def __init__(self, commands: list[pb.SnapshotCommand]) -> None:
        self.commands = commands
        self.received: list[pb.ConnectRequest] = []
        self.changed = asyncio.Event()

    async def Connect(self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Any) -> None:
        await anext(request_iterator)  # Hello
        await context.write(pb.ConnectResponse(welcome=pb.Welcome(collector_version="hostile", session_id="s1")))
        for command in self.commands:
            await context.write(pb.ConnectResponse(snapshot=command))
        async for message in request_iterator:
            self.received.append(message)
            self.changed.set()

    def acks(self) -> list[pb.SnapshotAck]:
        return [m.ack for m in self.received if m.WhichOneof("message") == "ack"]


class Snapshots:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, profile: str, window_s: float, incident_id: str | None, request_id: str | None) -> Any:
        self.calls.append((profile, window_s))
        raise AssertionError("a refused command must not run")


async def _refusals(tmp_path: Path, commands: list[pb.SnapshotCommand]) -> tuple[dict[str, str], Snapshots, Spool]:
    """Run the agent against ``commands``; its acks by request id (all refused) and what ran."""
    service = HostileCollector(commands)
    server = aio.server()
    pb_grpc.add_AgentServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = parse_config(
        {
            "agent": {"host_id": "web-1", "data_dir": str(tmp_path / "data")},
            "recorder": {"window_s": RECORDER_WINDOW_S},
            "profiles": {"quick": {"window_s": 60}},
            "collector": {"address": f"127.0.0.1:{port}", "insecure": True, "backoff_initial_s": 0.05},
        },
        str(tmp_path / "agent.toml"),
    )
    spool = Spool(config.spool_dir, config.spool.max_bytes, config.spool.max_items)
    snapshots = Snapshots()
    uploader = Uploader(config, spool, snapshot_fn=snapshots, host_info=HostInfo("web-1", {}, "test", "boot-1"))
    task = asyncio.create_task(uploader.run())
    try:
        async with asyncio.timeout(20):
            while len(service.acks()) < len(commands):
                service.changed.clear()
                await service.changed.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop(grace=None)
    acks = service.acks()
    assert all(not a.accepted for a in acks), [a for a in acks if a.accepted]
    assert uploader.status()["commands_refused"] == len(commands)
    return {a.request_id: a.reason for a in acks}, snapshots, spool


def _command(request_id: str, profile: str = "quick", window_s: float = 30.0) -> pb.SnapshotCommand:
    return pb.SnapshotCommand(request_id=request_id, incident_id="inc-hostile", profile=profile, window_seconds=window_s)


def test_profiles_the_agent_does_not_define_are_refused_and_nothing_runs(tmp_path: Path) -> None:
    hostile = ["rm -rf /", "../../etc/shadow", "/bin/sh", "quick; reboot", "$(id)", "", "QUICK", "quick/../quick"]
    commands = [_command(f"r-{i}", profile=p) for i, p in enumerate(hostile)]
    reasons, snapshots, spool = asyncio.run(_refusals(tmp_path, commands))
    for i, profile in enumerate(hostile):
        assert reasons[f"r-{i}"] == f"unknown profile {profile!r} (this agent defines: default, quick)"
    assert snapshots.calls == []
    assert len(spool) == 0


def test_windows_beyond_the_agents_limit_are_refused_and_nothing_runs(tmp_path: Path) -> None:
    windows = {
        "over": RECORDER_WINDOW_S + 1.0,
        "huge": 1e308,
        "inf": math.inf,
        "nan": math.nan,
        "zero": 0.0,
        "negative": -30.0,
    }
    commands = [_command(name, window_s=w) for name, w in windows.items()]
    reasons, snapshots, spool = asyncio.run(_refusals(tmp_path, commands))
    assert reasons["over"] == f"window_seconds 601 exceeds the recorder window ({RECORDER_WINDOW_S} s)"
    assert "exceeds the recorder window" in reasons["huge"]
    for name in ("inf", "nan", "zero", "negative"):
        assert reasons[name].startswith("window_seconds must be a positive number of seconds"), reasons[name]
    assert snapshots.calls == []
    assert len(spool) == 0
