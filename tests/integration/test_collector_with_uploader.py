"""The agent's real Uploader against the real Collector, both on one loop over 127.0.0.1.

This is the contract check between the two sides: Hello, commands, acks,
progress, results and a chunked resumable upload, ending with the bundle
attached to the incident and removed from the agent's spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpc import aio

from hostdiag.agent.bundle import BundleInfo, BundleWriter
from hostdiag.agent.config import parse_config
from hostdiag.agent.spool import Spool
from hostdiag.agent.uploader import HostInfo, Uploader
from hostdiag.collector.config import CollectorConfig, CollectorSection
from hostdiag.collector.server import Collector
from hostdiag.v1 import bundle_pb2 as bpb
from hostdiag.v1 import bundle_pb2_grpc
from hostdiag.v1 import incident_pb2 as ipb
from hostdiag.v1 import incident_pb2_grpc

DEADLINE_S = 20.0

logging.getLogger("hostdiag").setLevel(logging.CRITICAL)


async def eventually(predicate: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def test_real_uploader_answers_an_incident(tmp_path: Path) -> None:
    async def main() -> None:
        collector = Collector(CollectorConfig(collector=CollectorSection(
            listen="127.0.0.1:0", http_listen="127.0.0.1:0", auth="none", data_dir=str(tmp_path / "collector"))))
        await collector.start()
        agent_cfg = parse_config(
            {
                "agent": {"host_id": "web-1", "labels": {"role": "api"}, "data_dir": str(tmp_path / "agent")},
                "profiles": {"quick": {"window_s": 60}},
                "collector": {"address": collector.grpc_address, "insecure": True, "chunk_bytes": 64 * 1024,
                              "backoff_initial_s": 0.02, "backoff_max_s": 0.2},
            },
            str(tmp_path / "agent.toml"),
        )
        out_dir = tmp_path / "bundles"
        out_dir.mkdir()
        calls: list[tuple[Any, ...]] = []

        async def snapshot(profile: str, window_s: float, incident_id: str | None,
                           request_id: str | None) -> BundleInfo:
            calls.append((profile, window_s, incident_id, request_id))
            writer = BundleWriter(str(out_dir), host_id="web-1", max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
            with writer:
                with writer.open("filler.bin") as member:
                    member.write(os.urandom(400 * 1024))
                return writer.finish(
                    {"trigger": "collector", "profile": profile, "incident_id": incident_id,
                     "request_id": request_id},
                    {"schema_version": 1},
                )

        spool = Spool(str(tmp_path / "agent" / "spool"), 1 << 30, 100)
        uploader = Uploader(agent_cfg, spool, snapshot_fn=snapshot,
                            host_info=HostInfo(host_id="web-1", labels={"role": "api"}))
        task = asyncio.create_task(uploader.run())
        channel = aio.insecure_channel(collector.grpc_address)
        try:
            await eventually(lambda: len(collector.fleet) == 1, "the agent to connect")
            incidents = incident_pb2_grpc.IncidentServiceStub(channel)
            inc = (await incidents.OpenIncident(ipb.OpenIncidentRequest(
                title="api latency", severity=ipb.SEVERITY_P2, profile="quick", window_seconds=30,
                selector=ipb.HostSelector(labels={"role": "api"})))).incident

            async def attached() -> Any:
                got = (await incidents.GetIncident(ipb.GetIncidentRequest(id=inc.id))).incident
                return got if got.hosts[0].state == ipb.HOST_REQUEST_STATE_ATTACHED else None

            got = await eventually(attached, "the bundle attached")
            assert calls == [("quick", 30.0, inc.id, got.hosts[0].request_id)]
            assert len(got.bundle_ids) == 1
            kinds = [e.kind for e in got.timeline]
            for kind in ("opened", "request_sent", "acknowledged", "bundle_attached"):
                assert kind in kinds
            bundles = bundle_pb2_grpc.BundleServiceStub(channel)
            meta = await bundles.GetBundle(bpb.GetBundleRequest(bundle_id=got.bundle_ids[0]))
            assert meta.bundle.host_id == "web-1" and meta.bundle.incident_id == inc.id
            await eventually(lambda: len(spool) == 0, "the agent's spool to empty")
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await channel.close()
            await collector.stop(0.5)

    asyncio.run(main())
