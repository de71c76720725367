"""The flight recorder's samplers: one system metrics sample, one top-processes sample.

Both are blocking (the recorder runs them in its thread pool) and keep the
previous reading to turn counters into rates, so the first sample after start
has ``None`` for every rate and ``interval_s`` None.

:class:`MetricsSampler` sample (one flat dict; JSON-able)::

    ts                      epoch seconds
    interval_s              seconds since the previous sample (None on the first)
    cpu_<mode>_pct          user nice system iowait irq softirq steal idle: share of all CPUs, 0..100
    load1 load5 load15
    mem_total_bytes mem_available_bytes mem_used_bytes
    swap_total_bytes swap_used_bytes
    psi_<res>_<some|full>_avg10   e.g. psi_memory_full_avg10 (only where the kernel has PSI)
    disk_read_bytes_per_s disk_write_bytes_per_s
    net_rx_bytes_per_s net_tx_bytes_per_s          all interfaces but loopback
    open_fds max_fds        system-wide file handles (/proc/sys/fs/file-nr)
    tcp_states              {"established": n, "time_wait": n, "listen": n, ...} (probe: sock_diag, else /proc/net/tcp)
    filesystems             [{mount, fstype, used_pct, free_bytes, total_bytes, inodes_used_pct}] (<= 32)

A reading that fails (no PSI, no ``/proc/net/tcp``) leaves its keys out or
None; it never fails the whole sample.

:class:`TopSampler` sample::

    ts, interval_s, process_count, thread_count, zombie_count,
    top_cpu: [{pid, name, cpu_pct, rss_bytes, num_threads}]  (n, busiest first)
    top_rss: [... same keys ...]                              (n, largest first)

``cpu_pct`` is percent of one CPU (like ``top``): the CPU time used since the
previous sample over the time elapsed.  A process not seen before (and every
process in the first sample) is measured from its start.  No command lines are
kept, so nothing here needs redaction.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from typing import Any

from hostdiag.agent import procfs
from hostdiag.agent.procfs import CLOCK_TICKS_PER_S, PidStat

__all__ = ["MetricsSampler", "TopSampler", "MAX_FILESYSTEMS", "CPU_MODES"]

log = logging.getLogger("hostdiag.agent.recorder.sampler")

MAX_FILESYSTEMS = 32
CPU_MODES = ("user", "nice", "system", "iowait", "irq", "softirq", "steal", "idle")
_PSI_KEYS = tuple(
    (res, kind) for res in procfs.PSI_RESOURCES for kind in ("some", "full")
)


def _rate(now: float | None, before: float | None, elapsed: float | None) -> float | None:
    if now is None or before is None or not elapsed or elapsed <= 0:
        return None
    delta = now - before
    if delta < 0:  # counter reset (device removed, wrap): no rate this time
        return None
    return round(delta / elapsed, 1)


class MetricsSampler:
    """System metrics, one flat dict per :meth:`sample` (see the module doc)."""

    def __init__(
        self,
        probe: Any,
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        slow_interval_s: float = 10.0,
    ) -> None:
        self.probe = probe
        self.proc_root = proc_root
        self.clock = clock
        self.monotonic = monotonic
        # Filesystem usage and TCP state counts change slowly and cost the most
        # (statvfs per mount, a netlink dump): refreshed every slow_interval_s and
        # carried forward in between, which keeps the 1 Hz sample cheap.
        self.slow_interval_s = slow_interval_s
        self._slow_at: float | None = None
        self._slow: tuple[dict[str, int], list[dict[str, Any]]] = ({}, [])
        self._prev_mono: float | None = None
        self._prev_cpu: dict[str, float] | None = None
        self._prev_disk: tuple[int, int] | None = None
        self._prev_net: tuple[int, int] | None = None
        self._failures: set[str] = set()

    def _soft(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one reading; a failure leaves it out (logged once per kind)."""
        try:
            value = fn()
        except Exception as exc:
            if what not in self._failures:
                self._failures.add(what)
                log.info(
                    "metric unavailable",
                    extra={"event": "metric_unavailable", "metric": what, "error": f"{type(exc).__name__}: {exc}"},
                )
            return None
        self._failures.discard(what)
        return value

    def sample(self) -> dict[str, Any]:
        ts = self.clock()
        mono = self.monotonic()
        elapsed = None if self._prev_mono is None else mono - self._prev_mono
        out: dict[str, Any] = {"ts": ts, "interval_s": None if elapsed is None else round(elapsed, 3)}

        cpu = self._soft("cpu_times", self.probe.cpu_times)
        out.update(self._cpu_pct(cpu))
        self._prev_cpu = cpu

        load = self._soft("loadavg", self.probe.getloadavg)
        out["load1"], out["load5"], out["load15"] = load if load else (None, None, None)

        mem = self._soft("memory", self.probe.virtual_memory) or {}
        out["mem_total_bytes"] = mem.get("total")
        out["mem_available_bytes"] = mem.get("available")
        out["mem_used_bytes"] = mem.get("used")
        swap = self._soft("swap", self.probe.swap_memory) or {}
        out["swap_total_bytes"] = swap.get("total")
        out["swap_used_bytes"] = swap.get("used")

        psi = self._soft("psi", lambda: procfs.read_all_pressure(self.proc_root)) or {}
        for res, kind in _PSI_KEYS:
            value = psi.get(res, {}).get(kind, {}).get("avg10")
            if value is not None:
                out[f"psi_{res}_{kind}_avg10"] = value

        disk = self._soft("disk_io", self.probe.disk_io_counters)
        disk_now = (int(disk["read_bytes"]), int(disk["write_bytes"])) if disk else None
        prev_disk = self._prev_disk
        out["disk_read_bytes_per_s"] = _rate(
            disk_now[0] if disk_now else None, prev_disk[0] if prev_disk else None, elapsed
        )
        out["disk_write_bytes_per_s"] = _rate(
            disk_now[1] if disk_now else None, prev_disk[1] if prev_disk else None, elapsed
        )
        self._prev_disk = disk_now

        nics = self._soft("net_io", self.probe.net_io_counters)
        net_now = None
        if nics is not None:
            real = [c for nic, c in nics.items() if nic != "lo"]
            net_now = (sum(int(c["bytes_recv"]) for c in real), sum(int(c["bytes_sent"]) for c in real))
        prev_net = self._prev_net
        out["net_rx_bytes_per_s"] = _rate(net_now[0] if net_now else None, prev_net[0] if prev_net else None, elapsed)
        out["net_tx_bytes_per_s"] = _rate(net_now[1] if net_now else None, prev_net[1] if prev_net else None, elapsed)
        self._prev_net = net_now

        fds = self._soft("file_nr", lambda: procfs.read_file_nr(self.proc_root))
        out["open_fds"] = fds[0] - fds[1] if fds else None
        out["max_fds"] = fds[2] if fds else None

        if self._slow_at is None or mono - self._slow_at >= self.slow_interval_s:
            self._slow = (self._soft("tcp_states", self.probe.tcp_state_counts) or {}, self._filesystems())
            self._slow_at = mono
        out["tcp_states"] = dict(self._slow[0])
        out["filesystems"] = [dict(fs) for fs in self._slow[1]]
        self._prev_mono = mono
        return out

    def _cpu_pct(self, cpu: dict[str, float] | None) -> dict[str, float | None]:
        prev = self._prev_cpu
        if cpu is None or prev is None:
            return {f"cpu_{m}_pct": None for m in CPU_MODES}
        # Modes psutil reports beyond these (guest time is already inside user) are
        # left out of the total so the percentages add up to 100.
        deltas = {m: max(0.0, float(cpu.get(m, 0.0)) - float(prev.get(m, 0.0))) for m in CPU_MODES}
        total = sum(deltas.values())
        if total <= 0:
            return {f"cpu_{m}_pct": None for m in CPU_MODES}
        return {f"cpu_{m}_pct": round(100.0 * d / total, 2) for m, d in deltas.items()}

    def _filesystems(self) -> list[dict[str, Any]]:
        parts = self._soft("disk_partitions", self.probe.disk_partitions) or []
        out: list[dict[str, Any]] = []
        seen_devices: set[str] = set()
        for part in parts:
            if len(out) >= MAX_FILESYSTEMS:
                break
            device = part.get("device", "")
            if device and device in seen_devices:  # a bind mount of a file system already listed
                continue
            mount = part["mountpoint"]
            try:
                usage = self.probe.filesystem_usage(mount)
            except OSError:
                continue  # unmounted meanwhile, or not ours to look at
            seen_devices.add(device)
            total = usage["total_bytes"]
            inodes_total = usage.get("inodes_total") or 0
            out.append(
                {
                    "mount": mount,
                    "fstype": part.get("fstype", ""),
                    "used_pct": round(100.0 * usage["used_bytes"] / total, 2) if total else None,
                    "free_bytes": usage["free_bytes"],
                    "total_bytes": total,
                    "inodes_used_pct": (
                        round(100.0 * (inodes_total - usage.get("inodes_free", 0)) / inodes_total, 2)
                        if inodes_total
                        else None
                    ),
                }
            )
        return out


