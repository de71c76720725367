"""The agent's configuration: frozen dataclasses with their defaults and checks.

An absent file and an empty file both give exactly the defaults.  Every key is
documented in ``docs/configuration.md``; ``tests/unit/agent/test_config.py``
checks each error.
"""

from __future__ import annotations

import os
import re
import socket as _socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from hostdiag.agent.configfile import ConfigError, is_loopback_host, load_dataclass, read_toml, split_host_port
from hostdiag.agent.probes import ProbeSection

__all__ = [
    "AgentConfig",
    "AgentSection",
    "RecorderSection",
    "LogSection",
    "JournalSection",
    "BundleSection",
    "ProfileSection",
    "RedactionSection",
    "CollectorSection",
    "SpoolSection",
    "ProbeSection",
    "ExpectSection",
    "ConfigError",
    "load_config",
    "default_data_dir",
    "default_socket_path",
    "DEFAULT_PROFILE",
]

DEFAULT_PROFILE = "default"
MiB = 1024 * 1024


def default_data_dir() -> str:
    """``/var/lib/hostdiag`` for root, else ``$XDG_STATE_HOME/hostdiag``."""
    if os.geteuid() == 0:
        return "/var/lib/hostdiag"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return os.path.join(base, "hostdiag")


def default_socket_path() -> str:
    """``/run/hostdiag/agent.sock`` for root, else under ``$XDG_RUNTIME_DIR``."""
    if os.geteuid() == 0:
        return "/run/hostdiag/agent.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(default_data_dir(), "run")
    return os.path.join(runtime, "hostdiag", "agent.sock")


@dataclass(frozen=True)
class AgentSection:
    host_id: str = field(default="", metadata={"doc": "host identity; empty means the hostname"})
    labels: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), metadata={"doc": "labels for host selectors"}
    )
    data_dir: str = field(default="", metadata={"doc": "state: checkpoints, bundles, spool"})
    socket: str = field(default="", metadata={"doc": "local API Unix socket for agentctl"})
    socket_group: str = field(default="", metadata={"doc": "group that may use the socket (mode 0660)"})
    proc_root: str = field(default="/proc", metadata={"nonempty": True, "doc": "where /proc is mounted"})
    threads: int = field(default=4, metadata={"min": 1, "max": 32, "doc": "blocking-work thread pool size"})
    log_level: str = field(
        default="info", metadata={"choices": ("debug", "info", "warning", "error"), "doc": "agent log level"}
    )

    def validate(self) -> None:
        for key in self.labels:
            if not key or len(key) > 63:
                raise ValueError((f"labels.{key}", "label names must be 1 to 63 characters"))


@dataclass(frozen=True)
class RecorderSection:
    window_s: float = field(default=900.0, metadata={"min": 10, "max": 86400, "doc": "history kept"})
    interval_s: float = field(default=1.0, metadata={"min": 0.1, "max": 60, "doc": "system metrics period"})
    top_interval_s: float = field(default=10.0, metadata={"min": 1, "max": 600, "doc": "top processes period"})
    top_n: int = field(default=15, metadata={"min": 1, "max": 200, "doc": "processes kept per sample"})
    log_ring_bytes: int = field(
        default=1 * MiB, metadata={"size": True, "min": 4096, "max": 256 * MiB, "doc": "recent lines per file"}
    )
    max_line_bytes: int = field(
        default=16384, metadata={"size": True, "min": 256, "max": 4 * MiB, "doc": "longer lines are cut"}
    )
    poll_interval_s: float = field(
        default=0.5, metadata={"min": 0.01, "max": 10, "doc": "log poll period (lines reach the ring within this)"}
    )

    def validate(self) -> None:
        if self.interval_s > self.window_s:
            raise ValueError(("interval_s", "must not be longer than window_s"))
        if self.top_interval_s > self.window_s:
            raise ValueError(("top_interval_s", "must not be longer than window_s"))

    @property
    def metrics_capacity(self) -> int:
        return int(self.window_s / self.interval_s) + 1

    @property
    def top_capacity(self) -> int:
        return int(self.window_s / self.top_interval_s) + 1


