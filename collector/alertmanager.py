"""Alertmanager in: ``POST /api/v1/alertmanager`` opens and updates incidents.

Prometheus Alertmanager's webhook receiver sends one JSON document per alert
group notification (payload version ``"4"``)::

    {"version": "4", "groupKey": "{}/{severity=\\"critical\\"}:{alertname=\\"NodeDown\\"}",
     "truncatedAlerts": 0, "status": "firing", "receiver": "hostdiag",
     "groupLabels": {...}, "commonLabels": {...}, "commonAnnotations": {...},
     "externalURL": "http://alertmanager:9093",
     "alerts": [{"status": "firing", "labels": {...}, "annotations": {...},
                 "startsAt": "2025-...Z", "endsAt": "0001-01-01T00:00:00Z",
                 "generatorURL": "http://prometheus:9090/graph?...", "fingerprint": "5c7f..."}]}

:func:`parse_payload` checks every field Alertmanager always sends and names
the first one that is wrong (:class:`PayloadError` → HTTP 400); unknown extra
fields are ignored.  :class:`AlertmanagerReceiver` then:

- **firing, no unresolved incident for this groupKey** → opens one: the title
  from ``commonAnnotations.summary`` (else the alert names), the service from a
  label, the severity from the ``severity`` label (mapped, highest wins), and a
  host selector: host ids from the first configured host label each firing
  alert carries (``instance`` loses its ``:port``) plus the configured
  selector labels the whole group shares (``commonLabels``).  Snapshot
  requests go out through the normal incident path.
- **firing, incident open** → a timeline event lists the alerts that are new
  (or firing again) and those now resolved; hosts not in the incident yet get
  snapshot requests.  The severity is never changed by an alert: a higher
  alert severity is only noted in the event.
- **resolved** → a timeline event; the incident stays open until a human
  resolves it.

Every alert seen is remembered per incident by fingerprint (``incident_alerts``),
so Alertmanager's repeated notifications add nothing to the timeline.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from hostdiag.collector.errors import CollectorError
from hostdiag.collector.incidents import MAX_MESSAGE_CHARS, MAX_TITLE_CHARS, IncidentManager, valid_host_id
from hostdiag.collector.store.base import AlertRecord, MetadataStore, TimelineEventRecord

if TYPE_CHECKING:
    from hostdiag.collector.http import Request
    from hostdiag.collector.metrics import Counter

__all__ = [
    "PATH",
    "ACTOR",
    "AlertMapping",
    "Alert",
    "AlertGroup",
    "PayloadError",
    "parse_payload",
    "host_id_from_label",
    "AlertmanagerReceiver",
    "DEFAULT_SEVERITIES",
]

log = logging.getLogger("hostdiag.collector.alertmanager")

PATH = "/api/v1/alertmanager"
ACTOR = "alertmanager"
MAX_GROUP_KEY_CHARS = 8192
MAX_SERVICE_CHARS = 128
DEFAULT_SEVERITIES: Mapping[str, str] = {
    "critical": "P1", "error": "P2", "high": "P2", "warning": "P3", "info": "P4",
}
_SEVERITY_NAMES = {"P1": 1, "P2": 2, "P3": 3, "P4": 4}
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<name>[^:/\[\]]+)):(?P<port>\d{1,5})")


def severity_value(name: str) -> int:
    """``"P1"`` → 1 … ``"P4"`` → 4; ``ValueError`` otherwise."""
    try:
        return _SEVERITY_NAMES[name.upper()]
    except KeyError:
        raise ValueError(f"expected P1, P2, P3 or P4, got {name!r}") from None


@dataclass(frozen=True)
class AlertMapping:
    """How alert labels become an incident (the ``alertmanager_*`` config keys)."""

    # Tried in order; the first one an alert carries names its host.
    host_labels: tuple[str, ...] = ("host", "instance")
    # Copied into the selector when every alert of the group shares them.
    selector_labels: tuple[str, ...] = ("service",)
    service_label: str = "service"
    severity_label: str = "severity"
    # Label value (lowercase) → 1..4.
    severities: Mapping[str, int] = field(
        default_factory=lambda: {k: _SEVERITY_NAMES[v] for k, v in DEFAULT_SEVERITIES.items()}
    )
    default_severity: int = 3

    @classmethod
    def from_config(cls, section: Any) -> AlertMapping:
        return cls(
            host_labels=tuple(section.alertmanager_host_labels),
            selector_labels=tuple(section.alertmanager_selector_labels),
            service_label=section.alertmanager_service_label,
            severity_label=section.alertmanager_severity_label,
            severities={k.lower(): severity_value(v) for k, v in section.alertmanager_severities.items()},
            default_severity=severity_value(section.alertmanager_default_severity),
        )

    def severity_of(self, labels: Mapping[str, str]) -> int | None:
        value = labels.get(self.severity_label)
        return None if value is None else self.severities.get(value.strip().lower())


# -- the payload ------------------------------------------------------------------------------


class PayloadError(ValueError):
    """A malformed notification: ``field`` is where (``alerts[2].labels``)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class Unusable(Exception):
    """A well-formed notification hostdiag cannot act on (HTTP 422): no host to ask."""


