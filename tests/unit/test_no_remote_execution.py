"""No remote execution: every field the collector can send to an agent, and nothing more.

The collector talks to an agent only through ``AgentService``: the messages it
sends are the responses of its methods (``ConnectResponse`` on the control
stream, ``UploadResponse``, ``QueryUploadResponse``) and every message reachable
from them.  The only thing that makes an agent do work is ``SnapshotCommand``,
and it carries a profile *name* the agent looks up in its own config and a
window the agent checks against its own recorder window.  No field may carry a
path, a command, a script, a URL to fetch or code.

This test walks the generated descriptors and compares them with the complete,
explicit allow-list below.  A new field (or a new message reachable from these)
fails it: before extending the list, read docs/security.md, "No remote
execution", and make sure the new field cannot make an agent run or read
anything its own config does not define.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from hostdiag.v1 import agent_pb2

# message full name -> {field name: type}; a message type is written "message <full name>",
# a repeated field "repeated <type>".
ALLOWED: dict[str, dict[str, str]] = {
    "hostdiag.v1.ConnectResponse": {
        "welcome": "message hostdiag.v1.Welcome",
        "heartbeat": "message hostdiag.v1.Heartbeat",
        "snapshot": "message hostdiag.v1.SnapshotCommand",
    },
    "hostdiag.v1.Welcome": {
        "collector_version": "string",
        "heartbeat_interval_seconds": "double",
        "session_id": "string",
    },
    "hostdiag.v1.Heartbeat": {
        "sent_at_unix_ms": "int64",
    },
    "hostdiag.v1.SnapshotCommand": {
        "request_id": "string",
        "incident_id": "string",
        "profile": "string",  # a name the agent's own config must define
        "window_seconds": "double",  # at most the agent's recorder window
    },
    "hostdiag.v1.UploadResponse": {
        "bundle_id": "string",
        "committed_size_bytes": "int64",
        "complete": "bool",
    },
    "hostdiag.v1.QueryUploadResponse": {
        "bundle_id": "string",
        "committed_size_bytes": "int64",
        "complete": "bool",
    },
}

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}

HINT = (
    "the collector can send agents only the fields listed in tests/unit/test_no_remote_execution.py; "
    "read docs/security.md ('No remote execution') before adding one: no field may carry a path, "
    "a command or code, and a profile is only ever a name the agent's own config defines"
)


def _type_name(field: FieldDescriptor) -> str:
    if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        name = f"message {field.message_type.full_name}"
    elif field.type == FieldDescriptor.TYPE_ENUM:
        name = f"enum {field.enum_type.full_name}"
    else:
        name = _SCALARS[field.type]
    repeated = getattr(field, "is_repeated", None)
    is_repeated = repeated if isinstance(repeated, bool) else field.label == FieldDescriptor.LABEL_REPEATED
    return f"repeated {name}" if is_repeated else name


def _sent_to_agents() -> dict[str, dict[str, str]]:
    """Every message the collector can send an agent, with its fields, from the descriptors."""
    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    found: dict[str, dict[str, str]] = {}
    todo: list[Descriptor] = [method.output_type for method in service.methods]
    while todo:
        message = todo.pop()
        if message.full_name in found:
            continue
        found[message.full_name] = {f.name: _type_name(f) for f in message.fields}
        todo.extend(f.message_type for f in message.fields if f.message_type is not None)
    return found


def test_the_agent_service_has_exactly_the_known_methods() -> None:
    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods == {
        "Connect": ("hostdiag.v1.ConnectRequest", "hostdiag.v1.ConnectResponse"),
        "Upload": ("hostdiag.v1.UploadRequest", "hostdiag.v1.UploadResponse"),
        "QueryUpload": ("hostdiag.v1.QueryUploadRequest", "hostdiag.v1.QueryUploadResponse"),
    }, f"AgentService changed; {HINT}"


def _problems(found: dict[str, dict[str, str]]) -> list[str]:
    """What differs between ``found`` (message -> fields) and the allow-list."""
    problems = [f"new message type reaches agents: {m}" for m in sorted(set(found) - set(ALLOWED))]
    problems += [f"allow-listed message no longer reaches agents: {m}" for m in sorted(set(ALLOWED) - set(found))]
    for message, fields in sorted(found.items()):
        allowed = ALLOWED.get(message)
        if allowed is None:
            continue
        for name, kind in sorted(fields.items()):
            if name not in allowed:
                problems.append(f"{message}.{name} ({kind}) is not on the allow-list")
            elif allowed[name] != kind:
                problems.append(f"{message}.{name} changed type: allowed {allowed[name]}, now {kind}")
        problems += [f"{message}.{name} is gone" for name in sorted(set(allowed) - set(fields))]
    return problems


def test_every_message_and_field_the_collector_sends_an_agent_is_on_the_allow_list() -> None:
    problems = _problems(_sent_to_agents())
    assert not problems, "; ".join(problems) + f"; {HINT}"


def test_the_only_command_names_a_profile_and_a_window_and_nothing_executable() -> None:
    command = ALLOWED["hostdiag.v1.SnapshotCommand"]
    assert set(command) == {"request_id", "incident_id", "profile", "window_seconds"}
    # A bytes field anywhere could smuggle a script or an archive to unpack: there is none.
    assert not [
        (message, name) for message, fields in _sent_to_agents().items() for name, kind in fields.items()
        if kind.endswith("bytes")
    ]


def test_a_command_field_would_be_caught() -> None:
    """The check itself: a SnapshotCommand with a ``string command`` field is reported."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    proto = descriptor_pb2.FileDescriptorProto(name="nre_probe.proto", package="hostdiag.v1", syntax="proto3")
    msg = proto.message_type.add(name="SnapshotCommand")
    for number, (name, kind) in enumerate(
        [("request_id", "STRING"), ("incident_id", "STRING"), ("profile", "STRING"), ("window_seconds", "DOUBLE"),
         ("command", "STRING")],
        start=1,
    ):
        msg.field.add(
            name=name, number=number, type=getattr(FieldDescriptor, f"TYPE_{kind}"),
            label=FieldDescriptor.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("hostdiag.v1.SnapshotCommand")
    found = _sent_to_agents()
    found["hostdiag.v1.SnapshotCommand"] = {f.name: _type_name(f) for f in descriptor.fields}
    assert _problems(found) == ["hostdiag.v1.SnapshotCommand.command (string) is not on the allow-list"]