@dataclass(frozen=True)
class LogSection:
    path: str = field(default="", metadata={"nonempty": True, "doc": "file path or glob"})
    name: str = field(default="", metadata={"doc": "short name in bundles; default: the path"})
    multiline_start: str = field(default="", metadata={"regex": True, "doc": "regex of a first line"})
    multiline_timeout_s: float = field(
        default=1.0, metadata={"min": 0.05, "max": 60, "doc": "flush a multiline event after this quiet time"}
    )

    def validate(self) -> None:
        if not os.path.isabs(self.path):
            raise ValueError(("path", f"must be an absolute path or glob, got {self.path!r}"))


@dataclass(frozen=True)
class JournalSection:
    enabled: str = field(
        default="auto", metadata={"choices": ("auto", "on", "off"), "doc": "follow journald; auto: when journalctl works"}
    )
    units: tuple[str, ...] = field(default=(), metadata={"doc": "only these units; empty: all"})
    max_entries: int = field(
        default=20000, metadata={"min": 1, "max": 1_000_000, "doc": "journal entries per snapshot"}
    )


@dataclass(frozen=True)
class BundleSection:
    output_dir: str = field(default="", metadata={"doc": "where bundles go; default data_dir/bundles"})
    max_member_bytes: int = field(
        default=64 * MiB,
        metadata={"size": True, "min": 4096, "max": 4096 * MiB, "doc": "one member is cut here (recorded)"},
    )
    max_bundle_bytes: int = field(
        default=256 * MiB,
        metadata={"size": True, "min": 65536, "max": 16384 * MiB, "doc": "all members together (uncompressed)"},
    )
    zstd_level: int = field(default=3, metadata={"min": 1, "max": 19, "doc": "zstd compression level"})
    keep: int = field(default=20, metadata={"min": 1, "max": 10000, "doc": "local bundles kept"})


@dataclass(frozen=True)
class ProfileSection:
    sources: tuple[str, ...] = field(default=(), metadata={"doc": "sources to run; empty: all enabled"})
    window_s: float = field(default=0.0, metadata={"min": 0, "max": 86400, "doc": "0: the recorder window"})


@dataclass(frozen=True)
class RedactionSection:
    rules_file: str = field(default="", metadata={"doc": "extra rules (TOML) added to the built-in set"})
    disable: tuple[str, ...] = field(default=(), metadata={"doc": "built-in rule names to turn off"})




@dataclass(frozen=True)
class CollectorSection:
    """Where bundles go.  Documented in ``docs/spool-and-upload.md``."""

    address: str = field(default="", metadata={"doc": "collector host:port; empty: no collector, work offline"})
    insecure: bool = field(default=False, metadata={"doc": "plaintext gRPC; only with a loopback address"})
    tls_ca_file: str = field(
        default="", metadata={"doc": "PEM CA that signs the collector's certificate; required unless insecure"}
    )
    tls_cert_file: str = field(
        default="",
        metadata={"doc": "this agent's PEM certificate (SAN DNS = host_id), read at each connect; required unless insecure"},
    )
    tls_key_file: str = field(
        default="", metadata={"doc": "PEM private key of tls_cert_file; required unless insecure"}
    )
    tls_server_name: str = field(
        default="", metadata={"doc": "name to verify in the collector's certificate; empty: the address's host"}
    )
    connect_timeout_s: float = field(default=10.0, metadata={"min": 0.1, "max": 300, "doc": "wait for Welcome"})
    backoff_initial_s: float = field(default=1.0, metadata={"min": 0.001, "max": 600, "doc": "first retry cap"})
    backoff_max_s: float = field(default=60.0, metadata={"min": 0.001, "max": 3600, "doc": "largest retry cap"})
    chunk_bytes: int = field(
        default=256 * 1024, metadata={"size": True, "min": 1024, "max": 1 * MiB, "doc": "upload chunk size"}
    )
    heartbeat_interval_s: float = field(default=20.0, metadata={"min": 0.05, "max": 30, "doc": "control heartbeats"})

    def validate(self) -> None:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(("backoff_max_s", "must not be smaller than backoff_initial_s"))
        if not self.address:
            return
        try:
            host, _ = split_host_port(self.address)
        except ValueError as exc:
            raise ValueError(("address", str(exc))) from None
        if self.insecure and not is_loopback_host(host):
            raise ValueError(
                ("insecure", f"plaintext is allowed only to a loopback address, not {self.address!r}")
            )
        keys = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")
        for key in keys:
            value = getattr(self, key)
            if self.insecure:
                if value:
                    raise ValueError((key, "set, but insecure = true sends plaintext: remove it or set insecure = false"))
            elif key == "tls_server_name":
                if value and not re.fullmatch(r"[A-Za-z0-9*][A-Za-z0-9_.:-]{0,252}", value):
                    raise ValueError((key, f"not a host name: {value[:80]!r}"))
            elif not value:
                # Refused at load time rather than running an uploader that can never connect.
                raise ValueError((key, "required for mTLS to the collector (or insecure = true on a loopback address)"))
            elif not os.path.isfile(value) or not os.access(value, os.R_OK):
                raise ValueError((key, f"cannot read {value!r}"))


