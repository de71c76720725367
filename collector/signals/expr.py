"""The small, safe expression language of signal rules.

Rule text is parsed here into a tree of closures; nothing is ever handed to
``eval``/``exec`` and no Python attribute is ever looked up by name, so a rule
file can only read the evidence it is given.

Grammar (lowest precedence first)::

    expr     := or
    or       := and ("or" and)*
    and      := not ("and" not)*
    not      := "not" not | compare
    compare  := sum (("<" | "<=" | ">" | ">=" | "==" | "!=" | "in" | "not in") sum)?
    sum      := product (("+" | "-") product)*
    product  := unary (("*" | "/" | "%") unary)*
    unary    := "-" unary | postfix
    postfix  := atom ("." NAME | "[" expr "]" | "(" args ")")*
    atom     := NUMBER | STRING | "true" | "false" | "null" | NAME | "[" list "]" | "(" expr ")"

Values are what JSON holds: null, booleans, numbers, strings, lists and maps.
Evidence is untrusted and often incomplete, so evaluation never raises: a
missing key, a type mismatch (``"a" < 1``) or a division by zero gives
``null``; arithmetic and ordering with ``null`` give ``null``; ``x == null``
asks whether ``x`` is missing.  ``and``/``or``/``not`` treat ``null`` as
unknown (three-valued), and a rule's ``where`` and ``condition`` hold only when
they evaluate to exactly ``true`` — missing evidence never fires a rule.

Functions (a fixed list, checked when a rule is loaded): see :data:`FUNCTIONS`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Expr", "ExprError", "compile_expr", "FUNCTIONS", "COMPARISONS", "truth"]

MAX_EXPR_CHARS = 2000
MAX_DEPTH = 40
MAX_LIST_ITEMS = 100_000

COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")


class ExprError(ValueError):
    """A rule expression that does not parse, with the character position."""

    def __init__(self, message: str, pos: int | None = None) -> None:
        super().__init__(message if pos is None else f"{message} (at character {pos + 1})")
        self.pos = pos


Env = Callable[[str], Any]
Node = Callable[[Env], Any]

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|==|!=|[<>+\-*/%()\[\],.])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # number, string, name, keyword, op, end
    text: str
    pos: int
    value: Any = None


def _unescape(body: str, pos: int) -> str:
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            if nxt not in _ESCAPES:
                raise ExprError(f"unknown escape \\{nxt} in a string", pos + i + 1)
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExprError(f"unexpected character {text[pos]!r}", pos)
        kind = m.lastgroup or ""
        chunk = m.group()
        if kind == "number":
            value: Any = float(chunk) if any(c in chunk for c in ".eE") else int(chunk)
            out.append(_Tok("number", chunk, pos, value))
        elif kind == "string":
            out.append(_Tok("string", chunk, pos, _unescape(chunk[1:-1], pos)))
        elif kind == "name":
            out.append(_Tok("keyword" if chunk in _KEYWORDS else "name", chunk, pos))
        elif kind == "op":
            out.append(_Tok("op", chunk, pos))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


# -- value helpers -----------------------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def truth(v: Any) -> bool | None:
    """Three-valued truth: True, False, or None (unknown)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if _is_num(v):
        return bool(v != 0)
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return None


def _numbers(args: tuple[Any, ...]) -> list[float]:
    """The numbers of a call: one list argument, or the arguments themselves; nulls skipped."""
    items = args[0] if len(args) == 1 and isinstance(args[0], list) else list(args)
    return [x for x in items if _is_num(x)]


def _fn_min(*args: Any) -> Any:
    nums = _numbers(args)
    return min(nums) if nums else None


def _fn_max(*args: Any) -> Any:
    nums = _numbers(args)
    return max(nums) if nums else None


def _fn_sum(*args: Any) -> Any:
    nums = _numbers(args)
    return sum(nums) if nums else None


def _fn_avg(*args: Any) -> Any:
    nums = _numbers(args)
    return sum(nums) / len(nums) if nums else None


def _fn_median(*args: Any) -> Any:
    nums = _numbers(args)
    return statistics.median(nums) if nums else None


def _fn_len(v: Any) -> Any:
    return len(v) if isinstance(v, (list, dict, str)) else None


def _fn_first(v: Any) -> Any:
    return v[0] if isinstance(v, list) and v else None


