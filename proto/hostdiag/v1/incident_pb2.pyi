from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_P1: _ClassVar[Severity]
    SEVERITY_P2: _ClassVar[Severity]
    SEVERITY_P3: _ClassVar[Severity]
    SEVERITY_P4: _ClassVar[Severity]

class IncidentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INCIDENT_STATE_UNSPECIFIED: _ClassVar[IncidentState]
    INCIDENT_STATE_OPEN: _ClassVar[IncidentState]
    INCIDENT_STATE_ACKNOWLEDGED: _ClassVar[IncidentState]
    INCIDENT_STATE_RESOLVED: _ClassVar[IncidentState]

class HostRequestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_REQUEST_STATE_UNSPECIFIED: _ClassVar[HostRequestState]
    HOST_REQUEST_STATE_REQUESTED: _ClassVar[HostRequestState]
    HOST_REQUEST_STATE_ACKNOWLEDGED: _ClassVar[HostRequestState]
    HOST_REQUEST_STATE_UPLOADING: _ClassVar[HostRequestState]
    HOST_REQUEST_STATE_ATTACHED: _ClassVar[HostRequestState]
    HOST_REQUEST_STATE_FAILED: _ClassVar[HostRequestState]
    HOST_REQUEST_STATE_EXPIRED: _ClassVar[HostRequestState]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_P1: Severity
SEVERITY_P2: Severity
SEVERITY_P3: Severity
SEVERITY_P4: Severity
INCIDENT_STATE_UNSPECIFIED: IncidentState
INCIDENT_STATE_OPEN: IncidentState
INCIDENT_STATE_ACKNOWLEDGED: IncidentState
INCIDENT_STATE_RESOLVED: IncidentState
HOST_REQUEST_STATE_UNSPECIFIED: HostRequestState
HOST_REQUEST_STATE_REQUESTED: HostRequestState
HOST_REQUEST_STATE_ACKNOWLEDGED: HostRequestState
HOST_REQUEST_STATE_UPLOADING: HostRequestState
HOST_REQUEST_STATE_ATTACHED: HostRequestState
HOST_REQUEST_STATE_FAILED: HostRequestState
HOST_REQUEST_STATE_EXPIRED: HostRequestState

class HostSelector(_message.Message):
    __slots__ = ("labels", "host_ids")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HOST_IDS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    host_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., host_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class HostRequest(_message.Message):
    __slots__ = ("host_id", "request_id", "state", "reason", "bundle_id", "updated_at_unix_ms", "expires_at_unix_ms")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    request_id: str
    state: HostRequestState
    reason: str
    bundle_id: str
    updated_at_unix_ms: int
    expires_at_unix_ms: int
    def __init__(self, host_id: _Optional[str] = ..., request_id: _Optional[str] = ..., state: _Optional[_Union[HostRequestState, str]] = ..., reason: _Optional[str] = ..., bundle_id: _Optional[str] = ..., updated_at_unix_ms: _Optional[int] = ..., expires_at_unix_ms: _Optional[int] = ...) -> None: ...

