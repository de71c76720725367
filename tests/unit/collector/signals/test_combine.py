"""Several hosts per incident: breadth, the single-host cap, inhibition and unknown hosts."""

from __future__ import annotations

import json

from hostdiag.collector.signals.rules import parse_rules


def test_probe_down_on_every_reporting_host_is_p1_and_silent_hosts_are_unknown(default_rules, evidence, suggest) -> None:
    hosts = {h: evidence("probe-api-down", h) for h in ("web-1", "web-2", "web-3")}
    result = suggest(default_rules, hosts, selected=["web-1", "web-2", "web-3", "web-4"])
    assert result.severity == 1
    assert result.explanation == (
        "Suggest P1: api down: api-health probe failing on 3/4 hosts for 3 min (uptime 0%); "
        "1 host of 4 not reporting; see docs/troubleshooting/api.md"
    )
    assert (result.hosts_selected, result.hosts_reporting, result.hosts_affected) == (4, 3, 3)
    top = result.findings[0]
    assert (top.rule, top.host_id, top.inhibited) == ("component-down-everywhere", "", False)
    values = json.loads(top.evidence_json)
    assert values["affected_hosts"] == ["web-1", "web-2", "web-3"]
    assert (values["affected"], values["observed"], values["selected"], values["unknown"]) == (3, 3, 4, 1)
    assert values["hosts"]["web-2"]["uptime_pct"] == 0.0
    # The weaker tier of the same family is listed but inhibited.
    some = next(f for f in result.findings if f.rule == "component-down-somewhere")
    assert some.inhibited


def test_probe_down_on_some_hosts_is_p2(default_rules, evidence, suggest) -> None:
    hosts = {"web-1": evidence("probe-api-down", "web-1"), "web-2": evidence("healthy", "web-2")}
    result = suggest(default_rules, hosts)
    assert result.severity == 2
    assert result.explanation == (
        "Suggest P2: api degraded: api-health probe failing on 1 of the 2 hosts that run it for 3 min (uptime 0%); "
        "see docs/troubleshooting/api.md"
    )
    assert [f.rule for f in result.findings] == ["component-down-somewhere"]
    assert result.hosts_affected == 1


def test_a_host_without_the_probe_does_not_stop_p1(default_rules, evidence, suggest) -> None:
    other = evidence("healthy", "batch-1")
    del other["probes"]["api-health"]
    hosts = {"web-1": evidence("probe-api-down", "web-1"), "web-2": evidence("probe-api-down", "web-2"),
             "batch-1": other}
    result = suggest(default_rules, hosts)
    assert result.severity == 1
    assert "failing on 2/3 hosts" in result.explanation


def test_values_that_differ_between_hosts_show_as_a_range(default_rules, evidence, suggest) -> None:
    slow = evidence("probe-api-down", "web-2")
    slow["probes"]["api-health"].update(uptime_ratio=0.4, failing_since=slow["collected_at"] - 150)
    hosts = {"web-1": evidence("probe-api-down", "web-1"), "web-2": slow}
    result = suggest(default_rules, hosts)
    # The duration is the shortest (every affected host has failed at least that long).
    assert "failing on 2/2 hosts for 2 min (uptime 0–40%)" in result.explanation


def test_host_rule_on_one_of_many_hosts_stays_a_host_problem(default_rules, evidence, suggest) -> None:
    hosts = {"web-1": evidence("filesystem-space-critical", "web-1")}
    hosts.update({f"web-{i}": evidence("healthy", f"web-{i}") for i in range(2, 5)})
    result = suggest(default_rules, hosts)
    assert result.severity == 3
    assert result.explanation.endswith(
        "on web-1 (P2 rule on a single host: at most P3); see docs/troubleshooting/host.md"
    )
    assert (result.hosts_selected, result.hosts_reporting, result.hosts_affected) == (4, 4, 1)


def test_host_p3_on_half_the_reporting_hosts_is_raised_to_p2(default_rules, evidence, suggest) -> None:
    hosts = {"web-1": evidence("memory-available-low", "web-1"), "web-2": evidence("memory-available-low", "web-2"),
             "web-3": evidence("healthy", "web-3"), "web-4": evidence("healthy", "web-4")}
    result = suggest(default_rules, hosts)
    assert result.severity == 2
    assert result.explanation == (
        "Suggest P2: only 7.5% of memory available (614.4 MiB of 8.0 GiB) on web-1; the rule matches on 2/4 hosts "
        "(web-1, web-2), at least half of the 4 reporting: raised from P3; see docs/troubleshooting/host.md"
    )


def test_host_p3_on_fewer_than_half_is_not_raised(default_rules, evidence, suggest) -> None:
    hosts = {f"web-{i}": evidence("memory-available-low" if i <= 2 else "healthy", f"web-{i}") for i in range(1, 6)}
    result = suggest(default_rules, hosts)
    assert result.severity == 3
    assert "the rule matches on 2/5 hosts (web-1, web-2)" in result.explanation
    assert "raised" not in result.explanation


