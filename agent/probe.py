"""The system probe: the one narrow object through which the agent asks psutil.

Sources and samplers never import psutil; they call a probe, so unit tests pass
:class:`FakeProbe` and real hosts get :class:`SystemProbe`.  Every method
returns plain data (dicts, lists, numbers) with units in the key names, so what
a probe returns can go into JSON as it is.

Processes come and go while the agent looks at them.  The contract:

* :meth:`SystemProbe.iter_processes` yields opaque handles (each has ``.pid``);
* :meth:`SystemProbe.process_info` reads chosen attributes of one handle and
  raises ``psutil.NoSuchProcess`` when that process has vanished (callers skip
  it: a vanished process is not an error); an attribute that cannot be read
  (``AccessDenied``, or a zombie) comes back as ``None`` and is named in the
  returned ``unavailable`` set;
* :meth:`SystemProbe.process_environ` raises ``psutil.AccessDenied`` or
  ``psutil.NoSuchProcess`` so the caller can record which one.

The samplers' hot path, :meth:`SystemProbe.process_stats`, reads
``<proc_root>/<pid>/stat`` directly (see :mod:`hostdiag.agent.procfs`): about
5 us a process against 60+ us through psutil (``scripts/bench/proc_snapshot.py``).

psutil-backed methods read the ``/proc`` psutil was set up with
(``psutil.PROCFS_PATH``, normally ``/proc``); ``proc_root`` is used by the
:mod:`procfs` readers.  The probe does not change psutil's process-wide setting.
"""

from __future__ import annotations

import os
import platform
import pwd
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from hostdiag.agent import procfs
from hostdiag.agent.procfs import PidStat

__all__ = [
    "SystemProbe",
    "count_diag_states",
    "FakeProbe",
    "FakeProcess",
    "NoSuchProcess",
    "AccessDenied",
    "ZombieProcess",
    "PROCESS_ATTRS",
]

# Re-exported so callers catch the probe's errors without importing psutil.
NoSuchProcess = psutil.NoSuchProcess
AccessDenied = psutil.AccessDenied
ZombieProcess = psutil.ZombieProcess

# Attributes :meth:`SystemProbe.process_info` understands (psutil's names).
PROCESS_ATTRS = frozenset(
    {
        "pid",
        "ppid",
        "name",
        "exe",
        "cmdline",
        "username",
        "status",
        "create_time",
        "cpu_times",
        "memory_info",
        "num_threads",
        "num_fds",
        "io_counters",
        "nice",
        "terminal",
        "cwd",
        "uids",
    }
)

_UNAVAILABLE = object()

# Network and pseudo file systems never sampled: statvfs on a hung NFS server blocks.
_SKIP_FSTYPES = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "fuse.sshfs", "9p", "afs",
        "lustre", "gpfs", "squashfs", "iso9660", "udf", "tmpfs", "devtmpfs", "overlay",
        "proc", "sysfs", "cgroup", "cgroup2", "autofs", "fuse.lxcfs", "nsfs", "tracefs",
    }
)


def _tuple_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    return dict(value._asdict())


def _plain(name: str, value: Any) -> Any:
    """psutil's named tuples as dicts, so attributes are JSON-able."""
    if value is None:
        return None
    if name in ("cpu_times", "memory_info", "io_counters", "uids"):
        return _tuple_dict(value)
    return value


# sock_diag(7): ask the kernel for TCP sockets by state over netlink.  Several
# times cheaper than /proc/net/tcp, whose generation walks every hash bucket.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_ALL_TCP_STATES = 0x1FFE  # bits 1..12: every state, time-wait and request sockets included
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_DIAG_REQ = struct.Struct("=BBBBI48x")  # family, protocol, ext, pad, states, inet_diag_sockid


def count_diag_states(buf: bytes, counts: list[int]) -> bool:
    """Count the state of each ``inet_diag_msg`` in one netlink datagram.

    ``counts[state] += 1`` per socket.  Returns True at the end of the dump;
    raises ``OSError`` for a netlink error message.
    """
    off = 0
    end = len(buf)
    unpack = _NLMSG.unpack_from
    while off + 16 <= end:
        length, kind, _flags, _seq, _pid = unpack(buf, off)
        if kind == _NLMSG_DONE:
            return True
        if kind == _NLMSG_ERROR:
            code = -struct.unpack_from("=i", buf, off + 16)[0] if off + 20 <= end else 0
            raise OSError(code, f"sock_diag: {os.strerror(code) if code else 'error'}")
        if length < 18:
            raise OSError(0, "sock_diag: malformed message")
        state = buf[off + 17]  # inet_diag_msg.idiag_state, after idiag_family
        if state < len(counts):
            counts[state] += 1
        off += (length + 3) & ~3
    return False


