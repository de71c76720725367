"""Loading rules: the built-in file, an extra rules file, disable, and every load error."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from hostdiag.agent.configfile import ConfigError
from hostdiag.agent.redact import load_redactor
from hostdiag.agent.redact.engine import builtin_rules_path

GOOD_RULE = '''
[[rule]]
name = "acme-license"
description = "ACME license keys"
keywords = ["acme-lic-"]
pattern = 'ACME-LIC-[0-9A-F]{16}'
'''


def write(tmp_path: Path, text: str, name: str = "extra.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_builtin_rules_ship_as_package_data() -> None:
    path = Path(builtin_rules_path())
    assert path.name == "rules.toml" and path.is_file()


def test_extra_rules_are_added_after_the_builtin_ones(tmp_path: Path) -> None:
    redactor = load_redactor(write(tmp_path, GOOD_RULE))
    assert redactor.rule_names[-1] == "acme-license"
    assert "password-assign" in redactor.rule_names
    counts: collections.Counter[str] = collections.Counter()
    assert redactor.redact("license ACME-LIC-0123456789ABCDEF ok", counts) == "license [REDACTED:acme-license] ok"
    assert counts == {"acme-license": 1}


def test_extra_rule_with_group_flags_and_names(tmp_path: Path) -> None:
    text = '''
[[rule]]
name = "internal-session"
description = "session ids of the internal portal"
keywords = ["portal_sid"]
flags = "ix"
pattern = """
    portal_sid = (?P<sid> [0-9a-f]{8} )
