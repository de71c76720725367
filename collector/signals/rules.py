"""Signal rules: the TOML format, loading, validation and the operator's overrides.

A rule file holds ``[[rules]]`` tables (and, in an operator's file, an
optional top-level ``disable = ["rule-name", ...]``).  ``docs/signal-rules.md``
describes every key; in short::

    [[rules]]
    name = "filesystem-space-critical"       # unique, [a-z0-9-]
    family = "filesystem-space"               # inhibition group (default: the name)
    tier = 2                                  # higher tier hides lower tiers of the family
    scope = "host"                            # or "incident-breadth"
    evidence = "system.filesystems.*"         # path into evidence.json; * iterates
    key = "mount"                             # what names one item (default: map key / list index)
    where = 'fstype != "tmpfs"'              # optional filter
    values = { free_pct = "100 - used_pct" }  # named expressions, shown in findings
    condition = "free_pct < 3"                # must evaluate to exactly true
    for_s = 0                                 # optional: held at least this long ...
    since = "failing_since"                   # ... since this timestamp (epoch seconds)
    breadth = "affected == observed"          # incident-breadth only: host counts condition
    severity = "P2"
    applies_to = { role = ["db", "api"] }    # optional label match (service: also the incident's)
    explanation = "{mount} has {free_pct:.1f}% space free"
    guide = "docs/troubleshooting/host.md"
    source = "node_exporter node-mixin NodeFilesystemAlmostOutOfSpace"

Every problem is a :class:`RuleError` (a :class:`ConfigError`) naming the file,
the rule and the key, e.g. ``rules.toml: rules[disk-full].condition: unknown
function 'maxx' (at character 1)``.
"""

from __future__ import annotations

import importlib.resources
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostdiag.agent.configfile import ConfigError, read_toml
from hostdiag.collector.signals.expr import Expr, ExprError, compile_expr

__all__ = [
    "Rule",
    "RuleSet",
    "RuleError",
    "load_rules",
    "parse_rules",
    "default_rules_text",
    "SEVERITY_NAMES",
    "RESERVED_NAMES",
    "HOST_PLACEHOLDERS",
    "BREADTH_PLACEHOLDERS",
    "BREADTH_NAMES",
    "DEFAULT_RULES_FILE",
    "Template",
    "parse_template",
]

DEFAULT_RULES_FILE = "default_rules.toml"
SEVERITY_NAMES = {"P1": 1, "P2": 2, "P3": 3, "P4": 4}
SCOPES = ("host", "incident-breadth")
# Names every expression may read besides the item's own fields.
RESERVED_NAMES = frozenset({"item", "key", "evidence", "now", "host_id", "labels", "duration_s"})
# Host counts a breadth expression reads.
BREADTH_NAMES = frozenset({"affected", "observed", "reporting", "selected", "unknown"})
HOST_PLACEHOLDERS = frozenset({"host", "key", "duration", "duration_s"})
BREADTH_PLACEHOLDERS = HOST_PLACEHOLDERS | BREADTH_NAMES | {"hosts"}

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_VALUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_GUIDE = re.compile(r"docs/troubleshooting/[A-Za-z0-9_{}:.-]+\.md")
_FORMAT_SPEC = re.compile(r"(bytes|duration|[<>^]?\d{0,3}(\.\d{1,2})?[dfg%]?)")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
MAX_FOR_S = 7 * 86400.0
MAX_RULES = 500
MAX_TEMPLATE_CHARS = 500

_KEYS = {
    "name", "family", "tier", "scope", "evidence", "key", "where", "values", "condition", "for_s", "since",
    "breadth", "severity", "applies_to", "explanation", "guide", "source", "description", "enabled",
}
_REQUIRED = ("evidence", "condition", "severity", "explanation", "guide")


class RuleError(ConfigError):
    """A rule file problem: file, rule, key and what is wrong."""

    def __init__(self, file: str, rule: str, key: str, message: str) -> None:
        where = f"rules[{rule}]" if rule else ""
        dotted = ".".join(p for p in (where, key) if p)
        super().__init__(file, dotted, message)
        self.rule = rule
        self.rule_key = key


@dataclass(frozen=True)
class Template:
    """An explanation or guide template: text with ``{name}`` / ``{name:spec}`` placeholders."""

    text: str
    fields: tuple[tuple[str, str, str], ...]  # (literal before, name, spec); name "" ends it

    @property
    def names(self) -> frozenset[str]:
        return frozenset(n for _, n, _ in self.fields if n)