@dataclass(frozen=True)
class SpoolSection:
    """The on-disk upload queue under ``<data_dir>/spool``."""

    max_bytes: int = field(
        default=1024 * MiB,
        metadata={"size": True, "min": 1 * MiB, "max": 1024 * 1024 * MiB, "doc": "bundles waiting for upload"},
    )
    max_items: int = field(default=200, metadata={"min": 1, "max": 100_000, "doc": "bundles waiting for upload"})
    quarantine_max_bytes: int = field(
        default=256 * MiB, metadata={"size": True, "min": 0, "max": 1024 * 1024 * MiB, "doc": "0: keep none"}
    )
    quarantine_max_items: int = field(default=20, metadata={"min": 0, "max": 10_000, "doc": "0: keep none"})


@dataclass(frozen=True)
class ExpectSection:
    """What this host is expected to run (``[expect]``): read by the ``declared`` source."""

    processes: tuple[str, ...] = field(
        default=(), metadata={"doc": "processes that should run: a name, or re:REGEX over name and command line"}
    )
    ports: tuple[int, ...] = field(default=(), metadata={"doc": "TCP ports that should be listening"})
    critical_processes: tuple[str, ...] = field(
        default=(), metadata={"doc": "process names whose OOM kill is a P2 signal"}
    )

    def validate(self) -> None:
        for i, entry in enumerate(self.processes):
            if not entry or (entry.startswith("re:") and not entry[3:]):
                raise ValueError((f"processes[{i}]", "must not be empty"))
            if entry.startswith("re:"):
                try:
                    re.compile(entry[3:])
                except re.error as exc:
                    raise ValueError((f"processes[{i}]", f"is not a valid regular expression: {exc}")) from None
            if self.processes.index(entry) != i:
                raise ValueError((f"processes[{i}]", f"listed twice: {entry!r}"))
        for i, port in enumerate(self.ports):
            if not 0 < port < 65536:
                raise ValueError((f"ports[{i}]", f"must be a port from 1 to 65535, got {port}"))
            if self.ports.index(port) != i:
                raise ValueError((f"ports[{i}]", f"listed twice: {port}"))
        for i, name in enumerate(self.critical_processes):
            if not name:
                raise ValueError((f"critical_processes[{i}]", "must not be empty"))


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection = field(default_factory=AgentSection)
    recorder: RecorderSection = field(default_factory=RecorderSection)
    logs: tuple[LogSection, ...] = ()
    journal: JournalSection = field(default_factory=JournalSection)
    bundle: BundleSection = field(default_factory=BundleSection)
    profiles: Mapping[str, ProfileSection] = field(
        default_factory=lambda: MappingProxyType({DEFAULT_PROFILE: ProfileSection()})
    )
    redaction: RedactionSection = field(default_factory=RedactionSection)
    collector: CollectorSection = field(default_factory=CollectorSection)
    spool: SpoolSection = field(default_factory=SpoolSection)
    probes: tuple[ProbeSection, ...] = ()
    expect: ExpectSection = field(default_factory=ExpectSection)
    sources: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    file: str = "<defaults>"

    # Resolved values (defaults that depend on the host or on other keys).
    @property
    def host_id(self) -> str:
        return self.agent.host_id or _socket.gethostname()

    @property
    def data_dir(self) -> str:
        return self.agent.data_dir or default_data_dir()

    @property
    def socket_path(self) -> str:
        return self.agent.socket or default_socket_path()

    @property
    def bundle_dir(self) -> str:
        return self.bundle.output_dir or os.path.join(self.data_dir, "bundles")

    @property
    def spool_dir(self) -> str:
        return os.path.join(self.data_dir, "spool")

    def source_config(self, name: str) -> Any:
        """The ``[sources.<name>]`` config, or that source's defaults."""
        from hostdiag.agent.sources import REGISTRY

        if name in self.sources:
            return self.sources[name]
        return REGISTRY[name].Config()

    def profile(self, name: str) -> ProfileSection:
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles))
            raise KeyError(f"unknown profile {name!r} (this agent defines: {known})") from None


