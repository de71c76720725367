"""Alertmanager notifications: the payload checks (each bad field named), label and severity
mapping, and what a notification does to incidents (open, update by group key, resolved)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from hostdiag.collector.alertmanager import (
    AlertMapping,
    AlertmanagerReceiver,
    PayloadError,
    host_id_from_label,
    parse_payload,
    parse_time_ms,
)
from hostdiag.collector.fleet import AgentSession, Fleet
from hostdiag.collector.http import Request
from hostdiag.collector.incidents import IncidentManager
from hostdiag.collector.metrics import Registry
from hostdiag.collector.store.sqlite import SqliteMetadataStore

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "alertmanager"
NODE_DOWN = "node_down_firing.json"
LATENCY_TWO = "latency_two_hosts_firing.json"
LATENCY_THREE = "latency_three_hosts_firing.json"
LATENCY_RESOLVED = "latency_resolved.json"


def fixture(name: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES / name).read_bytes())


def body(doc: Any) -> bytes:
    return orjson.dumps(doc)


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_every_fixture_parses(name: str) -> None:
    group = parse_payload((FIXTURES / name).read_bytes())
    assert group.version == "4" and group.group_key and group.alerts


def test_fields_are_read() -> None:
    group = parse_payload(body(fixture(NODE_DOWN)))
    assert group.status == "firing" and group.receiver == "hostdiag"
    assert group.group_key == '{}/{severity="critical"}:{alertname="NodeDown"}'
    assert group.common_annotations["summary"] == "Node web-1 is down"
    assert group.external_url == "http://alertmanager.example.internal:9093"
    [alert] = group.alerts
    assert alert.name == "NodeDown" and alert.fingerprint == "3b1d36a8c51d9a4e"
    assert alert.starts_at_ms == 1741944413137 and alert.ends_at_ms == 0  # Go's zero time: not ended


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with ``...`` delete) ``a.b[0].c`` in ``doc``."""
    keys: list[Any] = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        keys.append(name)
        if index:
            keys.append(int(index.rstrip("]")))
    target: Any = doc
    for key in keys[:-1]:
        target = target[key]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("version", ..., "version", "missing"),
        ("version", "3", "version", "version \"4\""),
        ("version", 4, "version", "expected a string"),
        ("groupKey", ..., "groupKey", "missing"),
        ("groupKey", "", "groupKey", "must not be empty"),
        ("truncatedAlerts", -1, "truncatedAlerts", "non-negative integer"),
        ("truncatedAlerts", "0", "truncatedAlerts", "non-negative integer"),
        ("status", "pending", "status", "firing or resolved"),
        ("receiver", None, "receiver", "got null"),
        ("groupLabels", [], "groupLabels", "expected an object"),
        ("commonLabels.severity", 1, "commonLabels.severity", "expected a string"),
        ("commonAnnotations", ..., "commonAnnotations", "missing"),
        ("externalURL", ..., "externalURL", "missing"),
        ("alerts", ..., "alerts", "missing"),
        ("alerts", {}, "alerts", "expected an array"),
        ("alerts", [], "alerts", "must not be empty"),
        ("alerts[0]", "NodeDown", "alerts[0]", "expected an object"),
        ("alerts[0].status", "unknown", "alerts[0].status", "firing or resolved"),
        ("alerts[0].labels", ..., "alerts[0].labels", "missing"),
        ("alerts[0].labels.instance", ["web-1"], "alerts[0].labels.instance", "expected a string"),
        ("alerts[0].annotations", "text", "alerts[0].annotations", "expected an object"),
        ("alerts[0].startsAt", "yesterday", "alerts[0].startsAt", "RFC 3339"),
        ("alerts[0].startsAt", "2025-02-30T10:00:00Z", "alerts[0].startsAt", "not a valid time"),
        ("alerts[0].endsAt", ..., "alerts[0].endsAt", "missing"),
        ("alerts[0].generatorURL", 7, "alerts[0].generatorURL", "expected a string"),
        ("alerts[0].fingerprint", "", "alerts[0].fingerprint", "must not be empty"),
    ],
)
def test_malformed_payloads_name_the_field(path: str, value: Any, field: str, words: str) -> None:
    doc = fixture(NODE_DOWN)
    _set(doc, path, value)
    with pytest.raises(PayloadError) as info:
        parse_payload(body(doc))
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("raw", "field"),
    [(b"", "body"), (b"{not json", "body"), (b"[1, 2]", "body"), (b"\xff\xfe", "body"), (b"null", "body")],
)
def test_non_objects_are_refused(raw: bytes, field: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_payload(raw)
    assert info.value.field == field


def test_missing_truncated_alerts_means_none_and_extra_fields_are_ignored() -> None:
    doc = fixture(NODE_DOWN)
    del doc["truncatedAlerts"]
    doc["orgId"] = 1
    doc["alerts"][0]["silenceURL"] = "http://x"
    assert parse_payload(body(doc)).truncated_alerts == 0


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:01Z", 1000),
        ("2025-03-14T09:26:53.137474286Z", 1741944413137),
        ("2025-03-14T10:26:53.137+01:00", 1741944413137),
        ("2025-03-14T04:26:53.1-05:00", 1741944413100),
        ("0001-01-01T00:00:00Z", 0),
    ],
)
def test_rfc3339_times(text: str, ms: int) -> None:
    assert parse_time_ms(text) == ms


