"""The flight recorder's samplers, with a fake probe and fixture /proc trees."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from hostdiag.agent import procfs
from hostdiag.agent.probe import FakeProbe
from hostdiag.agent.procfs import CLOCK_TICKS_PER_S as HZ
from hostdiag.agent.procfs import PidStat
from hostdiag.agent.recorder.sampler import MAX_FILESYSTEMS, MetricsSampler, TopSampler

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def metrics_probe() -> FakeProbe:
    return FakeProbe(
        cpu={"user": 100.0, "nice": 0.0, "system": 50.0, "idle": 800.0, "iowait": 10.0, "irq": 0.0,
             "softirq": 0.0, "steal": 0.0, "guest": 0.0},
        loadavg=(1.5, 1.0, 0.5),
        tcp_states={"established": 3, "time_wait": 1, "listen": 3},
        memory={"total": 8 * 2**30, "available": 6 * 2**30, "used": 2 * 2**30},
        swap={"total": 2**30, "used": 2**20, "free": 2**30 - 2**20},
        disk_io={"read_bytes": 1_000_000, "write_bytes": 2_000_000},
        net_io={
            "lo": {"bytes_recv": 10**9, "bytes_sent": 10**9},
            "eth0": {"bytes_recv": 5_000, "bytes_sent": 7_000},
            "eth1": {"bytes_recv": 1_000, "bytes_sent": 0},
        },
        partitions=[
            {"device": "/dev/vda1", "mountpoint": "/", "fstype": "ext4", "opts": "rw"},
            {"device": "/dev/vda1", "mountpoint": "/var/lib/docker", "fstype": "ext4", "opts": "rw"},  # bind mount
            {"device": "/dev/vdb", "mountpoint": "/data", "fstype": "xfs", "opts": "rw"},
            {"device": "/dev/vdc", "mountpoint": "/gone", "fstype": "xfs", "opts": "rw"},
        ],
        fs_usage={
            "/": {"total_bytes": 100 * 2**30, "used_bytes": 75 * 2**30, "free_bytes": 20 * 2**30,
                  "inodes_total": 1000, "inodes_free": 100},
            "/var/lib/docker": {"total_bytes": 1, "used_bytes": 1, "free_bytes": 0, "inodes_total": 1, "inodes_free": 0},
            "/data": {"total_bytes": 2**40, "used_bytes": 2**39, "free_bytes": 2**39, "inodes_total": 0,
                      "inodes_free": 0},
            "/gone": FileNotFoundError("/gone"),
        },
    )


def test_first_metrics_sample_has_levels_but_no_rates(fixtures_dir: Path) -> None:
    sampler = MetricsSampler(metrics_probe(), proc_root=str(fixtures_dir / "proc"), clock=Clock(T0), monotonic=Clock(5.0))
    s = sampler.sample()
    assert s["ts"] == T0
    assert s["interval_s"] is None
    assert s["cpu_user_pct"] is None and s["cpu_idle_pct"] is None
    assert s["disk_read_bytes_per_s"] is None and s["net_rx_bytes_per_s"] is None
    assert (s["load1"], s["load5"], s["load15"]) == (1.5, 1.0, 0.5)
    assert s["mem_total_bytes"] == 8 * 2**30
    assert s["mem_available_bytes"] == 6 * 2**30
    assert s["mem_used_bytes"] == 2 * 2**30
    assert s["swap_total_bytes"] == 2**30 and s["swap_used_bytes"] == 2**20
    assert s["psi_memory_some_avg10"] == 12.34
    assert s["psi_memory_full_avg10"] == 8.9
    assert s["psi_cpu_some_avg10"] == 1.5
    assert s["psi_io_full_avg10"] == 0.1
    assert s["open_fds"] == 12544
    assert s["max_fds"] == 9223372036854775807
    assert s["tcp_states"] == {"established": 3, "time_wait": 1, "listen": 3}
    orjson.dumps(s)  # JSON-able as it is


def test_second_sample_has_rates_over_the_interval(fixtures_dir: Path) -> None:
    probe = metrics_probe()
    mono = Clock(5.0)
    sampler = MetricsSampler(probe, proc_root=str(fixtures_dir / "proc"), clock=Clock(T0), monotonic=mono)
    sampler.sample()
    mono.t += 2.0
    probe.cpu.update(user=130.0, system=60.0, idle=850.0, iowait=15.0, steal=5.0)  # 100 s of CPU time
    probe.disk_io = {"read_bytes": 1_400_000, "write_bytes": 2_000_000}
    probe.net_io["eth0"] = {"bytes_recv": 9_000, "bytes_sent": 8_000}
    probe.net_io["lo"] = {"bytes_recv": 2 * 10**9, "bytes_sent": 2 * 10**9}  # loopback is left out
    s = sampler.sample()
    assert s["interval_s"] == 2.0
    assert s["cpu_user_pct"] == 30.0
    assert s["cpu_system_pct"] == 10.0
    assert s["cpu_idle_pct"] == 50.0
    assert s["cpu_iowait_pct"] == 5.0
    assert s["cpu_steal_pct"] == 5.0
    assert s["cpu_nice_pct"] == 0.0
    assert s["disk_read_bytes_per_s"] == 200_000.0
    assert s["disk_write_bytes_per_s"] == 0.0
    assert s["net_rx_bytes_per_s"] == 2_000.0
    assert s["net_tx_bytes_per_s"] == 500.0


def test_counter_reset_gives_no_rate(fixtures_dir: Path) -> None:
    probe = metrics_probe()
    mono = Clock(5.0)
    sampler = MetricsSampler(probe, proc_root=str(fixtures_dir / "proc"), monotonic=mono)
    sampler.sample()
    mono.t += 1.0
    probe.net_io.pop("eth0")  # an interface went away: the total drops
    s = sampler.sample()
    assert s["net_rx_bytes_per_s"] is None
    assert s["disk_read_bytes_per_s"] == 0.0


def test_filesystems_are_listed_once_per_device(fixtures_dir: Path) -> None:
    s = MetricsSampler(metrics_probe(), proc_root=str(fixtures_dir / "proc")).sample()
    assert s["filesystems"] == [
        {"mount": "/", "fstype": "ext4", "used_pct": 75.0, "free_bytes": 20 * 2**30, "total_bytes": 100 * 2**30,
         "inodes_used_pct": 90.0},
        {"mount": "/data", "fstype": "xfs", "used_pct": 50.0, "free_bytes": 2**39, "total_bytes": 2**40,
         "inodes_used_pct": None},
    ]


def test_filesystems_are_capped(fixtures_dir: Path) -> None:
    probe = FakeProbe(
        partitions=[{"device": f"/dev/d{i}", "mountpoint": f"/m{i}", "fstype": "ext4"} for i in range(50)],
        fs_usage={f"/m{i}": {"total_bytes": 10, "used_bytes": 1, "free_bytes": 9, "inodes_total": 10, "inodes_free": 9}
                  for i in range(50)},
    )
    s = MetricsSampler(probe, proc_root=str(fixtures_dir / "proc")).sample()
    assert len(s["filesystems"]) == MAX_FILESYSTEMS


def test_missing_proc_files_and_failing_probe_calls_leave_gaps(tmp_path: Path) -> None:
    class Broken(FakeProbe):
        def virtual_memory(self) -> dict[str, int]:
            raise OSError("no meminfo")

    s = MetricsSampler(Broken(), proc_root=str(tmp_path)).sample()
    assert s["mem_total_bytes"] is None
    assert not any(k.startswith("psi_") for k in s)
    assert s["open_fds"] is None
    assert s["tcp_states"] == {}
    assert s["load1"] == 0.0


# -- TopSampler ----------------------------------------------------------------------------------


def stat(pid: int, name: str, cpu_ticks: int, rss_mib: int, start_ticks: int = 100, threads: int = 1,
         state: str = "S") -> PidStat:
    return PidStat(pid, name, state, 1, cpu_ticks, start_ticks, threads, rss_mib * 2**20, 10 * rss_mib * 2**20)


BOOT = T0 - 1000.0  # host up 1000 s at T0


def test_top_sampler_measures_cpu_between_samples() -> None:
    probe = FakeProbe(boot_time=BOOT, stats=[stat(10, "db", 0, 500), stat(20, "web", 0, 100), stat(30, "idle", 0, 5)])
    clock, mono = Clock(T0), Clock(50.0)
    top = TopSampler(probe, clock=clock, monotonic=mono)
    top.sample(2)
    clock.t += 10
    mono.t += 10
    probe.stats = [stat(10, "db", 2 * HZ, 500), stat(20, "web", 9 * HZ, 100), stat(30, "idle", 0, 5)]
    s = top.sample(2)
    assert s["ts"] == T0 + 10
    assert s["interval_s"] == 10
    assert s["top_cpu"] == [
        {"pid": 20, "name": "web", "cpu_pct": 90.0, "rss_bytes": 100 * 2**20, "num_threads": 1},
        {"pid": 10, "name": "db", "cpu_pct": 20.0, "rss_bytes": 500 * 2**20, "num_threads": 1},
    ]
    assert [r["pid"] for r in s["top_rss"]] == [10, 20]
    orjson.dumps(s)


def test_first_top_sample_measures_from_process_start() -> None:
    # Started 10 s after boot, used 99 s of CPU in its 990 s of life: 10 %.
    probe = FakeProbe(boot_time=BOOT, stats=[stat(10, "db", 99 * HZ, 500, start_ticks=10 * HZ)])
    s = TopSampler(probe, clock=Clock(T0), monotonic=Clock(0.0)).sample(5)
    assert s["interval_s"] is None
    assert s["top_cpu"][0]["cpu_pct"] == 10.0


def test_reused_pid_does_not_borrow_the_old_process_history() -> None:
    probe = FakeProbe(boot_time=BOOT, stats=[stat(10, "old", 500 * HZ, 1, start_ticks=HZ)])
    clock, mono = Clock(T0), Clock(0.0)
    top = TopSampler(probe, clock=clock, monotonic=mono)
    top.sample(1)
    clock.t += 10
    mono.t += 10
    # Same pid, a new process that started 5 s ago and used 1 s of CPU since.
    probe.stats = [stat(10, "new", 1 * HZ, 1, start_ticks=int((1000 + 5) * HZ))]
    s = top.sample(1)
    assert s["top_cpu"][0]["name"] == "new"
    assert s["top_cpu"][0]["cpu_pct"] == 20.0


def test_previous_ticks_are_pruned_when_processes_exit() -> None:
    probe = FakeProbe(boot_time=BOOT, stats=[stat(p, f"p{p}", 0, 1) for p in range(1, 101)])
    top = TopSampler(probe, clock=Clock(T0), monotonic=Clock(0.0))
    top.sample(3)
    assert top.tracked == 100
    probe.stats = [stat(1, "p1", 0, 1), stat(2, "p2", 0, 1)]
    top.sample(3)
    assert top.tracked == 2


def test_counts_and_long_names() -> None:
    probe = FakeProbe(
        boot_time=BOOT,
        stats=[
            stat(10, "postgres-worker", 0, 50, threads=4),  # 15 characters: the kernel cut the name
            stat(11, "zombie", 0, 0, state="Z"),
            stat(12, "sh", 0, 1, threads=1),
        ],
        names={10: "postgres-worker-replication"},
    )
    s = TopSampler(probe, clock=Clock(T0), monotonic=Clock(0.0)).sample(1)
    assert s["process_count"] == 3
    assert s["thread_count"] == 6
    assert s["zombie_count"] == 1
    assert s["top_rss"] == [
        {"pid": 10, "name": "postgres-worker-replication", "cpu_pct": 0.0, "rss_bytes": 50 * 2**20, "num_threads": 4}
    ]
    assert not any("cmdline" in row for row in s["top_rss"] + s["top_cpu"])


def test_top_sampler_reads_the_fixture_proc_tree(fixtures_dir: Path) -> None:
    stats = procfs.read_pid_stats(str(fixtures_dir / "proc"))
    probe = FakeProbe(boot_time=BOOT, stats=stats)
    s = TopSampler(probe, clock=Clock(T0), monotonic=Clock(0.0)).sample(2)
    assert s["process_count"] == 5
    assert s["zombie_count"] == 1
    assert [r["pid"] for r in s["top_rss"]] == [400, 1]


@pytest.mark.parametrize("n", [0, 1, 10])
def test_top_n_bounds_the_lists(n: int) -> None:
    probe = FakeProbe(boot_time=BOOT, stats=[stat(p, "x", p, p) for p in range(1, 6)])
    s = TopSampler(probe, clock=Clock(T0), monotonic=Clock(0.0)).sample(n)
    assert len(s["top_cpu"]) == len(s["top_rss"]) == min(n, 5)


def test_filesystems_and_tcp_states_refresh_on_the_slow_interval(fixtures_dir: Path) -> None:
    probe = metrics_probe()
    mono = Clock(100.0)
    sampler = MetricsSampler(probe, proc_root=str(fixtures_dir / "proc"), monotonic=mono, slow_interval_s=10.0)
    first = sampler.sample()
    assert first["tcp_states"] == {"established": 3, "time_wait": 1, "listen": 3}
    probe.tcp_states = {"established": 99}
    mono.t = 109.0
    assert sampler.sample()["tcp_states"] == first["tcp_states"]  # carried forward, not re-read
    mono.t = 110.0
    assert sampler.sample()["tcp_states"] == {"established": 99}
