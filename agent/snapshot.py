"""Take one snapshot: run the profile's sources, pack them into a bundle.

Sources run concurrently, each under its own timeout.  A source that fails,
times out or is not applicable is recorded in the manifest with the reason and
never stops the others.  The bundle is written by
:class:`hostdiag.agent.bundle.BundleWriter`: members stream to temporary files
while sources run, then the ``.tar.zst`` is packed with ``manifest.json`` first
and renamed into place; on failure nothing is left behind.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hostdiag
from hostdiag.agent.api import ApiError
from hostdiag.agent.bundle import BundleInfo, BundleWriteError, BundleWriter
from hostdiag.agent.config import AgentConfig
from hostdiag.agent.sources import REGISTRY
from hostdiag.agent.sources.base import RecorderView, SnapshotContext, SourceSkipped

__all__ = [
    "SnapshotRequest",
    "take_snapshot",
    "EVIDENCE_SCHEMA_VERSION",
    "select_sources",
    "validate_collect_request",
]

log = logging.getLogger("hostdiag.agent.snapshot")

EVIDENCE_SCHEMA_VERSION = 1

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SnapshotRequest:
    profile: str = "default"
    window_s: float | None = None  # None: the profile's, else the recorder's window
    trigger: str = "agentctl"
    incident_id: str | None = None
    request_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


MAX_INCIDENT_ID_LEN = 128


def validate_collect_request(config: AgentConfig, request: dict[str, Any], trigger: str) -> SnapshotRequest:
    """Turn a collect request into a :class:`SnapshotRequest`, or raise :class:`ApiError`."""
    profile = request.get("profile") or "default"
    if not isinstance(profile, str) or profile not in config.profiles:
        known = ", ".join(sorted(config.profiles))
        raise ApiError(f"unknown profile {profile!r} (this agent defines: {known})")
    window = request.get("window_s")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0:
            raise ApiError(f"window_s must be a positive number of seconds, got {window!r}")
        if window > config.recorder.window_s:
            raise ApiError(f"window_s {window:g} exceeds the recorder window ({config.recorder.window_s:g} s)")
    incident = request.get("incident_id")
    if incident is not None and (not isinstance(incident, str) or not 0 < len(incident) <= MAX_INCIDENT_ID_LEN):
        raise ApiError(f"incident_id must be a string of 1 to {MAX_INCIDENT_ID_LEN} characters")
    return SnapshotRequest(
        profile=profile,
        window_s=float(window) if window is not None else None,
        trigger=trigger,
        incident_id=incident,
    )


def select_sources(config: AgentConfig, profile: str) -> list[str]:
    """Names of the sources a profile runs, in registry order."""
    prof = config.profile(profile)
    wanted = set(prof.sources) if prof.sources else set(REGISTRY)
    return [name for name in REGISTRY if name in wanted and config.source_config(name).enabled]


def _window(config: AgentConfig, request: SnapshotRequest) -> float:
    if request.window_s is not None:
        return float(request.window_s)
    prof = config.profile(request.profile)
    return prof.window_s or config.recorder.window_s


async def _run_source(name: str, ctx: SnapshotContext, progress: Progress | None) -> dict[str, Any]:
    source_cfg = ctx.config.source_config(name)
    source = REGISTRY[name](source_cfg)
    started = time.monotonic()
    if progress:
        progress({"event": "source_started", "source": name})
    status: dict[str, Any]
    try:
        notes = await asyncio.wait_for(source.collect(ctx), timeout=source_cfg.timeout_s)
        status = {"status": "ok", "notes": notes or {}}
    except SourceSkipped as exc:
        status = {"status": "skipped", "reason": str(exc)}
    except (asyncio.TimeoutError, TimeoutError):
        status = {"status": "timeout", "error": f"did not finish within {source_cfg.timeout_s:g} s"}
    except asyncio.CancelledError:
        raise
    except PermissionError as exc:
        status = {"status": "failed", "error": f"permission denied: {exc.filename or exc}"}
    except Exception as exc:  # any source bug is recorded, never fatal to the bundle
        status = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    status["duration_s"] = round(time.monotonic() - started, 4)
    if progress:
        progress({"event": "source_finished", "source": name, **status})
    return status


async def take_snapshot(
    config: AgentConfig,
    request: SnapshotRequest,
    *,
    out_dir: str,
    probe: Any,
    redactor: Any,
    recorder: RecorderView | None,
    executor: Any = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
) -> BundleInfo:
    """Collect the profile's sources into a bundle in ``out_dir``.

    Raises ``KeyError`` for an unknown profile and
    :class:`hostdiag.agent.bundle.BundleWriteError` when the bundle cannot be
    written (nothing is left behind then).
    """
    names = select_sources(config, request.profile)
    window_s = _window(config, request)
    now = clock()
    loop = asyncio.get_running_loop()
    try:
        os.makedirs(out_dir, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise BundleWriteError(
            f"cannot create bundle directory {out_dir}: {exc.strerror or exc}", path=out_dir, errno=exc.errno
        ) from None
    writer = BundleWriter(
        out_dir,
        host_id=config.host_id,
        max_member_bytes=config.bundle.max_member_bytes,
        max_bundle_bytes=config.bundle.max_bundle_bytes,
        zstd_level=config.bundle.zstd_level,
        now=now,
    )
    labels = dict(config.agent.labels)
    labels.update(request.labels)
    ctx = SnapshotContext(
        config=config,
        host_id=config.host_id,
        labels=labels,
        now=now,
        window_s=window_s,
        proc_root=config.agent.proc_root,
        probe=probe,
        redactor=redactor,
        members=writer,
        recorder=recorder,
        executor=executor,
        redaction_counts=collections.Counter(),
    )
    if progress:
        progress({"event": "snapshot_started", "bundle_id": writer.bundle_id, "sources": names})
    try:
        results = await asyncio.gather(*(_run_source(n, ctx, progress) for n in names))
        writer.seal()  # a timed-out source's thread may still be writing: drop its late bytes
        sources = dict(zip(names, results))
        evidence = {
            "schema_version": EVIDENCE_SCHEMA_VERSION,
            "host_id": ctx.host_id,
            "labels": labels,
            "collected_at": now,
            "window_s": window_s,
            "source_status": {n: s["status"] for n, s in sources.items()},
            **ctx.evidence,
        }
        manifest = {
            "agent_version": hostdiag.__version__,
            "host_id": ctx.host_id,
            "labels": labels,
            "trigger": request.trigger,
            "incident_id": request.incident_id,
            "request_id": request.request_id,
            "profile": request.profile,
            "window": {"start": now - window_s, "end": now, "seconds": window_s},
            "recorder": "daemon" if recorder is not None else "none",
            "sources": sources,
            "redaction": dict(sorted(ctx.redaction_counts.items())),
        }
        if progress:
            progress({"event": "packing", "bundle_id": writer.bundle_id})
        info = await loop.run_in_executor(executor, writer.finish, manifest, evidence)
    except BaseException:
        await loop.run_in_executor(executor, writer.abort)
        raise
    log.info(
        "bundle written",
        extra={"event": "bundle_written", "bundle_id": info.bundle_id, "path": info.path, "size_bytes": info.size_bytes},
    )
    return info
