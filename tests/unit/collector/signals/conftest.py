"""Helpers for the signal rule tests: evidence fixtures and one-call evaluation."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from hostdiag.collector.signals.combine import combine
from hostdiag.collector.signals.evaluate import evaluate_host
from hostdiag.collector.signals.model import Suggestion
from hostdiag.collector.signals.rules import RuleSet, load_rules

EVIDENCE = Path(__file__).resolve().parents[4] / "tests" / "fixtures" / "evidence"
NOW = 1767225600.0


def load_evidence(name: str, host_id: str | None = None) -> dict[str, Any]:
    """A fixture from tests/fixtures/evidence (a fresh copy), optionally for another host."""
    doc = json.loads((EVIDENCE / f"{name}.json").read_text())
    if host_id is not None:
        doc["host_id"] = host_id
    return copy.deepcopy(doc)


def run_rules(
    rules: RuleSet,
    hosts: Mapping[str, Mapping[str, Any]],
    selected: Sequence[str] | None = None,
    service: str = "",
) -> Suggestion:
    """Evaluate each host's evidence and combine them as the collector does."""
    results = [evaluate_host(rules.rules, h, ev, service=service) for h, ev in hosts.items()]
    return combine(rules.rules, results, list(selected if selected is not None else hosts), evaluated_at_ms=1)


@pytest.fixture(scope="session")
def default_rules() -> RuleSet:
    return load_rules()


@pytest.fixture(name="evidence")
def evidence_fixture() -> Any:
    """``evidence(name, host_id=None)``: a fixture file from tests/fixtures/evidence."""
    return load_evidence


@pytest.fixture(name="suggest")
def suggest_fixture() -> Any:
    """``suggest(rules, {host: evidence}, selected=None, service="")``: the incident's suggestion."""
    return run_rules
