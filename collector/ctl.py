"""``collectorctl``: the operator's and postmortem author's command.

It talks to a collector's gRPC API (``IncidentService``, ``BundleService``,
``FleetService``)::

    collectorctl incident open --title "API down" --severity P1 --select role=api
    collectorctl incident list [--state open|acknowledged|resolved] [--overdue] [--limit N]
    collectorctl incident show|ack ID
    collectorctl incident update ID --message M
    collectorctl incident resolve ID [--message M]
    collectorctl incident severity ID P1..P4 [--reason R]
    collectorctl bundle list [--incident ID] [--host NAME] [--limit N]
    collectorctl bundle show ID
    collectorctl bundle download ID [-o PATH] [--force]
    collectorctl agents list [--all]
    collectorctl pki init --dir DIR
    collectorctl pki issue --dir DIR --host NAME [--server --san NAME|IP ...]
    collectorctl token create --role viewer|responder|admin|alertmanager --name NAME
    collectorctl token list [--all]
    collectorctl token revoke NAME_OR_ID
    collectorctl audit [--since DURATION_OR_TIME] [--limit N]

Every command takes ``--collector HOST:PORT`` (default ``$HOSTDIAG_COLLECTOR``,
else ``127.0.0.1:7443``), ``--ca-file PEM`` (default ``$HOSTDIAG_CA_FILE``: TLS
to the collector's API port; none: plaintext), the API token (``--token TOKEN``,
``--token-file PATH``, else ``$HOSTDIAG_TOKEN``; sent as ``authorization:
Bearer``, never printed), ``--timeout SECONDS`` (how long to wait for the
connection) and ``--json`` (one JSON object, or one array for the list
commands, on stdout).  Human output is aligned tables and short lines; strings
that came from the collector (and so, in part, from agents) are printed with
control characters escaped.  Progress goes to stderr, and only on a terminal.

Exit status: 0 success; 1 the collector is unreachable, an id is unknown, the
collector refused the change, or a download did not verify; 2 a bad argument
(ours or, for INVALID_ARGUMENT, the collector's judgement).

Everything that touches the wire lives in :class:`CollectorClient`: the
channel (options, TLS credentials), the call metadata (the bearer token, and
the local user as actor), deadlines, and turning gRPC statuses into
:class:`CtlError`.  Commands only see protobuf messages and ``CtlError``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NoReturn, Protocol, TextIO

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc

import hostdiag
from hostdiag.agent.bundle import bundle_file_name, verify_bundle
from hostdiag.collector import pki
from hostdiag.collector.config import split_host_port
from hostdiag.collector.runbook import breach_is_open
from hostdiag.v1 import admin_pb2, admin_pb2_grpc
from hostdiag.v1 import bundle_pb2, bundle_pb2_grpc, fleet_pb2, fleet_pb2_grpc, incident_pb2, incident_pb2_grpc

__all__ = [
    "main",
    "build_parser",
    "CollectorClient",
    "CtlError",
    "download_bundle",
    "TargetExists",
    "DownloadResult",
    "CHANNEL_OPTIONS",
    "DEFAULT_COLLECTOR",
    "ENV_COLLECTOR",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DEFAULT_COLLECTOR = "127.0.0.1:7443"
ENV_COLLECTOR = "HOSTDIAG_COLLECTOR"
ENV_TOKEN = "HOSTDIAG_TOKEN"
ENV_CA_FILE = "HOSTDIAG_CA_FILE"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
# Deadline of one unary call once connected (listing 1000 incidents with their
# timelines on a busy collector still fits).
CALL_TIMEOUT_S = 60.0
# Metadata the collector records as the actor in incident timelines
# (collector/api.py reads it until API tokens exist).
ACTOR_METADATA = "hostdiag-actor"

MiB = 1024 * 1024

# Client channel options, agreed with the collector's server options
# (collector/server.py): it accepts pings every 10 s or more, even between
# calls, and sends at most 2 MiB per message (download chunks are 1 MiB).
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 2 * MiB),
    ("grpc.max_send_message_length", 1 * MiB),
)

# A download stream that breaks with one of these is resumed from the bytes
# already on disk; anything else ends the download.
_RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
})

_SEVERITY_NAME: dict[int, str] = {
    incident_pb2.SEVERITY_P1: "P1",
    incident_pb2.SEVERITY_P2: "P2",
    incident_pb2.SEVERITY_P3: "P3",
    incident_pb2.SEVERITY_P4: "P4",
}
_INCIDENT_STATE_NAME: dict[int, str] = {
    incident_pb2.INCIDENT_STATE_OPEN: "open",
    incident_pb2.INCIDENT_STATE_ACKNOWLEDGED: "acknowledged",
    incident_pb2.INCIDENT_STATE_RESOLVED: "resolved",
}
_INCIDENT_STATE_VALUE: dict[str, int] = {name: value for value, name in _INCIDENT_STATE_NAME.items()}
_REQUEST_STATE_NAME: dict[int, str] = {
    incident_pb2.HOST_REQUEST_STATE_REQUESTED: "requested",
    incident_pb2.HOST_REQUEST_STATE_ACKNOWLEDGED: "acknowledged",
    incident_pb2.HOST_REQUEST_STATE_UPLOADING: "uploading",
    incident_pb2.HOST_REQUEST_STATE_ATTACHED: "attached",
    incident_pb2.HOST_REQUEST_STATE_FAILED: "failed",
    incident_pb2.HOST_REQUEST_STATE_EXPIRED: "expired",
}


class CtlError(Exception):
    """A failure to report as one line on stderr, with the exit status to use.

    ``retryable`` marks a broken transport (a download resumes after it).
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.retryable = retryable


# --------------------------------------------------------------------------
# The wire


class _Call(Protocol):
    def __call__(self, request: Any, *, timeout: float | None = ..., metadata: Any = ...,
                 wait_for_ready: bool | None = ...) -> Any: ...


