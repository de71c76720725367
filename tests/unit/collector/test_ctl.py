"""collectorctl without a network: arguments, output, error mapping and the download logic.

Commands run through :func:`main` with a fake client standing in for
:class:`CollectorClient`; the download runs against a fake stream writing real
files in ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from hostdiag.agent.bundle import BundleWriter
from hostdiag.collector.ctl import (
    CHANNEL_OPTIONS,
    CollectorClient,
    CtlError,
    Options,
    ProgressBar,
    TargetExists,
    clean,
    default_file_name,
    download_bundle,
    format_age,
    format_size,
    format_table,
    format_time,
    main,
    manifest_summary,
)
from hostdiag.v1 import bundle_pb2, fleet_pb2, incident_pb2

NOW_S = 1_764_000_000.0  # 2025-11-24T16:00:00Z
NOW_MS = int(NOW_S * 1000)


# -- a fake collector client ------------------------------------------------------------


def make_incident(**overrides: Any) -> incident_pb2.Incident:
    inc = incident_pb2.Incident(
        id="inc-abcdefgh",
        title="API down",
        severity=incident_pb2.SEVERITY_P1,
        service="api",
        state=incident_pb2.INCIDENT_STATE_OPEN,
        selector=incident_pb2.HostSelector(labels={"role": "api"}, host_ids=["db-1"]),
        window_seconds=300,
        opened_at_unix_ms=NOW_MS,
        opened_by="alice",
        hosts=[
            incident_pb2.HostRequest(host_id="db-1", request_id="req-1",
                                     state=incident_pb2.HOST_REQUEST_STATE_FAILED,
                                     reason="profile 'deep' is not defined", updated_at_unix_ms=NOW_MS + 1000),
            incident_pb2.HostRequest(host_id="web-1", request_id="req-2",
                                     state=incident_pb2.HOST_REQUEST_STATE_ATTACHED,
                                     bundle_id="01890a5d-ac96-774b-bcce-b302099a8057",
                                     updated_at_unix_ms=NOW_MS + 5000),
        ],
        timeline=[
            incident_pb2.TimelineEvent(at_unix_ms=NOW_MS, kind="opened", message="P1 'API down' opened",
                                       actor="alice"),
            incident_pb2.TimelineEvent(at_unix_ms=NOW_MS + 5000, kind="bundle_attached",
                                       message="bundle attached", host_id="web-1"),
        ],
        bundle_ids=["01890a5d-ac96-774b-bcce-b302099a8057"],
    )
    return _override(inc, overrides)


def _override(message: Any, overrides: dict[str, Any]) -> Any:
    for key, value in overrides.items():
        if isinstance(value, list):
            del getattr(message, key)[:]
            getattr(message, key).extend(value)
        else:
            setattr(message, key, value)
    return message


def make_bundle_record(**overrides: Any) -> bundle_pb2.Bundle:
    b = bundle_pb2.Bundle(bundle_id="01890a5d-ac96-774b-bcce-b302099a8057", host_id="web-1",
                          incident_id="inc-abcdefgh", size_bytes=3 * 1024 * 1024, sha256="ab" * 32,
                          created_at_unix_ms=NOW_MS, received_at_unix_ms=NOW_MS + 2000, profile="default",
                          trigger="collector")
    return _override(b, overrides)


@dataclass
class FakeClient:
    address: str = "127.0.0.1:7443"
    incident: incident_pb2.Incident = field(default_factory=make_incident)
    bundles: list[bundle_pb2.Bundle] = field(default_factory=lambda: [make_bundle_record()])
    manifest_json: str = ""
    agents: list[fleet_pb2.AgentInfo] = field(default_factory=list)
    fail: CtlError | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    closed: bool = False

    def _call(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        if self.fail is not None:
            raise self.fail

    def open_incident(self, request: incident_pb2.OpenIncidentRequest) -> incident_pb2.Incident:
        self._call("open", request)
        return self.incident

    def list_incidents(self, state: int = 0, limit: int = 0) -> list[incident_pb2.Incident]:
        self._call("list", (state, limit))
        return [self.incident]

    def get_incident(self, incident_id: str) -> incident_pb2.Incident:
        self._call("get", incident_id)
        return self.incident

    def acknowledge_incident(self, incident_id: str) -> incident_pb2.Incident:
        self._call("ack", incident_id)
        inc = make_incident(state=incident_pb2.INCIDENT_STATE_ACKNOWLEDGED, acknowledged_at_unix_ms=NOW_MS + 60_000)
        return inc

    def post_status_update(self, incident_id: str, message: str) -> incident_pb2.Incident:
        self._call("update", (incident_id, message))
        return self.incident

    def resolve_incident(self, incident_id: str, message: str = "") -> incident_pb2.Incident:
        self._call("resolve", (incident_id, message))
        return make_incident(state=incident_pb2.INCIDENT_STATE_RESOLVED, resolved_at_unix_ms=NOW_MS + 120_000)

    def list_bundles(self, incident_id: str = "", host_id: str = "", limit: int = 0) -> list[bundle_pb2.Bundle]:
        self._call("list_bundles", (incident_id, host_id, limit))
        return list(self.bundles)

    def get_bundle(self, bundle_id: str) -> tuple[bundle_pb2.Bundle, str]:
        self._call("get_bundle", bundle_id)
        return self.bundles[0], self.manifest_json

    def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
        raise AssertionError("not used here")

    def list_agents(self, include_disconnected: bool = False) -> list[fleet_pb2.AgentInfo]:
        self._call("agents", include_disconnected)
        return list(self.agents)

    def close(self) -> None:
        self.closed = True


@dataclass
class Run:
    code: int
    out: str
    err: str
    client: FakeClient
    options: Options | None

    def json(self) -> Any:
        return orjson.loads(self.out)


def run(*argv: str, client: FakeClient | None = None, env: dict[str, str] | None = None) -> Run:
    fake = client or FakeClient()
    seen: dict[str, Options] = {}

    def factory(options: Options) -> FakeClient:
        seen["options"] = options
        return fake

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err, env=env or {}, client_factory=factory, clock=lambda: NOW_S + 30)
    return Run(code, out.getvalue(), err.getvalue(), fake, seen.get("options"))


OPEN = ("incident", "open", "--title", "API down", "--severity", "P1")


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [("P1", 1), ("p2", 2), ("3", 3), ("P4", 4)])
def test_severity_spellings(text: str, value: int) -> None:
    result = run("incident", "open", "--title", "t", "--severity", text, "--host", "h")
    assert result.code == 0, result.err
    assert result.client.calls[0][1].severity == value


@pytest.mark.parametrize(
    "argv,needle",
    [
        (("incident", "open", "--title", "t", "--severity", "P5", "--host", "h"), "argument --severity"),
        (("incident", "open", "--title", "t", "--severity", "high", "--host", "h"), "argument --severity"),
        ((*OPEN, "--select", "role"), "argument --select: expected KEY=VALUE"),
        ((*OPEN, "--select", "=api"), "argument --select"),
        ((*OPEN, "--select", "role=a", "--select", "role=b"), "argument --select: label 'role' given twice"),
        ((*OPEN, "--host", "h", "--window", "-5"), "argument --window"),
        ((*OPEN, "--host", "h", "--window", "0"), "argument --window"),
        ((*OPEN, "--host", "h", "--window", "nan"), "argument --window"),
        ((*OPEN, "--host", "h", "--window", "soon"), "argument --window"),
        ((*OPEN, "--host", ""), "argument --host"),
        (("incident", "open", "--severity", "P1", "--host", "h"), "--title"),
        (("incident", "open", "--title", " ", "--severity", "P1", "--host", "h"), "argument --title"),
        (OPEN, "give at least one --select KEY=VALUE or --host NAME"),
        (("incident", "list", "--state", "closed"), "argument --state"),
        (("incident", "list", "--limit", "0"), "argument --limit"),
        (("bundle", "list", "--limit", "-1"), "argument --limit"),
        (("incident", "update", "inc-x"), "--message"),
        (("incident", "update", "inc-x", "-m", ""), "argument --message"),
        (("incident", "show"), "ID"),
        (("incident",), "required"),
        ((), "required"),
        (("incident", "list", "--collector", "nohost"), "argument --collector: expected HOST:PORT"),
        (("incident", "list", "--collector", "127.0.0.1:0"), "argument --collector: port 0"),
        (("incident", "list", "--collector", "::1:7443"), "argument --collector"),
        (("incident", "list", "--timeout", "-1"), "argument --timeout"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(argv: tuple[str, ...], needle: str) -> None:
    result = run(*argv)
    assert result.code == 2
    assert needle in result.err
    assert result.err.startswith("usage: collectorctl")
    assert "Traceback" not in result.err
    assert result.out == ""
    assert result.client.calls == []  # nothing was sent


def test_bad_collector_in_the_environment_is_named() -> None:
    result = run("incident", "list", env={"HOSTDIAG_COLLECTOR": "collector.example"})
    assert result.code == 2 and "HOSTDIAG_COLLECTOR: expected HOST:PORT" in result.err


def test_collector_address_resolution() -> None:
    assert run("incident", "list").options == Options("127.0.0.1:7443", 5.0, False)
    from_env = run("incident", "list", env={"HOSTDIAG_COLLECTOR": "10.0.0.5:9000"})
    assert from_env.options is not None and from_env.options.collector == "10.0.0.5:9000"
    flag_wins = run("incident", "list", "--collector", "[::1]:7443", env={"HOSTDIAG_COLLECTOR": "10.0.0.5:9000"})
    assert flag_wins.options is not None and flag_wins.options.collector == "[::1]:7443"


def test_common_options_before_or_after_the_command_words() -> None:
    before = run("--collector", "127.0.0.2:1", "--timeout", "2", "--json", "incident", "list")
    after = run("incident", "list", "--collector", "127.0.0.2:1", "--timeout", "2", "--json")
    assert before.options == after.options == Options("127.0.0.2:1", 2.0, True)
    assert before.out == after.out


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help").code == 0
    assert run("bundle", "download", "--help").code == 0
    assert "--force" in capsys.readouterr().out


def test_open_sends_the_whole_request() -> None:
    result = run(*OPEN, "--service", "api", "--select", "role=api", "--select", "zone=eu=1", "--host", "db-1",
                 "--host", "db-2", "--window", "90", "--profile", "deep")
    assert result.code == 0, result.err
    name, request = result.client.calls[0]
    assert name == "open"
    assert request.title == "API down" and request.severity == incident_pb2.SEVERITY_P1
    assert request.service == "api" and request.profile == "deep" and request.window_seconds == 90
    assert dict(request.selector.labels) == {"role": "api", "zone": "eu=1"}
    assert list(request.selector.host_ids) == ["db-1", "db-2"]
    assert result.out == "inc-abcdefgh\n"  # just the id: ID=$(collectorctl incident open ...)
    assert result.err == ""  # no hint: stderr is not a terminal


def test_open_defaults_leave_window_and_profile_to_the_collector() -> None:
    request = run(*OPEN, "--select", "role=api").client.calls[0][1]
    assert request.window_seconds == 0 and request.profile == "" and request.service == ""


# -- output ------------------------------------------------------------------------------


def test_incident_list_table_and_json() -> None:
    result = run("incident", "list", "--state", "open", "--limit", "5")
    assert result.client.calls == [("list", (incident_pb2.INCIDENT_STATE_OPEN, 5))]
    header, row = result.out.splitlines()
    assert header.split() == ["ID", "SEV", "STATE", "OPENED", "BUNDLES", "SERVICE", "TITLE"]
    assert row.split() == ["inc-abcdefgh", "P1", "open", "2025-11-24T16:00:00Z", "1/2", "api", "API", "down"]
    assert header.index("TITLE") == row.index("API down")  # aligned

    doc = run("incident", "list", "--json").json()
    assert isinstance(doc, list) and doc[0]["id"] == "inc-abcdefgh"
    assert doc[0]["opened_at_unix_ms"] == NOW_MS and doc[0]["resolved_at_unix_ms"] is None


def test_incident_show_human() -> None:
    result = run("incident", "show", "inc-abcdefgh")
    assert result.code == 0
    lines = result.out.splitlines()
    fields = {line.split()[0]: line.split(None, 1)[1] for line in lines[:10]}
    assert fields["incident"] == "inc-abcdefgh"
    assert fields["severity"] == "P1" and fields["state"] == "open" and fields["service"] == "api"
    assert fields["selector"] == "role=api, host db-1"
    assert fields["window"] == "300 s"
    assert fields["opened"] == "2025-11-24T16:00:00Z by alice"
    assert fields["acknowledged"] == "-" and fields["resolved"] == "-"
    assert "hosts (2)" in lines
    db = next(line for line in lines if line.startswith("db-1"))
    assert db.split()[:3] == ["db-1", "failed", "-"] and db.endswith("profile 'deep' is not defined")
    web = next(line for line in lines if line.startswith("web-1"))
    assert web.split()[:3] == ["web-1", "attached", "01890a5d-ac96-774b-bcce-b302099a8057"]
    assert "bundles (1)" in lines
    bundle_row = lines[lines.index("bundles (1)") + 2].split()
    assert bundle_row == ["01890a5d-ac96-774b-bcce-b302099a8057", "web-1", "3.0", "MiB", "2025-11-24T16:00:02Z"]
    assert "timeline (2)" in lines
    assert lines[-1].split()[:4] == ["2025-11-24T16:00:05Z", "bundle_attached", "web-1", "-"]
    assert result.client.calls == [("get", "inc-abcdefgh"), ("list_bundles", ("inc-abcdefgh", "", 1000))]


def test_incident_show_json_includes_bundle_records() -> None:
    doc = run("incident", "show", "inc-abcdefgh", "--json").json()
    assert doc["hosts"][0] == {"host_id": "db-1", "request_id": "req-1", "state": "failed",
                               "reason": "profile 'deep' is not defined", "bundle_id": None,
                               "updated_at_unix_ms": NOW_MS + 1000, "expires_at_unix_ms": None}
    assert doc["bundles"][0]["size_bytes"] == 3 * 1024 * 1024
    assert doc["timeline"][0] == {"at_unix_ms": NOW_MS, "kind": "opened", "message": "P1 'API down' opened",
                                  "host_id": None, "actor": "alice"}


def test_incident_without_bundles_asks_for_none() -> None:
    client = FakeClient(incident=make_incident(bundle_ids=[]))
    result = run("incident", "show", "inc-abcdefgh", client=client)
    assert "bundles: none yet" in result.out.splitlines()
    assert [name for name, _ in client.calls] == ["get"]


def test_changes_print_one_line_or_the_incident() -> None:
    assert run("incident", "ack", "inc-abcdefgh").out == "inc-abcdefgh acknowledged at 2025-11-24T16:01:00Z\n"
    updated = run("incident", "update", "inc-abcdefgh", "-m", "rolling back")
    assert updated.out == "inc-abcdefgh: status update posted\n"
    assert updated.client.calls == [("update", ("inc-abcdefgh", "rolling back"))]
    resolved = run("incident", "resolve", "inc-abcdefgh")
    assert resolved.out == "inc-abcdefgh resolved at 2025-11-24T16:02:00Z\n"
    assert resolved.client.calls == [("resolve", ("inc-abcdefgh", ""))]
    assert run("incident", "resolve", "inc-abcdefgh", "--json").json()["state"] == "resolved"


def test_hostile_text_cannot_drive_the_terminal() -> None:
    client = FakeClient(incident=make_incident(title="down\x1b[2J\x1b]0;pwned\x07 now", service="a\rb"))
    result = run("incident", "show", "inc-abcdefgh", client=client)
    assert "\x1b" not in result.out and "\x07" not in result.out and "\r" not in result.out
    assert "down\\x1b[2J" in result.out
    doc = run("incident", "show", "inc-abcdefgh", "--json", client=client).json()
    assert doc["title"] == "down\x1b[2J\x1b]0;pwned\x07 now"  # JSON keeps the exact text


def test_bundle_list_and_filters() -> None:
    result = run("bundle", "list", "--incident", "inc-abcdefgh", "--host", "web-1", "--limit", "3")
    assert result.client.calls == [("list_bundles", ("inc-abcdefgh", "web-1", 3))]
    header, row = result.out.splitlines()
    assert header.split() == ["BUNDLE", "HOST", "INCIDENT", "SIZE", "CREATED", "RECEIVED", "TRIGGER", "STATE"]
    assert row.split() == ["01890a5d-ac96-774b-bcce-b302099a8057", "web-1", "inc-abcdefgh", "3.0", "MiB",
                           "2025-11-24T16:00:00Z", "2025-11-24T16:00:02Z", "collector", "kept"]
    assert run("bundle", "list", client=FakeClient(bundles=[])).out == "no bundles\n"
    assert run("bundle", "list", "--json", client=FakeClient(bundles=[])).out == "[]\n"


MANIFEST = {
    "format_version": 1, "bundle_id": "01890a5d-ac96-774b-bcce-b302099a8057", "host_id": "web-1",
    "agent_version": "0.1.0", "labels": {"role": "api"}, "recorder": "daemon",
    "window": {"start": "2025-11-24T15:55:00Z", "end": "2025-11-24T16:00:00Z", "seconds": 300},
    "members": [{"name": "evidence.json", "size_bytes": 100}, {"name": "logs/app.log", "size_bytes": 2048}],
    "truncations": [{"member": "logs/app.log", "reason": "member cap", "kept_bytes": 2048}],
    "sources": {"processes": {"status": "ok", "duration_s": 0.25, "error": None},
                "probes": {"status": "timeout", "duration_s": 5.0, "error": "http_api: no answer in 5 s"}},
    "redaction": {"bearer": 3, "password": 0},
}


def test_bundle_show_summarizes_the_manifest() -> None:
    client = FakeClient(manifest_json=orjson.dumps(MANIFEST).decode())
    result = run("bundle", "show", "01890a5d-ac96-774b-bcce-b302099a8057", client=client)
    lines = result.out.splitlines()
    fields = {line.split()[0]: line.split(None, 1)[1] for line in lines if line and not line.isupper()
              and len(line.split()) > 1}
    assert fields["bundle"] == "01890a5d-ac96-774b-bcce-b302099a8057"
    assert fields["size"] == "3.0 MiB (3145728 bytes)"
    assert fields["sha256"] == "ab" * 32
    assert fields["agent"] == "0.1.0" and fields["labels"] == "role=api" and fields["recorder"] == "daemon"
    assert fields["window"] == "2025-11-24T15:55:00Z to 2025-11-24T16:00:00Z (300 s)"  # text kept as written
    assert fields["members"] == "2 (2.1 KiB uncompressed)"
    assert fields["truncated"] == "logs/app.log (member cap)"
    assert fields["redactions"] == "bearer 3"
    probes = next(line for line in lines if line.startswith("probes"))
    assert probes.split()[:3] == ["probes", "timeout", "5.000"] and probes.endswith("http_api: no answer in 5 s")

    numeric = {**MANIFEST, "window": {"start": NOW_S - 300.5, "end": NOW_S, "seconds": 300.5}}
    shown = run("bundle", "show", "x", client=FakeClient(manifest_json=orjson.dumps(numeric).decode())).out
    assert "window      2025-11-24T15:54:59Z to 2025-11-24T16:00:00Z (300.5 s)" in shown.splitlines()

    doc = run("bundle", "show", "x", "--json", client=client).json()
    assert doc["manifest"] == MANIFEST
    assert doc["summary"]["members"] == 2 and doc["summary"]["redaction"] == {"bearer": 3, "password": 0}
    assert doc["bundle"]["sha256"] == "ab" * 32


@pytest.mark.parametrize("manifest_json", ["", "not json", "[1, 2]"])
def test_bundle_show_without_a_readable_manifest(manifest_json: str) -> None:
    result = run("bundle", "show", "x", client=FakeClient(manifest_json=manifest_json))
    assert result.code == 0
    assert result.out.splitlines()[-1].startswith("manifest: ")


@pytest.mark.parametrize("garbage", [
    {}, {"members": "x", "sources": [], "window": 5, "labels": None, "truncations": {"a": 1}, "redaction": [1]},
    {"members": [1, {"size_bytes": True}, {"size_bytes": "9"}], "sources": {"a": "ok", "b": {"duration_s": "x"}}},
    {"window": {"start": 1e300, "end": True, "seconds": "long"}},
])
def test_manifest_summary_tolerates_any_shape(garbage: dict[str, Any]) -> None:
    summary = manifest_summary(garbage)
    assert summary["member_bytes"] == 0 and isinstance(summary["sources"], dict)
    client = FakeClient(manifest_json=orjson.dumps(garbage).decode())
    assert run("bundle", "show", "x", client=client).code == 0


def test_agents_list() -> None:
    agents = [
        fleet_pb2.AgentInfo(host_id="db-1", labels={"role": "db", "az": "b"}, agent_version="0.1.0",
                            connected=True, last_heartbeat_unix_ms=NOW_MS + 18_000),
        fleet_pb2.AgentInfo(host_id="web-9", agent_version="0.0.9", connected=False),
    ]
    result = run("agents", "list", "--all", client=FakeClient(agents=agents))
    assert result.client.calls == [("agents", True)]
    header, db, web = result.out.splitlines()
    assert header.split() == ["HOST", "LABELS", "VERSION", "CONNECTED", "LAST", "HEARTBEAT"]
    assert db.split() == ["db-1", "az=b,role=db", "0.1.0", "yes", "12", "s", "ago"]
    assert web.split() == ["web-9", "-", "0.0.9", "no", "never"]
    doc = run("agents", "list", "--json", client=FakeClient(agents=agents)).json()
    assert doc[0]["last_heartbeat_age_s"] == 12.0 and doc[1]["last_heartbeat_age_s"] is None
    assert run("agents", "list").client.calls == [("agents", False)]
    assert run("agents", "list").out == "no agents\n"


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("error,code", [
    (CtlError("cannot reach the collector at 127.0.0.1:7443: connection refused", retryable=True), 1),
    (CtlError("no incident inc-zzzzzzzz"), 1),
    (CtlError("title: must not be empty", 2), 2),
])
def test_client_errors_become_one_line_and_the_exit_code(error: CtlError, code: int) -> None:
    client = FakeClient(fail=error)
    result = run("incident", "show", "inc-zzzzzzzz", client=client)
    assert (result.code, result.err, result.out) == (code, f"collectorctl: {error.message}\n", "")
    assert client.closed


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("status,details,exit_code,message,retryable", [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect\nto all addresses", 1,
     "cannot reach the collector at 10.0.0.1:7443: failed to connect to all addresses", True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", 1,
     "the collector at 10.0.0.1:7443 did not answer in time (Deadline Exceeded)", True),
    (grpc.StatusCode.NOT_FOUND, "no incident with id 'inc-x'", 1, "no incident inc-x", False),
    (grpc.StatusCode.INVALID_ARGUMENT, "severity: must be one of SEVERITY_P1 to SEVERITY_P4", 2,
     "severity: must be one of SEVERITY_P1 to SEVERITY_P4", False),
    (grpc.StatusCode.FAILED_PRECONDITION, "incident inc-x is already resolved", 1,
     "incident inc-x is already resolved", False),
    (grpc.StatusCode.PERMISSION_DENIED, "viewer may not open incidents", 1,
     "the collector refused: viewer may not open incidents", False),
    (grpc.StatusCode.DATA_LOSS, "the stored file is short", 1,
     "the collector answered DATA_LOSS: the stored file is short", False),
    (grpc.StatusCode.INTERNAL, "RST_STREAM", 1, "the collector answered INTERNAL: RST_STREAM", True),
])
def test_grpc_status_mapping(status: grpc.StatusCode, details: str, exit_code: int, message: str,
                             retryable: bool) -> None:
    client = CollectorClient("10.0.0.1:7443")
    error = client.error(FakeRpcError(status, details), not_found="no incident inc-x")
    assert (error.exit_code, error.message, error.retryable) == (exit_code, message, retryable)


def test_metadata_carries_the_actor() -> None:
    assert CollectorClient("h:1", actor="alice").metadata() == [("hostdiag-actor", "alice")]
    assert CollectorClient("h:1", actor="").metadata() == []


def test_channel_options_agree_with_the_collector() -> None:
    from hostdiag.collector.server import KEEPALIVE_OPTIONS

    options = dict(CHANNEL_OPTIONS)
    server = dict(KEEPALIVE_OPTIONS)
    # The collector accepts a ping every min_recv_ping_interval or more.
    assert options["grpc.keepalive_time_ms"] >= server["grpc.http2.min_recv_ping_interval_without_data_ms"]
    assert options["grpc.max_receive_message_length"] == 2 * 1024 * 1024


# -- formatting helpers ------------------------------------------------------------------


def test_format_helpers() -> None:
    assert format_time(0) == "-"
    assert format_time(NOW_MS + 999) == "2025-11-24T16:00:00Z"
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 5 * 1024 * 1024, 3 * 1024**3)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB"]
    assert format_age(0, NOW_S) == "never"
    assert format_age(NOW_MS - 42_400, NOW_S) == "42 s ago"
    assert format_age(NOW_MS + 5000, NOW_S) == "0 s ago"  # clocks disagree: never negative
    assert format_table(("A", "LONGER", "C"), [("xxxx", "y", "last")]).splitlines() == [
        "A     LONGER  C", "xxxx  y       last"]
    assert clean("ok\ttab\x1b[0m\u2028") == "ok\\ttab\\x1b[0m\\u2028"


# -- download ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RealBundle:
    record: bundle_pb2.Bundle
    data: bytes


@pytest.fixture
def real_bundle(tmp_path: Path) -> RealBundle:
    out = tmp_path / "agent"
    out.mkdir()
    writer = BundleWriter(str(out), host_id="web-1", max_member_bytes=1 << 30, max_bundle_bytes=1 << 30)
    with writer:
        writer.write_json("host.json", {"host_id": "web-1"})
        with writer.open("filler.bin") as member:
            member.write(hashlib.shake_256(b"filler").digest(200_000))
        info = writer.finish({"trigger": "agentctl"}, {"host": {}})
    data = Path(info.path).read_bytes()
    record = bundle_pb2.Bundle(bundle_id=info.bundle_id, host_id="web-1", size_bytes=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), created_at_unix_ms=NOW_MS)
    return RealBundle(record, data)


class FakeStream:
    """Serves ``data`` in chunks; ``script`` says what each successive call does.

    A script entry is ``None`` (serve to the end), an int (serve up to that
    byte, then break with a retryable error) or a ``CtlError`` (fail at once).
    """

    def __init__(self, data: bytes, script: list[Any] | None = None, chunk_bytes: int = 16_384) -> None:
        self.data = data
        self.script = list(script or [])
        self.chunk_bytes = chunk_bytes
        self.offsets: list[int] = []

    def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
        self.offsets.append(offset)
        step = self.script.pop(0) if self.script else None
        if isinstance(step, CtlError):
            raise step
        stop = len(self.data) if step is None else step
        while offset < stop:
            chunk = self.data[offset : min(offset + self.chunk_bytes, stop)]
            yield offset, chunk
            offset += len(chunk)
        if step is not None:
            raise CtlError("cannot reach the collector at x: connection reset", retryable=True)


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_download_writes_the_verified_file(real_bundle: RealBundle, out_dir: Path) -> None:
    target = out_dir / "b.tar.zst"
    result = download_bundle(FakeStream(real_bundle.data), real_bundle.record, str(target))
    assert target.read_bytes() == real_bundle.data
    assert (result.size_bytes, result.sha256, result.members, result.resumed) == (
        len(real_bundle.data), real_bundle.record.sha256, 3, 0)  # evidence.json, host.json, filler.bin
    assert files(out_dir) == ["b.tar.zst"]


def test_download_resumes_from_the_temporary_file(real_bundle: RealBundle, out_dir: Path) -> None:
    stream = FakeStream(real_bundle.data, [50_000, 50_000, 120_001])
    sleeps: list[float] = []
    result = download_bundle(stream, real_bundle.record, str(out_dir / "b"), sleep=sleeps.append, backoff_s=0.1)
    assert (out_dir / "b").read_bytes() == real_bundle.data
    # The second attempt made no progress (it broke where the first did); each resume starts where the file ends.
    assert stream.offsets == [0, 50_000, 50_000, 120_001]
    assert result.resumed == 3
    assert sleeps == [0.1, 0.1, 0.1]
    assert files(out_dir) == ["b"]


def test_download_gives_up_after_attempts_without_progress(real_bundle: RealBundle, out_dir: Path) -> None:
    stream = FakeStream(real_bundle.data, [1000] + [1000] * 3)
    with pytest.raises(CtlError, match="gave up after 3 attempts without progress: .*connection reset"):
        download_bundle(stream, real_bundle.record, str(out_dir / "b"), max_attempts=3, sleep=lambda s: None)
    assert stream.offsets == [0, 1000, 1000, 1000]
    assert files(out_dir) == []


def test_a_stream_that_ends_early_is_resumed(real_bundle: RealBundle, out_dir: Path) -> None:
    class EndsEarly(FakeStream):
        def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
            self.offsets.append(offset)
            end = min(offset + 30_000, len(self.data))
            yield offset, self.data[offset:end]

    stream = EndsEarly(real_bundle.data)
    download_bundle(stream, real_bundle.record, str(out_dir / "b"), sleep=lambda s: None, max_attempts=2)
    assert (out_dir / "b").read_bytes() == real_bundle.data
    assert stream.offsets == list(range(0, len(real_bundle.data), 30_000))


@pytest.mark.parametrize("error", [CtlError("no bundle x"), CtlError("bad id", 2)])
def test_permanent_errors_are_not_retried(real_bundle: RealBundle, out_dir: Path, error: CtlError) -> None:
    stream = FakeStream(real_bundle.data, [error])
    with pytest.raises(CtlError) as caught:
        download_bundle(stream, real_bundle.record, str(out_dir / "b"), sleep=lambda s: None)
    assert caught.value is error and stream.offsets == [0]
    assert files(out_dir) == []


def test_wrong_offsets_and_extra_bytes_are_refused(real_bundle: RealBundle, out_dir: Path) -> None:
    class Skips(FakeStream):
        def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
            yield offset + 10, self.data[offset + 10 :]

    with pytest.raises(CtlError, match="for offset 10, expected 0"):
        download_bundle(Skips(real_bundle.data), real_bundle.record, str(out_dir / "b"))

    class TooMuch(FakeStream):
        def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
            yield 0, self.data + b"x"

    with pytest.raises(CtlError, match="more than the bundle's"):
        download_bundle(TooMuch(real_bundle.data), real_bundle.record, str(out_dir / "b"))
    assert files(out_dir) == []


def test_sha256_mismatch_leaves_nothing(real_bundle: RealBundle, out_dir: Path) -> None:
    record = bundle_pb2.Bundle()
    record.CopyFrom(real_bundle.record)
    record.sha256 = "0" * 64
    with pytest.raises(CtlError, match=f"sha256 mismatch: the downloaded file has {real_bundle.record.sha256}, "
                                       f"the collector recorded {'0' * 64}"):
        download_bundle(FakeStream(real_bundle.data), record, str(out_dir / "b"))
    assert files(out_dir) == []


def test_members_that_do_not_verify_leave_nothing(real_bundle: RealBundle, out_dir: Path) -> None:
    """Bytes the collector vouches for (sha256 recorded for them) that are not a valid bundle."""
    data = real_bundle.data[:-200]
    record = bundle_pb2.Bundle(bundle_id=real_bundle.record.bundle_id, size_bytes=len(data),
                               sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(CtlError, match="the bundle does not verify: "):
        download_bundle(FakeStream(data), record, str(out_dir / "b"))
    assert files(out_dir) == []


def test_an_existing_file_is_kept_unless_forced(real_bundle: RealBundle, out_dir: Path) -> None:
    target = out_dir / "b"
    target.write_bytes(b"mine")
    stream = FakeStream(real_bundle.data)
    with pytest.raises(TargetExists, match="already exists .*--force"):
        download_bundle(stream, real_bundle.record, str(target))
    assert stream.offsets == []  # refused before downloading anything
    assert target.read_bytes() == b"mine"
    download_bundle(stream, real_bundle.record, str(target), force=True)
    assert target.read_bytes() == real_bundle.data
    assert files(out_dir) == ["b"]


def test_a_file_that_appears_during_the_download_is_not_replaced(real_bundle: RealBundle, out_dir: Path) -> None:
    target = out_dir / "b"

    class Racing(FakeStream):
        def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
            target.write_bytes(b"someone else's")
            yield from super().download(bundle_id, offset)

    with pytest.raises(TargetExists):
        download_bundle(Racing(real_bundle.data), real_bundle.record, str(target))
    assert target.read_bytes() == b"someone else's"
    assert files(out_dir) == ["b"]


def test_an_unwritable_directory_is_a_clear_error(real_bundle: RealBundle, tmp_path: Path) -> None:
    with pytest.raises(CtlError, match="cannot write .*missing"):
        download_bundle(FakeStream(real_bundle.data), real_bundle.record, str(tmp_path / "missing" / "b"))


class DownloadClient(FakeClient):
    def __init__(self, real: RealBundle, **kwargs: Any) -> None:
        super().__init__(bundles=[real.record], **kwargs)
        self.stream = FakeStream(real.data)

    def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
        return self.stream.download(bundle_id, offset)


def test_download_command_default_name_and_output(real_bundle: RealBundle, out_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(out_dir)
    client = DownloadClient(real_bundle)
    result = run("bundle", "download", real_bundle.record.bundle_id, client=client)
    assert result.code == 0, result.err
    name = f"web-1-20251124T160000Z-{real_bundle.record.bundle_id.replace('-', '')[-8:]}.tar.zst"
    assert files(out_dir) == [name]
    assert result.out.splitlines()[0] == f"bundle   ./{name}"
    assert result.err == ""  # no progress bar: stderr is not a terminal

    again = run("bundle", "download", real_bundle.record.bundle_id, client=DownloadClient(real_bundle))
    assert again.code == 1 and again.err == f"collectorctl: ./{name} already exists (use --force to overwrite it)\n"

    doc = run("bundle", "download", real_bundle.record.bundle_id, "-o", "x.tar.zst", "--json",
              client=DownloadClient(real_bundle)).json()
    assert doc == {"path": "x.tar.zst", "bundle_id": real_bundle.record.bundle_id,
                   "size_bytes": len(real_bundle.data), "sha256": real_bundle.record.sha256,
                   "members_verified": 3, "resumed": 0}


def test_download_command_failure_names_the_bundle(real_bundle: RealBundle, out_dir: Path) -> None:
    client = DownloadClient(real_bundle)
    client.stream.script = [CtlError("the collector answered DATA_LOSS: the stored file is short")]
    result = run("bundle", "download", "b-1", "-o", str(out_dir), client=client)
    assert result.code == 1
    assert result.err == "collectorctl: bundle b-1 not saved: the collector answered DATA_LOSS: the stored file is short\n"
    assert files(out_dir) == []


def test_default_file_name() -> None:
    record = make_bundle_record()
    assert default_file_name(record, "x") == "web-1-20251124T160000Z-099a8057.tar.zst"
    assert default_file_name(bundle_pb2.Bundle(bundle_id="01890a5d-ac96"), "x") == "01890a5d-ac96.tar.zst"
    assert default_file_name(bundle_pb2.Bundle(), "../../etc/passwd") == "______etc_passwd.tar.zst"
    hostile = make_bundle_record(host_id="../../root/.ssh/x")
    assert "/" not in default_file_name(hostile, "x")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_when_enabled() -> None:
    quiet = io.StringIO()
    bar = ProgressBar(quiet, 1000, enabled=False)
    bar.update(500, force=True)
    bar.finish()
    assert quiet.getvalue() == ""

    tty = Tty()
    ticks = iter([0.0, 0.05, 1.0])
    bar = ProgressBar(tty, 2048, enabled=True, width=10, clock=lambda: next(ticks))
    bar.update(512)
    bar.update(1024)  # within 0.1 s of the last draw: skipped
    bar.update(2048)
    bar.finish()
    bar.finish()
    assert tty.getvalue() == "\r[##--------]  25%  512 B / 2.0 KiB\r[##########] 100%  2.0 KiB / 2.0 KiB\n"


def test_progress_and_hints_go_to_a_terminal_only(real_bundle: RealBundle, out_dir: Path) -> None:
    client = DownloadClient(real_bundle)
    out, err = Tty(), Tty()
    code = main(["bundle", "download", "b", "-o", str(out_dir / "b")], out, err, env={},
                client_factory=lambda options: client)
    assert code == 0
    assert err.getvalue().startswith("\r[") and err.getvalue().endswith("\n")
    assert "\r" not in out.getvalue()

    out, err = Tty(), Tty()
    assert main(["incident", "open", "--title", "t", "--severity", "P2", "--host", "db-1"], out, err, env={},
                client_factory=lambda options: FakeClient()) == 0
    assert out.getvalue() == "inc-abcdefgh\n"
    assert err.getvalue().startswith("opened inc-abcdefgh (P1); snapshot requested from 2 host(s): db-1, web-1")

    out, err = Tty(), Tty()
    assert main(["incident", "open", "--json", "--title", "t", "--severity", "P2", "--host", "db-1"], out, err,
                env={}, client_factory=lambda options: FakeClient()) == 0
    assert err.getvalue() == ""


def test_the_actor_is_printable_ascii(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "zoë\x07")
    assert CollectorClient("h:1").metadata() == [("hostdiag-actor", "zo\\xeb")]


def test_the_stream_is_closed_when_a_chunk_is_refused(real_bundle: RealBundle, out_dir: Path) -> None:
    closed: list[bool] = []

    class Tracked(FakeStream):
        def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
            try:
                yield offset + 1, self.data
            finally:
                closed.append(True)

    with pytest.raises(CtlError, match="expected 0"):
        download_bundle(Tracked(real_bundle.data), real_bundle.record, str(out_dir / "b"))
    assert closed == [True]


def test_ctrl_c_during_a_download_leaves_nothing(real_bundle: RealBundle, out_dir: Path) -> None:
    class Interrupted(DownloadClient):
        def download(self, bundle_id: str, offset: int) -> Iterator[tuple[int, bytes]]:
            yield 0, real_bundle.data[:1000]
            raise KeyboardInterrupt

    result = run("bundle", "download", "b", "-o", str(out_dir / "b"), client=Interrupted(real_bundle))
    assert (result.code, result.err) == (130, "collectorctl: interrupted\n")
    assert files(out_dir) == []


def test_expired_bundle_is_listed_as_expired_and_not_downloaded(tmp_path: Path) -> None:
    expired = make_bundle_record(expired_at_unix_ms=NOW_MS + 86_400_000)
    listing = run("bundle", "list", client=FakeClient(bundles=[expired]))
    assert listing.out.splitlines()[1].split()[-2:] == ["expired", "2025-11-25T16:00:00Z"]
    assert run("bundle", "list", "--json", client=FakeClient(bundles=[expired])).json()[0]["expired_at_unix_ms"]
    target = tmp_path / "b.tar.zst"
    result = run("bundle", "download", expired.bundle_id, "-o", str(target), client=FakeClient(bundles=[expired]))
    assert result.code == 1
    assert "expired by retention at 2025-11-25T16:00:00Z" in result.err
    assert not target.exists()
