"""The collector's storage interfaces and the records that cross them.

Two small interfaces keep the rest of the collector independent of where
things live:

- :class:`MetadataStore` holds agents, incidents, host requests, timeline
  events, bundle rows and in-progress upload rows.  Every method is one
  transaction: a caller never sees half of a change.  The embedded default is
  :class:`hostdiag.collector.store.sqlite.SqliteMetadataStore`; a PostgreSQL
  one can follow behind the same methods.
- :class:`BlobStore` holds bundle files addressed by their sha256.  The
  embedded default is :class:`hostdiag.collector.store.blobs.FileBlobStore`;
  an S3-compatible one can follow.

Partial uploads are not behind an interface: they are always staged on the
local disk of the collector that receives them
(:class:`hostdiag.collector.store.blobs.StagingArea`).

Times are integer milliseconds since the Unix epoch (``*_ms``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "AgentRecord",
    "IncidentRecord",
    "HostRequestRecord",
    "TimelineEventRecord",
    "BundleRecord",
    "UploadRecord",
    "EvidenceRecord",
    "EscalationRecord",
    "AlertRecord",
    "TokenRecord",
    "AuditRecord",
    "MetadataStore",
    "BlobStore",
    "IncidentStates",
    "RequestStates",
]


class IncidentStates:
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    ALL = (OPEN, ACKNOWLEDGED, RESOLVED)


class RequestStates:
    REQUESTED = "requested"
    ACKNOWLEDGED = "acknowledged"
    UPLOADING = "uploading"
    ATTACHED = "attached"
    FAILED = "failed"
    EXPIRED = "expired"
    ALL = (REQUESTED, ACKNOWLEDGED, UPLOADING, ATTACHED, FAILED, EXPIRED)
    # Still waiting for the agent: these can be delivered and can expire.
    PENDING = (REQUESTED, ACKNOWLEDGED, UPLOADING)
    FINAL = (ATTACHED, FAILED, EXPIRED)


@dataclass(frozen=True)
class AgentRecord:
    host_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    agent_version: str = ""
    profiles: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    max_window_s: float = 0.0
    boot_id: str = ""
    peer: str = ""
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    connected_at_ms: int = 0


@dataclass(frozen=True)
class IncidentRecord:
    id: str
    title: str
    severity: int
    service: str
    state: str
    selector_labels: Mapping[str, str]
    selector_host_ids: tuple[str, ...]
    window_s: float
    profile: str
    opened_at_ms: int
    opened_by: str = ""
    acknowledged_at_ms: int = 0
    resolved_at_ms: int = 0
    # When the current severity was set (opening or the last change): the
    # runbook's acknowledge timer runs from here.
    severity_set_at_ms: int = 0
    last_status_update_at_ms: int = 0
    # Alertmanager's groupKey when a webhook opened the incident.
    alert_group_key: str = ""


@dataclass(frozen=True)
class HostRequestRecord:
    request_id: str
    incident_id: str
    host_id: str
    state: str
    created_at_ms: int
    updated_at_ms: int
    expires_at_ms: int
    reason: str = ""
    bundle_id: str = ""
    sent_at_ms: int = 0


@dataclass(frozen=True)
class TimelineEventRecord:
    incident_id: str
    at_ms: int
    kind: str
    message: str
    host_id: str = ""
    actor: str = ""


@dataclass(frozen=True)
class BundleRecord:
    bundle_id: str
    host_id: str
    size_bytes: int
    sha256: str
    received_at_ms: int
    manifest_json: str
    created_at_ms: int = 0
    incident_id: str = ""
    request_id: str = ""
    profile: str = ""
    trigger: str = ""
    # evidence.json as kept for the signal rules: publish_bundle writes it to its own
    # table; bundle reads leave it empty (see evidence_for_incident).
    evidence_json: str = ""
    # When retention deleted the bundle's blob (the row stays); 0 while it is kept.
    expired_at_ms: int = 0


@dataclass(frozen=True)
class EvidenceRecord:
    """The evidence kept for one stored bundle (what the signal rules read)."""

    bundle_id: str
    host_id: str
    incident_id: str
    received_at_ms: int
    evidence_json: str


@dataclass(frozen=True)
class UploadRecord:
    """An upload the collector has started receiving.

    ``state`` is ``"receiving"`` while chunks arrive; ``"verified"`` once the
    finished file passed every check and ``bundle`` holds the row about to be
    published.  A verified upload found at start-up is published then (the
    crash came between the checks and the bundle row).
    """

    bundle_id: str
    started_at_ms: int
    updated_at_ms: int
    request_id: str = ""
    incident_id: str = ""
    state: str = "receiving"
    bundle: BundleRecord | None = None


@dataclass(frozen=True)
class EscalationRecord:
    """A breach of the runbook's clock (see :mod:`hostdiag.collector.runbook`).

    ``due_at_ms`` is the deadline that was missed; with the incident and the
    kind it identifies the breach, so re-evaluating (after a restart, say)
    never records it twice.  ``seq`` is assigned by the store.
    """

    incident_id: str
    kind: str
    at_ms: int
    due_at_ms: int
    message: str
    severity: int = 0
    notified: bool = False
    seq: int = 0


@dataclass(frozen=True)
class AlertRecord:
    """One Alertmanager alert (by fingerprint) seen on an incident."""

    incident_id: str
    fingerprint: str
    alertname: str
    status: str
    first_seen_ms: int
    last_seen_ms: int


@dataclass(frozen=True)
class TokenRecord:
    """An API token: only the sha256 of its secret is kept (see :mod:`hostdiag.collector.auth`).

    ``token_id`` is a short prefix of that hash, used to name the token in
    listings and the audit log; it does not reveal the secret.
    """

    token_id: str
    name: str
    role: str
    token_sha256: str
    created_at_ms: int
    revoked_at_ms: int = 0
    last_used_at_ms: int = 0


@dataclass(frozen=True)
class AuditRecord:
    """One entry of the append-only audit log: who did what, to which object, from where.

    ``outcome`` is ``ok`` (the call was allowed and answered), ``error`` (allowed,
    but it failed; ``detail`` says how) or ``denied`` (no valid token, or too
    small a role).  ``seq`` is assigned by the store.
    """

    at_ms: int
    action: str
    outcome: str
    token_id: str = ""
    token_name: str = ""
    role: str = ""
    target: str = ""
    peer: str = ""
    detail: str = ""
    seq: int = 0


@runtime_checkable
class MetadataStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # agents
    async def upsert_agent(self, agent: AgentRecord) -> None: ...

    async def touch_agent(self, host_id: str, last_seen_ms: int) -> None: ...

    async def get_agent(self, host_id: str) -> AgentRecord | None: ...

    async def list_agents(self) -> list[AgentRecord]: ...

    # incidents, host requests and their timeline
    async def create_incident(
        self, incident: IncidentRecord, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]
    ) -> None: ...

    async def update_incident(self, incident: IncidentRecord, events: Sequence[TimelineEventRecord]) -> None: ...

    async def get_incident(self, incident_id: str) -> IncidentRecord | None: ...

    async def list_incidents(self, state: str | None, limit: int) -> list[IncidentRecord]: ...

    async def unresolved_incidents(self) -> list[IncidentRecord]: ...

    async def add_requests(
        self, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]
    ) -> None: ...

    # update_requests and publish_bundle return an awaitable (an ``async def`` fits): an
    # implementation whose awaitable is an already queued future lets the incident
    # manager release its lock before waiting for the commit (see incidents.py).
    def update_requests(
        self, requests: Sequence[HostRequestRecord], events: Sequence[TimelineEventRecord]
    ) -> Awaitable[None]: ...

    async def get_request(self, request_id: str) -> HostRequestRecord | None: ...

    async def list_requests(self, incident_id: str) -> list[HostRequestRecord]: ...

    async def requests_for_host(self, host_id: str, states: Iterable[str]) -> list[HostRequestRecord]: ...

    async def requests_expired(self, now_ms: int, states: Iterable[str]) -> list[HostRequestRecord]: ...

    async def list_events(self, incident_id: str) -> list[TimelineEventRecord]: ...

    async def find_unresolved_by_group_key(self, group_key: str) -> IncidentRecord | None:
        """The newest unresolved incident opened for this Alertmanager group key."""
        ...

    # runbook breaches
    async def add_escalations(
        self, escalations: Sequence[EscalationRecord], events: Sequence[TimelineEventRecord]
    ) -> list[EscalationRecord]:
        """Insert the breaches not recorded yet (same incident, kind and
        ``due_at_ms``) and, for each one inserted, the event at the same index
        — one transaction.  Returns the inserted ones with their ``seq``."""
        ...

    async def list_escalations(self, incident_id: str) -> list[EscalationRecord]: ...

    async def unnotified_escalations(self) -> list[EscalationRecord]:
        """Breaches of unresolved incidents the outgoing webhook has not accepted yet."""
        ...

    async def mark_escalation_notified(self, seq: int) -> None: ...

    # Alertmanager alerts seen per incident
    async def list_alerts(self, incident_id: str) -> list[AlertRecord]: ...

    async def put_alerts(self, alerts: Sequence[AlertRecord], events: Sequence[TimelineEventRecord]) -> None:
        """Insert or update (by incident and fingerprint) and append events — one transaction."""
        ...

    # uploads and bundles
    async def put_upload(self, upload: UploadRecord) -> None: ...

    async def get_upload(self, bundle_id: str) -> UploadRecord | None: ...

    async def list_uploads(self) -> list[UploadRecord]: ...

    async def delete_upload(self, bundle_id: str) -> None: ...

    def publish_bundle(
        self,
        bundle: BundleRecord,
        requests: Sequence[HostRequestRecord],
        events: Sequence[TimelineEventRecord],
    ) -> Awaitable[bool]:
        """Insert the bundle row, delete its upload row, apply the request
        changes and events — one transaction.  False if the row existed."""
        ...

    async def get_bundle(self, bundle_id: str) -> BundleRecord | None: ...

    async def list_bundles(self, incident_id: str, host_id: str, limit: int) -> list[BundleRecord]: ...

    async def bundle_ids_for_incident(self, incident_id: str) -> list[str]: ...

    async def count_incidents(self) -> dict[str, int]:
        """Number of incidents in each state."""
        ...

    async def count_requests(self) -> dict[str, int]:
        """Number of host requests in each state."""
        ...

    async def count_incidents_by_severity(self) -> dict[tuple[str, int], int]:
        """Incident counts by (state, severity)."""
        ...

    async def retention_candidates(self) -> list[tuple[BundleRecord, bool]]:
        """Bundles whose blob is kept, oldest first, each with whether an unresolved incident holds it."""
        ...

    async def expire_bundles(self, bundle_ids: Sequence[str], at_ms: int) -> tuple[list[BundleRecord], list[str]]:
        """Mark bundles expired (never a held one) with timeline events; (expired, digests to delete)."""
        ...

    async def referenced_digests(self) -> set[str]:
        """Every sha256 a bundle row or a verified upload refers to."""
        ...

    # severity signals
    async def evidence_for_incident(self, incident_id: str) -> list[EvidenceRecord]:
        """The kept evidence of the incident's bundles, oldest received first."""
        ...

    async def get_suggestion(self, incident_id: str) -> str | None:
        """The incident's stored severity suggestion (JSON), if it was evaluated."""
        ...

    async def put_suggestion(
        self, incident_id: str, severity: int, evaluated_at_ms: int, suggestion_json: str,
        events: Sequence[TimelineEventRecord],
    ) -> None:
        """Replace the incident's suggestion and append events — one transaction."""
        ...

    # API tokens and the audit log
    async def create_token(self, token: TokenRecord, audit: Sequence[AuditRecord] = ()) -> None:
        """Insert a token; ``ValueError`` when an unrevoked token has its name."""
        ...

    async def token_by_sha256(self, token_sha256: str) -> TokenRecord | None: ...

    async def list_tokens(self, include_revoked: bool) -> list[TokenRecord]: ...

    async def revoke_token(
        self, name_or_id: str, at_ms: int, audit: Sequence[AuditRecord] = ()
    ) -> TokenRecord | None:
        """Revoke the unrevoked token with this name or id; None when there is none."""
        ...

    async def add_audit(self, events: Sequence[AuditRecord], used_token_id: str = "", used_at_ms: int = 0) -> None:
        """Append audit entries (and note when the token was last used) — one transaction."""
        ...

    async def list_audit(self, since_ms: int, limit: int) -> list[AuditRecord]:
        """The newest ``limit`` entries at or after ``since_ms``, oldest first."""
        ...


@runtime_checkable
class BlobStore(Protocol):
    async def publish_file(self, sha256: str, path: str) -> None:
        """Move the finished file at ``path`` in under ``sha256``, durably.

        When a blob with that digest already exists the file is removed."""
        ...

    async def exists(self, sha256: str) -> bool: ...

    async def size(self, sha256: str) -> int:
        """Size in bytes; ``FileNotFoundError`` when absent."""
        ...

    async def read(self, sha256: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end)."""
        ...

    async def delete(self, sha256: str) -> None: ...

    async def list_digests(self) -> list[str]: ...
