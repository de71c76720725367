"""Every default rule against an evidence fixture (tests/fixtures/evidence/<rule>.json).

Each case is one host reporting: the finding the rule makes, its explanation
with the evidence values, and the incident suggestion that follows (host
rules on one host are capped at P3; component probes may say P1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostdiag.collector.signals.rules import load_rules

REPO = Path(__file__).resolve().parents[4]

# fixture → (rule, finding severity, finding explanation, suggestion text)
CASES = {
    "probe-api-down": (
        "component-down-everywhere", 1,
        "api down: api-health probe failing on 1/1 hosts for 3 min (uptime 0%)",
        "Suggest P1: api down: api-health probe failing on 1/1 hosts for 3 min (uptime 0%); "
        "see docs/troubleshooting/api.md",
    ),
    "probe-database-down": (
        "component-down-everywhere", 1,
        "database down: orders-db probe failing on 1/1 hosts for 10 min (uptime 0%)",
        "Suggest P1: database down: orders-db probe failing on 1/1 hosts for 10 min (uptime 0%); "
        "see docs/troubleshooting/database.md",
    ),
    "probe-other-down": (
        "probe-failing", 3, "search-backend probe failing for 5 min (uptime 10%)",
        "Suggest P3: search-backend probe failing for 5 min (uptime 10%) on web-1; see docs/troubleshooting/api.md",
    ),
    "probe-other-critical-down": (
        "critical-probe-failing", 2,
        "search-backend probe (critical for this host's role) failing for 5 min (uptime 10%)",
        "Suggest P3: search-backend probe (critical for this host's role) failing for 5 min (uptime 10%) on web-1 "
        "(P2 rule on a single host: at most P3); see docs/troubleshooting/api.md",
    ),
    "filesystem-space-low": (
        "filesystem-space-low", 3, "/ has 4.2% space free (1.9 GiB)",
        "Suggest P3: / has 4.2% space free (1.9 GiB) on web-1; see docs/troubleshooting/host.md",
    ),
    "filesystem-space-critical": (
        "filesystem-space-critical", 2, "/var/lib/postgresql has 2.1% space free (10.0 GiB)",
        "Suggest P3: /var/lib/postgresql has 2.1% space free (10.0 GiB) on web-1 (P2 rule on a single host: "
        "at most P3); see docs/troubleshooting/host.md",
    ),
    "filesystem-inodes-low": (
        "filesystem-inodes-low", 3, "/ has 4.0% inodes free",
        "Suggest P3: / has 4.0% inodes free on web-1; see docs/troubleshooting/host.md",
    ),
    "filesystem-inodes-critical": (
        "filesystem-inodes-critical", 2, "/ has 1.5% inodes free",
        "Suggest P3: / has 1.5% inodes free on web-1 (P2 rule on a single host: at most P3); "
        "see docs/troubleshooting/host.md",
    ),
    "fd-exhaustion-system": (
        "fd-exhaustion-system", 2, "94% of the system's file handles in use (943000 of 1000000)",
        "Suggest P3: 94% of the system's file handles in use (943000 of 1000000) on web-1 (P2 rule on a single "
        "host: at most P3); see docs/troubleshooting/host.md",
    ),
    "fd-exhaustion-process": (
        "fd-exhaustion-process", 3, "gunicorn (pid 2210) has 1003 of its 1024 file descriptors open (98%)",
        "Suggest P3: gunicorn (pid 2210) has 1003 of its 1024 file descriptors open (98%) on web-1; "
        "see docs/troubleshooting/host.md",
    ),
    "memory-available-low": (
        "memory-available-low", 3, "only 7.5% of memory available (614.4 MiB of 8.0 GiB)",
        "Suggest P3: only 7.5% of memory available (614.4 MiB of 8.0 GiB) on web-1; "
        "see docs/troubleshooting/host.md",
    ),
    "memory-available-critical": (
        "memory-available-critical", 2, "only 3.1% of memory available (256.0 MiB of 8.0 GiB)",
        "Suggest P3: only 3.1% of memory available (256.0 MiB of 8.0 GiB) on web-1 (P2 rule on a single host: "
        "at most P3); see docs/troubleshooting/host.md",
    ),
    "memory-pressure": (
        "memory-pressure", 3, "memory pressure: some tasks stalled on memory 23.4% of the last 10 s",
        "Suggest P3: memory pressure: some tasks stalled on memory 23.4% of the last 10 s on web-1; "
        "see docs/troubleshooting/host.md",
    ),
    "memory-pressure-full": (
        "memory-pressure-full", 2, "memory pressure: all non-idle tasks stalled on memory 12.5% of the last 10 s",
        "Suggest P3: memory pressure: all non-idle tasks stalled on memory 12.5% of the last 10 s on web-1 "
        "(P2 rule on a single host: at most P3); see docs/troubleshooting/host.md",
    ),
    "oom-kill": (
        "oom-kill", 3, "1 OOM kill(s) in the window (victims: report-worker)",
        "Suggest P3: 1 OOM kill(s) in the window (victims: report-worker) on web-1; "
        "see docs/troubleshooting/host.md",
    ),
    "oom-kill-critical-process": (
        "oom-kill-critical-process", 2, "the OOM killer killed gunicorn (pid 2210), a declared critical process",
        "Suggest P3: the OOM killer killed gunicorn (pid 2210), a declared critical process on web-1 (P2 rule on a "
        "single host: at most P3); see docs/troubleshooting/host.md",
    ),
    "cpu-load-saturated": (
        "cpu-load-saturated", 3, "load above 2.3 per CPU for the whole window (load1 now 11.3 on 4 CPUs)",
        "Suggest P3: load above 2.3 per CPU for the whole window (load1 now 11.3 on 4 CPUs) on web-1; "
        "see docs/troubleshooting/host.md",
    ),
    "cpu-pressure": (
        "cpu-pressure", 3, "CPU pressure: runnable tasks waited for a CPU 72% of the last 10 s",
        "Suggest P3: CPU pressure: runnable tasks waited for a CPU 72% of the last 10 s on web-1; "
        "see docs/troubleshooting/host.md",
    ),
    "crash-loop": (
        "crash-loop", 2, "gunicorn restarted 4 times in the last 5 minutes (crash loop)",
        "Suggest P3: gunicorn restarted 4 times in the last 5 minutes (crash loop) on web-1 (P2 rule on a single "
        "host: at most P3); see docs/troubleshooting/host.md",
    ),
    "unit-crash-loop": (
        "unit-crash-loop", 2,
        "checkout-worker.service is waiting to be restarted again after 7 restarts (crash loop)",
        "Suggest P3: checkout-worker.service is waiting to be restarted again after 7 restarts (crash loop) on "
        "web-1 (P2 rule on a single host: at most P3); see docs/troubleshooting/host.md",
    ),
    "declared-process-down": (
        "declared-process-down", 2, "gunicorn is not running (declared in [expect] processes)",
        "Suggest P3: gunicorn is not running (declared in [expect] processes) on web-1 (P2 rule on a single host: "
        "at most P3); see docs/troubleshooting/host.md",
    ),
    "declared-port-closed": (
        "declared-port-closed", 2, "nothing listens on TCP port 8080 (declared in [expect] ports)",
        "Suggest P3: nothing listens on TCP port 8080 (declared in [expect] ports) on web-1 (P2 rule on a single "
        "host: at most P3); see docs/troubleshooting/host.md",
    ),
    "error-burst": (
        "error-burst", 3,
        "/var/log/checkout/app.log: 48 error lines in the last minute against a median of 2 per minute before",
        "Suggest P3: /var/log/checkout/app.log: 48 error lines in the last minute against a median of 2 per minute "
        "before on web-1; see docs/troubleshooting/host.md",
    ),
}


def test_every_default_rule_has_a_fixture_case() -> None:
    covered = {case[0] for case in CASES.values()}
    # component-down-somewhere needs several hosts: tests/unit/collector/signals/test_combine.py.
    assert {r.name for r in load_rules().rules} - covered == {"component-down-somewhere"}


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_fixture_fires_its_rule(fixture: str, default_rules, evidence, suggest) -> None:
    rule, severity, explanation, suggestion_text = CASES[fixture]
    result = suggest(default_rules, {"web-1": evidence(fixture)})
    live = [f for f in result.findings if not f.inhibited]
    assert [f.rule for f in live] == [rule], [(f.rule, f.explanation) for f in result.findings]
    finding = live[0]
    assert finding.severity == severity
    assert finding.explanation == explanation
    assert result.explanation == suggestion_text
    assert result.rule == rule
    assert (result.hosts_selected, result.hosts_reporting, result.hosts_affected) == (1, 1, 1)
    assert finding.guide in result.explanation
    # The finding carries the evidence values it read.
    assert json.loads(finding.evidence_json)


@pytest.mark.parametrize("fixture", ["healthy", "probe-api-down-briefly", "error-steady-noise"])
def test_quiet_fixtures_fire_nothing(fixture: str, default_rules, evidence, suggest) -> None:
    result = suggest(default_rules, {"web-1": evidence(fixture)})
    assert result.severity == 0
    assert result.findings == ()
    assert result.explanation == "No rule fired on the 1/1 reporting hosts"


def test_finding_evidence_names_the_values_read(default_rules, evidence, suggest) -> None:
    result = suggest(default_rules, {"web-1": evidence("filesystem-space-critical")})
    critical = next(f for f in result.findings if f.rule == "filesystem-space-critical")
    values = json.loads(critical.evidence_json)
    assert values["mount"] == "/var/lib/postgresql"
    assert values["key"] == "/var/lib/postgresql"
    assert values["used_pct"] == 97.9
    assert round(values["free_pct"], 1) == 2.1
    assert values["fstype"] == "xfs"


def test_space_critical_inhibits_space_low_on_the_same_mount(default_rules, evidence, suggest) -> None:
    result = suggest(default_rules, {"web-1": evidence("filesystem-space-critical")})
    by_rule = {f.rule: f for f in result.findings}
    assert by_rule["filesystem-space-low"].inhibited
    assert not by_rule["filesystem-space-critical"].inhibited


def test_oom_of_critical_process_hides_the_plain_oom_finding(default_rules, evidence, suggest) -> None:
    result = suggest(default_rules, {"web-1": evidence("oom-kill-critical-process")})
    by_rule = {f.rule: f for f in result.findings}
    assert by_rule["oom-kill"].inhibited
    assert by_rule["oom-kill"].explanation == "2 OOM kill(s) in the window (victims: report-worker, gunicorn)"


def test_probe_failing_shorter_than_for_s_does_not_fire(default_rules, evidence, suggest) -> None:
    brief = evidence("probe-api-down-briefly")
    assert brief["probes"]["api-health"]["last_ok"] is False
    assert suggest(default_rules, {"web-1": brief}).severity == 0


def test_every_default_rule_names_its_threshold_source_and_an_existing_guide(default_rules) -> None:
    for rule in default_rules.rules:
        assert len(rule.source) > 20, rule.name
        assert rule.description, rule.name
        pages = {"api", "database", "websocket"} if "{" in rule.guide.text else {None}
        for page in pages:
            path = rule.guide.text.replace("{guide_page}", page) if page else rule.guide.text
            assert (REPO / path).is_file(), (rule.name, path)


def test_every_default_rule_is_documented(default_rules) -> None:
    doc = (REPO / "docs" / "signal-rules.md").read_text()
    for rule in default_rules.rules:
        assert f"`{rule.name}`" in doc, rule.name
