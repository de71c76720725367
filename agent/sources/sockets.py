"""Snapshot source ``sockets``: who listens where, and how TCP connections stand.

Member ``sockets.json``::

    {"listening": [{proto, family, address, port, pid, process, connections}, ...],
     "tcp_states": {"established": n, "time_wait": n, ...},
     "connections_total": n}

``connections`` is the number of established TCP connections to that
listening port (clients of a server).  ``pid``/``process`` are None when the
agent may not see the owner (it runs without privileges).

Evidence ``evidence["sockets"]``: ``listening_tcp_ports`` and
``listening_udp_ports`` (sorted port numbers), ``tcp_states``.

The TCP state counts come straight from ``<proc_root>/net/tcp`` and ``tcp6``
(cheap); the listening table from the probe (it maps sockets to processes,
which needs to look at every process's file descriptors).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from hostdiag.agent import procfs
from hostdiag.agent.sources.base import SnapshotContext, SourceConfig

__all__ = ["SocketsSource", "listening_table"]


def listening_table(connections: list[dict[str, Any]], name_of: Any) -> list[dict[str, Any]]:
    """Listening TCP sockets and bound, unconnected UDP sockets, with their owners.

    ``name_of(pid)`` returns a process name or None.  Rows are sorted by
    protocol, port and address, one per (proto, family, address, port, pid).
    """
    established: collections.Counter[int] = collections.Counter()
    for c in connections:
        if c["proto"] == "tcp" and c["status"] == "ESTABLISHED" and c["laddr"]:
            established[c["laddr"][1]] += 1
    names: dict[int, str | None] = {}
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for c in connections:
        laddr = c.get("laddr")
        if not laddr:
            continue
        if c["proto"] == "tcp":
            if c["status"] != "LISTEN":
                continue
        elif c["proto"] == "udp":
            if c.get("raddr"):
                continue  # a connected UDP socket is a client
        else:
            continue
        pid = c.get("pid")
        if pid is not None and pid not in names:
            names[pid] = name_of(pid)
        key = (c["proto"], c["family"], laddr[0], laddr[1], pid)
        rows[key] = {
            "proto": c["proto"],
            "family": c["family"],
            "address": laddr[0],
            "port": laddr[1],
            "pid": pid,
            "process": names.get(pid) if pid is not None else None,
            "connections": established[laddr[1]] if c["proto"] == "tcp" else None,
        }
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[3], k[1], k[2], k[4] or 0))]


class SocketsSource:
    name = "sockets"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        max_listening: int = field(
            default=2000, metadata={"min": 1, "max": 100000, "doc": "most listening sockets in the member"}
        )

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        member, notes = await ctx.run_blocking(self._collect, ctx)
        await ctx.run_blocking(ctx.members.write_json, "sockets.json", member)
        listening = member["listening"]
        ctx.evidence[self.name] = {
            "listening_tcp_ports": sorted({r["port"] for r in listening if r["proto"] == "tcp"}),
            "listening_udp_ports": sorted({r["port"] for r in listening if r["proto"] == "udp"}),
            "tcp_states": member["tcp_states"],
        }
        return notes

    def _collect(self, ctx: SnapshotContext) -> tuple[dict[str, Any], dict[str, Any]]:
        probe = ctx.probe
        notes: dict[str, Any] = {}
        tcp_states: dict[str, int] | None
        try:
            tcp_states = procfs.tcp_state_counts(ctx.proc_root)
        except OSError as exc:
            tcp_states = None
            notes["tcp_states_error"] = f"{type(exc).__name__}: {exc}"
        connections = probe.net_connections("inet")
        if tcp_states is None:  # fall back to counting what the probe saw
            tcp_states = dict.fromkeys(procfs.TCP_STATES.values(), 0)
            for c in connections:
                if c["proto"] == "tcp":
                    state = str(c["status"]).lower()
                    tcp_states[state] = tcp_states.get(state, 0) + 1
        listening = listening_table(connections, probe.process_name)
        cap = self.config.max_listening
        if len(listening) > cap:
            notes["listening_omitted"] = len(listening) - cap
            listening = listening[:cap]
        notes["listening"] = len(listening)
        notes["owner_unknown"] = sum(1 for r in listening if r["pid"] is None)
        member = {
            "listening": listening,
            "tcp_states": tcp_states,
            "connections_total": len(connections),
        }
        return member, notes