class CollectorClient:
    """A blocking client of one collector.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, address: str, *, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 call_timeout_s: float = CALL_TIMEOUT_S, actor: str | None = None, ca_file: str = "",
                 token: str = "") -> None:
        self.address = address
        self._token = token
        self.ca_file = ca_file
        self.connect_timeout_s = connect_timeout_s
        self.call_timeout_s = max(call_timeout_s, connect_timeout_s)
        self.actor = _default_actor() if actor is None else actor
        self._channel: grpc.Channel | None = None
        self._connected = False

    # -- the one place that decides how we connect and who we say we are

    def _open_channel(self) -> grpc.Channel:
        # With a CA file: TLS to the collector's API port, verifying its certificate
        # and name (collectorctl presents no client certificate; see docs/security.md).
        # Without: plaintext, which a collector serves only on loopback.
        if not self.ca_file:
            return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        try:
            with open(self.ca_file, "rb") as fh:
                ca = fh.read()
        except OSError as exc:
            raise CtlError(f"cannot read the CA file {self.ca_file}: {exc.strerror or exc}") from None
        return grpc.secure_channel(self.address, grpc.ssl_channel_credentials(ca), options=CHANNEL_OPTIONS)

    def metadata(self) -> list[tuple[str, str]]:
        """Metadata sent with every call: the API token, and the local user name."""
        metadata = [("authorization", f"Bearer {self._token}")] if self._token else []
        if self.actor:
            metadata.append((ACTOR_METADATA, self.actor))
        return metadata

    def __repr__(self) -> str:  # never shows the token
        return f"CollectorClient({self.address!r})"

    # -- connection

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = self._open_channel()
        return self._channel

    def connect(self, *, wait_ready: bool = False) -> None:
        """Check, within the connect timeout, that the collector answers.

        It asks the standard gRPC health service, which every collector
        serves.  A refused or unresolvable address fails at once with the
        transport's own reason; an address that does not answer fails after
        the timeout.  With ``wait_ready`` (resuming a download) the check waits
        through connection failures until the timeout instead.
        """
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.connect_timeout_s,
                                  metadata=self.metadata(), wait_for_ready=wait_ready)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CtlError(f"cannot reach the collector at {self.address}: "
                               f"no answer within {self.connect_timeout_s:g} s", retryable=True) from None
            if code != grpc.StatusCode.UNIMPLEMENTED:
                raise self.error(exc) from None
        else:
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                raise CtlError(f"the collector at {self.address} is not serving (it may be shutting down)",
                               retryable=True)
        self._connected = True

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- errors

    def error(self, exc: grpc.RpcError, *, not_found: str = "") -> CtlError:
        """A gRPC status as the line an operator should read."""
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        details = _one_line(details) or (code.name.lower() if code else "no details")
        retryable = code in _RETRYABLE
        if code == grpc.StatusCode.UNAVAILABLE:
            return CtlError(f"cannot reach the collector at {self.address}: {details}", retryable=True)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CtlError(f"the collector at {self.address} did not answer in time ({details})", retryable=True)
        if code == grpc.StatusCode.NOT_FOUND:
            return CtlError(not_found or details)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return CtlError(details, EXIT_USAGE)
        if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE):
            return CtlError(details)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return CtlError(f"too much at once: {details} (a smaller --limit may help)")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return CtlError(f"the collector refused: {details} (give --token, --token-file or ${ENV_TOKEN})")
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return CtlError(f"the collector refused: {details}")
        name = code.name if code is not None else "UNKNOWN"
        return CtlError(f"the collector answered {name}: {details}", retryable=retryable)

    def _unary(self, method: _Call, request: Any, *, not_found: str = "") -> Any:
        if not self._connected:
            self.connect()
        try:
            return method(request, timeout=self.call_timeout_s, metadata=self.metadata(), wait_for_ready=False)
        except grpc.RpcError as exc:
            raise self.error(exc, not_found=not_found) from None

    # -- IncidentService

    @property
    def _incidents(self) -> incident_pb2_grpc.IncidentServiceStub:
        return incident_pb2_grpc.IncidentServiceStub(self.channel)

    def open_incident(self, request: incident_pb2.OpenIncidentRequest) -> incident_pb2.Incident:
        return self._unary(self._incidents.OpenIncident, request).incident

    def list_incidents(self, state: int = 0, limit: int = 0, overdue: bool = False) -> list[incident_pb2.Incident]:
        request = incident_pb2.ListIncidentsRequest(state=state, limit=limit, overdue=overdue)  # type: ignore[arg-type]
        return list(self._unary(self._incidents.ListIncidents, request).incidents)

    def get_incident(self, incident_id: str) -> incident_pb2.Incident:
        request = incident_pb2.GetIncidentRequest(id=incident_id)
        return self._unary(self._incidents.GetIncident, request, not_found=f"no incident {incident_id}").incident

    def acknowledge_incident(self, incident_id: str) -> incident_pb2.Incident:
        request = incident_pb2.AcknowledgeIncidentRequest(id=incident_id)
        return self._unary(self._incidents.AcknowledgeIncident, request,
                           not_found=f"no incident {incident_id}").incident

    def post_status_update(self, incident_id: str, message: str) -> incident_pb2.Incident:
        request = incident_pb2.PostStatusUpdateRequest(id=incident_id, message=message)
        return self._unary(self._incidents.PostStatusUpdate, request, not_found=f"no incident {incident_id}").incident

    def resolve_incident(self, incident_id: str, message: str = "") -> incident_pb2.Incident:
        request = incident_pb2.ResolveIncidentRequest(id=incident_id, message=message)
        return self._unary(self._incidents.ResolveIncident, request, not_found=f"no incident {incident_id}").incident

    def set_incident_severity(self, incident_id: str, severity: int, reason: str = "") -> incident_pb2.Incident:
        request = incident_pb2.SetIncidentSeverityRequest(
            id=incident_id, severity=severity, reason=reason  # type: ignore[arg-type]
        )
        return self._unary(self._incidents.SetIncidentSeverity, request,
                           not_found=f"no incident {incident_id}").incident

    # -- BundleService

    @property
    def _bundles(self) -> bundle_pb2_grpc.BundleServiceStub:
        return bundle_pb2_grpc.BundleServiceStub(self.channel)

    def list_bundles(self, incident_id: str = "", host_id: str = "", limit: int = 0) -> list[bundle_pb2.Bundle]:
        request = bundle_pb2.ListBundlesRequest(incident_id=incident_id, host_id=host_id, limit=limit)
        return list(self._unary(self._bundles.ListBundles, request).bundles)

    def get_bundle(self, bundle_id: str) -> tuple[bundle_pb2.Bundle, str]:
        request = bundle_pb2.GetBundleRequest(bundle_id=bundle_id)
        response = self._unary(self._bundles.GetBundle, request, not_found=f"no bundle {bundle_id}")
        return response.bundle, response.manifest_json

    def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
        """Stream ``(offset, data)`` chunks of a stored bundle from ``offset``.

        Raises :class:`CtlError`; ``retryable`` when the transport broke.
        """
        # After the first call (the download asks GetBundle first, and a
        # resume comes after a break) wait for a working connection.
        self.connect(wait_ready=self._connected)
        request = bundle_pb2.DownloadBundleRequest(bundle_id=bundle_id, offset=offset)
        call = self._bundles.DownloadBundle(request, metadata=self.metadata(), wait_for_ready=False)
        try:
            for response in call:
                yield response.offset, response.data
        except grpc.RpcError as exc:
            raise self.error(exc, not_found=f"no bundle {bundle_id}") from None
        finally:
            call.cancel()

    # -- FleetService

    def list_agents(self, include_disconnected: bool = False) -> list[fleet_pb2.AgentInfo]:
        stub = fleet_pb2_grpc.FleetServiceStub(self.channel)
        request = fleet_pb2.ListAgentsRequest(include_disconnected=include_disconnected)
        return list(self._unary(stub.ListAgents, request).agents)

    # -- AdminService

    @property
    def _admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    def create_token(self, name: str, role: int) -> tuple[admin_pb2.ApiToken, str]:
        request = admin_pb2.CreateTokenRequest(name=name, role=role)  # type: ignore[arg-type]
        response = self._unary(self._admin.CreateToken, request)
        return response.token, response.secret

    def list_tokens(self, include_revoked: bool = False) -> list[admin_pb2.ApiToken]:
        request = admin_pb2.ListTokensRequest(include_revoked=include_revoked)
        return list(self._unary(self._admin.ListTokens, request).tokens)

    def revoke_token(self, name_or_id: str) -> admin_pb2.ApiToken:
        request = admin_pb2.RevokeTokenRequest(name_or_id=name_or_id)
        return self._unary(self._admin.RevokeToken, request, not_found=f"no valid token {name_or_id}").token

    def list_audit_events(self, since_unix_ms: int = 0, limit: int = 0) -> list[admin_pb2.AuditEvent]:
        request = admin_pb2.ListAuditEventsRequest(since_unix_ms=since_unix_ms, limit=limit)
        return list(self._unary(self._admin.ListAuditEvents, request).events)


def _default_actor() -> str:
    """The local user name, as printable ASCII (gRPC metadata values must be)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return ""
    name = name.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c for c in name if c.isprintable())[:128]


# --------------------------------------------------------------------------
# Presentation

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: object) -> str:
    """``text`` safe to print on a terminal: control characters become escapes.

    Titles, messages, host ids and manifests come from people and agents; none
    of it may move the cursor or recolour the operator's terminal.
    """
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def _one_line(text: str) -> str:
    return clean(" ".join(text.split()))


