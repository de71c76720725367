"""``IncidentService``, ``BundleService`` and ``FleetService``.

Thin adapters: they check request fields, call the incident manager or the
stores, and turn records into messages.  Errors are precise statuses:
INVALID_ARGUMENT naming the field, NOT_FOUND for an unknown id,
FAILED_PRECONDITION for a change a resolved incident no longer allows,
OUT_OF_RANGE for a download offset past the end.

Who made a change (``actor`` in the timeline) is the API token's name
(:func:`hostdiag.collector.auth.current_identity`); with ``auth = "none"``
it is the optional, unverified ``hostdiag-actor`` request metadata.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from hostdiag.collector.auth import current_identity
from hostdiag.collector.errors import CollectorError
from hostdiag.collector.fleet import Fleet
from hostdiag.collector.incidents import IncidentManager, IncidentView
from hostdiag.collector.retention import expired_message
from hostdiag.collector.signals.proto import suggestion_json_to_proto
from hostdiag.collector.store.base import (
    BlobStore,
    BundleRecord,
    IncidentStates,
    MetadataStore,
    RequestStates,
)
from hostdiag.collector.store.blobs import is_bundle_id
from hostdiag.v1 import (
    bundle_pb2,
    bundle_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    incident_pb2,
    incident_pb2_grpc,
)

__all__ = [
    "IncidentServicer",
    "BundleServicer",
    "FleetServicer",
    "incident_to_proto",
    "bundle_to_proto",
    "DOWNLOAD_CHUNK_BYTES",
]

log = logging.getLogger("hostdiag.collector.api")

DOWNLOAD_CHUNK_BYTES = 1024 * 1024
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
ACTOR_METADATA = "hostdiag-actor"

_INCIDENT_STATE = {
    IncidentStates.OPEN: incident_pb2.INCIDENT_STATE_OPEN,
    IncidentStates.ACKNOWLEDGED: incident_pb2.INCIDENT_STATE_ACKNOWLEDGED,
    IncidentStates.RESOLVED: incident_pb2.INCIDENT_STATE_RESOLVED,
}
_INCIDENT_STATE_NAME = {v: k for k, v in _INCIDENT_STATE.items()}
_REQUEST_STATE = {
    RequestStates.REQUESTED: incident_pb2.HOST_REQUEST_STATE_REQUESTED,
    RequestStates.ACKNOWLEDGED: incident_pb2.HOST_REQUEST_STATE_ACKNOWLEDGED,
    RequestStates.UPLOADING: incident_pb2.HOST_REQUEST_STATE_UPLOADING,
    RequestStates.ATTACHED: incident_pb2.HOST_REQUEST_STATE_ATTACHED,
    RequestStates.FAILED: incident_pb2.HOST_REQUEST_STATE_FAILED,
    RequestStates.EXPIRED: incident_pb2.HOST_REQUEST_STATE_EXPIRED,
}


def incident_to_proto(view: IncidentView) -> incident_pb2.Incident:
    inc = view.incident
    return incident_pb2.Incident(
        id=inc.id,
        title=inc.title,
        severity=inc.severity,  # type: ignore[arg-type]
        service=inc.service,
        state=_INCIDENT_STATE[inc.state],
        selector=incident_pb2.HostSelector(labels=dict(inc.selector_labels), host_ids=list(inc.selector_host_ids)),
        window_seconds=inc.window_s,
        opened_at_unix_ms=inc.opened_at_ms,
        acknowledged_at_unix_ms=inc.acknowledged_at_ms,
        resolved_at_unix_ms=inc.resolved_at_ms,
        hosts=[
            incident_pb2.HostRequest(
                host_id=r.host_id,
                request_id=r.request_id,
                state=_REQUEST_STATE[r.state],
                reason=r.reason,
                bundle_id=r.bundle_id,
                updated_at_unix_ms=r.updated_at_ms,
                expires_at_unix_ms=r.expires_at_ms,
            )
            for r in view.requests
        ],
        timeline=[
            incident_pb2.TimelineEvent(
                at_unix_ms=e.at_ms, kind=e.kind, message=e.message, host_id=e.host_id, actor=e.actor
            )
            for e in view.events
        ],
        bundle_ids=view.bundle_ids,
        opened_by=inc.opened_by,
        escalations=[
            incident_pb2.Escalation(kind=e.kind, at_unix_ms=e.at_ms, message=e.message, notified=e.notified)
            for e in view.escalations
        ],
        last_status_update_at_unix_ms=inc.last_status_update_at_ms,
        alert_group_key=inc.alert_group_key,
        severity_set_at_unix_ms=inc.severity_set_at_ms,
        suggestion=suggestion_json_to_proto(view.suggestion_json),
    )


def bundle_to_proto(b: BundleRecord) -> bundle_pb2.Bundle:
    return bundle_pb2.Bundle(
        bundle_id=b.bundle_id,
        host_id=b.host_id,
        incident_id=b.incident_id,
        request_id=b.request_id,
        size_bytes=b.size_bytes,
        sha256=b.sha256,
        created_at_unix_ms=b.created_at_ms,
        received_at_unix_ms=b.received_at_ms,
        profile=b.profile,
        trigger=b.trigger,
        expired_at_unix_ms=b.expired_at_ms,
    )


def _actor(context: Any) -> str:
    identity = current_identity()
    if identity is not None:
        return identity.name
    for key, value in context.invocation_metadata() or ():
        if key == ACTOR_METADATA and isinstance(value, str):
            return value[:128]
    return ""


def _limit(value: int) -> int:
    if value < 0:
        raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, "limit: must not be negative")
    return min(value or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)


async def _abort(context: Any, exc: CollectorError) -> None:
    await context.abort(exc.code, exc.message)


class IncidentServicer(incident_pb2_grpc.IncidentServiceServicer):
    def __init__(self, incidents: IncidentManager) -> None:
        self.incidents = incidents

    async def OpenIncident(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            view = await self.incidents.open(
                title=request.title,
                severity=int(request.severity),
                service=request.service,
                selector_labels=dict(request.selector.labels),
                selector_host_ids=list(request.selector.host_ids),
                window_s=request.window_seconds,
                profile=request.profile,
                actor=_actor(context),
            )
        except CollectorError as exc:
            await _abort(context, exc)
        return incident_pb2.OpenIncidentResponse(incident=incident_to_proto(view))

    async def ListIncidents(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            state = None
            if request.state != incident_pb2.INCIDENT_STATE_UNSPECIFIED:
                if request.state not in _INCIDENT_STATE_NAME:
                    raise CollectorError(grpc.StatusCode.INVALID_ARGUMENT, f"state: unknown value {request.state}")
                state = _INCIDENT_STATE_NAME[request.state]
            views = await self.incidents.list(state, _limit(request.limit), overdue=request.overdue)
        except CollectorError as exc:
            await _abort(context, exc)
        return incident_pb2.ListIncidentsResponse(incidents=[incident_to_proto(v) for v in views])

    async def GetIncident(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            view = await self.incidents.get(request.id)
        except CollectorError as exc:
            await _abort(context, exc)
        return incident_pb2.GetIncidentResponse(incident=incident_to_proto(view))

    async def AcknowledgeIncident(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            view = await self.incidents.acknowledge(request.id, actor=_actor(context))
        except CollectorError as exc:
            await _abort(context, exc)
        return incident_pb2.AcknowledgeIncidentResponse(incident=incident_to_proto(view))

    async def PostStatusUpdate(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            view = await self.incidents.post_status_update(request.id, request.message, actor=_actor(context))
        except CollectorError as exc:
            await _abort(context, exc)
        return incident_pb2.PostStatusUpdateResponse(incident=incident_to_proto(view))

    async def ResolveIncident(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            view = await self.incidents.resolve(request.id, request.message, actor=_actor(context))
        except CollectorError as exc:
            await _abort(context, exc)
        return incident_pb2.ResolveIncidentResponse(incident=incident_to_proto(view))

    async def SetIncidentSeverity(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            view = await self.incidents.set_severity(
                request.id, int(request.severity), request.reason, actor=_actor(context)
            )
        except CollectorError as exc:
            await _abort(context, exc)
        return incident_pb2.SetIncidentSeverityResponse(incident=incident_to_proto(view))


class BundleServicer(bundle_pb2_grpc.BundleServiceServicer):
    def __init__(self, store: MetadataStore, blobs: BlobStore) -> None:
        self.store = store
        self.blobs = blobs

    async def _bundle(self, bundle_id: str) -> BundleRecord:
        if not is_bundle_id(bundle_id):
            raise CollectorError(
                grpc.StatusCode.INVALID_ARGUMENT, f"bundle_id: not a bundle id (a UUID): {bundle_id[:80]!r}"
            )
        bundle = await self.store.get_bundle(bundle_id)
        if bundle is None:
            raise CollectorError(grpc.StatusCode.NOT_FOUND, f"no bundle with id {bundle_id}")
        return bundle

    async def ListBundles(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            bundles = await self.store.list_bundles(request.incident_id, request.host_id, _limit(request.limit))
        except CollectorError as exc:
            await _abort(context, exc)
        return bundle_pb2.ListBundlesResponse(bundles=[bundle_to_proto(b) for b in bundles])

    async def GetBundle(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            bundle = await self._bundle(request.bundle_id)
        except CollectorError as exc:
            await _abort(context, exc)
        return bundle_pb2.GetBundleResponse(bundle=bundle_to_proto(bundle), manifest_json=bundle.manifest_json)

    async def DownloadBundle(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        try:
            bundle = await self._bundle(request.bundle_id)
            if bundle.expired_at_ms:
                raise CollectorError(grpc.StatusCode.FAILED_PRECONDITION, expired_message(bundle))
            if request.offset < 0 or request.offset > bundle.size_bytes:
                raise CollectorError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"offset: {request.offset} is outside the bundle (0 to {bundle.size_bytes})",
                )
        except CollectorError as exc:
            await _abort(context, exc)
        offset = request.offset
        while offset < bundle.size_bytes:
            try:
                data = await self.blobs.read(bundle.sha256, offset, DOWNLOAD_CHUNK_BYTES)
            except FileNotFoundError:
                log.error("bundle blob missing", extra={"event": "blob_missing", "bundle_id": bundle.bundle_id})
                await context.abort(grpc.StatusCode.DATA_LOSS, f"the stored file of bundle {bundle.bundle_id} is missing")
            if not data:
                await context.abort(grpc.StatusCode.DATA_LOSS, f"the stored file of bundle {bundle.bundle_id} is short")
            yield bundle_pb2.DownloadBundleResponse(offset=offset, data=data)
            offset += len(data)


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, fleet: Fleet, store: MetadataStore) -> None:
        self.fleet = fleet
        self.store = store

    async def ListAgents(self, request: Any, context: Any) -> Any:  # noqa: N802
        agents = []
        connected = {s.host_id: s for s in self.fleet.sessions()}
        for s in connected.values():
            agents.append(
                fleet_pb2.AgentInfo(
                    host_id=s.host_id,
                    labels=dict(s.labels),
                    agent_version=s.agent_version,
                    connected=True,
                    connected_at_unix_ms=s.connected_at_ms,
                    last_heartbeat_unix_ms=s.last_heartbeat_ms,
                    profiles=list(s.profiles),
                    peer=s.peer,
                )
            )
        if request.include_disconnected:
            for a in await self.store.list_agents():
                if a.host_id in connected:
                    continue
                agents.append(
                    fleet_pb2.AgentInfo(
                        host_id=a.host_id,
                        labels=dict(a.labels),
                        agent_version=a.agent_version,
                        connected=False,
                        connected_at_unix_ms=a.connected_at_ms,
                        last_heartbeat_unix_ms=a.last_seen_ms,
                        profiles=list(a.profiles),
                        peer=a.peer,
                    )
                )
        agents.sort(key=lambda a: a.host_id)
        return fleet_pb2.ListAgentsResponse(agents=agents)