class TopSampler:
    """The busiest and the largest processes, one dict per :meth:`sample` (see the module doc).

    Keeps the previous CPU ticks per process, keyed by ``(pid, start_ticks)`` so
    a reused pid never borrows another process's history; the table is rebuilt
    from the live processes on every call, so it never outgrows the host's
    process count.
    """

    def __init__(
        self,
        probe: Any,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        boot_time: float | None = None,
    ) -> None:
        self.probe = probe
        self.clock = clock
        self.monotonic = monotonic
        self._boot_time = boot_time  # epoch seconds; looked up lazily
        self._prev_ticks: dict[tuple[int, int], int] = {}
        self._prev_mono: float | None = None

    @property
    def tracked(self) -> int:
        """Processes whose previous CPU ticks are kept (for tests and status)."""
        return len(self._prev_ticks)

    def _boot(self) -> float:
        if self._boot_time is None:
            self._boot_time = float(self.probe.boot_time())
        return self._boot_time

    def sample(self, n: int) -> dict[str, Any]:
        ts = self.clock()
        mono = self.monotonic()
        stats: list[PidStat] = self.probe.process_stats()
        elapsed = None if self._prev_mono is None else mono - self._prev_mono
        prev = self._prev_ticks
        current: dict[tuple[int, int], int] = {}
        hz = float(CLOCK_TICKS_PER_S)
        since_boot_ticks: float | None = None
        rows: list[tuple[float, PidStat]] = []
        threads = 0
        zombies = 0
        for st in stats:
            key = (st.pid, st.start_ticks)
            ticks = st.cpu_ticks
            current[key] = ticks
            threads += st.num_threads
            if st.state == "Z":
                zombies += 1
            before = prev.get(key)
            if before is not None and elapsed:
                pct = 100.0 * (ticks - before) / hz / elapsed
            else:
                # New since the previous sample (or the first sample): from its start.
                if since_boot_ticks is None:
                    since_boot_ticks = (ts - self._boot()) * hz
                age_ticks = since_boot_ticks - st.start_ticks
                pct = 100.0 * ticks / age_ticks if age_ticks > 0 else 0.0
            rows.append((pct, st))
        self._prev_ticks = current
        self._prev_mono = mono

        top_cpu = heapq.nlargest(n, rows, key=lambda r: r[0])
        top_rss = heapq.nlargest(n, rows, key=lambda r: r[1].rss_bytes)
        names: dict[int, str] = {}
        return {
            "ts": ts,
            "interval_s": None if elapsed is None else round(elapsed, 3),
            "process_count": len(stats),
            "thread_count": threads,
            "zombie_count": zombies,
            "top_cpu": [self._row(pct, st, names) for pct, st in top_cpu],
            "top_rss": [self._row(pct, st, names) for pct, st in top_rss],
        }

    def _row(self, pct: float, st: PidStat, names: dict[int, str]) -> dict[str, Any]:
        name = st.name
        if len(name) >= 15:  # the kernel cut it: ask for the full name, once per sample
            if st.pid not in names:
                names[st.pid] = self.probe.process_name(st.pid) or name
            name = names[st.pid]
        return {
            "pid": st.pid,
            "name": name,
            "cpu_pct": round(max(0.0, pct), 1),
            "rss_bytes": st.rss_bytes,
            "num_threads": st.num_threads,
        }