@dataclass(frozen=True)
class Alert:
    status: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at_ms: int
    ends_at_ms: int
    generator_url: str
    fingerprint: str

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "") or "alert"


@dataclass(frozen=True)
class AlertGroup:
    version: str
    group_key: str
    truncated_alerts: int
    status: str
    receiver: str
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    common_annotations: Mapping[str, str]
    external_url: str
    alerts: tuple[Alert, ...]

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.status == "firing"]


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _string(doc: Mapping[str, Any], key: str, where: str, *, nonempty: bool = False) -> str:
    name = f"{where}.{key}" if where else key
    if key not in doc:
        raise PayloadError(name, "missing")
    value = doc[key]
    if not isinstance(value, str):
        raise PayloadError(name, f"expected a string, got {_describe(value)}")
    if nonempty and not value:
        raise PayloadError(name, "must not be empty")
    return value


def _string_map(doc: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    name = f"{where}.{key}" if where else key
    if key not in doc:
        raise PayloadError(name, "missing")
    value = doc[key]
    if not isinstance(value, dict):
        raise PayloadError(name, f"expected an object of strings, got {_describe(value)}")
    for k, v in value.items():
        if not k:
            raise PayloadError(name, "empty label name")
        if not isinstance(v, str):
            raise PayloadError(f"{name}.{k}", f"expected a string, got {_describe(v)}")
    return dict(value)


def _status(doc: Mapping[str, Any], where: str) -> str:
    value = _string(doc, "status", where)
    if value not in ("firing", "resolved"):
        raise PayloadError(f"{where}.status" if where else "status", f"expected firing or resolved, got {value[:40]!r}")
    return value


def parse_time_ms(text: str) -> int:
    """RFC 3339 (as Go writes it, nanoseconds allowed) → Unix ms; Go's zero time → 0."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"expected an RFC 3339 time, got {text[:40]!r}")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    if year == "0001" and month == "01" and day == "01":
        return 0  # Go's zero time: "not ended yet"
    tz = timezone.utc
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59),
                          int((frac or "0").ljust(6, "0")[:6]), tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"not a valid time: {exc}") from None
    return int(moment.timestamp() * 1000)


def _time(doc: Mapping[str, Any], key: str, where: str) -> int:
    text = _string(doc, key, where)
    try:
        return parse_time_ms(text)
    except ValueError as exc:
        raise PayloadError(f"{where}.{key}", str(exc)) from None


def parse_payload(body: bytes) -> AlertGroup:
    """Check and read one Alertmanager notification; :class:`PayloadError` names the bad field."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError("body", f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PayloadError("body", f"expected a JSON object, got {_describe(doc)}")
    version = _string(doc, "version", "")
    if version != "4":
        raise PayloadError("version", f"only webhook payload version \"4\" is understood, got {version[:20]!r}")
    group_key = _string(doc, "groupKey", "", nonempty=True)
    if len(group_key) > MAX_GROUP_KEY_CHARS:
        raise PayloadError("groupKey", f"longer than {MAX_GROUP_KEY_CHARS} characters")
    truncated = doc.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        raise PayloadError("truncatedAlerts", f"expected a non-negative integer, got {_describe(truncated)}")
    status = _status(doc, "")
    receiver = _string(doc, "receiver", "")
    group_labels = _string_map(doc, "groupLabels", "")
    common_labels = _string_map(doc, "commonLabels", "")
    common_annotations = _string_map(doc, "commonAnnotations", "")
    external_url = _string(doc, "externalURL", "")
    if "alerts" not in doc:
        raise PayloadError("alerts", "missing")
    raw_alerts = doc["alerts"]
    if not isinstance(raw_alerts, list):
        raise PayloadError("alerts", f"expected an array, got {_describe(raw_alerts)}")
    if not raw_alerts:
        raise PayloadError("alerts", "must not be empty")
    alerts = []
    for i, raw in enumerate(raw_alerts):
        where = f"alerts[{i}]"
        if not isinstance(raw, dict):
            raise PayloadError(where, f"expected an object, got {_describe(raw)}")
        alerts.append(
            Alert(
                status=_status(raw, where),
                labels=_string_map(raw, "labels", where),
                annotations=_string_map(raw, "annotations", where),
                starts_at_ms=_time(raw, "startsAt", where),
                ends_at_ms=_time(raw, "endsAt", where),
                generator_url=_string(raw, "generatorURL", where),
                fingerprint=_string(raw, "fingerprint", where, nonempty=True)[:128],
            )
        )
    return AlertGroup(
        version=version, group_key=group_key, truncated_alerts=truncated, status=status, receiver=receiver,
        group_labels=group_labels, common_labels=common_labels, common_annotations=common_annotations,
        external_url=external_url, alerts=tuple(alerts),
    )


# -- mapping ----------------------------------------------------------------------------------


def host_id_from_label(value: str) -> str:
    """A host id from an ``instance``-style value: ``web-1:9100`` → ``web-1``,
    ``[2001:db8::1]:9100`` → ``2001:db8::1``, ``https://web-1:8443/health`` → ``web-1``."""
    value = value.strip()
    if "://" in value:
        try:
            return urlsplit(value).hostname or ""
        except ValueError:
            return ""
    m = _HOST_PORT.fullmatch(value)
    if m is not None:
        return m.group("v6") or m.group("name")
    return value


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Plan:
    host_ids: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class AlertmanagerReceiver:
    """Turns notifications into incident changes; one notification at a time."""

    def __init__(
        self,
        incidents: IncidentManager,
        store: MetadataStore,
        mapping: AlertMapping | None = None,
        *,
        results: Counter | None = None,
    ) -> None:
        self.incidents = incidents
        self.store = store
        self.mapping = mapping or AlertMapping()
        self.results = results
        # Two notifications for one group must not both open an incident.
        self._lock = asyncio.Lock()

    def _count(self, result: str) -> None:
        if self.results is not None:
            self.results.inc(result=result)

    # -- HTTP -----------------------------------------------------------------------------
    async def handle_http(self, request: Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """The ``POST /api/v1/alertmanager`` handler: JSON answer, 400 naming a bad field."""
        try:
            group = parse_payload(body)
        except PayloadError as exc:
            self._count("rejected")
            log.info("alertmanager payload refused", extra={"event": "alertmanager_rejected", "field": exc.field})
            return _json(400, {"error": str(exc), "field": exc.field})
        try:
            result = await self.handle(group)
        except (Unusable, CollectorError) as exc:
            reason = exc.message if isinstance(exc, CollectorError) else str(exc)
            self._count("rejected")
            log.info("alertmanager notification not usable",
                     extra={"event": "alertmanager_rejected", "reason": reason[:200]})
            return _json(422, {"error": reason})
        return _json(200, result)

    # -- notifications --------------------------------------------------------------------
    async def handle(self, group: AlertGroup) -> dict[str, Any]:
        async with self._lock:
            existing = await self.store.find_unresolved_by_group_key(group.group_key)
            if existing is None:
                if not group.firing:
                    self._count("ignored")
                    return {"action": "ignored", "reason": "no unresolved incident for this group"}
                return await self._open(group)
            return await self._update(existing.id, existing.severity, group)

    def _hosts(self, alerts: Sequence[Alert]) -> _Plan:
        plan = _Plan()
        for alert in alerts:
            for name in self.mapping.host_labels:
                if name not in alert.labels:
                    continue
                host = host_id_from_label(alert.labels[name])
                if valid_host_id(host):
                    if host not in plan.host_ids:
                        plan.host_ids.append(host)
                elif alert.labels[name] not in plan.skipped:
                    plan.skipped.append(alert.labels[name])
                break
        return plan

    def _severity(self, alerts: Sequence[Alert]) -> int:
        found = [s for s in (self.mapping.severity_of(a.labels) for a in alerts) if s is not None]
        return min(found) if found else self.mapping.default_severity

    def _title(self, group: AlertGroup) -> str:
        summary = _one_line(group.common_annotations.get("summary", ""))
        if summary:
            return _clip(summary, MAX_TITLE_CHARS)
        names = list(dict.fromkeys(a.name for a in group.firing or group.alerts))
        common = group.common_labels.get("alertname") or group.group_labels.get("alertname")
        title = common or names[0] + (f" (+{len(names) - 1} more)" if len(names) > 1 else "")
        return _clip(_one_line(title), MAX_TITLE_CHARS)

    def _alert_text(self, alert: Alert) -> str:
        where = next((alert.labels[n] for n in self.mapping.host_labels if n in alert.labels), "")
        where = where or alert.labels.get(self.mapping.service_label, "")
        return f"{alert.name} ({where})" if where else alert.name

    def _list_text(self, prefix: str, alerts: Sequence[Alert], suffix: str = "") -> str:
        parts: list[str] = []
        budget = MAX_MESSAGE_CHARS - len(prefix) - len(suffix) - 40
        for i, alert in enumerate(alerts):
            text = _one_line(self._alert_text(alert))
            if sum(len(p) + 2 for p in parts) + len(text) > budget:
                parts.append(f"… and {len(alerts) - i} more")
                break
            parts.append(text)
        return _clip(prefix + ", ".join(parts) + suffix, MAX_MESSAGE_CHARS)

    def _records(self, incident_id: str, alerts: Sequence[Alert], now: int,
                 first_seen: Mapping[str, int]) -> list[AlertRecord]:
        latest = {a.fingerprint: a for a in alerts}  # a fingerprint listed twice: the last wins
        return [
            AlertRecord(incident_id, fp, _clip(a.name, 200), a.status, first_seen.get(fp, now), now)
            for fp, a in latest.items()
        ]

    async def _open(self, group: AlertGroup) -> dict[str, Any]:
        firing = group.firing
        plan = self._hosts(firing)
        labels = {n: group.common_labels[n] for n in self.mapping.selector_labels if n in group.common_labels}
        if not plan.host_ids and not labels:
            wanted = ", ".join([*self.mapping.host_labels, *self.mapping.selector_labels]) or "none configured"
            skipped = f" (not host ids: {', '.join(repr(s) for s in plan.skipped[:5])})" if plan.skipped else ""
            raise Unusable(f"alerts: no alert names a host or a selector label ({wanted}){skipped}")
        severity = self._severity(firing)
        service = _clip(group.common_labels.get(self.mapping.service_label, ""), MAX_SERVICE_CHARS)
        view = await self.incidents.open(
            title=self._title(group),
            severity=severity,
            service=service,
            selector_labels=labels,
            selector_host_ids=plan.host_ids,
            actor=ACTOR,
            alert_group_key=group.group_key,
        )
        inc = view.incident
        now = self.incidents.now_ms()
        note = ""
        if group.truncated_alerts:
            note += f"; {group.truncated_alerts} more alert(s) truncated by Alertmanager"
        if plan.skipped:
            note += f"; not host ids: {', '.join(repr(s[:80]) for s in plan.skipped[:5])}"
        events = [TimelineEventRecord(inc.id, now, "alerts_firing",
                                      self._list_text(f"{len(firing)} alert(s) firing: ", firing, note), actor=ACTOR)]
        resolved = [a for a in group.alerts if a.status == "resolved"]
        if resolved:
            events.append(TimelineEventRecord(inc.id, now, "alerts_resolved",
                                              self._list_text(f"{len(resolved)} alert(s) resolved: ", resolved),
                                              actor=ACTOR))
        await self.store.put_alerts(self._records(inc.id, group.alerts, now, {}), events)
        log.info(
            "incident opened from alertmanager",
            extra={"event": "alertmanager_opened", "incident_id": inc.id, "alerts": len(firing),
                   "hosts": len(view.requests)},
        )
        self._count("opened")
        return {"action": "opened", "incident_id": inc.id, "severity": f"P{severity}",
                "hosts": [r.host_id for r in view.requests]}

    async def _update(self, incident_id: str, incident_severity: int, group: AlertGroup) -> dict[str, Any]:
        known = {a.fingerprint: a for a in await self.store.list_alerts(incident_id)}
        newly_firing = [a for a in group.firing
                        if a.fingerprint not in known or known[a.fingerprint].status != "firing"]
        newly_resolved = [a for a in group.alerts if a.status == "resolved"
                          and (a.fingerprint not in known or known[a.fingerprint].status != "resolved")]
        # Alertmanager sends one list: a fingerprint listed twice counts once.
        newly_firing = list({a.fingerprint: a for a in newly_firing}.values())
        newly_resolved = list({a.fingerprint: a for a in newly_resolved}.values())
        if not newly_firing and not newly_resolved:
            self._count("unchanged")
            return {"action": "unchanged", "incident_id": incident_id}
        added: Sequence[str] = []
        if newly_firing:
            plan = self._hosts(newly_firing)
            if plan.host_ids:
                names = ", ".join(dict.fromkeys(a.name for a in newly_firing))
                try:
                    added = await self.incidents.add_hosts(
                        incident_id, plan.host_ids, _clip(f"named by alert {names}", 256), actor=ACTOR
                    )
                except CollectorError as exc:  # resolved by a human a moment ago
                    log.info("alertmanager update skipped", extra={"event": "alertmanager_stale",
                                                                  "reason": exc.message[:200]})
        now = self.incidents.now_ms()
        events: list[TimelineEventRecord] = []
        if newly_firing:
            note = ""
            higher = self._severity(newly_firing)
            if any(self.mapping.severity_of(a.labels) is not None for a in newly_firing) and higher < incident_severity:
                note = f"; alert severity P{higher} is above the incident's P{incident_severity}"
            events.append(TimelineEventRecord(
                incident_id, now, "alerts_firing",
                self._list_text(f"{len(newly_firing)} new alert(s) firing: ", newly_firing, note), actor=ACTOR))
        if newly_resolved:
            events.append(TimelineEventRecord(
                incident_id, now, "alerts_resolved",
                self._list_text(f"{len(newly_resolved)} alert(s) resolved: ", newly_resolved,
                                "; the incident stays open until someone resolves it"
                                if group.status == "resolved" else ""),
                actor=ACTOR))
        first_seen = {fp: a.first_seen_ms for fp, a in known.items()}
        await self.store.put_alerts(self._records(incident_id, [*newly_firing, *newly_resolved], now, first_seen),
                                    events)
        action = "updated" if newly_firing else "resolved_noted"
        self._count("updated" if newly_firing else "resolved")
        return {"action": action, "incident_id": incident_id, "hosts_added": list(added)}


def _json(status: int, doc: Mapping[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, orjson.dumps(dict(doc)) + b"\n"
