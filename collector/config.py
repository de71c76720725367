"""The collector's configuration: frozen dataclasses with their defaults and checks.

An absent file and an empty file both give exactly the defaults.  Every key is
described in ``docs/collector.md``; ``tests/unit/collector/test_config.py``
checks each error.  Loading goes through the same strict loader as the agent
(:mod:`hostdiag.agent.configfile`): an unknown key, a wrong type or an
impossible value is a :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hostdiag.agent.configfile import ConfigError, is_loopback_host, load_dataclass, read_toml
from hostdiag.agent.configfile import split_host_port as _split_host_port

__all__ = [
    "CollectorConfig",
    "CollectorSection",
    "ConfigError",
    "load_config",
    "parse_config",
    "split_host_port",
    "is_loopback_host",
    "MAX_CHUNK_BYTES",
    "KiB",
    "MiB",
]

KiB = 1024
MiB = 1024 * 1024
# The wire contract's hard limit for one UploadRequest.data.
MAX_CHUNK_BYTES = 1 * MiB



def split_host_port(value: str) -> tuple[str, int]:
    """A listener's ``host:port`` (port 0: any free port); see :func:`configfile.split_host_port`."""
    return _split_host_port(value, min_port=0)


@dataclass(frozen=True)
class CollectorSection:
    listen: str = field(default="127.0.0.1:7443", metadata={"nonempty": True, "doc": "gRPC address (port 0: any)"})
    http_listen: str = field(
        default="127.0.0.1:7480", metadata={"nonempty": True, "doc": "HTTP address: bundles, /metrics, /healthz"}
    )
    data_dir: str = field(default="./hostdiag-data", metadata={"nonempty": True, "doc": "SQLite, blobs, uploads"})
    insecure: bool = field(
        default=True, metadata={"doc": "plaintext gRPC, no certificates; allowed on loopback addresses only"}
    )
    tls_cert_file: str = field(
        default="",
        metadata={"doc": "PEM certificate both gRPC ports present (reloaded when it changes); required unless insecure"},
    )
    tls_key_file: str = field(
        default="", metadata={"doc": "PEM private key of tls_cert_file; required unless insecure"}
    )
    tls_client_ca_file: str = field(
        default="",
        metadata={"doc": "PEM CA that signs agent certificates; listen requires one of them; required unless insecure"},
    )
    api_listen: str = field(
        default="",
        metadata={"doc": "extra gRPC address for collectorctl: TLS without client certificates; empty: none"},
    )
    log_level: str = field(
        default="info", metadata={"choices": ("debug", "info", "warning", "error"), "doc": "log level"}
    )
    request_ttl_s: float = field(
        default=1800.0, metadata={"min": 10, "max": 7 * 86400, "doc": "how long a snapshot request waits for an agent"}
    )
    default_window_s: float = field(
        default=300.0, metadata={"min": 1, "max": 86400, "doc": "window when an incident names none"}
    )
    heartbeat_interval_s: float = field(
        default=15.0, metadata={"min": 1, "max": 30, "doc": "control stream heartbeat period"}
    )
    heartbeat_timeout_s: float = field(
        default=0.0,
        metadata={"min": 0, "max": 600, "doc": "drop a silent agent after this; 0: 90 s (3 x the longest agent heartbeat, 30 s)"},
    )
    command_queue_length: int = field(
        default=64, metadata={"min": 1, "max": 10000, "doc": "snapshot commands queued per connected agent"}
    )
    expiry_check_interval_s: float = field(
        default=5.0, metadata={"min": 0.05, "max": 600, "doc": "how often expired requests are marked"}
    )
    snapshot_min_interval_s: float = field(
        default=60.0,
        metadata={"min": 0, "max": 86400,
                  "doc": "per-host rate limit: a request for a host with one in flight or a bundle younger than "
                         "this is coalesced with it; 0: off"},
    )
    max_bundle_bytes: int = field(
        default=256 * MiB, metadata={"size": True, "min": 64 * KiB, "max": 16384 * MiB, "doc": "largest bundle"}
    )
    max_chunk_bytes: int = field(
        default=MAX_CHUNK_BYTES,
        metadata={"size": True, "min": 4 * KiB, "max": MAX_CHUNK_BYTES, "doc": "largest upload chunk"},
    )
    max_message_bytes: int = field(
        default=MAX_CHUNK_BYTES + 64 * KiB,
        metadata={"size": True, "min": 64 * KiB, "max": 64 * MiB, "doc": "gRPC receive cap per message"},
    )
    max_concurrent_uploads: int = field(
        default=16, metadata={"min": 1, "max": 4096, "doc": "Upload streams served at once"}
    )
    upload_idle_timeout_s: float = field(
        default=60.0, metadata={"min": 0.1, "max": 3600, "doc": "an Upload stream silent this long is ended"}
    )
    upload_retention_s: float = field(
        default=86400.0,
        metadata={"min": 60, "max": 30 * 86400, "doc": "abandoned partial uploads are deleted after this"},
    )
    max_manifest_bytes: int = field(
        default=4 * MiB, metadata={"size": True, "min": 4 * KiB, "max": 256 * MiB, "doc": "manifest.json cap"}
    )
    max_evidence_bytes: int = field(
        default=16 * MiB, metadata={"size": True, "min": 4 * KiB, "max": 256 * MiB, "doc": "evidence.json cap"}
    )
    shutdown_grace_s: float = field(
        default=5.0, metadata={"min": 0, "max": 300, "doc": "time given to open streams on stop"}
    )
    http_header_bytes: int = field(
        default=8 * KiB, metadata={"size": True, "min": 1 * KiB, "max": 1 * MiB, "doc": "HTTP request head cap"}
    )
    http_timeout_s: float = field(
        default=30.0, metadata={"min": 0.1, "max": 3600, "doc": "HTTP read/idle/write-stall timeout"}
    )
    http_max_connections: int = field(
        default=256, metadata={"min": 1, "max": 65536, "doc": "HTTP connections served at once"}
    )
    # The runbook's clock (docs/runbook-clock.md); defaults are the runbook's.
    ack_deadline_p1_s: float = field(
        default=300.0, metadata={"min": 10, "max": 7 * 86400, "doc": "acknowledge a P1 within this"}
    )
    ack_deadline_p2_s: float = field(
        default=900.0, metadata={"min": 10, "max": 7 * 86400, "doc": "acknowledge a P2 within this"}
    )
    ack_deadline_p3_s: float = field(
        default=1800.0, metadata={"min": 10, "max": 7 * 86400, "doc": "acknowledge a P3 within this"}
    )
    ack_deadline_p4_s: float = field(
        default=86400.0, metadata={"min": 10, "max": 7 * 86400, "doc": "acknowledge a P4 within this"}
    )
    p1_unresolved_after_s: float = field(
        default=900.0, metadata={"min": 10, "max": 7 * 86400, "doc": "escalate a P1 still unresolved after this"}
    )
    p1_status_update_interval_s: float = field(
        default=300.0,
        metadata={"min": 10, "max": 86400, "doc": "escalate a taken P1 with no status update for this long"},
    )
    runbook_check_interval_s: float = field(
        default=5.0, metadata={"min": 0.05, "max": 600, "doc": "how often the runbook timers are evaluated"}
    )
    escalation_webhook_url: str = field(
        default="", metadata={"doc": "http(s) URL that gets a JSON POST per runbook breach; empty: none"}
    )
    escalation_webhook_timeout_s: float = field(
        default=10.0, metadata={"min": 0.1, "max": 300, "doc": "time for one webhook attempt"}
    )
    escalation_webhook_max_attempts: int = field(
        default=5, metadata={"min": 1, "max": 20, "doc": "webhook attempts per breach (backoff 1 s doubling, max 60 s)"}
    )
    escalation_webhook_queue_length: int = field(
        default=1000,
        metadata={"min": 1, "max": 100000, "doc": "breaches waiting for the webhook; oldest dropped beyond"},
    )
    # Alertmanager in (docs/alertmanager.md).
    alertmanager_enabled: bool = field(default=True, metadata={"doc": "serve POST /api/v1/alertmanager"})
    alertmanager_max_body_bytes: int = field(
        default=1 * MiB,
        metadata={"size": True, "min": 1 * KiB, "max": 64 * MiB, "doc": "largest Alertmanager notification (413)"},
    )
    alertmanager_host_labels: tuple[str, ...] = field(
        default=("host", "instance"),
        metadata={"doc": "alert labels naming a host, tried in order (a :port is dropped)"},
    )
    alertmanager_selector_labels: tuple[str, ...] = field(
        default=("service",), metadata={"doc": "group-wide alert labels copied into the host selector"}
    )
    alertmanager_service_label: str = field(default="service", metadata={"doc": "alert label giving the service"})
    alertmanager_severity_label: str = field(
        default="severity", metadata={"nonempty": True, "doc": "alert label giving the severity"}
    )
    alertmanager_severities: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(
            {"critical": "P1", "error": "P2", "high": "P2", "warning": "P3", "info": "P4"}
        ),
        metadata={"doc": "severity label value to P1..P4 (the highest of a group wins)"},
    )
    alertmanager_default_severity: str = field(
        default="P3", metadata={"choices": ("P1", "P2", "P3", "P4"), "doc": "severity when no alert maps to one"}
    )
    # Severity signals (docs/signal-rules.md).
    signal_rules_file: str = field(
        default="",
        metadata={"doc": "TOML file of extra or overriding signal rules and rules to disable; empty: the shipped rules"},
    )
    max_stored_evidence_bytes: int = field(
        default=1 * MiB,
        metadata={"size": True, "min": 4 * KiB, "max": 64 * MiB,
                  "doc": "evidence.json kept per bundle for the signal rules (largest keys dropped beyond)"},
    )
    # API authentication (docs/security.md).
    auth: str = field(
        default="tokens",
        metadata={"choices": ("tokens", "none"),
                  "doc": "tokens: every API call needs a bearer token; none: no checks (loopback and insecure only)"},
    )
    # Retention (docs/operations.md): bundle blobs of resolved incidents are deleted, rows kept.
    retention_days: float = field(
        default=30.0,
        metadata={"min": 0, "max": 3650,
                  "doc": "bundles received longer ago are expired (blob deleted) unless an unresolved incident "
                         "holds them; 0: no age limit"},
    )
    retention_max_bytes: int = field(
        default=0,
        metadata={"size": True, "min": 0, "max": 1 << 50,
                  "doc": "when kept bundles exceed this, the oldest not held by an unresolved incident are expired "
                         "first; 0: no byte limit"},
    )
    retention_check_interval_s: float = field(
        default=600.0, metadata={"min": 0.05, "max": 86400, "doc": "how often the retention bounds are applied"}
    )

    def validate(self) -> None:
        for key in ("listen", "http_listen", "api_listen"):
            if not getattr(self, key):
                continue  # only api_listen may be empty (nonempty checks the others)
            try:
                host, _port = split_host_port(getattr(self, key))
            except ValueError as exc:
                raise ValueError((key, str(exc))) from None
            if key == "http_listen" and not is_loopback_host(host):
                # Bundles are served without authentication until API tokens land.
                raise ValueError((key, f"must be a loopback address until HTTP authentication exists, got {host!r}"))
            if key in ("listen", "api_listen") and self.insecure and not is_loopback_host(host):
                raise ValueError(
                    (key, f"plaintext gRPC (insecure = true) is only allowed on a loopback address, got {host!r}; "
                          "set insecure = false with tls_cert_file, tls_key_file and tls_client_ca_file for mTLS")
                )
        for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            path = getattr(self, key)
            if self.insecure:
                if path:
                    raise ValueError((key, "set, but insecure = true serves plaintext: remove it or set insecure = false"))
            elif not path:
                raise ValueError((key, "required unless insecure = true (plaintext, loopback only)"))
            elif not os.path.isfile(path) or not os.access(path, os.R_OK):
                raise ValueError((key, f"cannot read {path!r}"))
        if self.max_message_bytes < self.max_chunk_bytes + 4 * KiB:
            raise ValueError(("max_message_bytes", "must exceed max_chunk_bytes by at least 4 KiB (message framing)"))
        if self.max_chunk_bytes > self.max_bundle_bytes:
            raise ValueError(("max_chunk_bytes", "must not exceed max_bundle_bytes"))
        if self.heartbeat_timeout_s and self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(("heartbeat_timeout_s", "must be longer than heartbeat_interval_s"))
        if self.escalation_webhook_url:
            from hostdiag.collector.webhook import parse_webhook_url

            try:
                parse_webhook_url(self.escalation_webhook_url)
            except ValueError as exc:
                raise ValueError(("escalation_webhook_url", str(exc))) from None
        for name, value in self.alertmanager_severities.items():
            if value not in ("P1", "P2", "P3", "P4"):
                raise ValueError((f"alertmanager_severities.{name}", f"must be P1, P2, P3 or P4, got {value!r}"))
        for key in ("alertmanager_host_labels", "alertmanager_selector_labels"):
            if any(not label for label in getattr(self, key)):
                raise ValueError((key, "label names must not be empty"))
        if self.signal_rules_file:
            from hostdiag.collector.signals.rules import load_rules

            try:
                load_rules(self.signal_rules_file)
            except ConfigError as exc:
                raise ValueError(("signal_rules_file", str(exc))) from None
        if self.auth == "none":
            # Only for development and tests: nobody but this machine can reach an unchecked API.
            if not self.insecure:
                raise ValueError(("auth", 'auth = "none" is allowed only with insecure = true on loopback addresses'))
            for key in ("listen", "http_listen", "api_listen"):
                value = getattr(self, key, "")
                if value and not is_loopback_host(split_host_port(value)[0]):
                    raise ValueError(("auth", f'auth = "none" is allowed only on loopback addresses, but {key} is {value!r}'))


@dataclass(frozen=True)
class CollectorConfig:
    collector: CollectorSection = field(default_factory=CollectorSection)
    file: str = "<defaults>"

    @property
    def data_dir(self) -> str:
        return os.path.abspath(self.collector.data_dir)

    @property
    def heartbeat_timeout_s(self) -> float:
        c = self.collector
        # Agents send heartbeats every 30 s at most: three of those missed means gone.
        return c.heartbeat_timeout_s or max(90.0, 3 * c.heartbeat_interval_s)


def load_config(path: str | None) -> CollectorConfig:
    """Load ``path`` (None: built-in defaults).  Raises :class:`ConfigError`."""
    if path is None:
        return CollectorConfig()
    return parse_config(read_toml(path), str(path))


def parse_config(data: dict[str, Any], file: str) -> CollectorConfig:
    known = {"collector"}
    for key in data:
        if key not in known:
            raise ConfigError(file, key, f"unknown section (known: {', '.join(sorted(known))})")
    section = CollectorSection()
    if "collector" in data:
        section = load_dataclass(CollectorSection, data["collector"], file, "collector")
    return CollectorConfig(collector=section, file=file)
