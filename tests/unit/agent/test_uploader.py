"""Uploader pieces that need no network: backoff math, identity, config checks, the retry schedule."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest
from grpc import aio

from hostdiag.agent.config import AgentConfig, CollectorSection, ConfigError, load_config, parse_config
from hostdiag.agent.spool import Spool
from hostdiag.agent.uploader import KEEPALIVE_OPTIONS, Backoff, HostInfo, Uploader

MiB = 1024 * 1024


class Sequence:
    """An injected random source that plays back given values."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0)


# -- backoff -------------------------------------------------------------------------------


def test_backoff_caps_double_up_to_the_maximum() -> None:
    backoff = Backoff(1.0, 60.0, rng=lambda: 0.999999)
    caps = [backoff.cap(n) for n in range(8)]
    assert caps == [1, 2, 4, 8, 16, 32, 60, 60]
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == pytest.approx([c * 0.999999 for c in caps])
    assert backoff.cap(10_000) == 60.0  # no overflow however long the outage


def test_backoff_is_full_jitter_over_the_cap() -> None:
    backoff = Backoff(0.5, 4.0, rng=Sequence(0.0, 0.5, 0.25, 1.0, 0.1))
    assert [backoff.next_delay() for _ in range(5)] == pytest.approx([0.0, 0.5, 0.5, 4.0, 0.4])


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(1.0, 60.0, rng=lambda: 0.5)
    for _ in range(5):
        backoff.next_delay()
    assert backoff.attempt == 5
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_delay_never_leaves_its_bounds_even_with_a_bad_rng() -> None:
    assert Backoff(1.0, 2.0, rng=lambda: 7.0).next_delay() == 1.0
    assert Backoff(1.0, 2.0, rng=lambda: -3.0).next_delay() == 0.0
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


# -- identity and config -------------------------------------------------------------------


def test_host_info_reads_the_boot_id_under_proc_root(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "sys" / "kernel" / "random").mkdir(parents=True)
    (proc / "sys" / "kernel" / "random" / "boot_id").write_text("0d4c0b9e-1111-2222-3333-444455556666\n")
    config = parse_config({"agent": {"host_id": "db-1", "labels": {"role": "db"}, "proc_root": str(proc)}}, "t.toml")
    info = HostInfo.from_config(config)
    assert info.host_id == "db-1"
    assert dict(info.labels) == {"role": "db"}
    assert info.boot_id == "0d4c0b9e-1111-2222-3333-444455556666"
    missing = parse_config({"agent": {"proc_root": str(tmp_path / "nowhere")}}, "t.toml")
    assert HostInfo.from_config(missing).boot_id == ""


def test_collector_and_spool_defaults() -> None:
    cfg = load_config(None)
    assert cfg.collector.address == ""
    assert cfg.collector.insecure is False
    assert cfg.collector.backoff_initial_s == 1.0
    assert cfg.collector.backoff_max_s == 60.0
    assert cfg.collector.chunk_bytes == 256 * 1024
    assert cfg.collector.heartbeat_interval_s == 20.0
    assert cfg.spool.max_bytes == 1024 * MiB
    assert cfg.spool.max_items == 200
    assert cfg.spool_dir.endswith("/spool")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[collector]\naddress = '10.1.2.3:7443'\ninsecure = true\n", "collector.insecure", "loopback"),
        ("[collector]\naddress = 'collector.example.com:7443'\ninsecure = true\n", "collector.insecure", "loopback"),
        ("[collector]\naddress = '127.0.0.1:7443'\n", "collector.tls_ca_file", "required for mTLS"),
        ("[collector]\naddress = 'collector'\ninsecure = true\n", "collector.address", "HOST:PORT"),
        ("[collector]\naddress = '127.0.0.1:0'\ninsecure = true\n", "collector.address", "from 1 to 65535"),
        ("[collector]\naddress = '::1:7443'\ninsecure = true\n", "collector.address", "brackets"),
        ("[collector]\nchunk_bytes = '2 MiB'\n", "collector.chunk_bytes", "at most 1048576"),
        ("[collector]\nheartbeat_interval_s = 45\n", "collector.heartbeat_interval_s", "at most 30"),
        ("[collector]\nbackoff_initial_s = 10\nbackoff_max_s = 5\n", "collector.backoff_max_s", "backoff_initial_s"),
        ("[collector]\ninsecure = 'yes'\n", "collector.insecure", "true or false"),
        ("[collector]\nadress = 'x'\n", "collector.adress", "unknown key"),
        ("[spool]\nmax_items = 0\n", "spool.max_items", "at least 1"),
        ("[spool]\nmax_bytes = 'lots'\n", "spool.max_bytes", "size"),
    ],
)
def test_collector_and_spool_errors_name_the_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key
    assert fragment in info.value.message


