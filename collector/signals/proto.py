"""The stored suggestion (JSON) as the ``hostdiag.v1.Suggestion`` message."""

from __future__ import annotations

from hostdiag.collector.signals.model import Suggestion
from hostdiag.v1 import incident_pb2

__all__ = ["suggestion_to_proto", "suggestion_json_to_proto"]


def suggestion_to_proto(s: Suggestion) -> incident_pb2.Suggestion:
    return incident_pb2.Suggestion(
        severity=s.severity,  # type: ignore[arg-type]
        explanation=s.explanation,
        guide=s.guide,
        findings=[
            incident_pb2.SignalFinding(
                rule=f.rule,
                severity=f.severity,  # type: ignore[arg-type]
                host_id=f.host_id,
                explanation=f.explanation,
                evidence_json=f.evidence_json,
                guide=f.guide,
                inhibited=f.inhibited,
            )
            for f in s.findings
        ],
        evaluated_at_unix_ms=s.evaluated_at_ms,
        hosts_selected=s.hosts_selected,
        hosts_reporting=s.hosts_reporting,
        hosts_affected=s.hosts_affected,
    )


def suggestion_json_to_proto(text: str) -> incident_pb2.Suggestion | None:
    """None for "" (never evaluated) or a row this collector cannot read."""
    if not text:
        return None
    try:
        return suggestion_to_proto(Suggestion.from_json(text))
    except (ValueError, TypeError, KeyError):
        return None