class TimelineEvent(_message.Message):
    __slots__ = ("at_unix_ms", "kind", "message", "host_id", "actor")
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    at_unix_ms: int
    kind: str
    message: str
    host_id: str
    actor: str
    def __init__(self, at_unix_ms: _Optional[int] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., host_id: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class Incident(_message.Message):
    __slots__ = ("id", "title", "severity", "service", "state", "selector", "window_seconds", "opened_at_unix_ms", "acknowledged_at_unix_ms", "resolved_at_unix_ms", "hosts", "timeline", "bundle_ids", "opened_by", "profile", "suggestion", "escalations", "last_status_update_at_unix_ms", "alert_group_key", "severity_set_at_unix_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_IDS_FIELD_NUMBER: _ClassVar[int]
    OPENED_BY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SUGGESTION_FIELD_NUMBER: _ClassVar[int]
    ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_UPDATE_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ALERT_GROUP_KEY_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_SET_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    severity: Severity
    service: str
    state: IncidentState
    selector: HostSelector
    window_seconds: float
    opened_at_unix_ms: int
    acknowledged_at_unix_ms: int
    resolved_at_unix_ms: int
    hosts: _containers.RepeatedCompositeFieldContainer[HostRequest]
    timeline: _containers.RepeatedCompositeFieldContainer[TimelineEvent]
    bundle_ids: _containers.RepeatedScalarFieldContainer[str]
    opened_by: str
    profile: str
    suggestion: Suggestion
    escalations: _containers.RepeatedCompositeFieldContainer[Escalation]
    last_status_update_at_unix_ms: int
    alert_group_key: str
    severity_set_at_unix_ms: int
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., service: _Optional[str] = ..., state: _Optional[_Union[IncidentState, str]] = ..., selector: _Optional[_Union[HostSelector, _Mapping]] = ..., window_seconds: _Optional[float] = ..., opened_at_unix_ms: _Optional[int] = ..., acknowledged_at_unix_ms: _Optional[int] = ..., resolved_at_unix_ms: _Optional[int] = ..., hosts: _Optional[_Iterable[_Union[HostRequest, _Mapping]]] = ..., timeline: _Optional[_Iterable[_Union[TimelineEvent, _Mapping]]] = ..., bundle_ids: _Optional[_Iterable[str]] = ..., opened_by: _Optional[str] = ..., profile: _Optional[str] = ..., suggestion: _Optional[_Union[Suggestion, _Mapping]] = ..., escalations: _Optional[_Iterable[_Union[Escalation, _Mapping]]] = ..., last_status_update_at_unix_ms: _Optional[int] = ..., alert_group_key: _Optional[str] = ..., severity_set_at_unix_ms: _Optional[int] = ...) -> None: ...

class SignalFinding(_message.Message):
    __slots__ = ("rule", "severity", "host_id", "explanation", "evidence_json", "guide", "inhibited")
    RULE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_JSON_FIELD_NUMBER: _ClassVar[int]
    GUIDE_FIELD_NUMBER: _ClassVar[int]
    INHIBITED_FIELD_NUMBER: _ClassVar[int]
    rule: str
    severity: Severity
    host_id: str
    explanation: str
    evidence_json: str
    guide: str
    inhibited: bool
    def __init__(self, rule: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., host_id: _Optional[str] = ..., explanation: _Optional[str] = ..., evidence_json: _Optional[str] = ..., guide: _Optional[str] = ..., inhibited: _Optional[bool] = ...) -> None: ...

class Suggestion(_message.Message):
    __slots__ = ("severity", "explanation", "guide", "findings", "evaluated_at_unix_ms", "hosts_selected", "hosts_reporting", "hosts_affected")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    GUIDE_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_SELECTED_FIELD_NUMBER: _ClassVar[int]
    HOSTS_REPORTING_FIELD_NUMBER: _ClassVar[int]
    HOSTS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    severity: Severity
    explanation: str
    guide: str
    findings: _containers.RepeatedCompositeFieldContainer[SignalFinding]
    evaluated_at_unix_ms: int
    hosts_selected: int
    hosts_reporting: int
    hosts_affected: int
    def __init__(self, severity: _Optional[_Union[Severity, str]] = ..., explanation: _Optional[str] = ..., guide: _Optional[str] = ..., findings: _Optional[_Iterable[_Union[SignalFinding, _Mapping]]] = ..., evaluated_at_unix_ms: _Optional[int] = ..., hosts_selected: _Optional[int] = ..., hosts_reporting: _Optional[int] = ..., hosts_affected: _Optional[int] = ...) -> None: ...

class Escalation(_message.Message):
    __slots__ = ("kind", "at_unix_ms", "message", "notified")
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NOTIFIED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    at_unix_ms: int
    message: str
    notified: bool
    def __init__(self, kind: _Optional[str] = ..., at_unix_ms: _Optional[int] = ..., message: _Optional[str] = ..., notified: _Optional[bool] = ...) -> None: ...

class OpenIncidentRequest(_message.Message):
    __slots__ = ("title", "severity", "service", "selector", "window_seconds", "profile")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    title: str
    severity: Severity
    service: str
    selector: HostSelector
    window_seconds: float
    profile: str
    def __init__(self, title: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., service: _Optional[str] = ..., selector: _Optional[_Union[HostSelector, _Mapping]] = ..., window_seconds: _Optional[float] = ..., profile: _Optional[str] = ...) -> None: ...

class OpenIncidentResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ...) -> None: ...

class ListIncidentsRequest(_message.Message):
    __slots__ = ("state", "limit", "overdue")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    state: IncidentState
    limit: int
    overdue: bool
    def __init__(self, state: _Optional[_Union[IncidentState, str]] = ..., limit: _Optional[int] = ..., overdue: _Optional[bool] = ...) -> None: ...

class ListIncidentsResponse(_message.Message):
    __slots__ = ("incidents",)
    INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    incidents: _containers.RepeatedCompositeFieldContainer[Incident]
    def __init__(self, incidents: _Optional[_Iterable[_Union[Incident, _Mapping]]] = ...) -> None: ...

class GetIncidentRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetIncidentResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ...) -> None: ...

class AcknowledgeIncidentRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class AcknowledgeIncidentResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ...) -> None: ...

class PostStatusUpdateRequest(_message.Message):
    __slots__ = ("id", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    message: str
    def __init__(self, id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PostStatusUpdateResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ...) -> None: ...

class ResolveIncidentRequest(_message.Message):
    __slots__ = ("id", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    message: str
    def __init__(self, id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ResolveIncidentResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ...) -> None: ...

class SetIncidentSeverityRequest(_message.Message):
    __slots__ = ("id", "severity", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    severity: Severity
    reason: str
    def __init__(self, id: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetIncidentSeverityResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ...) -> None: ...
