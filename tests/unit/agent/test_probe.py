"""The system probe's own logic and the /proc readers, against fixture trees (no real /proc)."""

from __future__ import annotations

import collections
import errno
import struct
from pathlib import Path
from typing import Any

import pytest

from hostdiag.agent import procfs
from hostdiag.agent.probe import (
    AccessDenied,
    FakeProbe,
    FakeProcess,
    NoSuchProcess,
    SystemProbe,
    count_diag_states,
)
from hostdiag.agent.procfs import PAGE_SIZE_BYTES


# -- procfs ------------------------------------------------------------------------------------


def test_parse_pid_stat_with_spaces_and_parentheses_in_the_name(fixtures_dir: Path) -> None:
    data = (fixtures_dir / "proc" / "200" / "stat").read_bytes()
    st = procfs.parse_pid_stat(200, data)
    assert st.name == "my (odd) name"
    assert st.state == "D"
    assert st.ppid == 1
    assert st.cpu_ticks == 15
    assert st.start_ticks == 2000
    assert st.num_threads == 2
    assert st.rss_bytes == 100 * PAGE_SIZE_BYTES
    assert st.vms_bytes == 50_000_000


def test_read_pid_stats_lists_processes_and_skips_the_rest(fixtures_dir: Path, tmp_path: Path) -> None:
    stats = procfs.read_pid_stats(str(fixtures_dir / "proc"))
    assert sorted(s.pid for s in stats) == [1, 100, 200, 300, 400]
    # A directory without stat (the process exited meanwhile) and an empty stat are skipped.
    (tmp_path / "7").mkdir()
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "stat").write_bytes(b"")
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "stat").write_bytes((fixtures_dir / "proc" / "100" / "stat").read_bytes())
    (tmp_path / "self").mkdir()
    assert [s.pid for s in procfs.read_pid_stats(str(tmp_path))] == [9]


def test_read_pid_stat_of_a_gone_process(tmp_path: Path) -> None:
    with pytest.raises(ProcessLookupError):
        procfs.read_pid_stat(12345, str(tmp_path))


def test_read_environ(fixtures_dir: Path, tmp_path: Path) -> None:
    env = procfs.read_environ(100, str(fixtures_dir / "proc"))
    assert env == {"PATH": "/usr/bin", "NGINX_WORKERS": "4", "API_TOKEN": "s3cr3t-token"}
    with pytest.raises(ProcessLookupError):
        procfs.read_environ(999, str(fixtures_dir / "proc"))