def _sock_diag_tcp_states() -> dict[str, int]:
    counts = [0] * 16
    for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(2.0)
            request = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, _ALL_TCP_STATES)
            sock.send(_NLMSG.pack(_NLMSG.size + len(request), _SOCK_DIAG_BY_FAMILY,
                                  _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + request)
            while not count_diag_states(sock.recv(1 << 17), counts):
                pass
    return {name: counts[state] for state, name in procfs.TCP_STATES.items()}


class SystemProbe:
    """The real host, through psutil and :mod:`hostdiag.agent.procfs`."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._user_names: dict[int, str] = {}
        self._user_names_at = 0.0
        # Netlink sees the agent's own network namespace: only right with the agent's own /proc.
        self._use_netlink = proc_root.rstrip("/") == "/proc"

    def _user_name(self, uid: int) -> str:
        """Name of a uid, cached for a minute (a password database lookup per process is slow)."""
        now = time.monotonic()
        if now - self._user_names_at > 60.0 or len(self._user_names) > 4096:
            self._user_names = {}
            self._user_names_at = now
        name = self._user_names.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._user_names[uid] = name
        return name

    # -- processes ----------------------------------------------------------------------------
    def iter_processes(self) -> Iterator[Any]:
        """Handles of every process now (psutil caches them between calls)."""
        handles: Iterator[Any] = psutil.process_iter()
        return handles

    def process_info(self, proc: Any, attrs: Sequence[str]) -> tuple[dict[str, Any], frozenset[str]]:
        """``attrs`` of one process, and the names that could not be read.

        Raises ``NoSuchProcess`` when the process is gone.  Named tuples
        (``cpu_times``, ``memory_info``, ``io_counters``) come back as dicts.
        """
        wanted = list(attrs)
        # ``username`` is the real uid's name (as psutil has it), with the lookup cached.
        by_uid = "username" in wanted
        if by_uid:
            wanted.remove("username")
            if "uids" not in wanted:
                wanted.append("uids")
        info = proc.as_dict(wanted, ad_value=_UNAVAILABLE)
        if by_uid:
            uids = info["uids"] if "uids" in attrs else info.pop("uids")
            info["username"] = _UNAVAILABLE if uids is _UNAVAILABLE else self._user_name(uids.real)
        unavailable = frozenset(k for k, v in info.items() if v is _UNAVAILABLE)
        return {k: (None if v is _UNAVAILABLE else _plain(k, v)) for k, v in info.items()}, unavailable

    def process_environ(self, proc: Any) -> dict[str, str]:
        """Environment of one process; ``AccessDenied`` / ``NoSuchProcess`` say why not."""
        pid = proc.pid
        try:
            return procfs.read_environ(pid, self.proc_root)
        except PermissionError:
            raise AccessDenied(pid) from None
        except ProcessLookupError:
            raise NoSuchProcess(pid) from None

    def process_name(self, pid: int) -> str | None:
        """Full process name (not cut to 15 characters), or None when it is gone or hidden."""
        try:
            return str(psutil.Process(pid).name())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def process_stats(self) -> list[PidStat]:
        """``/proc/<pid>/stat`` numbers of every process (the samplers' fast path)."""
        return procfs.read_pid_stats(self.proc_root)

    # -- system -------------------------------------------------------------------------------
    def cpu_times(self) -> dict[str, float]:
        """Seconds since boot per CPU mode, all CPUs together (user, nice, system, idle, iowait, ...)."""
        return dict(psutil.cpu_times()._asdict())

    def cpu_count(self) -> dict[str, int | None]:
        return {"logical": psutil.cpu_count(logical=True), "physical": psutil.cpu_count(logical=False)}

    def virtual_memory(self) -> dict[str, int]:
        """Bytes: total, available, used, free, ... (psutil's fields)."""
        return dict(psutil.virtual_memory()._asdict())

    def swap_memory(self) -> dict[str, int]:
        m = psutil.swap_memory()
        return {"total": int(m.total), "used": int(m.used), "free": int(m.free)}

    def disk_io_counters(self) -> dict[str, int] | None:
        """Totals since boot over whole disks (read_bytes, write_bytes, ...), None without disks."""
        counters = psutil.disk_io_counters(perdisk=False)
        return _tuple_dict(counters)

    def net_io_counters(self) -> dict[str, dict[str, int]]:
        """Totals since boot per network interface (bytes_recv, bytes_sent, ...)."""
        return {nic: dict(c._asdict()) for nic, c in psutil.net_io_counters(pernic=True).items()}

    def disk_partitions(self) -> list[dict[str, str]]:
        """Mounted block-device file systems (no pseudo or network file systems)."""
        out = []
        for p in psutil.disk_partitions(all=False):
            if p.fstype in _SKIP_FSTYPES:
                continue
            out.append({"device": p.device, "mountpoint": p.mountpoint, "fstype": p.fstype, "opts": p.opts})
        return out

    def filesystem_usage(self, mountpoint: str) -> dict[str, int]:
        """Space and inodes of one mounted file system (``statvfs``)."""
        st = os.statvfs(mountpoint)
        total = st.f_blocks * st.f_frsize
        free = st.f_bfree * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        return {
            "total_bytes": total,
            "used_bytes": total - free,
            "free_bytes": avail,  # what unprivileged users can still write
            "inodes_total": st.f_files,
            "inodes_free": st.f_ffree,
        }

    def tcp_state_counts(self) -> dict[str, int]:
        """TCP sockets per state, IPv4 and IPv6 together (names as in ``procfs.TCP_STATES``).

        Asks the kernel over sock_diag netlink; where that is not allowed
        (seccomp, no ``inet_diag`` module) reads ``<proc_root>/net/tcp{,6}`` from
        then on.
        """
        if self._use_netlink:
            try:
                return _sock_diag_tcp_states()
            except OSError:
                self._use_netlink = False
        return procfs.tcp_state_counts(self.proc_root)

    def net_connections(self, kind: str = "inet") -> list[dict[str, Any]]:
        """Sockets: family (ipv4/ipv6), proto (tcp/udp), laddr/raddr ``[ip, port]``, status, pid.

        Without privileges other users' sockets come back with ``pid`` None.
        """
        out = []
        for c in psutil.net_connections(kind=kind):
            family = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}.get(c.family, str(c.family))
            proto = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}.get(c.type, str(c.type))
            out.append(
                {
                    "family": family,
                    "proto": proto,
                    "laddr": [c.laddr.ip, c.laddr.port] if c.laddr else None,
                    "raddr": [c.raddr.ip, c.raddr.port] if c.raddr else None,
                    "status": c.status,
                    "pid": c.pid,
                }
            )
        return out

    def boot_time(self) -> float:
        return float(psutil.boot_time())

    def getloadavg(self) -> tuple[float, float, float]:
        one, five, fifteen = os.getloadavg()
        return one, five, fifteen

    def users(self) -> list[dict[str, Any]]:
        """Logged-in sessions: name, terminal, host, started (epoch seconds)."""
        return [
            {"name": u.name, "terminal": u.terminal, "host": u.host, "started": u.started}
            for u in psutil.users()
        ]

    def uname(self) -> dict[str, str]:
        u = os.uname()
        return {
            "sysname": u.sysname,
            "nodename": u.nodename,
            "release": u.release,
            "version": u.version,
            "machine": u.machine,
        }

    def hostname(self) -> str:
        return socket.gethostname()

    def python_version(self) -> str:
        return platform.python_version()