# -- mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("web-1:9100", "web-1"),
        ("web-1", "web-1"),
        ("10.0.0.7:9100", "10.0.0.7"),
        ("[2001:db8::7]:9100", "2001:db8::7"),
        ("https://auth-1.prod.example.internal:8443/healthz", "auth-1.prod.example.internal"),
        ("db-1.internal:5432", "db-1.internal"),
    ],
)
def test_host_ids_from_instance_labels(value: str, host: str) -> None:
    assert host_id_from_label(value) == host


def test_severity_mapping() -> None:
    mapping = AlertMapping()
    assert mapping.severity_of({"severity": "critical"}) == 1
    assert mapping.severity_of({"severity": "Error"}) == 2
    assert mapping.severity_of({"severity": "high"}) == 2
    assert mapping.severity_of({"severity": "warning"}) == 3
    assert mapping.severity_of({"severity": "info"}) == 4
    assert mapping.severity_of({"severity": "none"}) is None
    assert mapping.severity_of({}) is None
    custom = AlertMapping(severity_label="priority", severities={"page": 1}, default_severity=2)
    assert custom.severity_of({"priority": "page"}) == 1 and custom.severity_of({"severity": "critical"}) is None


# -- incidents --------------------------------------------------------------------------------


class Env:
    def __init__(self, root: Path, clock: Any, mapping: AlertMapping | None = None) -> None:
        self.store = SqliteMetadataStore(str(root / "collector.db"))
        self.fleet = Fleet()
        self.incidents = IncidentManager(self.store, self.fleet, clock=clock)
        self.registry = Registry()
        self.results = self.registry.counter("results", "test", ["result"])
        self.receiver = AlertmanagerReceiver(self.incidents, self.store, mapping, results=self.results)

    def connect(self, host_id: str, **labels: str) -> AgentSession:
        session = AgentSession(host_id=host_id, labels=labels, agent_version="t", profiles=("default",),
                               capabilities=(), max_window_s=0, boot_id="", peer="", connected_at_ms=1,
                               queue_length=8)
        self.fleet.register(session)
        return session

    async def post(self, doc: Any) -> tuple[int, dict[str, Any]]:
        request = Request("POST", "/api/v1/alertmanager", "/api/v1/alertmanager", "HTTP/1.1",
                          {"content-type": "application/json"})
        status, headers, payload = await self.receiver.handle_http(request, body(doc))
        assert headers["Content-Type"] == "application/json"
        return status, orjson.loads(payload)

    async def timeline(self, incident_id: str) -> list[tuple[str, str]]:
        return [(e.kind, e.message) for e in (await self.incidents.get(incident_id)).events]


