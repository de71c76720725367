"""The rule expression language: what it computes, what it refuses, and that it never runs Python."""

from __future__ import annotations

import math

import pytest

from hostdiag.collector.signals.expr import ExprError, compile_expr


def ev(text: str, **names: object) -> object:
    return compile_expr(text).evaluate(names)


@pytest.mark.parametrize(
    ("text", "names", "want"),
    [
        ("1 + 2 * 3", {}, 7),
        ("(1 + 2) * 3", {}, 9),
        ("10 / 4", {}, 2.5),
        ("10 % 4", {}, 2),
        ("-x + 1", {"x": 3}, -2),
        ("100 - used_pct", {"used_pct": 97.5}, 2.5),
        ("a.b.c", {"a": {"b": {"c": 4}}}, 4),
        ("xs[1]", {"xs": [5, 6, 7]}, 6),
        ("xs[-1]", {"xs": [5, 6, 7]}, 7),
        ('m["8080"].listening', {"m": {"8080": {"listening": True}}}, True),
        ("m[8080]", {"m": {"8080": 1}}, 1),
        ('"a" + "b"', {}, "ab"),
        ("1 < 2 and 2 <= 2 and 3 > 2 and 3 >= 3 and 1 == 1.0 and 1 != 2", {}, True),
        ('c in ["api", "database"]', {"c": "api"}, True),
        ('c not in ["api", "database"]', {"c": "api"}, False),
        ('"postgres" in procs', {"procs": {"postgres": {}}}, True),
        ("not false", {}, True),
        ("true or false and false", {}, True),
        ("min(3, 1, 2)", {}, 1),
        ("max(xs)", {"xs": [1, None, 4, "x"]}, 4),
        ("sum(xs)", {"xs": [1, 2, 3]}, 6),
        ("avg(xs)", {"xs": [1, 2, 3]}, 2),
        ("median(xs)", {"xs": [5, 1, 3, 100]}, 4),
        ("len(xs)", {"xs": [1, 2]}, 2),
        ("first(xs)", {"xs": [1, 2]}, 1),
        ("last(xs)", {"xs": [1, 2]}, 2),
        ("drop_last(xs)", {"xs": [1, 2, 3]}, [1, 2]),
        ("median(drop_last(xs))", {"xs": [2, 1, 3, 48]}, 2),
        ("abs(-2)", {}, 2),
        ("round(2.345, 2)", {}, 2.35),
        ("round(2.6)", {}, 3),
        ("coalesce(null, x, 3)", {"x": None}, 3),
        ("pct(1, 4)", {}, 25.0),
        ('lower("API")', {}, "api"),
        ('truncate("abcdefghijklmnopqrs", 15)', {}, "abcdefghijklmno"),
        ('truncate(["abc", "de"], 2)', {}, ["ab", "de"]),
        ('pluck(v, "name")', {"v": [{"name": "a"}, {"name": "b"}, 3]}, ["a", "b", None]),
        ("keys(m)", {"m": {"a": 1}}, ["a"]),
        ("values(m)", {"m": {"a": 1}}, [1]),
        ("any(xs)", {"xs": [0, 1]}, True),
        ("all(xs)", {"xs": [0, 1]}, False),
        ("count(xs)", {"xs": [True, False, True]}, 2),
        ('count(m, 0)', {"m": {"a": 0, "b": 1}}, 1),
        ('if(x > 1, "big", "small")', {"x": 2}, "big"),
        ('if(x > 1, "big", "small")', {"x": None}, "small"),
        ("[1, 2][0]", {}, 1),
        ("'it\\'s'", {}, "it's"),
        ("1.5e3", {}, 1500.0),
    ],
)
def test_values(text: str, names: dict, want: object) -> None:
    assert ev(text, **names) == want


@pytest.mark.parametrize(
    "text",
    [
        "missing + 1",          # unknown name: null
        "x / 0",
        "x % 0",
        '"a" < 1',
        "x < 1",
        "a.b",                  # attribute of a number
        "xs[9]",
        "min(xs)",              # nothing numeric
        "median(s)",
        "pct(1, 0)",
        "-s",
        "round(1.5, -1)",
    ],
)
def test_problems_evaluate_to_null(text: str) -> None:
    assert ev(text, x=None, xs=[], a=3, s="text") is None


def test_three_valued_logic() -> None:
    assert ev("x > 1 and false", x=None) is False
    assert ev("x > 1 and true", x=None) is None
    assert ev("x > 1 or true", x=None) is True
    assert ev("x > 1 or false", x=None) is None
    assert ev("not (x > 1)", x=None) is None
    assert ev("x == null", x=None) is True
    assert ev("x != null", x=None) is False


def test_holds_only_for_exactly_true() -> None:
    assert compile_expr("x").holds({"x": True})
    assert not compile_expr("x").holds({"x": 1})
    assert not compile_expr("x > 1").holds({"x": None})


def test_nan_is_not_a_number() -> None:
    assert ev("x > 1", x=math.nan) is None


def test_if_evaluates_only_the_chosen_branch() -> None:
    calls: list[str] = []

    def lookup(name: str) -> object:
        calls.append(name)
        return 1

    compile_expr("if(true, a, b)").evaluate(lookup)
    assert calls == ["a"]


def test_names_and_comparisons_are_reported() -> None:
    e = compile_expr("free_pct < 5 and mount != '/boot' and c in xs")
    assert e.names == {"free_pct", "mount", "c", "xs"}
    assert e.comparisons == ("<", "!=", "in")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty expression"),
        ("1 +", "expected a value, found 'the end' (at character 4)"),
        ("(1", "expected ')', found 'the end'"),
        ("a < b < c", "comparisons do not chain"),
        ("foo(1)", "unknown function 'foo'"),
        ("len(1, 2)", "len() takes 1 argument(s), got 2"),
        ("pct(1)", "pct() takes 2 argument(s), got 1"),
        ("x.(y)", "expected a key name after '.'"),
        ("a $ b", "unexpected character '$' (at character 3)"),
        ("'abc", "unexpected character"),
        ("'\\q'", "unknown escape \\q"),
        ("x(1)", "unknown function 'x'"),
        ("a.b(1)", "only a function name can be called"),
        ("1 2", "unexpected '2'"),
        ("x" * 2001, "longer than 2000 characters"),
        ("(" * 50 + "1" + ")" * 50, "nested deeper than 40 levels"),
    ],
)
def test_syntax_errors_say_what_and_where(text: str, message: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "x.__class__",
        "evidence.__class__.__mro__",
        "().__class__",
        "eval('1')",
        "open('/etc/passwd')",
    ],
)
def test_no_python_is_reachable(text: str) -> None:
    """Dunder names are ordinary (missing) keys; calls are only the fixed functions."""
    try:
        e = compile_expr(text)
    except ExprError:
        return
    assert e.evaluate({"x": 1, "evidence": {"a": 1}}) is None