def _fn_last(v: Any) -> Any:
    return v[-1] if isinstance(v, list) and v else None


def _fn_drop_last(v: Any) -> Any:
    return v[:-1] if isinstance(v, list) else None


def _fn_abs(v: Any) -> Any:
    return abs(v) if _is_num(v) else None


def _fn_round(v: Any, digits: Any = 0) -> Any:
    if not _is_num(v) or not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 12:
        return None
    if isinstance(v, float) and math.isinf(v):
        return v
    return round(v, digits) if digits else int(round(v))


def _fn_coalesce(*args: Any) -> Any:
    for a in args:
        if a is not None:
            return a
    return None


def _fn_pct(part: Any, whole: Any) -> Any:
    if not _is_num(part) or not _is_num(whole) or whole == 0:
        return None
    return 100.0 * part / whole


def _fn_lower(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else None


def _fn_truncate(v: Any, n: Any) -> Any:
    """The first ``n`` characters of a string, or of each string in a list (kernel task names: 15)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return None
    if isinstance(v, str):
        return v[:n]
    if isinstance(v, list):
        return [x[:n] if isinstance(x, str) else x for x in v]
    return None


def _fn_pluck(v: Any, name: Any) -> Any:
    """``name`` of each map in a list (``pluck(oom_victims, "name")``)."""
    if not isinstance(v, list) or not isinstance(name, str):
        return None
    return [x.get(name) if isinstance(x, dict) else None for x in v]


def _fn_keys(v: Any) -> Any:
    return list(v.keys()) if isinstance(v, dict) else None


def _fn_values(v: Any) -> Any:
    return list(v.values()) if isinstance(v, dict) else None


def _fn_any(v: Any) -> Any:
    if not isinstance(v, list):
        return None
    return any(truth(x) is True for x in v)


def _fn_all(v: Any) -> Any:
    if not isinstance(v, list):
        return None
    return all(truth(x) is True for x in v)


def _fn_count(v: Any, wanted: Any = True) -> Any:
    """How many items of a list (or values of a map) equal ``wanted`` (default: are true)."""
    items = list(v.values()) if isinstance(v, dict) else v
    if not isinstance(items, list):
        return None
    if wanted is True:
        return sum(1 for x in items if truth(x) is True)
    return sum(1 for x in items if _equal(x, wanted))


# name → (function, min args, max args (None: any))
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "min": (_fn_min, 1, None),
    "max": (_fn_max, 1, None),
    "sum": (_fn_sum, 1, None),
    "avg": (_fn_avg, 1, None),
    "median": (_fn_median, 1, None),
    "len": (_fn_len, 1, 1),
    "first": (_fn_first, 1, 1),
    "last": (_fn_last, 1, 1),
    "drop_last": (_fn_drop_last, 1, 1),
    "abs": (_fn_abs, 1, 1),
    "round": (_fn_round, 1, 2),
    "coalesce": (_fn_coalesce, 1, None),
    "pct": (_fn_pct, 2, 2),
    "lower": (_fn_lower, 1, 1),
    "truncate": (_fn_truncate, 2, 2),
    "pluck": (_fn_pluck, 2, 2),
    "keys": (_fn_keys, 1, 1),
    "values": (_fn_values, 1, 1),
    "any": (_fn_any, 1, 1),
    "all": (_fn_all, 1, 1),
    "count": (_fn_count, 1, 2),
}
# ``if(cond, a, b)`` is special: only the chosen branch is evaluated.
_SPECIAL = {"if": (3, 3)}


def _equal(a: Any, b: Any) -> bool:
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    if type(a) is not type(b) and not (a is None or b is None):
        return False
    return bool(a == b)


def _compare(op: str, a: Any, b: Any) -> Any:
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    if a is None or b is None:
        return None
    if _is_num(a) and _is_num(b) or isinstance(a, str) and isinstance(b, str):
        if op == "<":
            return a < b
        if op == "<=":
            return a <= b
        if op == ">":
            return a > b
        return a >= b
    return None


def _contains(item: Any, container: Any) -> Any:
    if isinstance(container, list):
        return any(_equal(item, x) for x in container)
    if isinstance(container, dict):
        return isinstance(item, str) and item in container
    if isinstance(container, str) and isinstance(item, str):
        return item in container
    return None


def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    if not _is_num(a) or not _is_num(b):
        return None
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b if b != 0 else None
        return a % b if b != 0 else None
    except OverflowError:
        return None


def _index(container: Any, key: Any) -> Any:
    if isinstance(container, dict):
        if isinstance(key, str):
            return container.get(key)
        if _is_num(key) and not isinstance(key, float):
            return container.get(str(key))
        return None
    if isinstance(container, list) and isinstance(key, int) and not isinstance(key, bool):
        if -len(container) <= key < len(container):
            return container[key]
    return None


# -- parser --------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0
        self.names: set[str] = set()
        self.comparisons: list[str] = []

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at(self, kind: str, text: str | None = None) -> bool:
        t = self.tok
        return t.kind == kind and (text is None or t.text == text)

    def expect(self, kind: str, text: str) -> _Tok:
        if not self.at(kind, text):
            found = self.tok.text or "the end"
            raise ExprError(f"expected {text!r}, found {found!r}", self.tok.pos)
        return self.take()

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"expression nested deeper than {MAX_DEPTH} levels", self.tok.pos)

    def parse(self) -> Node:
        node = self.or_()
        if not self.at("end"):
            raise ExprError(f"unexpected {self.tok.text!r}", self.tok.pos)
        return node

    def or_(self) -> Node:
        left = self.and_()
        while self.at("keyword", "or"):
            self.take()
            right = self.and_()
            left = _or(left, right)
        return left

    def and_(self) -> Node:
        left = self.not_()
        while self.at("keyword", "and"):
            self.take()
            right = self.not_()
            left = _and(left, right)
        return left

    def not_(self) -> Node:
        if self.at("keyword", "not"):
            self.take()
            self._enter()
            inner = self.not_()
            self.depth -= 1
            return lambda env: (None if (t := truth(inner(env))) is None else not t)
        return self.compare()

    def compare(self) -> Node:
        left = self.sum_()
        t = self.tok
        if t.kind == "op" and t.text in ("<", "<=", ">", ">=", "==", "!="):
            self.take()
            right = self.sum_()
            op = t.text
            self.comparisons.append(op)
            node: Node = lambda env: _compare(op, left(env), right(env))  # noqa: E731
        elif t.kind == "keyword" and t.text == "in":
            self.take()
            right = self.sum_()
            self.comparisons.append("in")
            node = lambda env: _contains(left(env), right(env))  # noqa: E731
        elif t.kind == "keyword" and t.text == "not" and self.toks[self.i + 1].text == "in":
            self.take()
            self.take()
            right = self.sum_()
            self.comparisons.append("not in")
            node = lambda env: (None if (r := _contains(left(env), right(env))) is None else not r)  # noqa: E731
        else:
            return left
        nxt = self.tok
        if nxt.kind == "op" and nxt.text in COMPARISONS or nxt.kind == "keyword" and nxt.text == "in":
            raise ExprError("comparisons do not chain: use 'and' (a < b and b < c)", nxt.pos)
        return node

    def sum_(self) -> Node:
        left = self.product()
        while self.tok.kind == "op" and self.tok.text in "+-":
            op = self.take().text
            right = self.product()
            left = _binary(op, left, right)
        return left

    def product(self) -> Node:
        left = self.unary()
        while self.tok.kind == "op" and self.tok.text in ("*", "/", "%"):
            op = self.take().text
            right = self.unary()
            left = _binary(op, left, right)
        return left

    def unary(self) -> Node:
        if self.at("op", "-"):
            self.take()
            self._enter()
            inner = self.unary()
            self.depth -= 1
            return lambda env: (-v if _is_num(v := inner(env)) else None)
        return self.postfix()

    def postfix(self) -> Node:
        node = self.atom()
        while True:
            if self.at("op", "."):
                self.take()
                t = self.tok
                if t.kind not in ("name", "keyword"):
                    raise ExprError(f"expected a key name after '.', found {t.text or 'the end'!r}", t.pos)
                self.take()
                node = _attr(node, t.text)
            elif self.at("op", "["):
                self.take()
                self._enter()
                key = self.or_()
                self.depth -= 1
                self.expect("op", "]")
                node = _item(node, key)
            elif self.at("op", "("):
                raise ExprError("only a function name can be called", self.tok.pos)
            else:
                return node

    def atom(self) -> Node:
        t = self.tok
        if t.kind in ("number", "string"):
            self.take()
            value = t.value
            return lambda env: value
        if t.kind == "keyword" and t.text in ("true", "false", "null"):
            self.take()
            const = {"true": True, "false": False, "null": None}[t.text]
            return lambda env: const
        if t.kind == "name":
            self.take()
            if self.at("op", "("):
                return self.call(t)
            name = t.text
            self.names.add(name)
            return lambda env: env(name)
        if self.at("op", "("):
            self.take()
            self._enter()
            inner = self.or_()
            self.depth -= 1
            self.expect("op", ")")
            return inner
        if self.at("op", "["):
            self.take()
            self._enter()
            items: list[Node] = []
            if not self.at("op", "]"):
                items.append(self.or_())
                while self.at("op", ","):
                    self.take()
                    items.append(self.or_())
            self.depth -= 1
            self.expect("op", "]")
            return lambda env: [n(env) for n in items]
        raise ExprError(f"expected a value, found {t.text or 'the end'!r}", t.pos)

    def call(self, name_tok: _Tok) -> Node:
        name = name_tok.text
        if name not in FUNCTIONS and name not in _SPECIAL:
            known = ", ".join(sorted([*FUNCTIONS, *_SPECIAL]))
            raise ExprError(f"unknown function {name!r} (known: {known})", name_tok.pos)
        self.expect("op", "(")
        self._enter()
        args: list[Node] = []
        if not self.at("op", ")"):
            args.append(self.or_())
            while self.at("op", ","):
                self.take()
                args.append(self.or_())
        self.depth -= 1
        self.expect("op", ")")
        lo, hi = _SPECIAL[name] if name in _SPECIAL else FUNCTIONS[name][1:]
        if len(args) < lo or hi is not None and len(args) > hi:
            want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
            raise ExprError(f"{name}() takes {want} argument(s), got {len(args)}", name_tok.pos)
        if name == "if":
            cond, then, other = args
            return lambda env: then(env) if truth(cond(env)) is True else other(env)
        fn = FUNCTIONS[name][0]

        def call_node(env: Env) -> Any:
            try:
                return fn(*(a(env) for a in args))
            except (TypeError, ValueError, OverflowError, statistics.StatisticsError):
                return None

        return call_node


def _or(left: Node, right: Node) -> Node:
    def node(env: Env) -> Any:
        a = truth(left(env))
        if a is True:
            return True
        b = truth(right(env))
        if b is True:
            return True
        return None if a is None or b is None else False

    return node


def _and(left: Node, right: Node) -> Node:
    def node(env: Env) -> Any:
        a = truth(left(env))
        if a is False:
            return False
        b = truth(right(env))
        if b is False:
            return False
        return None if a is None or b is None else True

    return node


def _binary(op: str, left: Node, right: Node) -> Node:
    return lambda env: _arith(op, left(env), right(env))


def _attr(node: Node, key: str) -> Node:
    return lambda env: (v.get(key) if isinstance(v := node(env), dict) else None)


def _item(node: Node, key: Node) -> Node:
    return lambda env: _index(node(env), key(env))


@dataclass(frozen=True)
class Expr:
    """A compiled expression: call :meth:`evaluate` with a name lookup."""

    text: str
    names: frozenset[str]
    comparisons: tuple[str, ...]
    _node: Node

    def evaluate(self, lookup: Env | Mapping[str, Any]) -> Any:
        env: Env = lookup.get if isinstance(lookup, Mapping) else lookup
        try:
            return self._node(env)
        except RecursionError:
            return None

    def holds(self, lookup: Env | Mapping[str, Any]) -> bool:
        """True only when the expression evaluates to exactly ``true``."""
        return self.evaluate(lookup) is True


def compile_expr(text: str) -> Expr:
    """Parse ``text``; raises :class:`ExprError` with the position of the problem."""
    if not isinstance(text, str):
        raise ExprError(f"expected an expression string, got {type(text).__name__}")
    if not text.strip():
        raise ExprError("empty expression")
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"longer than {MAX_EXPR_CHARS} characters")
    parser = _Parser(text)
    node = parser.parse()
    return Expr(text, frozenset(parser.names), tuple(parser.comparisons), node)
