"""Combining per-host results into the incident's suggestion.

The semantics (also in ``docs/signal-rules.md``):

1. **Hosts.**  ``selected`` are the incident's hosts (one snapshot request
   each, plus any host that attached a bundle without one); ``reporting`` are
   those with evidence; the rest are *unknown* — never counted as healthy.
2. **Host findings.**  Each match of a ``scope = "host"`` rule is a finding on
   its host.  On one host, within a rule ``family`` and an item key (say the
   mount ``/var``), findings of a lower ``tier`` are *inhibited* by the highest
   tier that fired: still listed, marked, never counted.
3. **Breadth findings.**  A ``scope = "incident-breadth"`` rule is judged per
   item key across hosts: ``observed`` hosts have the item (after ``where``),
   ``affected`` hosts match; its ``breadth`` condition over ``affected``,
   ``observed``, ``reporting``, ``selected`` and ``unknown`` decides whether it
   fires, as one finding on the incident.  Inhibition works the same way
   between breadth findings of a family and key.
4. **Contributions.**  A breadth finding contributes its rule's severity.  A
   host rule contributes once per rule, over the ``n`` hosts it matched on
   (inhibited or not) if at least one of its findings is not inhibited:
   ``n == 1`` → its severity but never stronger than P3 (one host alone is
   not an outage); ``n >= 2`` and ``n >= 50 %`` of the reporting hosts → one
   level stronger (P4→P3, P3→P2; P2 and P1 stay); otherwise its severity.
5. **Suggestion.**  The strongest contribution; ties go to breadth findings,
   then higher tiers, then more hosts, then rule order.  It only ever
   suggests: the incident's severity is a human's to set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hostdiag.collector.signals.evaluate import HostResult, Match, render
from hostdiag.collector.signals.model import Finding, Suggestion, compact, format_duration, format_value, severity_label
from hostdiag.collector.signals.rules import Rule

__all__ = ["combine", "SINGLE_HOST_CAP", "BREADTH_RAISE_SHARE", "MAX_FINDINGS"]

SINGLE_HOST_CAP = 3  # one host alone never suggests stronger than P3 (host rules)
BREADTH_RAISE_SHARE = 0.5  # a host rule on at least this share of reporting hosts (and >= 2) is raised
BREADTH_RAISE_FLOOR = 2  # ... but never by breadth alone to P1
MAX_FINDINGS = 200
MAX_HOSTS_NAMED = 5


@dataclass(frozen=True)
class _Contribution:
    severity: int
    text: str
    guide: str
    rule: Rule
    hosts: tuple[str, ...]
    breadth: bool


def _hosts_text(hosts: Sequence[str]) -> str:
    shown = ", ".join(hosts[:MAX_HOSTS_NAMED])
    return shown + (f", … {len(hosts) - MAX_HOSTS_NAMED} more" if len(hosts) > MAX_HOSTS_NAMED else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _inhibit(findings: list[Finding]) -> list[Finding]:
    """Mark findings below the highest tier of their (host, family, key)."""
    top: dict[tuple[str, str, str], int] = {}
    for f in findings:
        k = (f.host_id, f.family, f.key)
        top[k] = max(top.get(k, 0), f.tier)
    return [replace(f, inhibited=f.tier < top[(f.host_id, f.family, f.key)]) for f in findings]


def _breadth_placeholders(
    matches: Sequence[Match], counts: Mapping[str, int], hosts: Sequence[str]
) -> dict[str, tuple[Any, str | None]]:
    """Values for a breadth explanation: equal across hosts → the value, numbers → "lo–hi"."""
    out: dict[str, tuple[Any, str | None]] = {}
    names = [n for n, _ in matches[0].rule.values]
    spec_of = {n: spec for _, n, spec in matches[0].rule.explanation.fields if n}
    for name in names:
        vals = [m.values.get(name) for m in matches]
        spec = spec_of.get(name, "")
        texts = [format_value(v, spec) for v in vals]
        distinct = list(dict.fromkeys(texts))
        if len(distinct) == 1:
            out[name] = (vals[0], None)
            continue
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(nums) == len(vals):
            lo, hi = min(nums), max(nums)
            lo_t, hi_t = format_value(lo, spec), format_value(hi, spec)
            out[name] = (lo, lo_t if lo_t == hi_t else f"{lo_t}–{hi_t}")
        else:
            more = f", … {len(distinct) - 3} more" if len(distinct) > 3 else ""
            out[name] = (vals[0], ", ".join(distinct[:3]) + more)
    durations = [m.duration_s for m in matches if m.duration_s is not None]
    shortest = min(durations) if durations else None
    out["duration_s"] = (shortest, None)
    out["duration"] = (shortest, format_duration(shortest))
    out["key"] = (matches[0].key, None)
    out["host"] = (hosts[0] if hosts else "", None)
    out["hosts"] = (list(hosts), _hosts_text(hosts))
    for k, v in counts.items():
        out[k] = (v, None)
    return out


def combine(
    rules: Sequence[Rule],
    results: Sequence[HostResult],
    selected: Sequence[str],
    *,
    evaluated_at_ms: int,
) -> Suggestion:
    """The incident's suggestion from each reporting host's result (see the module doc)."""
    reporting_ids = sorted({r.host_id for r in results})
    selected_ids = sorted(set(selected) | set(reporting_ids))
    n_selected, n_reporting = len(selected_ids), len(reporting_ids)
    n_unknown = n_selected - n_reporting
    order = {r.name: i for i, r in enumerate(rules)}

    # -- host findings, inhibited per host, family and key
    host_findings: list[Finding] = []
    host_matches: dict[str, list[Match]] = defaultdict(list)
    breadth_matches: dict[tuple[str, str], list[Match]] = defaultdict(list)
    observed: dict[tuple[str, str], set[str]] = defaultdict(set)
    for res in sorted(results, key=lambda r: r.host_id):
        for rule_name, keys in res.observed.items():
            for k in keys:
                observed[(rule_name, k)].add(res.host_id)
        for m in res.matches:
            if m.rule.is_breadth:
                breadth_matches[(m.rule.name, m.key)].append(m)
                continue
            host_matches[m.rule.name].append(m)
            host_findings.append(Finding(
                rule=m.rule.name, severity=m.rule.severity, host_id=m.host_id, explanation=m.explanation(),
                guide=m.guide(), evidence=m.evidence, family=m.rule.family, tier=m.rule.tier, key=m.key,
                scope=m.rule.scope,
            ))
    host_findings = _inhibit(host_findings)

    # -- breadth findings: one per rule and item key whose breadth condition holds
    incident_findings: list[Finding] = []
    breadth_hosts: dict[tuple[str, str], tuple[str, ...]] = {}
    for (rule_name, key), matches in breadth_matches.items():
        rule = matches[0].rule
        affected_hosts = sorted({m.host_id for m in matches})
        counts = {
            "affected": len(affected_hosts),
            "observed": len(observed.get((rule_name, key), set()) | set(affected_hosts)),
            "reporting": n_reporting,
            "selected": n_selected,
            "unknown": n_unknown,
        }
        assert rule.breadth is not None
        if not rule.breadth.holds(counts):
            continue
        values = _breadth_placeholders(matches, counts, affected_hosts)
        text = render(rule.explanation, values)
        guide = render(rule.guide, values)
        evidence: dict[str, Any] = dict(counts)
        evidence["key"] = key
        evidence["affected_hosts"] = compact(affected_hosts)
        evidence["hosts"] = compact({m.host_id: dict(m.evidence) for m in matches})
        incident_findings.append(Finding(
            rule=rule_name, severity=rule.severity, host_id="", explanation=text, guide=guide,
            evidence=evidence, family=rule.family, tier=rule.tier, key=key, scope=rule.scope,
        ))
        breadth_hosts[(rule_name, key)] = tuple(affected_hosts)
    incident_findings = _inhibit(incident_findings)

    # -- contributions
    contributions: list[_Contribution] = []
    rules_by_name = {r.name: r for r in rules}
    for f in incident_findings:
        if f.inhibited:
            continue
        rule = rules_by_name[f.rule]
        text = f.explanation
        if n_unknown:
            text += f"; {_plural(n_unknown, 'host')} of {n_selected} not reporting"
        contributions.append(_Contribution(rule.severity, text, f.guide, rule, breadth_hosts[(f.rule, f.key)], True))
    for rule_name, matches in host_matches.items():
        rule = rules_by_name[rule_name]
        live = [f for f in host_findings if f.rule == rule_name and not f.inhibited]
        if not live:
            continue
        hosts = sorted({m.host_id for m in matches})
        n = len(hosts)
        first = live[0]
        base = rule.severity
        if n == 1:
            severity = max(base, SINGLE_HOST_CAP)
            text = f"{first.explanation} on {first.host_id}"
            if severity != base:
                text += f" ({severity_label(base)} rule on a single host: at most {severity_label(SINGLE_HOST_CAP)})"
        elif n >= BREADTH_RAISE_SHARE * n_reporting:
            severity = base - 1 if base > BREADTH_RAISE_FLOOR else base
            text = f"{first.explanation} on {first.host_id}; the rule matches on {n}/{n_selected} hosts " \
                   f"({_hosts_text(hosts)})"
            if severity != base:
                text += f", at least half of the {n_reporting} reporting: raised from {severity_label(base)}"
        else:
            severity = base
            text = f"{first.explanation} on {first.host_id}; the rule matches on {n}/{n_selected} hosts " \
                   f"({_hosts_text(hosts)})"
        if n_unknown:
            text += f"; {_plural(n_unknown, 'host')} not reporting"
        contributions.append(_Contribution(severity, text, first.guide, rule, tuple(hosts), False))

    affected = {f.host_id for f in host_findings if not f.inhibited}
    for f in incident_findings:
        if not f.inhibited:
            affected.update(breadth_hosts[(f.rule, f.key)])

    findings = sorted(
        incident_findings + host_findings,
        key=lambda f: (f.inhibited, f.severity, f.host_id != "", f.host_id, order.get(f.rule, 0), f.key),
    )[:MAX_FINDINGS]

    if not contributions:
        note = f"; {_plural(n_unknown, 'host')} not reporting" if n_unknown else ""
        return Suggestion(
            severity=0,
            explanation=f"No rule fired on the {n_reporting}/{n_selected} reporting hosts{note}",
            guide="",
            findings=tuple(findings),
            evaluated_at_ms=evaluated_at_ms,
            hosts_selected=n_selected,
            hosts_reporting=n_reporting,
            hosts_affected=0,
        )
    best = min(
        contributions,
        key=lambda c: (c.severity, not c.breadth, -c.rule.tier, -len(c.hosts), order.get(c.rule.name, 0)),
    )
    explanation = f"Suggest {severity_label(best.severity)}: {best.text}; see {best.guide}"
    return Suggestion(
        severity=best.severity,
        explanation=explanation,
        guide=best.guide,
        findings=tuple(findings),
        evaluated_at_ms=evaluated_at_ms,
        hosts_selected=n_selected,
        hosts_reporting=n_reporting,
        hosts_affected=len(affected),
        rule=best.rule.name,
    )
