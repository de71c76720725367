"""Rule files: the defaults, an operator's overrides, and every validation error (file, rule, key)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from hostdiag.agent.configfile import ConfigError
from hostdiag.collector.config import parse_config
from hostdiag.collector.signals.rules import RuleError, default_rules_text, load_rules, parse_rules

GOOD = {
    "name": "disk-nearly-full",
    "evidence": "system.filesystems.*",
    "key": "mount",
    "values": {"free_pct": "100 - used_pct"},
    "condition": "free_pct < 10",
    "severity": "P3",
    "explanation": "{key} has {free_pct:.1f}% free",
    "guide": "docs/troubleshooting/host.md",
}


def one(**changes: Any) -> dict[str, Any]:
    rule = dict(GOOD)
    for k, v in changes.items():
        if v is None:
            rule.pop(k, None)
        else:
            rule[k] = v
    return {"rules": [rule]}


def error(data: dict[str, Any], file: str = "ops.toml") -> RuleError:
    with pytest.raises(RuleError) as info:
        parse_rules(data, file)
    return info.value


def test_defaults_load_and_an_empty_operator_file_changes_nothing(tmp_path: Path) -> None:
    defaults = load_rules()
    empty = tmp_path / "rules.toml"
    empty.write_text("")
    with_empty = load_rules(empty)
    assert [r.name for r in with_empty.rules] == [r.name for r in defaults.rules]
    assert with_empty.rules == tuple(
        r for r in with_empty.rules
    ) and [r.condition.text for r in with_empty.rules] == [r.condition.text for r in defaults.rules]
    assert with_empty.disabled == ()
    assert len(defaults) >= 20


def test_the_defaults_file_is_valid_toml_with_unique_names() -> None:
    data = tomllib.loads(default_rules_text())
    names = [r["name"] for r in data["rules"]]
    assert len(names) == len(set(names))


def test_a_good_rule_parses() -> None:
    rule = parse_rules(one(), "ops.toml").rules[0]
    assert (rule.name, rule.family, rule.tier, rule.scope, rule.severity) == ("disk-nearly-full", "disk-nearly-full",
                                                                              1, "host", 3)
    assert rule.path == ("system", "filesystems", None)
    assert rule.file == "ops.toml"


def test_operator_file_overrides_keys_of_a_default_rule_and_adds_rules(tmp_path: Path) -> None:
    ops = tmp_path / "ops.toml"
    ops.write_text(
        '[[rules]]\nname = "component-down-everywhere"\nfor_s = 5\n\n'
        '[[rules]]\nname = "nginx-5xx"\nevidence = "logs.*"\nvalues = { n = "last(error_lines_per_min)" }\n'
        'condition = "n > 100"\nseverity = "P2"\nexplanation = "{key}: {n} errors"\n'
        'guide = "docs/troubleshooting/api.md"\nsource = "our SLO"\n'
    )
    rules = load_rules(ops)
    down = rules.by_name("component-down-everywhere")
    assert down is not None and down.for_s == 5
    assert down.severity == 1 and down.since is not None  # the other keys stay the default's
    assert down.file == str(ops)
    added = rules.by_name("nginx-5xx")
    assert added is not None and added.severity == 2 and rules.rules[-1] is added


def test_disable_and_enabled_false_leave_rules_out(tmp_path: Path) -> None:
    ops = tmp_path / "ops.toml"
    ops.write_text('disable = ["error-burst"]\n\n[[rules]]\nname = "cpu-pressure"\nenabled = false\n')
    rules = load_rules(ops)
    names = {r.name for r in rules.rules}
    assert "error-burst" not in names and "cpu-pressure" not in names
    assert set(rules.disabled) == {"error-burst", "cpu-pressure"}


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        (one(colour="red"), "rules[disk-nearly-full].colour", "unknown key (known:"),
        (one(condition=None), "rules[disk-nearly-full].condition", "missing (required)"),
        (one(guide=None), "rules[disk-nearly-full].guide", "missing (required)"),
        (one(name=None), "rules[#1].name", "missing (every rule needs a name)"),
        (one(name="Disk Full"), "rules[#1].name", "must be 1-63 of [a-z0-9-]"),
        (one(severity="P0"), "rules[disk-nearly-full].severity", "must be one of P1, P2, P3, P4, got 'P0'"),
        (one(severity=1), "rules[disk-nearly-full].severity", "expected a string, got a number"),
        (one(scope="fleet"), "rules[disk-nearly-full].scope", "must be one of host, incident-breadth"),
        (one(tier=0), "rules[disk-nearly-full].tier", "expected an integer from 1 to 9"),
        (one(family="Disk"), "rules[disk-nearly-full].family", "must be 1-63 of [a-z0-9-]"),
        (one(evidence="system..x"), "rules[disk-nearly-full].evidence", "bad path segment ''"),
        (one(evidence="*.*.*"), "rules[disk-nearly-full].evidence", "at most two *"),
        (one(condition="free_pct <"), "rules[disk-nearly-full].condition", "expected a value, found 'the end'"),
        (one(condition="free_pct"), "rules[disk-nearly-full].condition", "must compare something"),
        (one(condition="maxx(free_pct) > 1"), "rules[disk-nearly-full].condition", "unknown function 'maxx'"),
        (one(condition=5), "rules[disk-nearly-full].condition", "expected an expression string, got a number"),
        (one(where="mount =="), "rules[disk-nearly-full].where", "expected a value"),
        (one(values={"free_pct": "1 +"}), "rules[disk-nearly-full].values.free_pct", "expected a value"),
        (one(values={"key": "1"}), "rules[disk-nearly-full].values.key", "'key' is a reserved name"),
        (one(values={"affected": "1"}), "rules[disk-nearly-full].values.affected", "reserved name"),
        (one(values={"bad-name": "1"}), "rules[disk-nearly-full].values.bad-name", "value names are"),
        (one(values="x"), "rules[disk-nearly-full].values", "expected a table"),
        (one(for_s=-1), "rules[disk-nearly-full].for_s", "expected seconds from 0 to 604800"),
        (one(for_s=60), "rules[disk-nearly-full].since", "needed with for_s"),
        (one(breadth="affected > 1"), "rules[disk-nearly-full].breadth", "only an incident-breadth rule"),
        (one(scope="incident-breadth"), "rules[disk-nearly-full].breadth", "missing: an incident-breadth rule"),
        (one(scope="incident-breadth", breadth="hosts > 1"), "rules[disk-nearly-full].breadth",
         "unknown name 'hosts'"),
        (one(explanation="{nope} free"), "rules[disk-nearly-full].explanation", "unknown placeholder {nope}"),
        (one(explanation="{free_pct!r}"), "rules[disk-nearly-full].explanation", "conversions are not supported"),
        (one(explanation="{free_pct:>>10}"), "rules[disk-nearly-full].explanation", "unsupported format"),
        (one(explanation="{a.b}"), "rules[disk-nearly-full].explanation", "only plain names"),
        (one(explanation="{"), "rules[disk-nearly-full].explanation", "bad braces"),
        (one(explanation=" "), "rules[disk-nearly-full].explanation", "must not be empty"),
        (one(explanation="gone for {duration}"), "rules[disk-nearly-full].explanation", "{duration} needs since"),
        (one(guide="https://wiki/disk"), "rules[disk-nearly-full].guide", "must be a page under docs/troubleshooting/"),
        (one(applies_to={"role": []}), "rules[disk-nearly-full].applies_to.role", "non-empty array of strings"),
        (one(applies_to="db"), "rules[disk-nearly-full].applies_to", "expected a table"),
        (one(enabled="no"), "rules[disk-nearly-full].enabled", "expected true or false"),
        ({"rules": [GOOD, GOOD]}, "rules[disk-nearly-full].name", "defined twice in this file"),
        ({"rule": [GOOD]}, "rule", "unknown top-level key"),
        ({"rules": {"name": "x"}}, "rules", "expected [[rules]] tables"),
    ],
)
def test_validation_errors_name_file_rule_and_key(data: dict[str, Any], key: str, message: str) -> None:
    exc = error(data)
    assert exc.file == "ops.toml"
    assert exc.key == key
    assert message in exc.message, exc.message
    assert str(exc).startswith(f"ops.toml: {key}: ")


def test_disable_is_only_for_the_operator_file() -> None:
    exc = error({"disable": ["x"], "rules": []}, "defaults.toml")
    assert "only an operator's rules file may disable rules" in exc.message


def test_operator_file_errors(tmp_path: Path) -> None:
    ops = tmp_path / "ops.toml"
    ops.write_text('disable = ["no-such-rule"]\n')
    with pytest.raises(RuleError, match=r"ops.toml: disable: no rule named 'no-such-rule' to disable"):
        load_rules(ops)
    ops.write_text('[[rules]]\nname = "error-burst"\ncondition = "last_minute >>= 3"\n')
    with pytest.raises(RuleError) as info:
        load_rules(ops)
    assert info.value.file == str(ops)
    assert info.value.key == "rules[error-burst].condition"
    # A rule the operator changed is reported against the operator's file, even when the
    # key that no longer fits (here the explanation) is the default's.
    ops.write_text('[[rules]]\nname = "error-burst"\nvalues = { log = "key" }\n')
    with pytest.raises(RuleError) as info:
        load_rules(ops)
    assert info.value.file == str(ops)
    assert "unknown placeholder {baseline}" in info.value.message
    ops.write_text("[[rules]\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_rules(ops)
    with pytest.raises(ConfigError, match="file not found"):
        load_rules(tmp_path / "missing.toml")


def test_new_rule_in_operator_file_must_be_complete(tmp_path: Path) -> None:
    ops = tmp_path / "ops.toml"
    ops.write_text('[[rules]]\nname = "my-rule"\nfor_s = 5\n')
    with pytest.raises(RuleError) as info:
        load_rules(ops)
    assert info.value.key == "rules[my-rule].evidence"
    assert "missing (required)" in info.value.message


def test_collector_config_checks_the_rules_file(tmp_path: Path) -> None:
    ops = tmp_path / "ops.toml"
    ops.write_text('[[rules]]\nname = "cpu-pressure"\nseverity = "P9"\n')
    with pytest.raises(ConfigError) as info:
        parse_config({"collector": {"signal_rules_file": str(ops)}}, "collector.toml")
    assert info.value.file == "collector.toml"
    assert info.value.key == "collector.signal_rules_file"
    assert f"{ops}: rules[cpu-pressure].severity: must be one of P1, P2, P3, P4" in info.value.message
    ops.write_text('disable = ["cpu-pressure"]\n')
    config = parse_config({"collector": {"signal_rules_file": str(ops)}}, "collector.toml")
    assert config.collector.signal_rules_file == str(ops)