def format_time(unix_ms: int) -> str:
    """``2025-11-24T16:00:05Z``; ``-`` for an unset (zero) time."""
    if not unix_ms:
        return "-"
    return datetime.fromtimestamp(unix_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_size(size_bytes: int) -> str:
    """``512 B``, ``12.3 KiB``, ``1.0 MiB``, ``2.50 GiB``."""
    if size_bytes < 1024:
        return f"{size_bytes} B"
    for unit, scale in (("KiB", 1024), ("MiB", MiB), ("GiB", 1024 * MiB)):
        if size_bytes < scale * 1024 or unit == "GiB":
            return f"{size_bytes / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def format_age(unix_ms: int, now_s: float) -> str:
    """``12 s ago``; ``never`` for zero."""
    if not unix_ms:
        return "never"
    return f"{max(0, int(now_s - unix_ms / 1000))} s ago"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned with two spaces; the last column is not padded."""
    cells = [[clean(h) for h in headers]] + [[clean(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``key   value`` lines, keys padded to one width."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {clean(v)}".rstrip() for k, v in pairs)


def severity_name(value: int) -> str:
    return _SEVERITY_NAME.get(value, f"unknown({value})")


def incident_state_name(value: int) -> str:
    return _INCIDENT_STATE_NAME.get(value, f"unknown({value})")


def request_state_name(value: int) -> str:
    return _REQUEST_STATE_NAME.get(value, f"unknown({value})")


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def selector_text(selector: incident_pb2.HostSelector) -> str:
    parts = [f"{k}={v}" for k, v in sorted(selector.labels.items())]
    parts += [f"host {h}" for h in selector.host_ids]
    return ", ".join(parts) or "-"


def _ms_or_none(value: int) -> int | None:
    return value or None


def open_escalations(inc: incident_pb2.Incident) -> list[incident_pb2.Escalation]:
    """The runbook breaches of ``inc`` that still stand (an overdue incident has at least one)."""
    state = {incident_pb2.INCIDENT_STATE_OPEN: "open", incident_pb2.INCIDENT_STATE_ACKNOWLEDGED: "acknowledged",
             incident_pb2.INCIDENT_STATE_RESOLVED: "resolved"}.get(inc.state, "")
    return [
        e for e in inc.escalations
        if breach_is_open(e.kind, e.at_unix_ms, state=state, severity=int(inc.severity),
                          severity_set_at_ms=inc.severity_set_at_unix_ms or inc.opened_at_unix_ms,
                          acknowledged_at_ms=inc.acknowledged_at_unix_ms,
                          last_status_update_at_ms=inc.last_status_update_at_unix_ms)
    ]


def _state_text(inc: incident_pb2.Incident) -> str:
    return incident_state_name(inc.state) + (",overdue" if open_escalations(inc) else "")


def incident_to_dict(inc: incident_pb2.Incident) -> dict[str, Any]:
    still_open = {(e.kind, e.at_unix_ms) for e in open_escalations(inc)}
    return {
        "id": inc.id,
        "title": inc.title,
        "severity": severity_name(inc.severity),
        "state": incident_state_name(inc.state),
        "service": inc.service,
        "selector": {"labels": dict(sorted(inc.selector.labels.items())), "host_ids": list(inc.selector.host_ids)},
        "window_seconds": inc.window_seconds,
        "opened_by": inc.opened_by,
        "opened_at_unix_ms": _ms_or_none(inc.opened_at_unix_ms),
        "acknowledged_at_unix_ms": _ms_or_none(inc.acknowledged_at_unix_ms),
        "resolved_at_unix_ms": _ms_or_none(inc.resolved_at_unix_ms),
        "severity_set_at_unix_ms": _ms_or_none(inc.severity_set_at_unix_ms),
        "last_status_update_at_unix_ms": _ms_or_none(inc.last_status_update_at_unix_ms),
        "alert_group_key": inc.alert_group_key or None,
        "overdue": bool(still_open),
        "escalations": [
            {"kind": e.kind, "at_unix_ms": e.at_unix_ms, "message": e.message, "notified": e.notified,
             "open": (e.kind, e.at_unix_ms) in still_open}
            for e in inc.escalations
        ],
        "hosts": [
            {
                "host_id": h.host_id,
                "request_id": h.request_id,
                "state": request_state_name(h.state),
                "reason": h.reason,
                "bundle_id": h.bundle_id or None,
                "updated_at_unix_ms": _ms_or_none(h.updated_at_unix_ms),
                "expires_at_unix_ms": _ms_or_none(h.expires_at_unix_ms),
            }
            for h in inc.hosts
        ],
        "bundle_ids": list(inc.bundle_ids),
        "suggestion": suggestion_to_dict(inc),
        "timeline": [
            {"at_unix_ms": e.at_unix_ms, "kind": e.kind, "message": e.message, "host_id": e.host_id or None,
             "actor": e.actor or None}
            for e in inc.timeline
        ],
    }


def _evidence_doc(text: str) -> Any:
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {"unreadable": text[:200]}


def suggestion_to_dict(inc: incident_pb2.Incident) -> dict[str, Any] | None:
    """The severity signals' suggestion (None before any bundle was evaluated)."""
    if not inc.HasField("suggestion"):
        return None
    s = inc.suggestion
    return {
        "severity": _SEVERITY_NAME.get(s.severity),
        "explanation": s.explanation,
        "guide": s.guide or None,
        "evaluated_at_unix_ms": _ms_or_none(s.evaluated_at_unix_ms),
        "hosts_selected": s.hosts_selected,
        "hosts_reporting": s.hosts_reporting,
        "hosts_affected": s.hosts_affected,
        "findings": [
            {"rule": f.rule, "severity": _SEVERITY_NAME.get(f.severity), "host_id": f.host_id or None,
             "explanation": f.explanation, "guide": f.guide or None, "inhibited": f.inhibited,
             "evidence": _evidence_doc(f.evidence_json)}
            for f in s.findings
        ],
    }


def _evidence_text(text: str, limit: int = 160) -> str:
    """``name=value`` pairs of a finding's evidence, for a table cell (nested values summarised)."""
    doc = _evidence_doc(text)
    if not isinstance(doc, dict):
        return _one_line(str(doc))[:limit]
    parts = []
    for key, value in doc.items():
        if isinstance(value, dict):
            value = f"{{{len(value)} keys}}"
        elif isinstance(value, list):
            shown = ",".join(str(v) for v in value[:4] if not isinstance(v, (dict, list)))
            value = f"[{shown}{',…' if len(value) > 4 else ''}]"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_suggestion(inc: incident_pb2.Incident) -> list[str]:
    """The suggestion block of ``incident show``: severity, why, guide, findings with their evidence."""
    if not inc.HasField("suggestion"):
        return ["suggestion: none yet (evaluated when a bundle attaches)"]
    s = inc.suggestion
    suggested = _SEVERITY_NAME.get(s.severity, "none")
    current = severity_name(inc.severity)
    if suggested in ("none", current):
        shown = f"{suggested} (the severity is {current}; only a responder changes it)"
    else:
        shown = f"{suggested} (the severity stays {current} until a responder sets it: " \
                f"collectorctl incident severity {inc.id} {suggested})"
    out = [format_fields([
        ("suggested", shown),
        ("why", _one_line(s.explanation)),
        ("guide", s.guide or "-"),
        ("hosts", f"{s.hosts_selected} selected, {s.hosts_reporting} reporting, {s.hosts_affected} affected"),
        ("evaluated", format_time(s.evaluated_at_unix_ms)),
    ])]
    if s.findings:
        out.append("")
        out.append(f"findings ({len(s.findings)})")
        out.append(format_table(
            ("SEV", "HOST", "RULE", "EXPLANATION", "EVIDENCE"),
            [(_SEVERITY_NAME.get(f.severity, "-") + (" (inhibited)" if f.inhibited else ""),
              f.host_id or "(all)", f.rule, _one_line(f.explanation), _evidence_text(f.evidence_json))
             for f in s.findings],
        ))
    return out


def bundle_to_dict(b: bundle_pb2.Bundle) -> dict[str, Any]:
    return {
        "bundle_id": b.bundle_id,
        "host_id": b.host_id,
        "incident_id": b.incident_id or None,
        "request_id": b.request_id or None,
        "size_bytes": b.size_bytes,
        "sha256": b.sha256,
        "created_at_unix_ms": _ms_or_none(b.created_at_unix_ms),
        "received_at_unix_ms": _ms_or_none(b.received_at_unix_ms),
        "profile": b.profile,
        "trigger": b.trigger,
        "expired_at_unix_ms": _ms_or_none(b.expired_at_unix_ms),
    }


def agent_to_dict(a: fleet_pb2.AgentInfo, now_s: float) -> dict[str, Any]:
    age = max(0.0, round(now_s - a.last_heartbeat_unix_ms / 1000, 3)) if a.last_heartbeat_unix_ms else None
    return {
        "host_id": a.host_id,
        "labels": dict(sorted(a.labels.items())),
        "agent_version": a.agent_version,
        "connected": a.connected,
        "connected_at_unix_ms": _ms_or_none(a.connected_at_unix_ms),
        "last_heartbeat_unix_ms": _ms_or_none(a.last_heartbeat_unix_ms),
        "last_heartbeat_age_s": age,
        "profiles": list(a.profiles),
        "peer": a.peer,
    }


def render_incident_list(incidents: Sequence[incident_pb2.Incident]) -> str:
    if not incidents:
        return "no incidents"
    rows = []
    for inc in incidents:
        attached = sum(1 for h in inc.hosts if h.state == incident_pb2.HOST_REQUEST_STATE_ATTACHED)
        rows.append((inc.id, severity_name(inc.severity), _state_text(inc),
                     format_time(inc.opened_at_unix_ms), f"{attached}/{len(inc.hosts)}", inc.service or "-",
                     _one_line(inc.title)))
    return format_table(("ID", "SEV", "STATE", "OPENED", "BUNDLES", "SERVICE", "TITLE"), rows)


def render_incident(inc: incident_pb2.Incident, bundles: Sequence[bundle_pb2.Bundle] = ()) -> str:
    overdue = ", ".join(dict.fromkeys(e.kind for e in open_escalations(inc)))
    opened = format_time(inc.opened_at_unix_ms)
    if inc.opened_by:
        opened += f" by {inc.opened_by}"
    out = [format_fields([
        ("incident", inc.id),
        ("title", _one_line(inc.title)),
        ("severity", severity_name(inc.severity)),
        ("state", incident_state_name(inc.state) + (f" (overdue: {overdue})" if overdue else "")),
        ("service", inc.service or "-"),
        ("selector", selector_text(inc.selector)),
        ("window", f"{inc.window_seconds:g} s"),
        ("opened", opened),
        ("acknowledged", format_time(inc.acknowledged_at_unix_ms)),
        ("resolved", format_time(inc.resolved_at_unix_ms)),
    ])]
    out.append("")
    out.extend(render_suggestion(inc))
    out.append("")
    if inc.hosts:
        out.append(f"hosts ({len(inc.hosts)})")
        out.append(format_table(
            ("HOST", "STATE", "BUNDLE", "UPDATED", "REASON"),
            [(h.host_id, request_state_name(h.state), h.bundle_id or "-", format_time(h.updated_at_unix_ms),
              _one_line(h.reason) or "-") for h in inc.hosts],
        ))
    else:
        out.append("hosts: none selected")
    out.append("")
    known = {b.bundle_id: b for b in bundles}
    ids = list(inc.bundle_ids) + [b.bundle_id for b in bundles if b.bundle_id not in set(inc.bundle_ids)]
    if ids:
        out.append(f"bundles ({len(ids)})")
        rows = []
        for bundle_id in ids:
            b = known.get(bundle_id)
            rows.append((bundle_id, b.host_id if b else "-", format_size(b.size_bytes) if b else "-",
                         format_time(b.received_at_unix_ms) if b else "-"))
        out.append(format_table(("BUNDLE", "HOST", "SIZE", "RECEIVED"), rows))
    else:
        out.append("bundles: none yet")
    out.append("")
    if inc.escalations:
        still_open = {(e.kind, e.at_unix_ms) for e in open_escalations(inc)}
        out.append(f"escalations ({len(inc.escalations)})")
        out.append(format_table(
            ("TIME", "KIND", "STATUS", "NOTIFIED", "MESSAGE"),
            [(format_time(e.at_unix_ms), e.kind, "open" if (e.kind, e.at_unix_ms) in still_open else "closed",
              "yes" if e.notified else "no", _one_line(e.message)) for e in inc.escalations],
        ))
        out.append("")
    out.append(f"timeline ({len(inc.timeline)})")
    if inc.timeline:
        out.append(format_table(
            ("TIME", "EVENT", "HOST", "BY", "MESSAGE"),
            [(format_time(e.at_unix_ms), e.kind, e.host_id or "-", e.actor or "-", _one_line(e.message))
             for e in inc.timeline],
        ))
    return "\n".join(out)


def render_bundle_list(bundles: Sequence[bundle_pb2.Bundle]) -> str:
    if not bundles:
        return "no bundles"
    rows = [(b.bundle_id, b.host_id, b.incident_id or "-", format_size(b.size_bytes),
             format_time(b.created_at_unix_ms), format_time(b.received_at_unix_ms), b.trigger or "-",
             f"expired {format_time(b.expired_at_unix_ms)}" if b.expired_at_unix_ms else "kept")
            for b in bundles]
    return format_table(("BUNDLE", "HOST", "INCIDENT", "SIZE", "CREATED", "RECEIVED", "TRIGGER", "STATE"), rows)


def manifest_summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a reader wants first from a manifest, tolerant of any shape.

    The manifest comes from an agent: every field may be missing or odd, and
    nothing here may fail on it.
    """
    def as_dict(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    def as_list(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []

    members = [m for m in as_list(manifest.get("members")) if isinstance(m, dict)]
    member_bytes = sum(m["size_bytes"] for m in members
                       if isinstance(m.get("size_bytes"), int) and not isinstance(m.get("size_bytes"), bool))
    sources = {}
    for name, status in sorted(as_dict(manifest.get("sources")).items()):
        status = as_dict(status)
        sources[str(name)] = {"status": status.get("status"), "duration_s": status.get("duration_s"),
                              "error": status.get("error")}
    redaction = {str(k): v for k, v in sorted(as_dict(manifest.get("redaction")).items())
                 if isinstance(v, int) and not isinstance(v, bool)}
    window = as_dict(manifest.get("window"))
    return {
        "format_version": manifest.get("format_version"),
        "agent_version": manifest.get("agent_version"),
        "labels": as_dict(manifest.get("labels")),
        "trigger": manifest.get("trigger"),
        "profile": manifest.get("profile"),
        "recorder": manifest.get("recorder"),
        "created_at": manifest.get("created_at"),
        "window": {k: window.get(k) for k in ("start", "end", "seconds")} if window else None,
        "members": len(members),
        "member_bytes": member_bytes,
        "truncations": [t for t in as_list(manifest.get("truncations")) if isinstance(t, dict)],
        "sources": sources,
        "redaction": redaction,
    }


def _instant(value: Any) -> str:
    """A manifest time: unix seconds (as the agent writes the window) or already text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return format_time(int(value * 1000))
        except (OverflowError, OSError, ValueError):
            return str(value)
    return str(value) if value else "?"


def render_bundle(bundle: bundle_pb2.Bundle, summary: Mapping[str, Any] | None, problem: str = "") -> str:
    out = [format_fields([
        ("bundle", bundle.bundle_id),
        ("host", bundle.host_id),
        ("incident", bundle.incident_id or "-"),
        ("request", bundle.request_id or "-"),
        ("size", f"{format_size(bundle.size_bytes)} ({bundle.size_bytes} bytes)"),
        ("sha256", bundle.sha256),
        ("created", format_time(bundle.created_at_unix_ms)),
        ("received", format_time(bundle.received_at_unix_ms)),
        ("profile", bundle.profile or "-"),
        ("trigger", bundle.trigger or "-"),
    ])]
    out.append("")
    if summary is None:
        out.append(f"manifest: {problem or 'not available'}")
        return "\n".join(out)
    window = summary.get("window") or {}
    window_text = "-"
    if window:
        window_text = f"{_instant(window.get('start'))} to {_instant(window.get('end'))}"
        if isinstance(window.get("seconds"), (int, float)) and not isinstance(window.get("seconds"), bool):
            window_text += f" ({window['seconds']:g} s)"
    out.append(format_fields([
        ("agent", summary.get("agent_version") or "-"),
        ("labels", _labels_text({str(k): str(v) for k, v in summary["labels"].items()})),
        ("recorder", summary.get("recorder") or "-"),
        ("window", window_text),
        ("members", f"{summary['members']} ({format_size(summary['member_bytes'])} uncompressed)"),
        ("truncated", ", ".join(f"{t.get('member')} ({t.get('reason')})" for t in summary["truncations"]) or "none"),
        ("redactions", ", ".join(f"{k} {v}" for k, v in summary["redaction"].items() if v) or "none"),
    ]))
    if summary["sources"]:
        out.append("")
        rows = []
        for name, s in summary["sources"].items():
            duration = s.get("duration_s")
            took = f"{duration:.3f} s" if isinstance(duration, (int, float)) and not isinstance(duration, bool) else "-"
            rows.append((name, s.get("status") or "?", took, _one_line(s.get("error") or "")))
        out.append(format_table(("SOURCE", "STATUS", "TOOK", "ERROR"), rows))
    return "\n".join(out)


def render_agents(agents: Sequence[fleet_pb2.AgentInfo], now_s: float) -> str:
    if not agents:
        return "no agents"
    rows = [(a.host_id, _labels_text(a.labels), a.agent_version or "-", "yes" if a.connected else "no",
             format_age(a.last_heartbeat_unix_ms, now_s)) for a in agents]
    return format_table(("HOST", "LABELS", "VERSION", "CONNECTED", "LAST HEARTBEAT"), rows)


# --------------------------------------------------------------------------
# Download


class TargetExists(CtlError):
    """The output file exists and ``--force`` was not given."""

    def __init__(self, target: str) -> None:
        super().__init__(f"{target} already exists (use --force to overwrite it)")


class _Downloader(Protocol):
    def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]: ...