# -- test double ------------------------------------------------------------------------------------


@dataclass
class FakeProcess:
    """A process as :class:`FakeProbe` reports it.

    ``info`` holds attribute values (psutil names; named tuples as dicts).
    ``vanish`` makes :meth:`FakeProbe.process_info` raise ``NoSuchProcess`` as
    if the process exited between listing and reading.  ``unavailable`` names
    attributes that come back ``None`` as if denied.  ``environ`` may be an
    exception instance to raise.
    """

    pid: int
    info: dict[str, Any] = field(default_factory=dict)
    environ: Mapping[str, str] | BaseException = field(default_factory=dict)
    vanish: bool = False
    unavailable: frozenset[str] = frozenset()


class FakeProbe:
    """A probe that returns canned data: for unit tests of sources and samplers.

    Pass only what a test needs; anything else returns an empty or zero value.
    Values can be changed between calls (e.g. ``probe.cpu = {...}``) to drive
    the samplers' deltas.
    """

    def __init__(
        self,
        *,
        processes: Iterable[FakeProcess] = (),
        stats: Iterable[PidStat] = (),
        names: Mapping[int, str] | None = None,
        cpu: Mapping[str, float] | None = None,
        cpu_count: Mapping[str, int | None] | None = None,
        memory: Mapping[str, int] | None = None,
        swap: Mapping[str, int] | None = None,
        disk_io: Mapping[str, int] | None = None,
        net_io: Mapping[str, Mapping[str, int]] | None = None,
        partitions: Iterable[Mapping[str, str]] = (),
        fs_usage: Mapping[str, Mapping[str, int] | BaseException] | None = None,
        connections: Iterable[Mapping[str, Any]] = (),
        tcp_states: Mapping[str, int] | None = None,
        boot_time: float = 0.0,
        loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0),
        users: Iterable[Mapping[str, Any]] = (),
        uname: Mapping[str, str] | None = None,
        hostname: str = "fakehost",
        python_version: str = "3.11.0",
        proc_root: str = "/nonexistent-proc",
    ) -> None:
        self.proc_root = proc_root
        self.processes = list(processes)
        self.stats = list(stats)
        self.names = dict(names or {})
        self.cpu = dict(cpu or {"user": 0.0, "system": 0.0, "idle": 0.0})
        self.cpu_counts = dict(cpu_count or {"logical": 1, "physical": 1})
        self.memory = dict(memory or {"total": 0, "available": 0, "used": 0})
        self.swap = dict(swap or {"total": 0, "used": 0, "free": 0})
        self.disk_io = None if disk_io is None else dict(disk_io)
        self.net_io = {k: dict(v) for k, v in (net_io or {}).items()}
        self.partitions = [dict(p) for p in partitions]
        self.fs_usage = dict(fs_usage or {})
        self.connections = [dict(c) for c in connections]
        self.tcp_states = None if tcp_states is None else dict(tcp_states)
        self.boot = boot_time
        self.loadavg = loadavg
        self.user_list = [dict(u) for u in users]
        self.uname_info = dict(
            uname or {"sysname": "Linux", "nodename": hostname, "release": "6.1.0", "version": "#1", "machine": "x86_64"}
        )
        self.host = hostname
        self.python = python_version
        self.calls: list[str] = []

    def iter_processes(self) -> Iterator[FakeProcess]:
        self.calls.append("iter_processes")
        return iter(list(self.processes))

    def process_info(self, proc: FakeProcess, attrs: Sequence[str]) -> tuple[dict[str, Any], frozenset[str]]:
        if proc.vanish:
            raise NoSuchProcess(proc.pid)
        info = {a: (proc.pid if a == "pid" else proc.info.get(a)) for a in attrs}
        unavailable = frozenset(a for a in attrs if a in proc.unavailable)
        for a in unavailable:
            info[a] = None
        return info, unavailable

    def process_environ(self, proc: FakeProcess) -> dict[str, str]:
        if isinstance(proc.environ, BaseException):
            raise proc.environ
        return dict(proc.environ)

    def process_name(self, pid: int) -> str | None:
        if pid in self.names:
            return self.names[pid]
        for s in self.stats:
            if s.pid == pid:
                return s.name
        for p in self.processes:
            if p.pid == pid:
                return p.info.get("name")
        return None

    def process_stats(self) -> list[PidStat]:
        self.calls.append("process_stats")
        return list(self.stats)

    def cpu_times(self) -> dict[str, float]:
        return dict(self.cpu)

    def cpu_count(self) -> dict[str, int | None]:
        return dict(self.cpu_counts)

    def virtual_memory(self) -> dict[str, int]:
        return dict(self.memory)

    def swap_memory(self) -> dict[str, int]:
        return dict(self.swap)

    def disk_io_counters(self) -> dict[str, int] | None:
        return None if self.disk_io is None else dict(self.disk_io)

    def net_io_counters(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.net_io.items()}

    def disk_partitions(self) -> list[dict[str, str]]:
        return [dict(p) for p in self.partitions]

    def filesystem_usage(self, mountpoint: str) -> dict[str, int]:
        usage = self.fs_usage.get(mountpoint)
        if usage is None:
            raise FileNotFoundError(mountpoint)
        if isinstance(usage, BaseException):
            raise usage
        return dict(usage)

    def net_connections(self, kind: str = "inet") -> list[dict[str, Any]]:
        return [dict(c) for c in self.connections]

    def tcp_state_counts(self) -> dict[str, int]:
        if self.tcp_states is None:
            raise FileNotFoundError("no TCP tables in this fake")
        return dict(self.tcp_states)

    def boot_time(self) -> float:
        return self.boot

    def getloadavg(self) -> tuple[float, float, float]:
        return self.loadavg

    def users(self) -> list[dict[str, Any]]:
        return [dict(u) for u in self.user_list]

    def uname(self) -> dict[str, str]:
        return dict(self.uname_info)

    def hostname(self) -> str:
        return self.host

    def python_version(self) -> str:
        return self.python