@pytest.mark.parametrize("address", ["127.0.0.1:7443", "127.9.9.9:1", "localhost:7443", "[::1]:7443"])
def test_plaintext_to_a_loopback_address_is_allowed(tmp_path: Path, address: str) -> None:
    cfg = load_config(write(tmp_path, f"[collector]\naddress = '{address}'\ninsecure = true\n[spool]\nmax_bytes = '2 GiB'\n"))
    assert cfg.collector.address == address
    assert cfg.spool.max_bytes == 2048 * MiB


def test_keepalive_agrees_with_the_collector() -> None:
    options = dict(KEEPALIVE_OPTIONS)
    assert options["grpc.keepalive_time_ms"] == 20_000
    assert options["grpc.keepalive_time_ms"] >= 10_000  # the server's min_recv_ping_interval_without_data_ms
    assert options["grpc.keepalive_timeout_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1


# -- the uploader without a collector ------------------------------------------------------


async def _never(*args: object) -> object:
    raise AssertionError("no snapshot expected")


def test_the_uploader_needs_an_address(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"), MiB, 10)
    with pytest.raises(ValueError, match="offline"):
        Uploader(AgentConfig(), spool, snapshot_fn=_never, host_info=HostInfo("h"))


def test_tls_files_are_read_at_every_attempt_and_a_missing_one_is_the_connect_error(tmp_path: Path) -> None:
    """mTLS credentials come from disk per attempt: a file gone (mid-rotation) fails that attempt only."""
    ca = tmp_path / "ca.crt"
    config = dataclasses.replace(
        AgentConfig(),
        collector=CollectorSection(
            address="127.0.0.1:9", tls_ca_file=str(ca), tls_cert_file=str(tmp_path / "h.crt"),
            tls_key_file=str(tmp_path / "h.key"), backoff_initial_s=0.1,
        ),
    )
    spool = Spool(str(tmp_path / "spool"), MiB, 10)

    async def scenario() -> list[str]:
        errors: list[str] = []
        enough = asyncio.Event()
        uploader: Uploader

        async def sleep(delay: float) -> None:
            errors.append(uploader.status()["last_connect_error"])
            if len(errors) == 1:
                ca.write_text("not a certificate")  # the next attempt gets past the CA file
            if len(errors) >= 2:
                enough.set()
                await asyncio.Event().wait()

        uploader = Uploader(config, spool, snapshot_fn=_never, host_info=HostInfo("h"), sleep=sleep)
        task = asyncio.create_task(uploader.run())
        await asyncio.wait_for(enough.wait(), 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return errors

    errors = asyncio.run(scenario())
    assert errors[0] == f"cannot read a TLS file: {ca}: No such file or directory"
    assert errors[1] == f"cannot read a TLS file: {tmp_path / 'h.key'}: No such file or directory"


def test_reconnect_attempts_follow_the_backoff_schedule(tmp_path: Path) -> None:
    """Nothing listens on the collector's socket: each attempt fails and waits rng() * cap."""
    config = dataclasses.replace(
        AgentConfig(),
        collector=CollectorSection(address="127.0.0.1:9", insecure=True, backoff_initial_s=0.1, backoff_max_s=0.4),
    )
    spool = Spool(str(tmp_path / "spool"), MiB, 10)
    absent = f"unix:{tmp_path / 'no-collector.sock'}"  # a Unix socket nobody listens on: no network at all
    channels: list[str] = []

    def channel_factory(address: str) -> aio.Channel:
        channels.append(address)
        return aio.insecure_channel(absent)

    async def scenario() -> list[float]:
        delays: list[float] = []
        enough = asyncio.Event()

        async def sleep(delay: float) -> None:
            delays.append(delay)
            if len(delays) >= 6:
                enough.set()
                await asyncio.Event().wait()  # park until cancelled
            await asyncio.sleep(0)

        uploader = Uploader(
            config, spool, snapshot_fn=_never, host_info=HostInfo("h"), rng=lambda: 0.5,
            channel_factory=channel_factory, sleep=sleep,
        )
        task = asyncio.create_task(uploader.run())
        await asyncio.wait_for(enough.wait(), 30)
        status = uploader.status()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert status["connected"] is False
        assert status["connect_failures"] == 6
        assert status["last_connect_error"].startswith("UNAVAILABLE")
        assert status["collector_address"] == "127.0.0.1:9"
        return delays

    delays = asyncio.run(scenario())
    assert delays == pytest.approx([0.05, 0.1, 0.2, 0.2, 0.2, 0.2])
    assert channels == ["127.0.0.1:9"] * 6, "a fresh channel for every attempt"
