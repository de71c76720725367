from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "heartbeat", "ack", "progress", "result")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    ack: SnapshotAck
    progress: SnapshotProgress
    result: SnapshotResult
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., ack: _Optional[_Union[SnapshotAck, _Mapping]] = ..., progress: _Optional[_Union[SnapshotProgress, _Mapping]] = ..., result: _Optional[_Union[SnapshotResult, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "heartbeat", "snapshot")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    heartbeat: Heartbeat
    snapshot: SnapshotCommand
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotCommand, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("host_id", "labels", "agent_version", "capabilities", "profiles", "max_window_seconds", "boot_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    labels: _containers.ScalarMap[str, str]
    agent_version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    profiles: _containers.RepeatedScalarFieldContainer[str]
    max_window_seconds: float
    boot_id: str
    def __init__(self, host_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent_version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., profiles: _Optional[_Iterable[str]] = ..., max_window_seconds: _Optional[float] = ..., boot_id: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("collector_version", "heartbeat_interval_seconds", "session_id")
    COLLECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    collector_version: str
    heartbeat_interval_seconds: float
    session_id: str
    def __init__(self, collector_version: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ..., session_id: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at_unix_ms",)
    SENT_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    sent_at_unix_ms: int
    def __init__(self, sent_at_unix_ms: _Optional[int] = ...) -> None: ...

class SnapshotCommand(_message.Message):
    __slots__ = ("request_id", "incident_id", "profile", "window_seconds")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    incident_id: str
    profile: str
    window_seconds: float
    def __init__(self, request_id: _Optional[str] = ..., incident_id: _Optional[str] = ..., profile: _Optional[str] = ..., window_seconds: _Optional[float] = ...) -> None: ...

class SnapshotAck(_message.Message):
    __slots__ = ("request_id", "accepted", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    accepted: bool
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SnapshotProgress(_message.Message):
    __slots__ = ("request_id", "stage", "bundle_id", "detail")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    stage: str
    bundle_id: str
    detail: str
    def __init__(self, request_id: _Optional[str] = ..., stage: _Optional[str] = ..., bundle_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class SnapshotResult(_message.Message):
    __slots__ = ("request_id", "ok", "bundle_id", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ok: bool
    bundle_id: str
    error: str
    def __init__(self, request_id: _Optional[str] = ..., ok: _Optional[bool] = ..., bundle_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("bundle_id", "write_offset", "data", "finish_write", "total_size_bytes", "sha256", "request_id", "incident_id")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    WRITE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FINISH_WRITE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    write_offset: int
    data: bytes
    finish_write: bool
    total_size_bytes: int
    sha256: str
    request_id: str
    incident_id: str
    def __init__(self, bundle_id: _Optional[str] = ..., write_offset: _Optional[int] = ..., data: _Optional[bytes] = ..., finish_write: _Optional[bool] = ..., total_size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., request_id: _Optional[str] = ..., incident_id: _Optional[str] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("bundle_id", "committed_size_bytes", "complete")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    committed_size_bytes: int
    complete: bool
    def __init__(self, bundle_id: _Optional[str] = ..., committed_size_bytes: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...

class QueryUploadRequest(_message.Message):
    __slots__ = ("bundle_id",)
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    def __init__(self, bundle_id: _Optional[str] = ...) -> None: ...

class QueryUploadResponse(_message.Message):
    __slots__ = ("bundle_id", "committed_size_bytes", "complete")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    committed_size_bytes: int
    complete: bool
    def __init__(self, bundle_id: _Optional[str] = ..., committed_size_bytes: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...
