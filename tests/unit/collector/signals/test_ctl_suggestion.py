"""collectorctl's view of a suggestion: the show block, the JSON object, the severity command."""

from __future__ import annotations

import io
import json
from typing import Any

import orjson

from hostdiag.collector import ctl
from hostdiag.v1 import incident_pb2 as ipb


def incident(**kw: Any) -> ipb.Incident:
    return ipb.Incident(id="inc-abcdefgh", title="checkout down", severity=ipb.SEVERITY_P3,
                        state=ipb.INCIDENT_STATE_OPEN, **kw)


SUGGESTION = ipb.Suggestion(
    severity=ipb.SEVERITY_P1,
    explanation="Suggest P1: api down: api-health probe failing on 2/2 hosts for 3 min (uptime 0%); "
                "see docs/troubleshooting/api.md",
    guide="docs/troubleshooting/api.md",
    evaluated_at_unix_ms=1767225600000,
    hosts_selected=3, hosts_reporting=2, hosts_affected=2,
    findings=[
        ipb.SignalFinding(rule="component-down-everywhere", severity=ipb.SEVERITY_P1,
                          explanation="api down: api-health probe failing on 2/2 hosts for 3 min (uptime 0%)",
                          guide="docs/troubleshooting/api.md",
                          evidence_json=json.dumps({"affected": 2, "hosts": {"web-1": {}, "web-2": {}},
                                                    "affected_hosts": ["web-1", "web-2"]})),
        ipb.SignalFinding(rule="filesystem-space-low", severity=ipb.SEVERITY_P3, host_id="web-1",
                          explanation="/ has 4.2% space free (1.9 GiB)", inhibited=True,
                          evidence_json=json.dumps({"free_pct": 4.2, "mount": "/"})),
    ],
)


def test_show_prints_the_suggestion_next_to_the_severity() -> None:
    text = ctl.render_incident(incident(suggestion=SUGGESTION))
    assert "severity      P3" in text
    assert ("suggested  P1 (the severity stays P3 until a responder sets it: "
            "collectorctl incident severity inc-abcdefgh P1)") in text
    assert "why        Suggest P1: api down: api-health probe failing on 2/2 hosts" in text
    assert "guide      docs/troubleshooting/api.md" in text
    assert "hosts      3 selected, 2 reporting, 2 affected" in text
    assert "findings (2)" in text
    rows = [line for line in text.splitlines() if "component-down-everywhere" in line or "filesystem-space" in line]
    assert rows[0].startswith("P1 ") and "(all)" in rows[0]
    assert "affected=2 hosts={2 keys} affected_hosts=[web-1,web-2]" in rows[0]
    assert rows[1].startswith("P3 (inhibited)") and "web-1" in rows[1] and "free_pct=4.2 mount=/" in rows[1]


def test_show_without_a_suggestion_says_when_one_comes() -> None:
    text = ctl.render_incident(incident())
    assert "suggestion: none yet (evaluated when a bundle attaches)" in text
    assert ctl.incident_to_dict(incident())["suggestion"] is None


def test_nothing_fired_and_same_severity_read_plainly() -> None:
    quiet = ipb.Suggestion(explanation="No rule fired on the 2/2 reporting hosts", hosts_selected=2,
                           hosts_reporting=2)
    assert "suggested  none (the severity is P3; only a responder changes it)" in ctl.render_incident(
        incident(suggestion=quiet))
    doc = ctl.incident_to_dict(incident(suggestion=quiet))["suggestion"]
    assert doc["severity"] is None and doc["findings"] == [] and doc["guide"] is None


def test_json_has_the_findings_with_their_evidence() -> None:
    doc = ctl.incident_to_dict(incident(suggestion=SUGGESTION))["suggestion"]
    assert doc["severity"] == "P1"
    assert doc["findings"][0]["host_id"] is None
    assert doc["findings"][0]["evidence"]["affected_hosts"] == ["web-1", "web-2"]
    assert doc["findings"][1] == {
        "rule": "filesystem-space-low", "severity": "P3", "host_id": "web-1",
        "explanation": "/ has 4.2% space free (1.9 GiB)", "guide": None, "inhibited": True,
        "evidence": {"free_pct": 4.2, "mount": "/"},
    }


class FakeClient:
    address = "fake"

    def __init__(self) -> None:
        self.severity = ipb.SEVERITY_P3
        self.calls: list[tuple[str, int, str]] = []

    def get_incident(self, incident_id: str) -> ipb.Incident:
        return ipb.Incident(id=incident_id, severity=self.severity)  # type: ignore[arg-type]

    def set_incident_severity(self, incident_id: str, severity: int, reason: str = "") -> ipb.Incident:
        self.calls.append((incident_id, severity, reason))
        self.severity = severity
        return ipb.Incident(id=incident_id, severity=severity)  # type: ignore[arg-type]

    def close(self) -> None:
        pass


def run(client: FakeClient, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = ctl.main(list(argv), out=out, err=err, env={}, client_factory=lambda _options: client)  # type: ignore[arg-type,return-value]
    return code, out.getvalue(), err.getvalue()


def test_severity_command() -> None:
    client = FakeClient()
    assert run(client, "incident", "severity", "inc-abcdefgh", "p1", "-r", "every user") == (
        0, "inc-abcdefgh severity P3 → P1\n", "")
    assert client.calls == [("inc-abcdefgh", 1, "every user")]
    assert run(client, "incident", "severity", "inc-abcdefgh", "1")[1] == "inc-abcdefgh severity unchanged (P1)\n"
    code, out, _ = run(client, "incident", "severity", "inc-abcdefgh", "P2", "--json")
    assert code == 0 and orjson.loads(out)["severity"] == "P2"
    code, out, err = run(client, "incident", "severity", "inc-abcdefgh")
    assert code == 2 and "the following arguments are required: P1..P4" in err
    code, out, err = run(client, "incident", "severity", "inc-abcdefgh", "P0")
    assert code == 2 and "invalid severity 'P0' (choose P1, P2, P3 or P4)" in err
