"""Snapshot source ``host``: who this host is.

Member ``host.json``: host id and labels, hostname, OS (``/etc/os-release``),
kernel (``uname``), boot id, boot time and uptime, machine id, CPU count,
memory total, logged-in sessions, Python and agent versions.

Evidence ``evidence["host"]``: ``cpu_count``, ``mem_total_bytes``, ``uptime_s``.

A fact that cannot be read is ``None`` and named in the notes' ``missing`` list;
the source fails only when nothing about the host could be read at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import hostdiag
from hostdiag.agent import procfs
from hostdiag.agent.sources.base import SnapshotContext, SourceConfig

__all__ = ["HostSource", "parse_os_release"]


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines of os-release(5); quotes and backslash escapes removed."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            value = value.replace('\\"', '"').replace("\\$", "$").replace("\\`", "`").replace("\\\\", "\\")
        out[key.strip()] = value
    return out


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


class HostSource:
    name = "host"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        os_release_path: str = field(
            default="/etc/os-release",
            metadata={"nonempty": True, "doc": "os-release file (a host path when the agent runs in a container)"},
        )
        machine_id_path: str = field(
            default="/etc/machine-id", metadata={"nonempty": True, "doc": "machine id file"}
        )

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        facts, missing = await ctx.run_blocking(self._facts, ctx)
        facts["host_id"] = ctx.host_id
        facts["labels"] = dict(ctx.labels)
        await ctx.run_blocking(ctx.members.write_json, "host.json", facts)
        ctx.evidence[self.name] = {
            "cpu_count": facts["cpu"]["logical"],
            "mem_total_bytes": facts["memory"]["total_bytes"],
            "uptime_s": facts["uptime_s"],
        }
        return {"missing": missing} if missing else {}

    def _facts(self, ctx: SnapshotContext) -> tuple[dict[str, Any], list[str]]:
        probe = ctx.probe
        missing: list[str] = []
        errors: list[BaseException] = []
        tried: list[str] = []

        def get(what: str, fn: Any, *args: Any) -> Any:
            tried.append(what)
            try:
                return fn(*args)
            except Exception as exc:  # one unreadable fact does not hide the others
                missing.append(what)
                errors.append(exc)
                return None

        os_release = get("os_release", lambda: parse_os_release(_read_text(self.config.os_release_path)))
        machine_id = get("machine_id", lambda: _read_text(self.config.machine_id_path).strip() or None)
        uname = get("uname", probe.uname) or {}
        uptime_s = get("uptime", procfs.read_uptime_s, ctx.proc_root)
        cpu = get("cpu_count", probe.cpu_count) or {}
        memory = get("memory", probe.virtual_memory) or {}
        swap = get("swap", probe.swap_memory) or {}
        users = get("users", probe.users)
        facts: dict[str, Any] = {
            "hostname": get("hostname", probe.hostname),
            "os": None
            if os_release is None
            else {
                "id": os_release.get("ID"),
                "version_id": os_release.get("VERSION_ID"),
                "pretty_name": os_release.get("PRETTY_NAME"),
                "id_like": os_release.get("ID_LIKE"),
                "version_codename": os_release.get("VERSION_CODENAME"),
            },
            "kernel": {
                "sysname": uname.get("sysname"),
                "release": uname.get("release"),
                "version": uname.get("version"),
                "machine": uname.get("machine"),
            },
            "boot_id": get("boot_id", procfs.read_boot_id, ctx.proc_root),
            "boot_time": None if uptime_s is None else round(ctx.now - uptime_s, 3),
            "uptime_s": None if uptime_s is None else round(uptime_s, 3),
            "machine_id": machine_id,
            "cpu": {"logical": cpu.get("logical"), "physical": cpu.get("physical")},
            "memory": {"total_bytes": memory.get("total"), "swap_total_bytes": swap.get("total")},
            "users": users,
            "python_version": get("python_version", probe.python_version),
            "agent_version": hostdiag.__version__,
        }
        if errors and len(missing) == len(tried):  # nothing could be read: a real failure
            raise errors[0]
        return facts, missing