def parse_template(text: str) -> Template:
    """Split ``text``; raises ValueError for bad braces, expressions or specs."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise ValueError(f"longer than {MAX_TEMPLATE_CHARS} characters")
    parts: list[tuple[str, str, str]] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"bad braces: {exc} (write {{{{ and }}}} for literal braces)") from None
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append((literal, "", ""))
            continue
        if conversion:
            raise ValueError(f"placeholder {{{name}!{conversion}}}: conversions are not supported")
        if not _VALUE_NAME.fullmatch(name):
            raise ValueError(f"placeholder {{{name}}}: only plain names are allowed, e.g. {{free_pct}}")
        spec = spec or ""
        if spec and not _FORMAT_SPEC.fullmatch(spec):
            raise ValueError(
                f"placeholder {{{name}:{spec}}}: unsupported format (use e.g. .1f, d, .0%, bytes or duration)"
            )
        parts.append((literal, name, spec))
    return Template(text, tuple(parts))


@dataclass(frozen=True)
class Rule:
    name: str
    family: str
    tier: int
    scope: str
    evidence: str
    path: tuple[str | None, ...]  # None: iterate
    condition: Expr
    severity: int
    explanation: Template
    guide: Template
    key: Expr | None = None
    where: Expr | None = None
    values: tuple[tuple[str, Expr], ...] = ()
    for_s: float = 0.0
    since: Expr | None = None
    breadth: Expr | None = None
    applies_to: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = ""
    description: str = ""
    file: str = ""

    @property
    def iterates(self) -> bool:
        return None in self.path

    @property
    def is_breadth(self) -> bool:
        return self.scope == "incident-breadth"

    @property
    def severity_name(self) -> str:
        return f"P{self.severity}"


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    files: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.rules)

    def by_name(self, name: str) -> Rule | None:
        for r in self.rules:
            if r.name == name:
                return r
        return None


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _parse_path(text: str) -> tuple[str | None, ...]:
    if not text.strip():
        raise ValueError("empty path (name a key of evidence.json, e.g. system or probes.*)")
    out: list[str | None] = []
    for seg in text.split("."):
        if seg == "*":
            out.append(None)
        elif _SEGMENT.fullmatch(seg) and "." not in seg:
            out.append(seg)
        else:
            raise ValueError(f"bad path segment {seg!r} in {text!r} (keys are [A-Za-z0-9_-], * iterates)")
    if sum(1 for s in out if s is None) > 2:
        raise ValueError("at most two * in a path")
    return tuple(out)


class _RuleParser:
    """Turns one merged ``[[rules]]`` table into a :class:`Rule`."""

    def __init__(self, raw: Mapping[str, Any], origin: Mapping[str, str], name: str) -> None:
        self.raw = raw
        self.origin = origin  # key → file it came from
        self.name = name

    def fail(self, key: str, message: str) -> RuleError:
        # The file that last touched the rule: the shipped defaults are valid on their own,
        # so a problem in a rule an operator's file changed comes from that file.
        return RuleError(self.origin.get("name", ""), self.name, key, message)

    def string(self, key: str, default: str | None = None) -> str:
        if key not in self.raw:
            if default is None:
                raise self.fail(key, "missing (required)")
            return default
        value = self.raw[key]
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_describe(value)}")
        return value

    def expr(self, key: str, value: Any = None, *, sub: str = "") -> Expr:
        text = self.raw[key] if value is None else value
        where = f"{key}.{sub}" if sub else key
        if not isinstance(text, str):
            raise self.fail(where, f"expected an expression string, got {_describe(text)}")
        try:
            return compile_expr(text)
        except ExprError as exc:
            raise self.fail(where, str(exc)) from None

    def parse(self) -> Rule:
        unknown = sorted(set(self.raw) - _KEYS)
        if unknown:
            raise self.fail(unknown[0], f"unknown key (known: {', '.join(sorted(_KEYS))})")
        for key in _REQUIRED:
            if key not in self.raw:
                raise self.fail(key, "missing (required)")
        family = self.string("family", self.name)
        if not _NAME.fullmatch(family):
            raise self.fail("family", f"must be 1-63 of [a-z0-9-], starting with a letter or digit, got {family!r}")
        tier = self.raw.get("tier", 1)
        if isinstance(tier, bool) or not isinstance(tier, int) or not 1 <= tier <= 9:
            raise self.fail("tier", f"expected an integer from 1 to 9, got {tier!r}")
        scope = self.string("scope", "host")
        if scope not in SCOPES:
            raise self.fail("scope", f"must be one of {', '.join(SCOPES)}, got {scope!r}")
        evidence = self.string("evidence")
        try:
            path = _parse_path(evidence)
        except ValueError as exc:
            raise self.fail("evidence", str(exc)) from None
        severity_text = self.string("severity")
        if severity_text.upper() not in SEVERITY_NAMES:
            raise self.fail("severity", f"must be one of P1, P2, P3, P4, got {severity_text!r}")
        severity = SEVERITY_NAMES[severity_text.upper()]

        values: list[tuple[str, Expr]] = []
        raw_values = self.raw.get("values", {})
        if not isinstance(raw_values, dict):
            raise self.fail("values", f"expected a table of name = \"expression\", got {_describe(raw_values)}")
        for vname, vtext in raw_values.items():
            if not _VALUE_NAME.fullmatch(vname):
                raise self.fail(f"values.{vname}", "value names are [A-Za-z_][A-Za-z0-9_]*")
            if vname in RESERVED_NAMES or vname in BREADTH_NAMES or vname in ("host", "hosts", "duration"):
                raise self.fail(f"values.{vname}", f"{vname!r} is a reserved name; choose another")
            values.append((vname, self.expr("values", vtext, sub=vname)))

        condition = self.expr("condition")
        if not condition.comparisons:
            raise self.fail(
                "condition", "must compare something: use <, <=, >, >=, ==, != or in (e.g. free_pct < 5)"
            )
        where = self.expr("where") if "where" in self.raw else None
        key_expr = self.expr("key") if "key" in self.raw else None

        for_s = self.raw.get("for_s", 0)
        if isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or not math.isfinite(for_s) \
                or not 0 <= for_s <= MAX_FOR_S:
            raise self.fail("for_s", f"expected seconds from 0 to {MAX_FOR_S:g}, got {for_s!r}")
        since = self.expr("since") if "since" in self.raw else None
        if for_s > 0 and since is None:
            raise self.fail(
                "since", "needed with for_s: an expression giving when the condition started (epoch seconds), "
                         "e.g. failing_since"
            )

        breadth = None
        if scope == "incident-breadth":
            if "breadth" not in self.raw:
                raise self.fail("breadth", "missing: an incident-breadth rule needs a host-count condition, "
                                           "e.g. affected == observed")
            breadth = self.expr("breadth")
            stray = sorted(breadth.names - BREADTH_NAMES)
            if stray:
                raise self.fail(
                    "breadth", f"unknown name {stray[0]!r} (breadth reads {', '.join(sorted(BREADTH_NAMES))})"
                )
        elif "breadth" in self.raw:
            raise self.fail("breadth", "only an incident-breadth rule has a breadth condition (scope = "
                                       "\"incident-breadth\")")

        applies: dict[str, tuple[str, ...]] = {}
        raw_applies = self.raw.get("applies_to", {})
        if not isinstance(raw_applies, dict):
            raise self.fail("applies_to", f"expected a table of label = \"value\" or [values], got "
                                          f"{_describe(raw_applies)}")
        for label, wanted in raw_applies.items():
            if not _LABEL.fullmatch(label):
                raise self.fail(f"applies_to.{label}", "not a label name")
            if isinstance(wanted, str):
                wanted = [wanted]
            if not isinstance(wanted, list) or not wanted or not all(isinstance(w, str) for w in wanted):
                raise self.fail(f"applies_to.{label}", "expected a string or a non-empty array of strings")
            applies[label] = tuple(wanted)

        explanation = self._template("explanation")
        guide = self._template("guide")
        if not _GUIDE.fullmatch(guide.text):
            raise self.fail("guide", f"must be a page under docs/troubleshooting/ ending in .md, got {guide.text!r}")
        allowed = set(BREADTH_PLACEHOLDERS if breadth is not None else HOST_PLACEHOLDERS)
        allowed |= {n for n, _ in values}
        for key in ("explanation", "guide"):
            tpl = explanation if key == "explanation" else guide
            for n in sorted(tpl.names):
                if n not in allowed:
                    raise self.fail(
                        key, f"unknown placeholder {{{n}}} (define it under values, or use one of "
                             f"{', '.join(sorted(BREADTH_PLACEHOLDERS if breadth is not None else HOST_PLACEHOLDERS))})"
                    )
        if any(n in ("duration",) for n in explanation.names) and since is None:
            raise self.fail("explanation", "{duration} needs since (when the condition started)")
        source = self.string("source", "")
        description = self.string("description", "")
        return Rule(
            name=self.name, family=family, tier=tier, scope=scope, evidence=evidence, path=path,
            condition=condition, severity=severity, explanation=explanation, guide=guide, key=key_expr,
            where=where, values=tuple(values), for_s=float(for_s), since=since, breadth=breadth,
            applies_to=applies, source=source, description=description,
            file=self.origin.get("name", ""),
        )

    def _template(self, key: str) -> Template:
        text = self.string(key)
        if not text.strip():
            raise self.fail(key, "must not be empty")
        try:
            return parse_template(text)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None


def default_rules_text() -> str:
    return importlib.resources.files("hostdiag.collector.signals").joinpath(DEFAULT_RULES_FILE).read_text("utf-8")


def _rule_tables(data: Mapping[str, Any], file: str, *, allow_disable: bool) -> tuple[list[dict[str, Any]], list[str]]:
    known = {"rules", "disable"} if allow_disable else {"rules"}
    for key in data:
        if key not in known:
            hint = " (only an operator's rules file may disable rules)" if key == "disable" else ""
            raise RuleError(file, "", key, f"unknown top-level key (known: {', '.join(sorted(known))}){hint}")
    tables = data.get("rules", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise RuleError(file, "", "rules", "expected [[rules]] tables")
    if len(tables) > MAX_RULES:
        raise RuleError(file, "", "rules", f"at most {MAX_RULES} rules")
    disable = data.get("disable", [])
    if not isinstance(disable, list) or not all(isinstance(d, str) for d in disable):
        raise RuleError(file, "", "disable", "expected an array of rule names")
    return tables, list(disable)


def _table_name(table: Mapping[str, Any], index: int, file: str) -> str:
    name = table.get("name")
    if not isinstance(name, str):
        raise RuleError(file, f"#{index + 1}", "name", "missing (every rule needs a name)" if name is None
                        else f"expected a string, got {_describe(name)}")
    if not _NAME.fullmatch(name):
        raise RuleError(file, f"#{index + 1}", "name",
                        f"must be 1-63 of [a-z0-9-], starting with a letter or digit, got {name!r}")
    return name


def parse_rules(
    defaults: Mapping[str, Any],
    defaults_file: str,
    override: Mapping[str, Any] | None = None,
    override_file: str = "",
) -> RuleSet:
    """Build the rule set: the defaults, then the operator's file merged on top.

    In the operator's file a ``[[rules]]`` table whose ``name`` is a default
    rule changes only the keys it gives (the rest stay the default's); any
    other name is a new, complete rule.  ``disable`` lists default or operator
    rules to leave out, and so does ``enabled = false`` in a rule.
    """
    tables, _ = _rule_tables(defaults, defaults_file, allow_disable=False)
    merged: dict[str, dict[str, Any]] = {}
    origins: dict[str, dict[str, str]] = {}
    for i, t in enumerate(tables):
        name = _table_name(t, i, defaults_file)
        if name in merged:
            raise RuleError(defaults_file, name, "name", "defined twice in this file")
        merged[name] = dict(t)
        origins[name] = {k: defaults_file for k in t}
    disabled: list[str] = []
    if override is not None:
        o_tables, disable = _rule_tables(override, override_file, allow_disable=True)
        seen: set[str] = set()
        for i, t in enumerate(o_tables):
            name = _table_name(t, i, override_file)
            if name in seen:
                raise RuleError(override_file, name, "name", "defined twice in this file")
            seen.add(name)
            if name in merged:
                merged[name].update(t)
                origins[name].update({k: override_file for k in t})
                origins[name]["name"] = override_file
            else:
                merged[name] = dict(t)
                origins[name] = {k: override_file for k in t}
        for name in disable:
            if name not in merged:
                raise RuleError(override_file, "", "disable", f"no rule named {name!r} to disable")
            disabled.append(name)
    rules: list[Rule] = []
    for name, raw in merged.items():
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise RuleError(origins[name].get("enabled", ""), name, "enabled",
                            f"expected true or false, got {_describe(enabled)}")
        rule = _RuleParser(raw, origins[name], name).parse()
        if enabled and name not in disabled:
            rules.append(rule)
        elif name not in disabled:
            disabled.append(name)
    files = (defaults_file,) + ((override_file,) if override is not None else ())
    return RuleSet(tuple(rules), files, tuple(disabled))


def load_rules(rules_file: str | Path | None = None, *, defaults_text: str | None = None) -> RuleSet:
    """The shipped default rules, with the operator's ``rules_file`` merged on top (if given)."""
    import tomllib

    label = f"<built-in {DEFAULT_RULES_FILE}>"
    try:
        defaults = tomllib.loads(defaults_text if defaults_text is not None else default_rules_text())
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(label, "", "", f"invalid TOML: {exc}") from None
    override = read_toml(rules_file) if rules_file else None
    return parse_rules(defaults, label, override, str(rules_file or ""))