def test_unknown_hosts_are_not_counted_as_healthy(default_rules, evidence, suggest) -> None:
    # Two of four hosts answered, both low on memory: half of the known hosts, not half of four
    # with two assumed fine.
    hosts = {"web-1": evidence("memory-available-low", "web-1"), "web-2": evidence("memory-available-low", "web-2")}
    result = suggest(default_rules, hosts, selected=["web-1", "web-2", "web-3", "web-4"])
    assert result.severity == 2
    assert result.explanation.endswith(
        "the rule matches on 2/4 hosts (web-1, web-2), at least half of the 2 reporting: raised from P3; "
        "2 hosts not reporting; see docs/troubleshooting/host.md"
    )
    assert (result.hosts_selected, result.hosts_reporting, result.hosts_affected) == (4, 2, 2)


def test_breadth_never_makes_a_host_rule_p1(default_rules, evidence, suggest) -> None:
    hosts = {h: evidence("filesystem-space-critical", h) for h in ("db-1", "db-2", "db-3")}
    result = suggest(default_rules, hosts)
    assert result.severity == 2
    assert result.rule == "filesystem-space-critical"
    assert "raised" not in result.explanation


def test_inhibition_is_per_host_and_a_lower_tier_elsewhere_still_counts(default_rules, evidence, suggest) -> None:
    # web-1: /var/lib/postgresql under 3 % (critical hides low there); web-2: / under 5 %.
    hosts = {"web-1": evidence("filesystem-space-critical", "web-1"), "web-2": evidence("filesystem-space-low", "web-2")}
    result = suggest(default_rules, hosts)
    state = {(f.host_id, f.rule): f.inhibited for f in result.findings}
    assert state == {
        ("web-1", "filesystem-space-critical"): False,
        ("web-1", "filesystem-space-low"): True,
        ("web-2", "filesystem-space-low"): False,
    }
    # Both hosts are below 5 %: filesystem-space-low matched on 2/2 and is raised to P2;
    # the critical one is on a single host and capped at P3.
    assert result.severity == 2
    assert result.rule == "filesystem-space-low"
    assert result.hosts_affected == 2


def test_component_outage_wins_over_host_findings_and_findings_are_ordered(default_rules, evidence, suggest) -> None:
    both = evidence("probe-api-down", "web-1")
    both["system"]["filesystems"][0].update(used_pct=99.0, free_bytes=10**8)
    result = suggest(default_rules, {"web-1": both})
    assert result.severity == 1
    assert [(f.rule, f.inhibited) for f in result.findings] == [
        ("component-down-everywhere", False),
        ("filesystem-space-critical", False),
        ("component-down-somewhere", True),
        ("filesystem-space-low", True),
    ]


def test_newest_evidence_per_host_is_what_the_engine_passes(default_rules, evidence, suggest) -> None:
    # combine() takes one result per host; the engine picks each host's newest bundle.
    # Here the same host given twice counts once.
    from hostdiag.collector.signals.combine import combine
    from hostdiag.collector.signals.evaluate import evaluate_host

    a = evaluate_host(default_rules.rules, "web-1", evidence("probe-api-down"))
    result = combine(default_rules.rules, [a], ["web-1", "web-1"], evaluated_at_ms=5)
    assert (result.hosts_selected, result.evaluated_at_ms) == (1, 5)


def test_applies_to_matches_host_labels_or_the_incident_service(evidence, suggest) -> None:
    rules = parse_rules({"rules": [{
        "name": "checkout-errors", "evidence": "logs.*", "values": {"n": "last(error_lines_per_min)"},
        "condition": "n >= 1", "severity": "P4", "explanation": "{n} errors", "guide": "docs/troubleshooting/api.md",
        "applies_to": {"service": "checkout"},
    }]}, "rules.toml")
    host = evidence("healthy")
    assert suggest(rules, {"web-1": host}).severity == 0  # no service label, no service
    assert suggest(rules, {"web-1": host}, service="checkout").severity == 4
    assert suggest(rules, {"web-1": host}, service="search").severity == 0
    host["labels"]["service"] = "checkout"
    assert suggest(rules, {"web-1": host}).severity == 4


def test_garbage_evidence_never_fires_and_never_raises(default_rules, suggest) -> None:
    odd = {
        "collected_at": "yesterday",
        "system": {"latest": "nope", "filesystems": [None, 3, {"mount": 5, "used_pct": "full"}]},
        "probes": [1, 2],
        "declared": {"processes": {"x": {"running": "0"}}, "ports": None},
        "logs": {"a": {"error_lines_per_min": "many"}},
        "kernel": {"oom_kills": True, "oom_victims": "gunicorn"},
        "psi": {"memory_some_avg10": float("nan")},
    }
    result = suggest(default_rules, {"web-1": odd, "web-2": {}})
    assert result.severity == 0
    assert result.hosts_reporting == 2