def load_config(path: str | None) -> AgentConfig:
    """Load ``path`` (None: built-in defaults).  Raises :class:`ConfigError`."""
    if path is None:
        return AgentConfig()
    return parse_config(read_toml(path), str(path))


def parse_config(data: dict[str, Any], file: str) -> AgentConfig:
    from hostdiag.agent.sources import REGISTRY

    known = {
        "agent", "recorder", "logs", "journal", "bundle", "profiles", "redaction", "sources", "collector", "spool",
        "probes", "expect",
    }
    for key in data:
        if key not in known:
            raise ConfigError(file, key, f"unknown section (known: {', '.join(sorted(known))})")
    cfg = AgentConfig(file=file)
    simple = {
        "agent": AgentSection,
        "recorder": RecorderSection,
        "journal": JournalSection,
        "bundle": BundleSection,
        "redaction": RedactionSection,
        "collector": CollectorSection,
        "spool": SpoolSection,
        "expect": ExpectSection,
    }
    updates: dict[str, Any] = {}
    for key, cls in simple.items():
        if key in data:
            updates[key] = load_dataclass(cls, data[key], file, key)
    if "logs" in data:
        logs = data["logs"]
        if not isinstance(logs, list):
            raise ConfigError(file, "logs", "expected an array of tables ([[logs]])")
        updates["logs"] = tuple(load_dataclass(LogSection, t, file, f"logs[{i}]") for i, t in enumerate(logs))
        names = [entry.name or entry.path for entry in updates["logs"]]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise ConfigError(file, f"logs[{i}]", f"duplicate log name or path {n!r}")
    if "probes" in data:
        probes = data["probes"]
        if not isinstance(probes, list):
            raise ConfigError(file, "probes", "expected an array of tables ([[probes]])")
        updates["probes"] = tuple(
            load_dataclass(ProbeSection, t, file, f"probes[{i}]") for i, t in enumerate(probes)
        )
        probe_names = [p.name for p in updates["probes"]]
        for i, n in enumerate(probe_names):
            if probe_names.index(n) != i:
                raise ConfigError(file, f"probes[{i}].name", f"duplicate probe name {n!r}")
    if "sources" in data:
        table = data["sources"]
        if not isinstance(table, dict):
            raise ConfigError(file, "sources", "expected a table")
        loaded = {}
        for name, sub in table.items():
            if name not in REGISTRY:
                raise ConfigError(file, f"sources.{name}", f"unknown source (known: {', '.join(REGISTRY)})")
            loaded[name] = load_dataclass(REGISTRY[name].Config, sub, file, f"sources.{name}")
        updates["sources"] = MappingProxyType(loaded)
    profiles = {DEFAULT_PROFILE: ProfileSection()}
    if "profiles" in data:
        table = data["profiles"]
        if not isinstance(table, dict):
            raise ConfigError(file, "profiles", "expected a table of profiles")
        for name, sub in table.items():
            prof = load_dataclass(ProfileSection, sub, file, f"profiles.{name}")
            for i, src in enumerate(prof.sources):
                if src not in REGISTRY:
                    raise ConfigError(
                        file, f"profiles.{name}.sources[{i}]", f"unknown source {src!r} (known: {', '.join(REGISTRY)})"
                    )
            profiles[name] = prof
    updates["profiles"] = MappingProxyType(profiles)
    cfg = replace(cfg, **updates)
    rec = cfg.recorder
    for name, prof in cfg.profiles.items():
        if prof.window_s > rec.window_s:
            raise ConfigError(file, f"profiles.{name}.window_s", f"must not exceed recorder.window_s ({rec.window_s:g})")
    return cfg