def test_read_environ_of_a_kernel_thread_is_empty(fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel answers ESRCH for a process without memory (a kernel thread) that still exists.
    def esrch(path: str, limit: int = 0) -> bytes:
        raise ProcessLookupError(errno.ESRCH, "No such process")

    monkeypatch.setattr(procfs, "_read_bytes", esrch)
    assert procfs.read_environ(100, str(fixtures_dir / "proc")) == {}
    with pytest.raises(ProcessLookupError):
        procfs.read_environ(999, str(fixtures_dir / "proc"))  # no /proc/999: really gone


def test_parse_environ_odd_entries() -> None:
    assert procfs.parse_environ(b"A=1\0NOEQUALS\0B=x=y\0\0C=\xff\0") == {
        "A": "1", "NOEQUALS": "", "B": "x=y", "C": "\ufffd"
    }


def test_nofile_limits(fixtures_dir: Path) -> None:
    assert procfs.read_nofile_limit(100, str(fixtures_dir / "proc")) == (1024, 524288)
    assert procfs.read_nofile_limit(200, str(fixtures_dir / "proc")) == (None, None)
    with pytest.raises(ValueError):
        procfs.parse_nofile_limit("Limit Soft Hard\nMax processes 1 1 processes\n")


def test_host_files(fixtures_dir: Path) -> None:
    root = str(fixtures_dir / "proc")
    assert procfs.read_uptime_s(root) == 5000.0
    assert procfs.read_boot_id(root) == "0f3c5b1e-9a8d-4c2b-8e7f-6a5d4c3b2a19"
    assert procfs.read_file_nr(root) == (12544, 0, 9223372036854775807)


def test_read_text_tail_drops_the_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("first line\nsecond line\nthird\n")
    assert procfs.read_text_tail(str(path), 1000) == (["first line", "second line", "third"], False)
    assert procfs.read_text_tail(str(path), 15) == (["third"], True)


# -- SystemProbe (the parts that do not need the real host) ----------------------------------------


def test_process_stats_and_environ_use_proc_root(fixtures_dir: Path) -> None:
    probe = SystemProbe(proc_root=str(fixtures_dir / "proc"))
    assert sorted(s.pid for s in probe.process_stats()) == [1, 100, 200, 300, 400]

    class Handle:
        pid = 100

    assert probe.process_environ(Handle())["NGINX_WORKERS"] == "4"


def test_process_environ_errors_are_the_probe_errors(fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = SystemProbe(proc_root=str(fixtures_dir / "proc"))

    class Gone:
        pid = 999

    with pytest.raises(NoSuchProcess):
        probe.process_environ(Gone())

    def denied(pid: int, proc_root: str) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(procfs, "read_environ", denied)
    with pytest.raises(AccessDenied):
        probe.process_environ(Gone())


def test_process_info_marks_unreadable_attributes() -> None:
    cputimes = collections.namedtuple("cputimes", "user system")

    class Handle:
        pid = 42

        def as_dict(self, attrs: list[str], ad_value: Any) -> dict[str, Any]:
            values = {"pid": 42, "name": "svc", "cpu_times": cputimes(1.0, 2.0), "io_counters": ad_value}
            return {a: values[a] for a in attrs}

    info, unavailable = SystemProbe().process_info(Handle(), ["pid", "name", "cpu_times", "io_counters"])
    assert info == {"pid": 42, "name": "svc", "cpu_times": {"user": 1.0, "system": 2.0}, "io_counters": None}
    assert unavailable == {"io_counters"}


def test_process_info_lets_a_vanished_process_raise() -> None:
    class Handle:
        pid = 42

        def as_dict(self, attrs: list[str], ad_value: Any) -> dict[str, Any]:
            raise NoSuchProcess(42)

    with pytest.raises(NoSuchProcess):
        SystemProbe().process_info(Handle(), ["name"])


# -- FakeProbe ------------------------------------------------------------------------------------


def test_fake_probe_behaves_like_the_contract() -> None:
    probe = FakeProbe(
        processes=[
            FakeProcess(1, {"name": "init"}, environ={"A": "1"}),
            FakeProcess(2, {"name": "gone"}, vanish=True),
            FakeProcess(3, {"name": "secret", "exe": "/x"}, environ=AccessDenied(3), unavailable=frozenset({"exe"})),
        ]
    )
    procs = list(probe.iter_processes())
    assert [p.pid for p in procs] == [1, 2, 3]
    assert probe.process_info(procs[0], ["pid", "name"]) == ({"pid": 1, "name": "init"}, frozenset())
    with pytest.raises(NoSuchProcess):
        probe.process_info(procs[1], ["name"])
    assert probe.process_info(procs[2], ["name", "exe"]) == ({"name": "secret", "exe": None}, frozenset({"exe"}))
    assert probe.process_environ(procs[0]) == {"A": "1"}
    with pytest.raises(AccessDenied):
        probe.process_environ(procs[2])
    assert probe.process_name(1) == "init"
    assert probe.process_name(99) is None


def test_username_is_the_real_uids_name() -> None:
    puids = collections.namedtuple("puids", "real effective saved")

    class Handle:
        def __init__(self, pid: int, real: int) -> None:
            self.pid = pid
            self.real = real
            self.asked: list[str] = []

        def as_dict(self, attrs: list[str], ad_value: Any) -> dict[str, Any]:
            self.asked = list(attrs)
            return {a: (puids(self.real, 0, 0) if a == "uids" else self.pid) for a in attrs}

    probe = SystemProbe()
    root = Handle(1, 0)
    info, _ = probe.process_info(root, ["pid", "username"])
    assert info == {"pid": 1, "username": "root"}
    assert "username" not in root.asked and "uids" in root.asked
    unknown = 2_000_000_000
    info, _ = probe.process_info(Handle(2, unknown), ["username", "uids"])
    assert info["username"] == str(unknown)
    assert info["uids"] == {"real": unknown, "effective": 0, "saved": 0}


def test_username_unavailable_when_uids_are() -> None:
    class Handle:
        pid = 3

        def as_dict(self, attrs: list[str], ad_value: Any) -> dict[str, Any]:
            return {a: ad_value for a in attrs}

    info, unavailable = SystemProbe().process_info(Handle(), ["username"])
    assert info == {"username": None}
    assert unavailable == {"username"}


def _diag_msg(state: int) -> bytes:
    # nlmsghdr (16 bytes) + inet_diag_msg (72 bytes): family, state, timer, retrans, sockid, ...
    body = struct.pack("=BBBB", 2, state, 0, 0) + bytes(68)
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body


def test_count_diag_states_counts_each_socket_until_done() -> None:
    counts = [0] * 16
    buf = _diag_msg(10) + _diag_msg(1) + _diag_msg(1) + _diag_msg(6)
    assert count_diag_states(buf, counts) is False  # more datagrams to come
    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + struct.pack("=i", 0)
    assert count_diag_states(_diag_msg(1) + done, counts) is True
    assert counts[1] == 3 and counts[10] == 1 and counts[6] == 1


def test_count_diag_states_raises_on_a_netlink_error() -> None:
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -errno.EPERM) + bytes(16)
    with pytest.raises(OSError) as info:
        count_diag_states(error, [0] * 16)
    assert info.value.errno == errno.EPERM


def test_tcp_state_counts_read_proc_root_when_not_the_real_proc(fixtures_dir: Path) -> None:
    counts = SystemProbe(proc_root=str(fixtures_dir / "proc")).tcp_state_counts()
    assert counts["listen"] == 3 and counts["close_wait"] == 1