"""
secret_group = "sid"
'''
    redactor = load_redactor(write(tmp_path, text))
    assert redactor.redact("PORTAL_SID=DEADBEEF") == "PORTAL_SID=[REDACTED:internal-session]"


def test_extra_name_rule_applies_to_env_and_argv(tmp_path: Path) -> None:
    text = '''
[[rule]]
name = "acme-env"
kind = "name"
description = "ACME variables"
pattern = '^ACME_LICENSE$'
'''
    redactor = load_redactor(write(tmp_path, text))
    assert redactor.redact_env({"ACME_LICENSE": "x", "OTHER": "y"}) == {"ACME_LICENSE": "[REDACTED:acme-env]", "OTHER": "y"}
    assert redactor.redact_argv(["tool", "--acme-license", "v"]) == ["tool", "--acme-license", "[REDACTED:acme-env]"]


def test_empty_extra_file_changes_nothing(tmp_path: Path) -> None:
    assert load_redactor(write(tmp_path, "")).rule_names == load_redactor().rule_names


def test_disable_turns_builtin_rules_off() -> None:
    redactor = load_redactor(disable=["password-assign", "connstring-password"])
    assert "password-assign" not in redactor.rule_names
    assert redactor.redact("password=hunter2") == "password=hunter2"
    assert redactor.redact("token=abcdefgh") == "token=[REDACTED:secret-assign]"


def test_disable_secret_name_leaves_env_to_the_text_rules() -> None:
    redactor = load_redactor(disable=("secret-name",))
    assert redactor.redact_env({"DB_PASSWORD": "x", "X": "password=y"}) == {
        "DB_PASSWORD": "x", "X": "password=[REDACTED:password-assign]"}


def expect_error(path: str, *fragments: str, disable: tuple[str, ...] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_redactor(path, disable=disable)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def rule(**fields: object) -> str:
    lines = ["[[rule]]"]
    for key, value in fields.items():
        if isinstance(value, str):
            lines.append(f"{key} = '''{value}'''")
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, list):
            items = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value)
            lines.append(f"{key} = [{items}]")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


BASE = {"name": "my-rule", "description": "d", "keywords": ["abc"], "pattern": "abc=(x+)"}


@pytest.mark.parametrize(("fields", "fragments"), [
    ({**BASE, "pattern": "abc=(x+"}, ["my-rule", "pattern", "not a valid regular expression", "missing ), unterminated subpattern"]),
    ({**BASE, "colour": "red"}, ["my-rule", "colour", "unknown key"]),
    ({k: v for k, v in BASE.items() if k != "pattern"}, ["my-rule", "pattern", "is required"]),
    ({k: v for k, v in BASE.items() if k != "name"}, ["rule[0]", "name", "is required"]),
    ({k: v for k, v in BASE.items() if k != "description"}, ["my-rule", "description", "is required"]),
    ({k: v for k, v in BASE.items() if k != "keywords"}, ["my-rule", "keywords", "is required"]),
    ({**BASE, "keywords": []}, ["my-rule", "keywords", "must not be empty"]),
    ({**BASE, "keywords": ["ABC"]}, ["my-rule", "keywords[0]", "must be lowercase"]),
    ({**BASE, "keywords": [""]}, ["my-rule", "keywords[0]", "must not be empty"]),
    ({**BASE, "keywords": [3]}, ["my-rule", "keywords[0]", "expected a string"]),
    ({**BASE, "name": "My_Rule"}, ["name", "kebab-case"]),
    ({**BASE, "name": "password-assign"}, ["password-assign", "duplicate rule name"]),
    ({**BASE, "secret_group": 2}, ["my-rule", "secret_group", "group 2 does not exist"]),
    ({**BASE, "secret_group": "value"}, ["my-rule", "secret_group", "'value' does not exist"]),
    ({**BASE, "secret_group": True}, ["my-rule", "secret_group", "expected"]),
    ({**BASE, "flags": "iq"}, ["my-rule", "flags", "unknown flag 'q'"]),
    ({**BASE, "pattern": "x*"}, ["my-rule", "pattern", "can match the empty string"]),
    ({**BASE, "kind": "magic"}, ["my-rule", "kind", "must be one of"]),
    ({**BASE, "kind": "block"}, ["my-rule", "end_pattern", "is required"]),
    ({**BASE, "kind": "block", "end_pattern": "END", "max_lines": 0}, ["my-rule", "max_lines", "between 1 and 100000"]),
    ({**BASE, "kind": "block", "end_pattern": "END", "secret_group": 1}, ["my-rule", "secret_group", "unknown key"]),
    ({**BASE, "always": "yes"}, ["my-rule", "always", "expected true or false"]),
    ({**BASE, "description": "   "}, ["my-rule", "description", "must not be empty"]),
])
def test_bad_rule(tmp_path: Path, fields: dict[str, object], fragments: list[str]) -> None:
    path = write(tmp_path, rule(**fields))
    error = expect_error(path, path, *fragments)
    assert error.file == path


def test_duplicate_name_within_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_RULE + GOOD_RULE)
    expect_error(path, path, "rule[1] (acme-license).name", "duplicate rule name 'acme-license'")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'placeholders = "x"\n' + GOOD_RULE)
    expect_error(path, path, "placeholders", "unknown key")


def test_rule_must_be_an_array_of_tables(tmp_path: Path) -> None:
    path = write(tmp_path, "rule = 3\n")
    expect_error(path, path, "rule", "array of tables")


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[[rule]\nname = 1\n")
    expect_error(path, path, "invalid TOML")


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    expect_error(path, path, "file not found")


def test_unknown_disable_name(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_RULE)
    expect_error(path, path, "redaction.disable", "unknown rule name 'no-such-rule'", disable=("no-such-rule",))
    with pytest.raises(ConfigError, match="unknown rule name 'acme-license'"):
        load_redactor(path, disable=("acme-license",))  # only built-in rules can be disabled
    with pytest.raises(ConfigError, match="rules.toml: redaction.disable: unknown rule name"):
        load_redactor(disable=("nope",))


def test_bad_argv_rule(tmp_path: Path) -> None:
    path = write(tmp_path, '[[rule]]\nname = "t"\nkind = "argv"\ndescription = "d"\n[[rule.tool]]\nprograms = ["x"]\n')
    expect_error(path, path, "rule[0] (t).tool[0]", "needs 'attached' or 'separate' flags")
    path = write(tmp_path, '[[rule]]\nname = "t"\nkind = "argv"\ndescription = "d"\n[[rule.tool]]\nprograms = ["x"]\n'
                 'separate = ["-k"]\ncolour = "red"\n')
    expect_error(path, path, "tool[0].colour", "unknown key")


def test_bad_name_rule(tmp_path: Path) -> None:
    path = write(tmp_path, '[[rule]]\nname = "n"\nkind = "name"\ndescription = "d"\npattern = "x"\nkeywords = ["x"]\n')
    expect_error(path, path, "rule[0] (n).keywords", "unknown key for a name rule")


def test_builtin_rules_pass_eager_checks() -> None:
    """The shipped rules compile lazily at run time; here they get every check an operator's file gets."""
    from importlib import resources

    from hostdiag.agent.configfile import read_toml
    from hostdiag.agent.redact import engine

    path = str(resources.files("hostdiag.agent.redact").joinpath(engine.BUILTIN_RULES_FILE))
    data = read_toml(path)
    for i, raw in enumerate(data["rule"]):
        eager = engine._parse_rule(raw, path, i, i, lazy=False)
        lazy = engine._parse_rule(raw, path, i, i, lazy=True)
        assert type(eager) is type(lazy) and eager.name == lazy.name
    builtin = engine.load_redactor()
    assert len(builtin.rule_names) == len(data["rule"])