def run(tmp_path: Path, clock: Any, test: Callable[[Env], Awaitable[None]], mapping: AlertMapping | None = None) -> None:
    async def main() -> None:
        env = Env(tmp_path, clock, mapping)
        await env.store.open()
        try:
            await test(env)
        finally:
            await env.store.close()

    asyncio.run(main())


def test_firing_group_opens_an_incident_and_asks_the_host(tmp_path: Path, clock: Any) -> None:
    async def test(env: Env) -> None:
        agent = env.connect("web-1", role="api")
        status, answer = await env.post(fixture(NODE_DOWN))
        assert status == 200 and answer["action"] == "opened" and answer["severity"] == "P1"
        view = await env.incidents.get(answer["incident_id"])
        inc = view.incident
        assert (inc.title, inc.severity, inc.service, inc.state) == ("Node web-1 is down", 1, "checkout", "open")
        assert inc.selector_host_ids == ("web-1",) and dict(inc.selector_labels) == {"service": "checkout"}
        assert inc.opened_by == "alertmanager"
        assert inc.alert_group_key == '{}/{severity="critical"}:{alertname="NodeDown"}'
        assert inc.severity_set_at_ms == inc.opened_at_ms
        assert [r.host_id for r in view.requests] == ["web-1"]
        command = agent.queue.get_nowait()
        assert command.incident_id == inc.id
        kinds = [k for k, _ in await env.timeline(inc.id)]
        assert kinds == ["opened", "alerts_firing"]
        assert (await env.timeline(inc.id))[1][1] == "1 alert(s) firing: NodeDown (web-1:9100)"
        assert env.results.value(result="opened") == 1

    run(tmp_path, clock, test)


def test_same_group_updates_the_open_incident(tmp_path: Path, clock: Any) -> None:
    async def test(env: Env) -> None:
        _, first = await env.post(fixture(LATENCY_TWO))
        inc_id = first["incident_id"]
        assert first["severity"] == "P3" and sorted(first["hosts"]) == [
            "api-1.prod.example.internal", "api-2.prod.example.internal"]
        agent = env.connect("api-3.prod.example.internal")
        clock.advance(300)
        status, second = await env.post(fixture(LATENCY_THREE))
        assert status == 200 and second == {"action": "updated", "incident_id": inc_id,
                                            "hosts_added": ["api-3.prod.example.internal"]}
        assert agent.queue.get_nowait().incident_id == inc_id
        view = await env.incidents.get(inc_id)
        assert view.incident.severity == 3  # an alert never changes the severity ...
        events = await env.timeline(inc_id)
        assert events[-2] == ("host_added", "named by alert HighRequestLatency")
        # ... it only says so.
        assert events[-1] == ("alerts_firing", "1 new alert(s) firing: HighRequestLatency "
                              "(api-3.prod.example.internal:8080); alert severity P1 is above the incident's P3")
        assert len(await env.store.list_alerts(inc_id)) == 3

        # Alertmanager repeats the notification: nothing new to say.
        before = len(events)
        assert (await env.post(fixture(LATENCY_THREE)))[1]["action"] == "unchanged"
        assert len(await env.timeline(inc_id)) == before
        assert len([v for v in await env.incidents.list()]) == 1

    run(tmp_path, clock, test)


def test_resolved_notification_adds_an_event_and_leaves_the_incident_open(tmp_path: Path, clock: Any) -> None:
    async def test(env: Env) -> None:
        _, first = await env.post(fixture(LATENCY_TWO))
        inc_id = first["incident_id"]
        status, answer = await env.post(fixture(LATENCY_RESOLVED))
        assert status == 200 and answer["action"] == "resolved_noted"
        view = await env.incidents.get(inc_id)
        assert view.incident.state == "open"
        kind, message = (await env.timeline(inc_id))[-1]
        assert kind == "alerts_resolved" and message.startswith("2 alert(s) resolved: HighRequestLatency")
        assert message.endswith("the incident stays open until someone resolves it")
        assert {a.status for a in await env.store.list_alerts(inc_id)} == {"resolved"}
        # The same alert firing again is news.
        _, again = await env.post(fixture(LATENCY_TWO))
        assert again["action"] == "updated" and again["hosts_added"] == []
        assert (await env.timeline(inc_id))[-1][1].startswith("2 new alert(s) firing")

    run(tmp_path, clock, test)


