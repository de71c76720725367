"""What the collector keeps of a bundle's evidence.json, and the JSON form of a suggestion."""

from __future__ import annotations

import orjson

from hostdiag.collector.signals.evidence import TRIMMED_KEY, stored_evidence_json
from hostdiag.collector.signals.model import Finding, Suggestion, format_bytes, format_duration, format_value


def test_small_evidence_is_kept_whole(evidence) -> None:
    doc = evidence("healthy")
    assert orjson.loads(stored_evidence_json(doc, 1 << 20)) == doc


def test_large_evidence_drops_the_largest_top_level_keys_and_says_which(evidence) -> None:
    doc = evidence("healthy")
    doc["logs"] = {f"/var/log/app-{i}.log": {"error_lines_per_min": list(range(300))} for i in range(40)}
    doc["processes"]["top_rss"] = [{"pid": i, "name": "x" * 50, "rss_bytes": i} for i in range(200)]
    kept = orjson.loads(stored_evidence_json(doc, 16 * 1024))
    assert kept[TRIMMED_KEY] == ["logs", "processes"]
    assert kept["probes"] == doc["probes"] and kept["system"] == doc["system"]
    assert kept["host_id"] == "web-1" and kept["collected_at"] == doc["collected_at"]
    assert len(stored_evidence_json(doc, 16 * 1024)) <= 16 * 1024


def test_evidence_that_cannot_fit_keeps_only_the_list_of_dropped_keys() -> None:
    doc = {"labels": {f"k{i}": "v" * 100 for i in range(100)}, "system": {}}
    kept = orjson.loads(stored_evidence_json(doc, 4096))
    assert kept == {TRIMMED_KEY: ["labels", "system"]}


def test_not_an_object_is_stored_empty() -> None:
    assert stored_evidence_json([1, 2], 4096) == "{}"  # type: ignore[arg-type]


def test_suggestion_round_trips_through_json() -> None:
    s = Suggestion(
        severity=2, explanation="Suggest P2: x", guide="docs/troubleshooting/host.md",
        findings=(Finding("r", 2, "web-1", "x", "docs/troubleshooting/host.md", {"free_pct": 2.5}, False,
                          "fam", 2, "/var"),),
        evaluated_at_ms=5, hosts_selected=3, hosts_reporting=2, hosts_affected=1, rule="r",
    )
    assert Suggestion.from_json(s.to_json()) == s
    assert orjson.loads(s.findings[0].evidence_json) == {"free_pct": 2.5}


def test_value_formatting() -> None:
    assert format_duration(45) == "45 s"
    assert format_duration(180) == "3 min"
    assert format_duration(7500) == "2 h 5 min"
    assert format_duration(3 * 86400 + 4 * 3600) == "3 d 4 h"
    assert format_duration(None) == "?"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_value(None) == "?"
    assert format_value(2.50) == "2.5"
    assert format_value(3.0) == "3"
    assert format_value(0.004) == "0"
    assert format_value(12.345, ".1f") == "12.3"
    assert format_value(2 * 1024**3, "bytes") == "2.0 GiB"
    assert format_value(["a", "b"]) == "a, b"
    assert format_value(list(range(7))) == "0, 1, 2, 3, 4, … (7 in all)"
    assert format_value("evil\x1b[2Jtext\n") == "evil [2Jtext "
    assert format_value(True) == "true"
