"""The agent config: defaults, and one precise error for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostdiag.agent.config import AgentConfig, ConfigError, load_config
from hostdiag.agent.configfile import parse_size


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return str(path)


def test_no_file_gives_defaults() -> None:
    cfg = load_config(None)
    assert cfg.recorder.window_s == 900
    assert cfg.recorder.interval_s == 1.0
    assert cfg.recorder.metrics_capacity == 901
    assert "default" in cfg.profiles
    assert cfg.logs == ()


def test_empty_file_loads_exactly_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path) == AgentConfig(file=path)


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[agent]
host_id = "web-1"
labels = { role = "api", env = "prod" }
data_dir = "/tmp/hd"
socket = "/tmp/hd/agent.sock"

[recorder]
window_s = 600
interval_s = 2
log_ring_bytes = "2 MiB"

[[logs]]
path = "/var/log/app/*.log"
multiline_start = '^\\d{4}-'

[[logs]]
path = "/var/log/syslog"
name = "syslog"

[sources.processes]
timeout_s = 3

[profiles.quick]
sources = ["host", "processes"]
window_s = 60
""",
    )
    cfg = load_config(path)
    assert cfg.host_id == "web-1"
    assert dict(cfg.agent.labels) == {"role": "api", "env": "prod"}
    assert cfg.recorder.log_ring_bytes == 2 * 1024 * 1024
    assert cfg.recorder.metrics_capacity == 301
    assert [entry.path for entry in cfg.logs] == ["/var/log/app/*.log", "/var/log/syslog"]
    assert cfg.source_config("processes").timeout_s == 3
    assert cfg.source_config("host").timeout_s == 5  # untouched source keeps its defaults
    assert cfg.profile("quick").sources == ("host", "processes")
    assert cfg.bundle_dir == "/tmp/hd/bundles"


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[agent]\nhostid = 'x'\n", "agent.hostid", "unknown key"),
        ("[agnet]\n", "agnet", "unknown section"),
        ("[recorder]\nwindow_s = 'long'\n", "recorder.window_s", "expected a number"),
        ("[recorder]\nwindow_s = 5\n", "recorder.window_s", "at least 10"),
        ("[recorder]\ninterval_s = 0\n", "recorder.interval_s", "at least 0.1"),
        ("[recorder]\nwindow_s = 20\ntop_interval_s = 30\n", "recorder.top_interval_s", "window_s"),
        ("[recorder]\nlog_ring_bytes = 'lots'\n", "recorder.log_ring_bytes", "size"),
        ("[agent]\nlabels = { a = 1 }\n", "agent.labels.a", "expected a string"),
        ("[agent]\nthreads = true\n", "agent.threads", "expected an integer"),
        ("[agent]\nlog_level = 'loud'\n", "agent.log_level", "must be one of"),
        ("[[logs]]\nname = 'x'\n", "logs[0].path", "must not be empty"),
        ("[[logs]]\npath = 'relative.log'\n", "logs[0].path", "absolute"),
        ("[[logs]]\npath = '/a'\nmultiline_start = '(['\n", "logs[0].multiline_start", "regular expression"),
        ("[[logs]]\npath = '/a'\n[[logs]]\npath = '/a'\n", "logs[1]", "duplicate"),
        ("logs = 'x'\n", "logs", "array of tables"),
        ("[sources.nope]\n", "sources.nope", "unknown source"),
        ("[sources.host]\ntimeout_s = -1\n", "sources.host.timeout_s", "at least"),
        ("[profiles.p]\nsources = ['host', 'bogus']\n", "profiles.p.sources[1]", "unknown source"),
        ("[profiles.p]\nwindow_s = 99999\n", "profiles.p.window_s", "at most"),
        ("[recorder]\nwindow_s = 60\n[profiles.p]\nwindow_s = 120\n", "profiles.p.window_s", "recorder.window_s"),
        ("[bundle]\nzstd_level = 40\n", "bundle.zstd_level", "at most 19"),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.file == path
    assert err.key == key
    assert fragment in err.message
    assert str(err).startswith(f"{path}: {key}: ")


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[agent\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))


def test_parse_size() -> None:
    assert parse_size(10) == 10
    assert parse_size("64 MiB") == 64 * 1024 * 1024
    assert parse_size("1k") == 1024
    assert parse_size("2 MB") == 2_000_000
    for bad in ("", "12 parsecs", "-1"):
        with pytest.raises(ValueError):
            parse_size(bad)