def test_a_resolved_incident_is_not_reused(tmp_path: Path, clock: Any) -> None:
    async def test(env: Env) -> None:
        _, first = await env.post(fixture(NODE_DOWN))
        await env.incidents.resolve(first["incident_id"], "rebooted", actor="alice")
        _, resolved = await env.post(_resolved(fixture(NODE_DOWN)))
        assert resolved["action"] == "ignored"
        _, second = await env.post(fixture(NODE_DOWN))
        assert second["action"] == "opened" and second["incident_id"] != first["incident_id"]

    run(tmp_path, clock, test)


def _resolved(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["status"] = "resolved"
    for alert in doc["alerts"]:
        alert["status"] = "resolved"
        alert["endsAt"] = "2025-03-14T10:00:00Z"
    return doc


def test_selector_from_a_service_label_alone(tmp_path: Path, clock: Any) -> None:
    async def test(env: Env) -> None:
        await env.store.upsert_agent(_agent("pay-1", service="payments"))
        await env.store.upsert_agent(_agent("web-1", service="checkout"))
        _, answer = await env.post(fixture("error_rate_service_only_firing.json"))
        view = await env.incidents.get(answer["incident_id"])
        assert dict(view.incident.selector_labels) == {"service": "payments"}
        assert view.incident.selector_host_ids == () and view.incident.severity == 2
        assert [r.host_id for r in view.requests] == ["pay-1"]

    run(tmp_path, clock, test)


def _agent(host_id: str, **labels: str) -> Any:
    from hostdiag.collector.store.base import AgentRecord

    return AgentRecord(host_id=host_id, labels=labels, last_seen_ms=1)


def test_configured_label_mapping(tmp_path: Path, clock: Any) -> None:
    mapping = AlertMapping(host_labels=("nodename",), selector_labels=("team",), service_label="team",
                           severity_label="priority", severities={"p1": 1}, default_severity=4)

    async def test(env: Env) -> None:
        doc = fixture(NODE_DOWN)
        doc["alerts"][0]["labels"].update(nodename="web-9", priority="P1")
        doc["commonLabels"]["team"] = "sre"
        _, answer = await env.post(doc)
        inc = (await env.incidents.get(answer["incident_id"])).incident
        assert inc.selector_host_ids == ("web-9",) and dict(inc.selector_labels) == {"team": "sre"}
        assert inc.service == "sre" and inc.severity == 1
        doc = fixture(LATENCY_TWO)
        for alert in doc["alerts"]:
            alert["labels"]["nodename"] = alert["labels"]["instance"].split(":")[0]
        _, answer = await env.post(doc)
        assert (await env.incidents.get(answer["incident_id"])).incident.severity == 4  # nothing mapped

    run(tmp_path, clock, test, mapping)


def test_title_without_a_summary(tmp_path: Path, clock: Any) -> None:
    async def test(env: Env) -> None:
        doc = fixture(LATENCY_TWO)
        del doc["commonAnnotations"]["summary"]
        _, answer = await env.post(doc)
        assert (await env.incidents.get(answer["incident_id"])).incident.title == "HighRequestLatency"

    run(tmp_path, clock, test)


def test_no_host_to_ask_is_422_and_changes_nothing(tmp_path: Path, clock: Any) -> None:
    async def test(env: Env) -> None:
        status, answer = await env.post(fixture("watchdog_no_host_firing.json"))
        assert status == 422 and "no alert names a host" in answer["error"]
        assert await env.incidents.list() == []

    run(tmp_path, clock, test)


def test_malformed_payload_is_400_and_changes_nothing(tmp_path: Path, clock: Any) -> None:
    async def test(env: Env) -> None:
        doc = fixture(NODE_DOWN)
        doc["alerts"][0]["labels"]["severity"] = 1
        status, answer = await env.post(doc)
        assert status == 400 and answer["field"] == "alerts[0].labels.severity"
        assert await env.incidents.list() == []
        assert env.results.value(result="rejected") == 1

    run(tmp_path, clock, test)
