"""Evaluating rules against one host's evidence (``evidence.json`` as a dict).

:func:`evaluate_host` walks each rule's ``evidence`` path, keeps the items its
``where`` and ``applies_to`` let through (those are *observed*), computes the
rule's named values, and records a :class:`Match` for each item whose
``condition`` holds (and, with ``for_s``, has held long enough).  The result
depends only on the rules, the evidence and the incident's service, so the
engine caches it per bundle.

Durations come from the evidence itself: ``now`` is the evidence's
``collected_at`` (the agent's clock when it took the snapshot), and a rule's
``since`` gives when its condition started (e.g. a probe's
``failing_since``), so clock skew between collector and agent never matters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hostdiag.collector.signals.model import compact, format_duration, format_value
from hostdiag.collector.signals.rules import RESERVED_NAMES, Rule, Template

__all__ = ["Match", "HostResult", "evaluate_host", "render", "walk"]

MAX_ITEMS_PER_RULE = 1000


@dataclass(frozen=True)
class Match:
    """One item of one host for which a rule's condition held."""

    rule: Rule
    host_id: str
    key: str
    values: Mapping[str, Any]  # the rule's named values
    evidence: Mapping[str, Any]  # everything the rule read, for the finding
    duration_s: float | None

    def explanation(self) -> str:
        return render(self.rule.explanation, self.placeholders())

    def guide(self) -> str:
        return render(self.rule.guide, self.placeholders())

    def placeholders(self) -> dict[str, tuple[Any, str | None]]:
        """name → (value, ready text or None to format with the spec)."""
        out: dict[str, tuple[Any, str | None]] = {n: (v, None) for n, v in self.values.items()}
        out["host"] = (self.host_id, None)
        out["key"] = (self.key, None)
        out["duration_s"] = (self.duration_s, None)
        out["duration"] = (self.duration_s, format_duration(self.duration_s))
        return out


@dataclass(frozen=True)
class HostResult:
    """Every match on one host, and which breadth-rule items the host observed."""

    host_id: str
    matches: tuple[Match, ...]
    observed: Mapping[str, frozenset[str]] = field(default_factory=dict)  # breadth rule → item keys
    collected_at: float | None = None


def render(template: Template, values: Mapping[str, tuple[Any, str | None]]) -> str:
    out = []
    for literal, name, spec in template.fields:
        out.append(literal)
        if name:
            value, ready = values.get(name, (None, None))
            out.append(ready if ready is not None else format_value(value, spec))
    return "".join(out)


def walk(node: Any, path: Sequence[str | None], keys: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Items at ``path`` under ``node``: ``None`` segments iterate lists (index) and maps (key)."""
    if not path:
        yield keys, node
        return
    head, rest = path[0], path[1:]
    if head is None:
        if isinstance(node, Mapping):
            for k, v in list(node.items())[:MAX_ITEMS_PER_RULE]:
                yield from walk(v, rest, keys + (str(k),))
        elif isinstance(node, list):
            for i, v in enumerate(node[:MAX_ITEMS_PER_RULE]):
                yield from walk(v, rest, keys + (str(i),))
        return
    if isinstance(node, Mapping) and head in node:
        yield from walk(node[head], rest, keys)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def applies(rule: Rule, labels: Mapping[str, Any], service: str) -> bool:
    """``applies_to``: every label listed must have one of its values (``service``: or the incident's)."""
    for label, wanted in rule.applies_to.items():
        have = labels.get(label)
        if isinstance(have, str) and have in wanted:
            continue
        if label == "service" and service and service in wanted:
            continue
        return False
    return True


class _Env:
    """Name lookup for one item: rule values, then reserved names, then the item's fields."""

    __slots__ = ("item", "key", "root", "now", "host_id", "labels", "values", "duration_s", "read")

    def __init__(self, item: Any, key: str, root: Mapping[str, Any], now: float | None, host_id: str,
                 labels: Mapping[str, Any]) -> None:
        self.item = item
        self.key = key
        self.root = root
        self.now = now
        self.host_id = host_id
        self.labels = labels
        self.values: dict[str, Any] = {}
        self.duration_s: float | None = None
        self.read: dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in RESERVED_NAMES:
            if name == "item":
                return self.item
            if name == "key":
                return self.key
            if name == "evidence":
                return self.root
            if name == "now":
                return self.now
            if name == "host_id":
                return self.host_id
            if name == "labels":
                return self.labels
            return self.duration_s
        value = self.item.get(name) if isinstance(self.item, Mapping) else None
        self.read[name] = value
        return value


def evaluate_host(rules: Sequence[Rule], host_id: str, evidence: Mapping[str, Any], *, service: str = "") -> HostResult:
    """Every rule against one host's evidence.  Never raises on odd evidence."""
    if not isinstance(evidence, Mapping):
        return HostResult(host_id, ())
    now = _num(evidence.get("collected_at"))
    labels = evidence.get("labels")
    if not isinstance(labels, Mapping):
        labels = {}
    matches: list[Match] = []
    observed: dict[str, frozenset[str]] = {}
    for rule in rules:
        if not applies(rule, labels, service):
            continue
        seen: set[str] = set()
        for keys, item in walk(evidence, rule.path):
            env = _Env(item, "/".join(keys), evidence, now, host_id, labels)
            if rule.key is not None:
                key_value = rule.key.evaluate(env)
                env.key = "" if key_value is None else format_value(key_value)
            if rule.where is not None and not rule.where.holds(env):
                continue
            seen.add(env.key)
            if rule.since is not None:
                since = _num(rule.since.evaluate(env))
                if since is not None and now is not None:
                    env.duration_s = max(0.0, now - since)
            for name, expr in rule.values:
                env.values[name] = expr.evaluate(env)
            if not rule.condition.holds(env):
                continue
            if rule.for_s > 0 and (env.duration_s is None or env.duration_s < rule.for_s):
                continue
            # Item fields the expressions read (objects left out: a rule reading latest.load1
            # names that value under values), then the rule's named values.
            shown: dict[str, Any] = {k: compact(v) for k, v in env.read.items() if not isinstance(v, Mapping)}
            shown.update({k: compact(v) for k, v in env.values.items()})
            if env.key:
                shown["key"] = env.key
            if env.duration_s is not None:
                shown["duration_s"] = round(env.duration_s, 3)
            matches.append(Match(rule, host_id, env.key, dict(env.values), shown, env.duration_s))
        if rule.is_breadth:
            observed[rule.name] = frozenset(seen)
    return HostResult(host_id, tuple(matches), observed, now)
