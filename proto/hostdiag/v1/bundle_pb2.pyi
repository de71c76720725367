from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Bundle(_message.Message):
    __slots__ = ("bundle_id", "host_id", "incident_id", "request_id", "size_bytes", "sha256", "created_at_unix_ms", "received_at_unix_ms", "profile", "trigger", "file_name", "expired_at_unix_ms")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    host_id: str
    incident_id: str
    request_id: str
    size_bytes: int
    sha256: str
    created_at_unix_ms: int
    received_at_unix_ms: int
    profile: str
    trigger: str
    file_name: str
    expired_at_unix_ms: int
    def __init__(self, bundle_id: _Optional[str] = ..., host_id: _Optional[str] = ..., incident_id: _Optional[str] = ..., request_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., created_at_unix_ms: _Optional[int] = ..., received_at_unix_ms: _Optional[int] = ..., profile: _Optional[str] = ..., trigger: _Optional[str] = ..., file_name: _Optional[str] = ..., expired_at_unix_ms: _Optional[int] = ...) -> None: ...

class ListBundlesRequest(_message.Message):
    __slots__ = ("incident_id", "host_id", "limit")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    host_id: str
    limit: int
    def __init__(self, incident_id: _Optional[str] = ..., host_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListBundlesResponse(_message.Message):
    __slots__ = ("bundles",)
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[Bundle]
    def __init__(self, bundles: _Optional[_Iterable[_Union[Bundle, _Mapping]]] = ...) -> None: ...

class GetBundleRequest(_message.Message):
    __slots__ = ("bundle_id",)
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    def __init__(self, bundle_id: _Optional[str] = ...) -> None: ...

class GetBundleResponse(_message.Message):
    __slots__ = ("bundle", "manifest_json")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    bundle: Bundle
    manifest_json: str
    def __init__(self, bundle: _Optional[_Union[Bundle, _Mapping]] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class DownloadBundleRequest(_message.Message):
    __slots__ = ("bundle_id", "offset")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    offset: int
    def __init__(self, bundle_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class DownloadBundleResponse(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
