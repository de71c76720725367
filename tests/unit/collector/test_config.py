"""Collector configuration: defaults, and every kind of error naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostdiag.collector.config import (
    CollectorConfig,
    CollectorSection,
    ConfigError,
    is_loopback_host,
    load_config,
    split_host_port,
)
from hostdiag.collector.daemon import main


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "collector.toml"
    path.write_text(text)
    return str(path)


def test_no_file_gives_the_defaults() -> None:
    assert load_config(None) == CollectorConfig()


def test_empty_file_loads_to_exactly_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    cfg = load_config(path)
    assert cfg.collector == CollectorSection()
    assert cfg.file == path


def test_empty_section_loads_to_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[collector]\n")).collector == CollectorSection()


def test_documented_defaults() -> None:
    c = CollectorSection()
    assert c.listen == "127.0.0.1:7443"
    assert c.http_listen == "127.0.0.1:7480"
    assert c.data_dir == "./hostdiag-data"
    assert c.insecure is True
    assert c.request_ttl_s == 1800
    assert c.default_window_s == 300
    assert c.heartbeat_interval_s == 15
    assert c.max_bundle_bytes == 256 * 1024 * 1024
    assert c.max_chunk_bytes == 1024 * 1024
    assert c.max_message_bytes == 1024 * 1024 + 64 * 1024
    assert CollectorConfig().heartbeat_timeout_s == 90


def test_values_and_sizes_are_read(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            '[collector]\nlisten = "127.0.0.1:0"\nhttp_listen = "[::1]:0"\nmax_bundle_bytes = "64 MiB"\n'
            'heartbeat_interval_s = 30\nrequest_ttl_s = 60\n',
        )
    )
    assert cfg.collector.listen == "127.0.0.1:0"
    assert cfg.collector.max_bundle_bytes == 64 * 1024 * 1024
    assert cfg.collector.heartbeat_interval_s == 30.0


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[collector]\nlisten_port = 1\n", "collector.listen_port", "unknown key"),
        ("[server]\n", "server", "unknown section"),
        ('[collector]\nrequest_ttl_s = "long"\n', "collector.request_ttl_s", "expected a number"),
        ("[collector]\ninsecure = 1\n", "collector.insecure", "expected true or false"),
        ("[collector]\nheartbeat_interval_s = 31\n", "collector.heartbeat_interval_s", "at most 30"),
        ("[collector]\nheartbeat_interval_s = 0\n", "collector.heartbeat_interval_s", "at least 1"),
        ('[collector]\nmax_chunk_bytes = "2 MiB"\n', "collector.max_chunk_bytes", "at most 1048576"),
        ("[collector]\nmax_concurrent_uploads = 0\n", "collector.max_concurrent_uploads", "at least 1"),
        ('[collector]\nmax_bundle_bytes = "lots"\n', "collector.max_bundle_bytes", "expected a size"),
        ('[collector]\nlisten = "10.1.2.3:7443"\n', "collector.listen", "only allowed on a loopback"),
        ('[collector]\nlisten = "0.0.0.0:7443"\n', "collector.listen", "only allowed on a loopback"),
        ('[collector]\nhttp_listen = "0.0.0.0:7480"\n', "collector.http_listen", "must be a loopback"),
        ('[collector]\nlisten = "7443"\n', "collector.listen", "HOST:PORT"),
        ('[collector]\nlisten = "127.0.0.1:99999"\n', "collector.listen", "port must be"),
        ("[collector]\ninsecure = false\n", "collector.tls_cert_file", "required unless insecure = true"),
        ('[collector]\nmax_message_bytes = "1 MiB"\n', "collector.max_message_bytes", "must exceed max_chunk_bytes"),
        (
            "[collector]\nheartbeat_interval_s = 20\nheartbeat_timeout_s = 10\n",
            "collector.heartbeat_timeout_s",
            "longer than heartbeat_interval_s",
        ),
        ('[collector]\ndata_dir = ""\n', "collector.data_dir", "must not be empty"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == path
    assert info.value.key == key
    assert fragment in info.value.message


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[collector\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "absent.toml"))


def test_daemon_prints_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[collector]\nbogus = true\n")
    assert main(["--config", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hostdiag-collector: {path}: collector.bogus: unknown key")
    assert "\n" not in err


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "")
    assert main(["--config", path, "--check-config"]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok"


def test_address_helpers() -> None:
    assert split_host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_host_port("[::1]:7443") == ("::1", 7443)
    assert split_host_port("localhost:1") == ("localhost", 1)
    with pytest.raises(ValueError):
        split_host_port("::1:7443")
    assert is_loopback_host("127.0.0.5") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("192.168.1.1") and not is_loopback_host("example.org")


def test_data_dir_is_relative_to_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert CollectorConfig().data_dir == str(tmp_path / "hostdiag-data")
