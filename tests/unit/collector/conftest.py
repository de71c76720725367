"""Helpers for collector unit tests: real bundles, upload messages, a fixed clock."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hostdiag.agent.bundle import BundleWriter
from hostdiag.v1 import agent_pb2


@dataclass(frozen=True)
class Bundle:
    bundle_id: str
    host_id: str
    data: bytes
    sha256: str


def build_bundle(out_dir: Path, host_id: str = "web-1", *, filler_bytes: int = 0, **manifest: Any) -> Bundle:
    """A real bundle made by the agent's BundleWriter (``filler_bytes`` of incompressible data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = BundleWriter(str(out_dir), host_id=host_id, max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        writer.write_json("host.json", {"host_id": host_id})
        if filler_bytes:
            with writer.open("filler.bin") as member:
                member.write(hashlib.shake_256(host_id.encode()).digest(filler_bytes))
        info = writer.finish(
            {"trigger": "collector", "profile": "default", **manifest},
            {"schema_version": 1, "host_id": host_id},
        )
    data = Path(info.path).read_bytes()
    return Bundle(info.bundle_id, host_id, data, hashlib.sha256(data).hexdigest())


def upload_messages(
    bundle_id: str,
    data: bytes,
    chunk_bytes: int = 16 * 1024,
    *,
    start: int = 0,
    finish: bool = True,
    total: int | None = None,
    sha256: str | None = None,
    request_id: str = "",
    incident_id: str = "",
) -> list[agent_pb2.UploadRequest]:
    """The UploadRequests an agent sends for ``data[start:]``."""
    msgs = []
    offset = start
    while offset < len(data) or not msgs:
        piece = data[offset : offset + chunk_bytes]
        msgs.append(
            agent_pb2.UploadRequest(
                bundle_id=bundle_id if not msgs else "",
                write_offset=offset,
                data=piece,
                request_id=request_id if not msgs else "",
                incident_id=incident_id if not msgs else "",
            )
        )
        offset += len(piece)
        if not piece:
            break
    if finish:
        last = msgs[-1]
        last.finish_write = True
        last.total_size_bytes = len(data) if total is None else total
        last.sha256 = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
    return msgs


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_bundle(tmp_path: Path) -> Any:
    """``make_bundle(host_id="web-1", filler_bytes=0, **manifest) -> Bundle``."""
    counter = iter(range(1_000_000))

    def make(host_id: str = "web-1", **kwargs: Any) -> Bundle:
        return build_bundle(tmp_path / "agent-out" / str(next(counter)), host_id, **kwargs)

    return make


@pytest.fixture
def messages() -> Any:
    """``messages(bundle_id, data, chunk_bytes=16 KiB, ...)``: see :func:`upload_messages`."""
    return upload_messages