@dataclass
class DownloadResult:
    path: str
    bundle_id: str
    size_bytes: int
    sha256: str
    members: int
    resumed: int = 0  # how many times a broken stream was resumed


class ProgressBar:
    """``[#####-----]  31%  12.3 MiB / 40.0 MiB`` on stderr, redrawn in place; silent when disabled."""

    def __init__(self, stream: TextIO, total: int, enabled: bool, *, width: int = 30,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.total = total
        self.enabled = enabled
        self.width = width
        self.clock = clock
        self._last = -1.0
        self._drawn = False

    def update(self, done: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self._drawn = True
        fraction = done / self.total if self.total else 1.0
        filled = int(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {fraction:4.0%}  {format_size(done)} / {format_size(self.total)}")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line (once, and only if a bar was drawn)."""
        if self._drawn:
            self._drawn = False
            self.stream.write("\n")
            self.stream.flush()


def default_file_name(bundle: bundle_pb2.Bundle, bundle_id: str) -> str:
    """The agent's own file name for the bundle, else ``<id>.tar.zst``."""
    if bundle.host_id and bundle.created_at_unix_ms > 0:
        return bundle_file_name(bundle.host_id, bundle.created_at_unix_ms / 1000, bundle.bundle_id or bundle_id)
    safe = re.sub(r"[^A-Za-z0-9-]", "_", bundle.bundle_id or bundle_id)[:64] or "bundle"
    return f"{safe}.tar.zst"


def target_path(output: str | None, bundle: bundle_pb2.Bundle, bundle_id: str) -> str:
    name = default_file_name(bundle, bundle_id)
    if not output:
        return os.path.join(".", name)
    if os.path.isdir(output):
        return os.path.join(output, name)
    return output


def download_bundle(
    client: _Downloader,
    bundle: bundle_pb2.Bundle,
    target: str,
    *,
    force: bool = False,
    progress: ProgressBar | None = None,
    max_attempts: int = 5,
    backoff_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Download ``bundle`` to ``target``, verified, or leave nothing behind.

    The bytes go to a temporary file in the target's directory.  A stream that
    breaks (a retryable status, or an end before ``size_bytes``) is resumed
    from the temporary file's size; ``max_attempts`` consecutive attempts that
    add no byte end the download.  The file then must have the recorded size
    and sha256 and its members must verify against its manifest
    (:func:`verify_bundle`); only then is it moved to ``target`` -- never over
    an existing file unless ``force``.  Raises :class:`CtlError` after removing
    the temporary file.
    """
    if os.path.exists(target) and not force:
        raise TargetExists(target)
    directory = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(directory, f".{os.path.basename(target)}.part-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except OSError as exc:
        raise CtlError(f"cannot write {tmp}: {exc.strerror or exc}") from None
    size = bundle.size_bytes
    resumed = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            sha = hashlib.sha256()
            offset = 0
            failures = 0
            last_error = ""
            while True:
                start = offset
                stream = client.download(bundle.bundle_id, offset)
                try:
                    for chunk_offset, data in stream:
                        if chunk_offset != offset:
                            raise CtlError(f"the collector sent bytes for offset {chunk_offset}, expected {offset}")
                        if offset + len(data) > size:
                            raise CtlError(f"the collector sent more than the bundle's {size} bytes")
                        fh.write(data)
                        sha.update(data)
                        offset += len(data)
                        if progress is not None:
                            progress.update(offset)
                    if offset == size:
                        break
                    last_error = f"the stream ended at byte {offset} of {size}"
                except CtlError as exc:
                    if not exc.retryable:
                        raise
                    last_error = exc.message
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()  # ends the call now, not when the generator is collected
                fh.flush()
                failures = 0 if offset > start else failures + 1
                if failures >= max_attempts:
                    raise CtlError(f"gave up after {max_attempts} attempts without progress: {last_error}")
                resumed += 1
                sleep(min(backoff_s * 2 ** max(failures - 1, 0), 5.0))
                offset = fh.tell()  # the temporary file's size is where to resume
            fh.flush()
            os.fsync(fh.fileno())
        if progress is not None:
            progress.update(offset, force=True)
            progress.finish()
        digest = sha.hexdigest()
        if digest != bundle.sha256:
            raise CtlError(f"sha256 mismatch: the downloaded file has {digest}, the collector recorded "
                           f"{clean(bundle.sha256) or 'nothing'}")
        report = verify_bundle(tmp)
        if not report.ok:
            shown = "; ".join(_one_line(p) for p in report.problems[:3])
            more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
            raise CtlError(f"the bundle does not verify: {shown}{more}")
        if report.sha256 is not None and report.sha256 != bundle.sha256:
            raise CtlError("the file changed on disk while it was verified")
        _install(tmp, target, force)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CtlError(f"cannot write {tmp}: {exc.strerror or exc}") from None
        raise
    return DownloadResult(path=target, bundle_id=bundle.bundle_id, size_bytes=size, sha256=bundle.sha256,
                          members=sum(1 for m in report.members if m.get("ok") and m.get("expected_sha256")),
                          resumed=resumed)


def _install(tmp: str, target: str, force: bool) -> None:
    """Move the verified file into place; without ``force`` never replace a file."""
    if force:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)  # fails if target appeared meanwhile
        except FileExistsError:
            raise TargetExists(target) from None
        except OSError:
            # A filesystem without hard links: check, then rename.
            if os.path.exists(target):
                raise TargetExists(target) from None
            os.replace(tmp, target)
        else:
            os.unlink(tmp)
    with contextlib.suppress(OSError):
        dir_fd = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --------------------------------------------------------------------------
# Commands


class _Client(Protocol):
    address: str

    def open_incident(self, request: incident_pb2.OpenIncidentRequest) -> incident_pb2.Incident: ...
    def list_incidents(
        self, state: int = ..., limit: int = ..., overdue: bool = ...
    ) -> list[incident_pb2.Incident]: ...
    def get_incident(self, incident_id: str) -> incident_pb2.Incident: ...
    def acknowledge_incident(self, incident_id: str) -> incident_pb2.Incident: ...
    def post_status_update(self, incident_id: str, message: str) -> incident_pb2.Incident: ...
    def resolve_incident(self, incident_id: str, message: str = ...) -> incident_pb2.Incident: ...
    def set_incident_severity(self, incident_id: str, severity: int, reason: str = ...) -> incident_pb2.Incident: ...
    def list_bundles(self, incident_id: str = ..., host_id: str = ..., limit: int = ...) -> list[bundle_pb2.Bundle]: ...
    def get_bundle(self, bundle_id: str) -> tuple[bundle_pb2.Bundle, str]: ...
    def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]: ...
    def list_agents(self, include_disconnected: bool = ...) -> list[fleet_pb2.AgentInfo]: ...
    def create_token(self, name: str, role: int) -> tuple[admin_pb2.ApiToken, str]: ...
    def list_tokens(self, include_revoked: bool = ...) -> list[admin_pb2.ApiToken]: ...
    def revoke_token(self, name_or_id: str) -> admin_pb2.ApiToken: ...
    def list_audit_events(self, since_unix_ms: int = ..., limit: int = ...) -> list[admin_pb2.AuditEvent]: ...
    def close(self) -> None: ...


@dataclass
class Context:
    """What a command needs besides its arguments."""

    out: TextIO
    err: TextIO
    json: bool
    make_client: Callable[[], _Client]
    clock: Callable[[], float] = time.time
    _client: _Client | None = field(default=None, init=False)

    @property
    def client(self) -> _Client:
        if self._client is None:
            self._client = self.make_client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def emit(self, doc: Any) -> None:
        self.out.write(orjson.dumps(doc).decode() + "\n")

    def say(self, text: str) -> None:
        self.out.write(text + "\n")

    @property
    def interactive(self) -> bool:
        """Progress and hints on stderr only when it is a terminal and JSON was not asked for."""
        isatty = getattr(self.err, "isatty", None)
        return not self.json and bool(isatty and isatty())


def cmd_incident_open(args: argparse.Namespace, ctx: Context) -> int:
    request = incident_pb2.OpenIncidentRequest(
        title=args.title,
        severity=args.severity,
        service=args.service or "",
        selector=incident_pb2.HostSelector(labels=dict(args.select or []), host_ids=list(args.host or [])),
        window_seconds=args.window or 0.0,
        profile=args.profile or "",
    )
    inc = ctx.client.open_incident(request)
    if ctx.json:
        ctx.emit(incident_to_dict(inc))
        return EXIT_OK
    ctx.say(inc.id)
    if ctx.interactive:
        hosts = ", ".join(clean(h.host_id) for h in inc.hosts) or "none yet"
        print(f"opened {inc.id} ({severity_name(inc.severity)}); snapshot requested from {len(inc.hosts)} "
              f"host(s): {hosts}", file=ctx.err)
    return EXIT_OK


def cmd_incident_list(args: argparse.Namespace, ctx: Context) -> int:
    state = _INCIDENT_STATE_VALUE[args.state] if args.state else 0
    if args.overdue:
        incidents = ctx.client.list_incidents(state, args.limit or 0, overdue=True)
    else:
        incidents = ctx.client.list_incidents(state, args.limit or 0)
    if ctx.json:
        ctx.emit([incident_to_dict(i) for i in incidents])
    else:
        ctx.say(render_incident_list(incidents))
    return EXIT_OK


def cmd_incident_show(args: argparse.Namespace, ctx: Context) -> int:
    inc = ctx.client.get_incident(args.id)
    bundles = ctx.client.list_bundles(incident_id=inc.id, limit=1000) if inc.bundle_ids else []
    if ctx.json:
        doc = incident_to_dict(inc)
        doc["bundles"] = [bundle_to_dict(b) for b in bundles]
        ctx.emit(doc)
    else:
        ctx.say(render_incident(inc, bundles))
    return EXIT_OK


def _changed(ctx: Context, inc: incident_pb2.Incident, line: str) -> int:
    if ctx.json:
        ctx.emit(incident_to_dict(inc))
    else:
        ctx.say(line)
    return EXIT_OK


def cmd_incident_ack(args: argparse.Namespace, ctx: Context) -> int:
    inc = ctx.client.acknowledge_incident(args.id)
    return _changed(ctx, inc, f"{inc.id} acknowledged at {format_time(inc.acknowledged_at_unix_ms)}")


def cmd_incident_update(args: argparse.Namespace, ctx: Context) -> int:
    inc = ctx.client.post_status_update(args.id, args.message)
    return _changed(ctx, inc, f"{inc.id}: status update posted")


def cmd_incident_resolve(args: argparse.Namespace, ctx: Context) -> int:
    inc = ctx.client.resolve_incident(args.id, args.message or "")
    return _changed(ctx, inc, f"{inc.id} resolved at {format_time(inc.resolved_at_unix_ms)}")


def cmd_incident_severity(args: argparse.Namespace, ctx: Context) -> int:
    before = ctx.client.get_incident(args.id).severity
    inc = ctx.client.set_incident_severity(args.id, args.severity, args.reason or "")
    if inc.severity == before:
        line = f"{inc.id} severity unchanged ({severity_name(inc.severity)})"
    else:
        line = f"{inc.id} severity {severity_name(before)} → {severity_name(inc.severity)}"
    return _changed(ctx, inc, line)


def cmd_bundle_list(args: argparse.Namespace, ctx: Context) -> int:
    bundles = ctx.client.list_bundles(args.incident or "", args.host or "", args.limit or 0)
    if ctx.json:
        ctx.emit([bundle_to_dict(b) for b in bundles])
    else:
        ctx.say(render_bundle_list(bundles))
    return EXIT_OK


def _parse_manifest(text: str) -> tuple[dict[str, Any] | None, str]:
    if not text:
        return None, "not recorded"
    try:
        manifest = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(manifest, dict):
        return None, "not a JSON object"
    return manifest, ""


def cmd_bundle_show(args: argparse.Namespace, ctx: Context) -> int:
    bundle, manifest_json = ctx.client.get_bundle(args.id)
    manifest, problem = _parse_manifest(manifest_json)
    summary = manifest_summary(manifest) if manifest is not None else None
    if ctx.json:
        ctx.emit({"bundle": bundle_to_dict(bundle), "manifest": manifest, "summary": summary})
    else:
        ctx.say(render_bundle(bundle, summary, problem))
    return EXIT_OK


def cmd_bundle_download(args: argparse.Namespace, ctx: Context) -> int:
    bundle, _manifest = ctx.client.get_bundle(args.id)
    if bundle.expired_at_unix_ms:
        raise CtlError(
            f"bundle {args.id} not saved: it expired by retention at {format_time(bundle.expired_at_unix_ms)} "
            "(its bytes were deleted; 'collectorctl bundle show' still has its metadata)", EXIT_FAILED,
        )
    target = target_path(args.output, bundle, args.id)
    progress = ProgressBar(ctx.err, bundle.size_bytes, enabled=ctx.interactive)
    try:
        result = download_bundle(ctx.client, bundle, target, force=args.force, progress=progress)
    except TargetExists:
        raise
    except CtlError as exc:
        raise CtlError(f"bundle {args.id} not saved: {exc.message}", exc.exit_code) from None
    finally:
        progress.finish()  # an error message must not start on the bar's line
    if ctx.json:
        ctx.emit({"path": result.path, "bundle_id": result.bundle_id, "size_bytes": result.size_bytes,
                  "sha256": result.sha256, "members_verified": result.members, "resumed": result.resumed})
    else:
        ctx.say(format_fields([
            ("bundle", result.path),
            ("id", result.bundle_id),
            ("size", f"{result.size_bytes} bytes"),
            ("sha256", f"{result.sha256} (matches the collector's record)"),
            ("members", f"{result.members} verified against the manifest"),
        ]))
    return EXIT_OK


def cmd_agents_list(args: argparse.Namespace, ctx: Context) -> int:
    agents = ctx.client.list_agents(include_disconnected=args.all)
    now = ctx.clock()
    if ctx.json:
        ctx.emit([agent_to_dict(a, now) for a in agents])
    else:
        ctx.say(render_agents(agents, now))
    return EXIT_OK


_ROLE_VALUE: dict[str, int] = {
    "viewer": admin_pb2.TOKEN_ROLE_VIEWER,
    "responder": admin_pb2.TOKEN_ROLE_RESPONDER,
    "admin": admin_pb2.TOKEN_ROLE_ADMIN,
    "alertmanager": admin_pb2.TOKEN_ROLE_ALERTMANAGER,
}
_ROLE_NAME: dict[int, str] = {v: k for k, v in _ROLE_VALUE.items()}
_OUTCOME_NAME: dict[int, str] = {
    admin_pb2.AUDIT_OUTCOME_OK: "ok",
    admin_pb2.AUDIT_OUTCOME_ERROR: "error",
    admin_pb2.AUDIT_OUTCOME_DENIED: "denied",
}


def _iso_or_none(unix_ms: int) -> str | None:
    return format_time(unix_ms) if unix_ms else None


def token_to_dict(t: admin_pb2.ApiToken) -> dict[str, Any]:
    return {
        "id": t.id, "name": t.name, "role": _ROLE_NAME.get(t.role, "unknown"),
        "created_at": format_time(t.created_at_unix_ms), "revoked_at": _iso_or_none(t.revoked_at_unix_ms),
        "last_used_at": _iso_or_none(t.last_used_at_unix_ms),
    }


def audit_to_dict(e: admin_pb2.AuditEvent) -> dict[str, Any]:
    return {
        "seq": e.seq, "at": format_time(e.at_unix_ms), "token_id": e.token_id, "token_name": e.token_name,
        "role": _ROLE_NAME.get(e.role, ""), "action": e.action, "target": e.target, "peer": e.peer,
        "outcome": _OUTCOME_NAME.get(e.outcome, "unknown"), "detail": e.detail,
    }


def cmd_token_create(args: argparse.Namespace, ctx: Context) -> int:
    token, secret = ctx.client.create_token(args.name, _ROLE_VALUE[args.role])
    if ctx.json:
        ctx.emit({**token_to_dict(token), "secret": secret})
    else:
        ctx.say(secret)
        if ctx.interactive:
            print(f"{_ROLE_NAME.get(token.role, '?')} token {clean(token.name)!r} (id {token.id}) created; "
                  "the line above is its secret, shown only this once", file=ctx.err)
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace, ctx: Context) -> int:
    tokens = ctx.client.list_tokens(include_revoked=args.all)
    if ctx.json:
        ctx.emit([token_to_dict(t) for t in tokens])
        return EXIT_OK
    rows = [
        (t.id, clean(t.name), _ROLE_NAME.get(t.role, "?"), format_time(t.created_at_unix_ms),
         format_time(t.last_used_at_unix_ms) if t.last_used_at_unix_ms else "never",
         format_time(t.revoked_at_unix_ms) if t.revoked_at_unix_ms else "-")
        for t in tokens
    ]
    ctx.say(format_table(("ID", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED"), rows) if rows else "no tokens")
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace, ctx: Context) -> int:
    token = ctx.client.revoke_token(args.name_or_id)
    if ctx.json:
        ctx.emit(token_to_dict(token))
    else:
        ctx.say(f"token {clean(token.name)!r} (id {token.id}) revoked at {format_time(token.revoked_at_unix_ms)}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, ctx: Context) -> int:
    since_ms = parse_since(args.since, ctx.clock()) if args.since else 0
    events = ctx.client.list_audit_events(since_ms, args.limit or 0)
    if ctx.json:
        ctx.emit([audit_to_dict(e) for e in events])
        return EXIT_OK
    rows = [
        (format_time(e.at_unix_ms),
         f"{clean(e.token_name)} ({_ROLE_NAME.get(e.role, '?')})" if e.token_name else "-",
         clean(e.action), clean(e.target) or "-", clean(e.peer) or "-", _OUTCOME_NAME.get(e.outcome, "?"),
         clean(_one_line(e.detail)))
        for e in events
    ]
    ctx.say(format_table(("TIME", "WHO", "ACTION", "TARGET", "PEER", "OUTCOME", "DETAIL"), rows)
            if rows else "no audit entries")
    return EXIT_OK


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now_s: float) -> int:
    """``30m``, ``2h``, ``7d`` (before now) or an ISO 8601 time → Unix ms; ``ValueError`` otherwise."""
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match:
        return int((now_s - float(match.group(1)) * _UNIT_S[match.group(2)]) * 1000)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected a duration (30m, 2h, 7d) or an ISO 8601 time, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def since_arg(text: str) -> str:
    try:
        parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# --------------------------------------------------------------------------
# Arguments


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """Raises instead of exiting, so :func:`main` prints to its own streams and returns 2."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


def parse_severity(text: str) -> int:
    """``P1``..``P4`` (any case) or ``1``..``4``."""
    value = text.strip().upper().removeprefix("P")
    if value in ("1", "2", "3", "4"):
        return int(value)
    raise argparse.ArgumentTypeError(f"invalid severity {text!r} (choose P1, P2, P3 or P4)")


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (the value may be empty or hold more ``=``)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if not key.strip():
        raise argparse.ArgumentTypeError(f"the label name is empty in {text!r}")
    return key.strip(), value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _common() -> _Parser:
    """Options every command takes, before or after the command words.

    Defaults are SUPPRESS so a value given before the command words is not
    reset by the subcommand's parser; :func:`_resolve` fills the defaults.
    """
    p = _Parser(add_help=False)
    p.add_argument("--collector", metavar="HOST:PORT", default=argparse.SUPPRESS,
                   help=f"collector gRPC address (default: ${ENV_COLLECTOR}, else {DEFAULT_COLLECTOR})")
    p.add_argument("--ca-file", metavar="PEM", default=argparse.SUPPRESS,
                   help=f"connect with TLS, trusting this CA (default: ${ENV_CA_FILE}; none: plaintext)")
    p.add_argument("--token", metavar="TOKEN", default=argparse.SUPPRESS,
                   help=f"API token (default: ${ENV_TOKEN}); --token-file keeps it out of the process list")
    p.add_argument("--token-file", metavar="PATH", default=argparse.SUPPRESS,
                   help="read the API token from this file")
    p.add_argument("--timeout", metavar="SECONDS", type=positive_float, default=argparse.SUPPRESS,
                   help=f"how long to wait for the connection (default {DEFAULT_CONNECT_TIMEOUT_S:g})")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print one JSON object (an array for lists) on stdout")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="collectorctl", parents=[common],
                     description="hostdiag: run incidents, download bundles, see the fleet")
    parser.add_argument("--version", action="version", version=f"collectorctl {hostdiag.__version__}")
    groups = parser.add_subparsers(dest="group", required=True, metavar="{incident,bundle,agents,token,audit,pki}")

    incident = groups.add_parser("incident", help="open, follow and close incidents")
    isub = incident.add_subparsers(dest="command", required=True)

    p = isub.add_parser("open", parents=[common], help="open an incident and request snapshots",
                        description="Open an incident; the collector asks every selected host for a bundle. "
                                    "Select hosts with --select and/or --host (at least one).")
    p.add_argument("--title", required=True, type=nonempty, help="what is wrong, in a few words")
    p.add_argument("--severity", required=True, type=parse_severity, metavar="P1..P4",
                   help="runbook severity: P1 critical .. P4 low")
    p.add_argument("--service", metavar="NAME", help="affected service")
    p.add_argument("--select", action="append", type=parse_label, metavar="KEY=VALUE",
                   help="select hosts whose labels include KEY=VALUE (repeat: all must match)")
    p.add_argument("--host", action="append", type=nonempty, metavar="NAME", help="select a host by id (repeat)")
    p.add_argument("--window", type=positive_float, metavar="SECONDS",
                   help="recorder history to include (default: the collector's)")
    p.add_argument("--profile", metavar="NAME", help="snapshot profile the agents define (default: default)")
    p.set_defaults(func=cmd_incident_open)

    p = isub.add_parser("list", parents=[common], help="list incidents, newest first")
    p.add_argument("--state", choices=tuple(_INCIDENT_STATE_VALUE), help="only incidents in this state")
    p.add_argument("--overdue", action="store_true",
                   help="only unresolved incidents with a runbook timer breached (ack, P1 unresolved, P1 update)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="at most N incidents (default: the collector's, 100)")
    p.set_defaults(func=cmd_incident_list)

    p = isub.add_parser("show", parents=[common], help="an incident: hosts, bundles, timeline")
    p.add_argument("id", type=nonempty, metavar="ID")
    p.set_defaults(func=cmd_incident_show)

    p = isub.add_parser("ack", parents=[common], help="acknowledge an incident")
    p.add_argument("id", type=nonempty, metavar="ID")
    p.set_defaults(func=cmd_incident_ack)

    p = isub.add_parser("update", parents=[common], help="post a status update")
    p.add_argument("id", type=nonempty, metavar="ID")
    p.add_argument("--message", "-m", required=True, type=nonempty, help="the update")
    p.set_defaults(func=cmd_incident_update)

    p = isub.add_parser("resolve", parents=[common], help="resolve an incident")
    p.add_argument("id", type=nonempty, metavar="ID")
    p.add_argument("--message", "-m", type=nonempty, help="how it was resolved")
    p.set_defaults(func=cmd_incident_resolve)

    p = isub.add_parser("severity", parents=[common], help="set an incident's severity (a responder's decision)",
                        description="Set the severity; the timeline records who changed it and why, and the "
                                    "runbook's acknowledge timer restarts. Suggestions never change it by themselves.")
    p.add_argument("id", type=nonempty, metavar="ID")
    p.add_argument("severity", type=parse_severity, metavar="P1..P4", help="the new severity")
    p.add_argument("--reason", "-r", type=nonempty, help="why (recorded in the timeline)")
    p.set_defaults(func=cmd_incident_severity)

    bundle = groups.add_parser("bundle", help="list, inspect and download bundles")
    bsub = bundle.add_subparsers(dest="command", required=True)

    p = bsub.add_parser("list", parents=[common], help="list stored bundles, newest first")
    p.add_argument("--incident", metavar="ID", help="only bundles of this incident")
    p.add_argument("--host", metavar="NAME", help="only bundles of this host")
    p.add_argument("--limit", type=positive_int, metavar="N", help="at most N bundles (default: the collector's, 100)")
    p.set_defaults(func=cmd_bundle_list)

    p = bsub.add_parser("show", parents=[common], help="a bundle's metadata and manifest summary")
    p.add_argument("id", type=nonempty, metavar="ID")
    p.set_defaults(func=cmd_bundle_show)

    p = bsub.add_parser("download", parents=[common], help="download a bundle and verify it",
                        description="Download a bundle, check its sha256 and every member against its manifest, "
                                    "and only then put it in place.")
    p.add_argument("id", type=nonempty, metavar="ID")
    p.add_argument("--output", "-o", metavar="PATH",
                   help="file or existing directory (default: ./<host>-<time>-<id>.tar.zst)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_bundle_download)

    agents = groups.add_parser("agents", help="agents the collector knows")
    asub = agents.add_subparsers(dest="command", required=True)
    p = asub.add_parser("list", parents=[common], help="connected agents (--all: also those seen before)")
    p.add_argument("--all", action="store_true", help="include agents not connected now")
    p.set_defaults(func=cmd_agents_list)

    token = groups.add_parser("token", help="API tokens (admin role)")
    tsub = token.add_subparsers(dest="command", required=True)
    p = tsub.add_parser("create", parents=[common], help="make a token; its secret is printed once",
                        description="Make an API token. Its secret is printed once on stdout and cannot be shown "
                                    "again; the collector keeps only its hash.")
    p.add_argument("--role", required=True, choices=tuple(_ROLE_VALUE), help="what the token may do")
    p.add_argument("--name", required=True, type=nonempty, help="who or what holds it (unique among valid tokens)")
    p.set_defaults(func=cmd_token_create)
    p = tsub.add_parser("list", parents=[common], help="tokens (never their secrets)")
    p.add_argument("--all", action="store_true", help="include revoked tokens")
    p.set_defaults(func=cmd_token_list)
    p = tsub.add_parser("revoke", parents=[common], help="revoke a token at once")
    p.add_argument("name_or_id", type=nonempty, metavar="NAME_OR_ID")
    p.set_defaults(func=cmd_token_revoke)

    p = groups.add_parser("audit", parents=[common], help="the audit log (admin role)",
                          description="Who did what, when, from where: every call to the collector's API, "
                                      "allowed or denied, oldest first.")
    p.add_argument("--since", type=since_arg, metavar="DURATION_OR_TIME",
                   help="only entries from this long ago (30m, 2h, 7d) or since this ISO 8601 time")
    p.add_argument("--limit", type=positive_int, metavar="N", help="at most the N newest entries (default 100)")
    p.set_defaults(func=cmd_audit)
    pki.add_commands(groups)
    return parser


@dataclass(frozen=True)
class Options:
    collector: str
    timeout_s: float
    json: bool
    ca_file: str = ""
    token: str = field(default="", repr=False)


def resolve_options(args: argparse.Namespace, env: Mapping[str, str]) -> Options:
    """The common options with their defaults; raises ``_UsageError`` for a bad address."""
    if getattr(args, "collector", None):
        address, origin = args.collector, "argument --collector"
    elif env.get(ENV_COLLECTOR):
        address, origin = env[ENV_COLLECTOR], ENV_COLLECTOR
    else:
        address, origin = DEFAULT_COLLECTOR, "default"
    address = address.strip()
    try:
        _host, port = split_host_port(address)
    except ValueError as exc:
        raise _UsageError(args.parser, f"{origin}: {exc}") from None
    if port == 0:
        raise _UsageError(args.parser, f"{origin}: port 0 is not an address to connect to")
    return Options(collector=address, timeout_s=getattr(args, "timeout", DEFAULT_CONNECT_TIMEOUT_S),
                   json=bool(getattr(args, "json", False)),
                   ca_file=getattr(args, "ca_file", None) or env.get(ENV_CA_FILE, ""), token=_token(args, env))


def _token(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The API token: --token, else --token-file, else $HOSTDIAG_TOKEN; "" when none is given."""
    if getattr(args, "token", None):
        return str(args.token).strip()
    path = getattr(args, "token_file", None)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(4096).strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable text"
            raise _UsageError(args.parser, f"argument --token-file: cannot read {path}: {reason}") from None
        if not text:
            raise _UsageError(args.parser, f"argument --token-file: {path} is empty")
        return text
    return env.get(ENV_TOKEN, "").strip()


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Rules argparse cannot say on its own."""
    if args.func is cmd_incident_open:
        if not args.select and not args.host:
            raise _UsageError(args.parser, "name the hosts: give at least one --select KEY=VALUE or --host NAME")
        seen: set[str] = set()
        for key, _value in args.select or []:
            if key in seen:
                raise _UsageError(args.parser, f"argument --select: label {key!r} given twice")
            seen.add(key)


def _leaf_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The subcommand parser that parsed ``args`` (for usage lines in errors)."""
    node = parser
    for dest in ("group", "command"):
        word = getattr(args, dest, None)
        actions = [a for a in node._actions if isinstance(a, argparse._SubParsersAction)]
        if not word or not actions:
            break
        node = actions[0].choices.get(word, node)
    return node


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None, *,
         env: Mapping[str, str] | None = None, client_factory: Callable[[Options], _Client] | None = None,
         clock: Callable[[], float] = time.time) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    env = os.environ if env is None else env
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        args.parser = _leaf_parser(parser, args)
        _check(args, parser)
        options = resolve_options(args, env)
    except _UsageError as exc:
        err.write(exc.parser.format_usage())
        err.write(f"{exc.parser.prog}: error: {exc.message}\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else EXIT_USAGE

    def make_client() -> _Client:
        if client_factory is not None:
            return client_factory(options)
        return CollectorClient(options.collector, connect_timeout_s=options.timeout_s, ca_file=options.ca_file,
                               token=options.token)

    ctx = Context(out=out, err=err, json=options.json, make_client=make_client, clock=clock)
    try:
        return int(args.func(args, ctx))
    except CtlError as exc:
        err.write(f"collectorctl: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        err.write("collectorctl: interrupted\n")
        return 130
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
