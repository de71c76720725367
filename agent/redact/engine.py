"""The redaction rule engine.

Rules are data (``rules.toml`` next to this module, plus an optional extra file
in the same format); this module loads and validates them and runs them fast.

How a block of text is redacted
-------------------------------

1. The block is lower-cased once and searched for every rule keyword in one
   pass (an Aho-Corasick automaton from ``ahocorasick_rs`` when installed,
   otherwise one ``str.find`` scan per keyword).  A block without any keyword
   is returned unchanged after that single scan.
2. Each hit is widened to its enclosing line; a candidate line is searched only
   with the rules whose own keywords occur in it.
3. ``block`` rules (PEM private keys) replace every body line between their
   BEGIN and END lines, keeping the BEGIN/END lines themselves.
4. All claims are merged: overlapping claims become one replacement, named
   after the widest claim (ties: the rule listed first).  Each replacement is
   ``[REDACTED:<rule-name>]`` and counts one hit for that rule.

Guarantees: the number and position of line breaks never change; text that is
already a marker is never claimed again, so redaction is idempotent; no input
makes it raise.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from hostdiag.agent.configfile import ConfigError, read_toml

_ahocorasick: Any
try:  # optional accelerator for the keyword prefilter (see docs/redaction.md)
    import ahocorasick_rs as _ahocorasick
except ImportError:  # pragma: no cover - exercised where the wheel is absent
    _ahocorasick = None

__all__ = [
    "BUILTIN_RULES_FILE",
    "MARKER_RE",
    "Redactor",
    "StreamRedactor",
    "load_redactor",
    "prefilter_backend",
]

#: Any marker this engine writes.
MARKER_RE = re.compile(r"\[REDACTED:[a-z0-9]+(?:-[a-z0-9]+)*\]")

#: Where the built-in rules live (shipped as package data).
BUILTIN_RULES_FILE = "rules.toml"

_NAME_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_FLAG_BITS = {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE, "x": re.VERBOSE, "a": re.ASCII}
_KINDS = ("text", "block", "name", "argv")
_COMMON_KEYS = {"name", "description", "kind"}
_KEYS_BY_KIND = {
    "text": _COMMON_KEYS | {"keywords", "always", "pattern", "secret_group", "flags"},
    "block": _COMMON_KEYS | {"keywords", "always", "pattern", "end_pattern", "max_lines", "flags"},
    "name": _COMMON_KEYS | {"pattern", "flags"},
    "argv": _COMMON_KEYS | {"tool"},
}
_TOOL_KEYS = {"programs", "attached", "separate", "subcommands", "secret_after"}
_ENV_ASSIGN_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_CONFIG_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[_.-][A-Za-z0-9]+)+")
_BLANK = " \t\r\f\v"


# --------------------------------------------------------------------- rules --


@dataclass(frozen=True)
class _TextRule:
    name: str
    priority: int
    keywords: tuple[str, ...]
    always: bool
    regex: re.Pattern[str]
    groups: tuple[int | str, ...]
    marker: str
    on_lower: bool  # matched against the lower-cased line (the i flag)


@dataclass(frozen=True)
class _BlockRule:
    name: str
    priority: int
    keywords: tuple[str, ...]
    always: bool
    begin: re.Pattern[str]
    end: re.Pattern[str]
    max_lines: int
    marker: str
    on_lower: bool


@dataclass(frozen=True)
class _NameRule:
    name: str
    priority: int
    regex: re.Pattern[str]
    marker: str


@dataclass(frozen=True)
class _Tool:
    programs: frozenset[str]
    attached: tuple[str, ...]
    separate: frozenset[str]
    subcommands: frozenset[str]
    secret_after: str


@dataclass(frozen=True)
class _ArgvRule:
    name: str
    priority: int
    tools: tuple[_Tool, ...]
    marker: str


_Rule = _TextRule | _BlockRule | _NameRule | _ArgvRule


@dataclass
class _OpenBlock:
    """A block rule whose END has not been seen yet (stream state)."""

    rule: _BlockRule
    lines_left: int
    counted: bool


# A claim on a span of text: (start, end, priority, marker, name, counts).
_Claim = tuple[int, int, int, str, str, bool]


# ------------------------------------------------------------------ loading --


def load_redactor(rules_file: str = "", disable: Iterable[str] = ()) -> Redactor:
    """The built-in rules, plus the rules of ``rules_file`` if given.

    ``disable`` names built-in rules to turn off.  Any problem in the extra file
    (or an unknown name in ``disable``) raises :class:`ConfigError` naming the
    file, the rule and what is wrong.
    """
    builtin_path = str(resources.files("hostdiag.agent.redact").joinpath(BUILTIN_RULES_FILE))
    data = read_toml(builtin_path)
    builtin, placeholders = _parse_file(data, builtin_path, builtin=True, taken=set())
    disabled = _as_names(disable)
    known = {r.name for r in builtin}
    for name in disabled:
        if name not in known:
            where = rules_file or builtin_path
            raise ConfigError(
                where, "redaction.disable",
                f"unknown rule name {name!r} (built-in rules: {', '.join(r.name for r in builtin)})",
            )
    rules: list[_Rule] = [r for r in builtin if r.name not in disabled]
    if rules_file:
        extra, _ = _parse_file(read_toml(rules_file), rules_file, builtin=False, taken=set(known),
                               first_priority=len(builtin))
        rules.extend(extra)
    return Redactor(rules, placeholders)


def _as_names(disable: Iterable[str]) -> set[str]:
    if isinstance(disable, str):  # a single name is a common slip; accept it
        return {disable}
    return {str(n) for n in disable}


def _parse_file(
    data: dict[str, Any], file: str, *, builtin: bool, taken: set[str], first_priority: int = 0
) -> tuple[list[_Rule], re.Pattern[str] | None]:
    allowed_top = {"rule", "placeholders"} if builtin else {"rule"}
    for key in data:
        if key not in allowed_top:
            raise ConfigError(file, key, f"unknown key (known keys here: {', '.join(sorted(allowed_top))})")
    placeholders = None
    if "placeholders" in data:
        placeholders = _compile(file, "placeholders", data["placeholders"], "")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        raise ConfigError(file, "rule", "expected an array of tables ([[rule]])")
    rules: list[_Rule] = []
    for i, raw in enumerate(raw_rules):
        rule = _parse_rule(raw, file, i, first_priority + i, lazy=builtin)
        if rule.name in taken:
            raise ConfigError(file, _where(i, rule.name, "name"), f"duplicate rule name {rule.name!r}")
        taken.add(rule.name)
        rules.append(rule)
    return rules, placeholders


def _where(index: int, name: str | None, key: str = "") -> str:
    label = f"rule[{index}]" + (f" ({name})" if name else "")
    return f"{label}.{key}" if key else label


def _parse_rule(raw: dict[str, Any], file: str, index: int, priority: int, *, lazy: bool = False) -> _Rule:
    """One rule.  ``lazy`` (the shipped rules, which the test suite checks in full) defers
    compiling its patterns to first use, so a short-lived ``agentctl collect`` does not pay
    for rules it never needs; an operator's file is compiled and checked eagerly."""
    name_value = raw.get("name")
    name = name_value if isinstance(name_value, str) and name_value else None

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(file, _where(index, name, key), message)

    def get(key: str, kind: type | tuple[type, ...], what: str, required: bool = False, default: Any = None) -> Any:
        if key not in raw:
            if required:
                raise fail(key, "is required")
            return default
        value = raw[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise fail(key, f"expected {what}, got {value!r}")
        if not isinstance(value, kind):
            raise fail(key, f"expected {what}, got {type(value).__name__} {value!r}")
        return value

    kind = get("kind", str, "a string", default="text")
    if kind not in _KINDS:
        raise fail("kind", f"must be one of {', '.join(repr(k) for k in _KINDS)}, got {kind!r}")
    for key in raw:
        if key not in _KEYS_BY_KIND[kind]:
            known = ", ".join(sorted(_KEYS_BY_KIND[kind]))
            raise fail(key, f"unknown key for a {kind} rule (known keys: {known})")
    get("name", str, "a string", required=True)
    if name is None or not _NAME_RE.fullmatch(name):
        raise fail("name", f"must be kebab-case (lowercase letters, digits and '-'), got {name_value!r}")
    description = get("description", str, "a string", required=True)
    if not description.strip():
        raise fail("description", "must not be empty")
    marker = f"[REDACTED:{name}]"

    if kind == "argv":
        tools_raw = get("tool", list, "an array of tables ([[rule.tool]])", required=True)
        if not tools_raw:
            raise fail("tool", "must not be empty")
        tools = tuple(_parse_tool(t, fail, j) for j, t in enumerate(tools_raw))
        return _ArgvRule(name, priority, tools, marker)

    flags_text = get("flags", str, "a string of flag letters", default="")
    pattern = get("pattern", str, "a string (a Python regular expression)", required=True)
    # A case-insensitive text or block rule is run against the lower-cased
    # line (which the prefilter computes anyway): Python's regex engine can
    # only skip ahead to a pattern's leading literal when it is case-sensitive.
    on_lower = "i" in flags_text and kind in ("text", "block")
    if on_lower and not lazy:
        _compile(file, _where(index, name, "pattern"), pattern, flags_text)  # report errors as written
        pattern = _lowercase_pattern(pattern)
        flags_text = flags_text.replace("i", "")
    if kind in ("text", "block") and "m" not in flags_text:
        flags_text += "m"  # rules see one line at a time: ^ and $ are line anchors
    regex = _compile(file, _where(index, name, "pattern"), pattern, flags_text, lazy=lazy)

    if kind == "name":
        return _NameRule(name, priority, regex, marker)

    always = get("always", bool, "true or false", default=False)
    keywords_raw = get("keywords", list, "an array of strings", required=not always, default=[])
    keywords: list[str] = []
    for j, kw in enumerate(keywords_raw):
        if not isinstance(kw, str):
            raise fail(f"keywords[{j}]", f"expected a string, got {type(kw).__name__} {kw!r}")
        if not kw:
            raise fail(f"keywords[{j}]", "must not be empty")
        if kw != kw.lower():
            raise fail(f"keywords[{j}]", f"must be lowercase (the prefilter runs on lower-cased text), got {kw!r}")
        if "\n" in kw or "\r" in kw:
            raise fail(f"keywords[{j}]", "must not contain a line break")
        keywords.append(kw)
    if not keywords and not always:
        raise fail("keywords", "must not be empty (or set always = true, which makes every line pay for this rule)")

    if kind == "block":
        end_text = get("end_pattern", str, "a string (a Python regular expression)", required=True)
        if on_lower:
            if not lazy:
                _compile(file, _where(index, name, "end_pattern"), end_text, flags_text + "i")
            end_text = _lowercase_pattern(end_text)
        end = _compile(file, _where(index, name, "end_pattern"), end_text, flags_text, lazy=lazy)
        if not lazy and end.search("") is not None:
            raise fail("end_pattern", "can match the empty string")
        max_lines = get("max_lines", int, "an integer", default=200)
        if not 1 <= max_lines <= 100_000:
            raise fail("max_lines", f"must be between 1 and 100000, got {max_lines}")
        if not lazy and regex.search("") is not None:
            raise fail("pattern", "can match the empty string")
        return _BlockRule(name, priority, tuple(keywords), always, regex, end, max_lines, marker, on_lower)

    groups_raw = get("secret_group", (int, str, list), "a group number, a group name or a list of them", default=0)
    groups_list = groups_raw if isinstance(groups_raw, list) else [groups_raw]
    if not groups_list:
        raise fail("secret_group", "must not be an empty list")
    groups: list[int | str] = []
    for g in groups_list:
        if isinstance(g, bool) or not isinstance(g, (int, str)):
            raise fail("secret_group", f"expected a group number or name, got {g!r}")
        if isinstance(g, str) and on_lower:
            g = g.lower()
        if lazy:
            groups.append(g)  # the shipped rules are checked in full by test_builtin_rules_pass_eager_checks
            continue
        if isinstance(g, int) and not 0 <= g <= regex.groups:
            raise fail("secret_group", f"group {g} does not exist (the pattern has {regex.groups} groups)")
        if isinstance(g, str) and g not in regex.groupindex:
            names = ", ".join(regex.groupindex) or "none"
            raise fail("secret_group", f"group {g!r} does not exist (named groups: {names})")
        groups.append(g)
    if not lazy and regex.search("") is not None:
        raise fail("pattern", "can match the empty string")
    return _TextRule(name, priority, tuple(keywords), always, regex, tuple(groups), marker, on_lower)


def _parse_tool(raw: Any, fail: Any, j: int) -> _Tool:
    if not isinstance(raw, dict):
        raise fail(f"tool[{j}]", "expected a table")
    for key in raw:
        if key not in _TOOL_KEYS:
            raise fail(f"tool[{j}].{key}", f"unknown key (known keys: {', '.join(sorted(_TOOL_KEYS))})")

    def strings(key: str, required: bool = False) -> list[str]:
        value = raw.get(key)
        if value is None:
            if required:
                raise fail(f"tool[{j}].{key}", "is required")
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise fail(f"tool[{j}].{key}", "expected an array of non-empty strings")
        return value

    programs = strings("programs", required=True)
    if not programs:
        raise fail(f"tool[{j}].programs", "must not be empty")
    attached, separate = strings("attached"), strings("separate")
    if not attached and not separate:
        raise fail(f"tool[{j}]", "needs 'attached' or 'separate' flags")
    secret_after = raw.get("secret_after", "")
    if not isinstance(secret_after, str):
        raise fail(f"tool[{j}].secret_after", "expected a string")
    return _Tool(
        programs=frozenset(p.lower() for p in programs),
        attached=tuple(sorted(attached, key=len, reverse=True)),
        separate=frozenset(separate),
        subcommands=frozenset(strings("subcommands")),
        secret_after=secret_after,
    )


def _lowercase_pattern(pattern: str) -> str:
    """``pattern`` for lower-cased text: every literal lower-cased, escapes (``\\S``, ``\\W``...) kept."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(pattern[i:i + 2])
            i += 2
        elif pattern.startswith("(?P", i):  # named group syntax is case-sensitive
            out.append("(?P")
            i += 3
        else:
            out.append(c.lower())
            i += 1
    return "".join(out)


class _LazyPattern:
    """A regular expression compiled on first use (attributes delegate to it)."""

    __slots__ = ("pattern", "flags", "_compiled")

    def __init__(self, pattern: str, flags: int) -> None:
        self.pattern = pattern
        self.flags = flags
        self._compiled: re.Pattern[str] | None = None

    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self.pattern, self.flags)
        return self._compiled

    def __getattr__(self, name: str) -> Any:
        return getattr(self.compiled(), name)


def _compile(file: str, key: str, pattern: Any, flags_text: str, *, lazy: bool = False) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise ConfigError(file, key, f"expected a string (a Python regular expression), got {pattern!r}")
    flags = 0
    for letter in flags_text:
        if letter not in _FLAG_BITS:
            raise ConfigError(file, key.rsplit(".", 1)[0] + ".flags" if "." in key else "flags",
                              f"unknown flag {letter!r} (allowed: {', '.join(_FLAG_BITS)})")
        flags |= _FLAG_BITS[letter]
    if lazy:
        return _LazyPattern(pattern, flags)  # type: ignore[return-value]
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ConfigError(file, key, f"is not a valid regular expression: {exc}") from None


# ---------------------------------------------------------------- prefilter --


def _minimal_literals(keywords: Iterable[str]) -> list[str]:
    """Keywords that contain no other keyword: finding these finds them all."""
    unique = sorted(set(keywords), key=len)
    kept: list[str] = []
    for kw in unique:
        if not any(k in kw for k in kept):
            kept.append(kw)
    return kept


class _Prefilter:
    """Finds the keyword literals in a lower-cased text, as (offset, literal id) pairs.

    Literal ids index ``self.literals``.  The automaton reports non-overlapping
    matches, so a literal that starts inside another one's match can go
    unreported; ``self.may_hide[id]`` lists where that can happen, for the
    caller to check directly.
    """

    def __init__(self, keywords: Iterable[str], use_automaton: bool = True) -> None:
        literals = _minimal_literals(keywords)
        # Single characters are found with memchr-speed str.find; in the
        # automaton they would slow its SIMD search down badly.
        self.words = [k for k in literals if len(k) > 1]
        self.chars = [k for k in literals if len(k) == 1]
        self.literals = self.words + self.chars
        # may_hide[i]: (literal id, offset) of each word that can start at
        # that offset inside a reported match of literal i and so go unreported.
        self.may_hide = tuple(
            tuple((j, k) for j, other in enumerate(self.words) if j != i
                  for k in _overlap_offsets(lit, other))
            for i, lit in enumerate(self.literals)
        )
        self._bytes_ac: Any = None
        self._str_ac: Any = None
        if use_automaton and _ahocorasick is not None and self.words:
            kind = _ahocorasick.MatchKind.LeftmostFirst
            # Pure-ASCII text (the common case) is searched as bytes, which is
            # several times faster; its byte offsets are character offsets.
            if all(w.isascii() for w in self.words):
                self._bytes_ac = _ahocorasick.BytesAhoCorasick([w.encode() for w in self.words], matchkind=kind)
            self._str_ac = _ahocorasick.AhoCorasick(self.words, matchkind=kind)

    @property
    def backend(self) -> str:
        return "aho-corasick" if self._str_ac is not None else "str.find"

    def hits(self, low: str, ascii_text: bool) -> list[Sequence[tuple[int, int, int]]]:
        """Keyword hits as streams of (literal id, start, end), each sorted by start.

        Every line that contains a keyword has at least one hit.
        """
        streams: list[Sequence[tuple[int, int, int]]] = []
        if self.words:
            found = None
            if ascii_text and self._bytes_ac is not None:
                found = self._bytes_ac.find_matches_as_indexes(low.encode("ascii"))
            elif self._str_ac is not None:
                try:
                    found = self._str_ac.find_matches_as_indexes(low)
                except (UnicodeError, ValueError):  # lone surrogates: fall back to str.find
                    found = None
            if found is not None:
                if found:
                    streams.append(found)
            else:
                streams.append(self._scan(low, self.words, 0))
        if self.chars:
            streams.append(self._scan(low, self.chars, len(self.words)))
        return streams

    @staticmethod
    def _scan(low: str, literals: Sequence[str], first_id: int) -> list[tuple[int, int, int]]:
        hits: list[tuple[int, int, int]] = []
        find = low.find
        for lit_id, lit in enumerate(literals, first_id):
            i = find(lit)
            while i >= 0:
                hits.append((lit_id, i, i + len(lit)))
                nl = find("\n", i)  # one hit per line is enough
                if nl < 0:
                    break
                i = find(lit, nl)
        hits.sort(key=_second)
        return hits


def _overlap_offsets(first: str, second: str) -> list[int]:
    """Offsets inside ``first`` where ``second`` can start and run past its end."""
    return [len(first) - k for k in range(1, min(len(first), len(second)))
            if first.endswith(second[:k])]


def _can_overlap(first: str, second: str) -> bool:
    """Can ``second`` start inside an occurrence of ``first`` and end after it?"""
    return bool(_overlap_offsets(first, second))


def prefilter_backend() -> str:
    """``"aho-corasick"`` when the accelerated keyword search is available, else ``"str.find"``."""
    return "aho-corasick" if _ahocorasick is not None else "str.find"


def _lower(text: str) -> str:
    low = text.lower()
    if len(low) != len(text):
        # U+0130 (I with dot above) is the one character whose lower case is
        # two code points; positions must line up with the original text.
        low = text.replace("\u0130", "I").lower()
    return low


# ---------------------------------------------------------------- redactor --


class Redactor:
    """Applies a validated rule set; build it with :func:`load_redactor`."""

    def __init__(self, rules: Sequence[_Rule] = (), placeholders: re.Pattern[str] | None = None,
                 *, use_automaton: bool = True) -> None:
        self._rules = tuple(rules)
        self.rule_names: tuple[str, ...] = tuple(r.name for r in self._rules)
        self._text_rules: tuple[_TextRule, ...] = tuple(r for r in self._rules if isinstance(r, _TextRule))
        self._block_rules: tuple[_BlockRule, ...] = tuple(r for r in self._rules if isinstance(r, _BlockRule))
        self._name_rules: tuple[_NameRule, ...] = tuple(r for r in self._rules if isinstance(r, _NameRule))
        self._argv_rules: tuple[_ArgvRule, ...] = tuple(r for r in self._rules if isinstance(r, _ArgvRule))
        self._placeholders = placeholders
        keywords = [k for r in self._text_rules for k in r.keywords] + [k for b in self._block_rules for k in b.keywords]
        self._prefilter = _Prefilter(keywords, use_automaton=use_automaton)
        # For picking the rules of a candidate line: each prefilter literal,
        # with the (text rule index, keyword) pairs whose keyword contains it.
        self._text_pairs = self._pairs(self._text_rules)
        # the same, split: rules selected by the literal alone, and (rule, keyword) pairs to check
        self._text_exact = tuple(tuple(i for i, _, exact in pairs if exact) for pairs in self._text_pairs)
        self._text_inexact = tuple(tuple((i, kw) for i, kw, exact in pairs if not exact) for pairs in self._text_pairs)
        self._block_pairs = self._pairs(self._block_rules)
        self._always = frozenset(i for i, r in enumerate(self._text_rules) if r.always)
        self._block_always = frozenset(i for i, r in enumerate(self._block_rules) if r.always)
        # literal ids that can select a block rule (lines without one skip the block search)
        self._block_literal_ids = frozenset(i for i, pairs in enumerate(self._block_pairs) if pairs)
        self._every_line = bool(self._always or self._block_always)
        self._tools_by_program: dict[str, list[tuple[_Tool, _ArgvRule]]] = {}
        for rule in self._argv_rules:
            for tool in rule.tools:
                for program in tool.programs:
                    self._tools_by_program.setdefault(program, []).append((tool, rule))

    def _pairs(self, rules: Sequence[_TextRule | _BlockRule]) -> tuple[tuple[tuple[int, str, bool], ...], ...]:
        """Per prefilter literal: (rule index, keyword, keyword is the literal) for keywords containing it."""
        return tuple(
            tuple((i, kw, kw == lit) for i, r in enumerate(rules) for kw in r.keywords if lit in kw)
            for lit in self._prefilter.literals
        )

    @property
    def prefilter_backend(self) -> str:
        return self._prefilter.backend

    # -- public API -----------------------------------------------------------

    def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
        """``text`` with every secret replaced by ``[REDACTED:<rule>]``."""
        if not isinstance(text, str):
            text = str(text)
        return self._redact(text, counts, None)

    def stream(self) -> StreamRedactor:
        """A redactor for consecutive blocks of one log file (see :class:`StreamRedactor`)."""
        return StreamRedactor(self)

    def redact_argv(self, argv: Iterable[str], counts: collections.Counter[str] | None = None) -> list[str]:
        """A process command line with secret options and values replaced, one element per argument."""
        args = [a if isinstance(a, str) else str(a) for a in argv]
        out = list(args)
        tools: list[tuple[_Tool, _ArgvRule]] = []
        waiting: list[tuple[_Tool, _ArgvRule]] = []  # tools still waiting for their subcommand
        i = 0
        while i < len(args):
            arg = args[i]
            program = _program_name(arg)
            if program in self._tools_by_program:
                found = self._tools_by_program[program]
                tools = [t for t in found if not t[0].subcommands]
                waiting = [t for t in found if t[0].subcommands]
            elif waiting and arg in {s for t, _ in waiting for s in t.subcommands}:
                tools = tools + [t for t in waiting if arg in t[0].subcommands]
                waiting = []
            consumed = self._argv_tool_option(args, out, i, tools, counts)
            if consumed == 0:
                consumed = self._argv_named_option(args, out, i, counts)
            for k in range(i, i + max(consumed, 1)):
                out[k] = self._redact(out[k], counts, None)
            i += max(consumed, 1)
        return out

    def redact_env(self, env: Mapping[str, str], counts: collections.Counter[str] | None = None) -> dict[str, str]:
        """An environment with secret-named variables blanked and every other value redacted as text."""
        out: dict[str, str] = {}
        for name, value in env.items():
            name_s = name if isinstance(name, str) else str(name)
            value_s = value if isinstance(value, str) else str(value)
            rule = self._secret_name_rule(name_s)
            if rule is not None:
                out[name_s] = self._replace_whole(value_s, rule.marker, rule.name, counts)
            else:
                out[name_s] = self._redact(value_s, counts, None)
        return out

    # -- names and arguments ----------------------------------------------------

    def _secret_name_rule(self, name: str) -> _NameRule | None:
        for rule in self._name_rules:
            if rule.regex.search(name):
                return rule
        return None

    def _replace_whole(self, value: str, marker: str, name: str, counts: collections.Counter[str] | None) -> str:
        if not value or value == marker or MARKER_RE.fullmatch(value) or self._is_placeholder(value):
            return value
        if counts is not None:
            counts[name] += 1
        return marker

    def _argv_tool_option(self, args: list[str], out: list[str], i: int,
                          tools: list[tuple[_Tool, _ArgvRule]], counts: collections.Counter[str] | None) -> int:
        arg = args[i]
        for tool, rule in tools:
            if arg in tool.separate and i + 1 < len(args):
                out[i + 1] = self._replace_tool_value(args[i + 1], tool, rule, counts)
                return 2
            for prefix in tool.attached:
                if arg.startswith(prefix) and len(arg) > len(prefix):
                    out[i] = prefix + self._replace_tool_value(arg[len(prefix):], tool, rule, counts)
                    return 1
        return 0

    def _replace_tool_value(self, value: str, tool: _Tool, rule: _ArgvRule,
                            counts: collections.Counter[str] | None) -> str:
        if tool.secret_after:
            head, sep, secret = value.partition(tool.secret_after)
            if not sep:
                return value
            return head + sep + self._replace_whole(secret, rule.marker, rule.name, counts)
        return self._replace_whole(value, rule.marker, rule.name, counts)

    def _argv_named_option(self, args: list[str], out: list[str], i: int,
                           counts: collections.Counter[str] | None) -> int:
        if not self._name_rules:
            return 0
        arg = args[i]
        if arg.startswith("-") and len(arg) > 2 and arg != "--":
            body = arg.lstrip("-")
            name, eq, value = body.partition("=")
            if not name or len(name) < 2:
                return 0
            rule = self._secret_name_rule(_as_env_name(name))
            if rule is None:
                return 0
            if eq:
                out[i] = arg[: len(arg) - len(value)] + self._replace_whole(value, rule.marker, rule.name, counts)
                return 1
            if i + 1 < len(args) and not args[i + 1].startswith("-"):
                out[i + 1] = self._replace_whole(args[i + 1], rule.marker, rule.name, counts)
                return 2
            return 1
        m = _ENV_ASSIGN_RE.match(arg)
        if m and not any(c.isspace() for c in arg):  # "sh -c 'A=1 cmd'" is a command for the text rules
            rule = self._secret_name_rule(m.group(1))
            if rule is not None:
                out[i] = arg[: m.end()] + self._replace_whole(arg[m.end():], rule.marker, rule.name, counts)
                return 1
            return 0
        # A configuration key given as a word, then its value:
        # "aws configure set aws_secret_access_key X", "git config user.password X".
        # Only compound names count, so "kubectl get secret NAME" keeps NAME.
        if _CONFIG_KEY_RE.fullmatch(arg) and i + 1 < len(args) and not args[i + 1].startswith("-"):
            rule = self._secret_name_rule(_as_env_name(arg))
            if rule is not None:
                out[i + 1] = self._replace_whole(args[i + 1], rule.marker, rule.name, counts)
                return 2
        return 0

    # -- text -----------------------------------------------------------------

    def _is_placeholder(self, secret: str) -> bool:
        return self._placeholders is not None and self._placeholders.fullmatch(secret) is not None

    def _redact(self, text: str, counts: collections.Counter[str] | None, state: StreamRedactor | None) -> str:
        n = len(text)
        if n == 0:
            return text
        claims: list[_Claim] = []
        guards: list[tuple[int, int]] = []  # BEGIN/END lines of blocks: no text rule may claim them
        covered = 0  # text before this offset belongs to an already handled block
        low = _lower(text)
        if state is not None and state._open is not None:
            open_block = state._open
            covered = self._claim_block_body(text, low, open_block.rule, 0, open_block, state, claims, guards)
        lines = self._candidate_lines(low, text.isascii())
        if not lines and not claims:
            return text
        if self._block_rules and lines:
            self._claim_blocks(text, low, lines, covered, state, claims, guards)
        if self._text_rules and lines:
            self._claim_text(text, low, lines, claims, guards)
        if not claims:
            return text
        return _apply(text, claims, counts)

    def _candidate_lines(self, low: str, ascii_text: bool) -> list[tuple[int, int, set[int]]]:
        """(start, end, literal ids) of every line that contains a keyword, in text order."""
        n = len(low)
        if self._every_line:
            every = set(range(len(self._prefilter.literals)))
            return [(s, e, every) for s, e in _all_lines(low)]
        streams = self._prefilter.hits(low, ascii_text)
        rfind, find, startswith = low.rfind, low.find, low.startswith
        may_hide, literals = self._prefilter.may_hide, self._prefilter.literals
        lines: list[tuple[int, int, set[int]]] = []
        for stream in streams:
            line_end = -1
            ids: set[int] = set()
            for lit_id, pos, _ in stream:
                if pos >= line_end:
                    start = rfind("\n", 0, pos) + 1
                    line_end = find("\n", pos)
                    if line_end < 0:
                        line_end = n
                    ids = {lit_id}
                    lines.append((start, line_end, ids))
                else:
                    ids.add(lit_id)
                hidden = may_hide[lit_id]
                if hidden:
                    for other, offset in hidden:
                        if startswith(literals[other], pos + offset):
                            ids.add(other)
        if len(streams) > 1:  # merge lines found by both streams
            lines.sort(key=_first)
            merged: list[tuple[int, int, set[int]]] = []
            for line in lines:
                if merged and merged[-1][0] == line[0]:
                    merged[-1][2].update(line[2])
                else:
                    merged.append(line)
            lines = merged
        return lines

    def _selected(self, low_line: str, ids: set[int], pairs_by_id: tuple[tuple[tuple[int, str, bool], ...], ...]
                  ) -> set[int]:
        """Indexes of the rules (per ``pairs_by_id``) whose keywords occur in ``low_line``."""
        selected: set[int] = set()
        for lit_id in ids:
            for rule_index, kw, exact in pairs_by_id[lit_id]:
                if exact or kw in low_line:
                    selected.add(rule_index)
        return selected

    def _claim_text(self, text: str, low: str, lines: list[tuple[int, int, set[int]]],
                    claims: list[_Claim], guards: list[tuple[int, int]]) -> None:
        rules = self._text_rules
        exact_rules, inexact_pairs = self._text_exact, self._text_inexact
        always = self._always
        searches = [(r.regex.search, low if r.on_lower else text, r) for r in rules]
        picked = False
        # This loop runs for every candidate line of every block: keep it lean.
        for start, end, ids in lines:
            # The rules that may run here: those with a keyword in the line.
            selected: set[int] = set(always)
            low_line = None
            for lit_id in ids:
                selected.update(exact_rules[lit_id])
                for rule_index, kw in inexact_pairs[lit_id]:
                    if low_line is None:
                        low_line = low[start:end]
                    if kw in low_line:
                        selected.add(rule_index)
            if not selected:
                continue
            picked = True
            for rule_index in (selected if len(selected) == 1 else sorted(selected)):
                search, haystack, rule = searches[rule_index]
                m = search(haystack, start, end)
                while m is not None:
                    self._claim_match(m, rule, 0, text, claims)
                    pos = m.end() if m.end() > m.start() else m.end() + 1
                    m = search(haystack, pos, end) if pos < end else None
        if not picked:
            return
        if claims:
            self._drop_protected(text, low, lines, claims, guards)

    def _claim_match(self, m: re.Match[str], rule: _TextRule, shift: int, text: str, claims: list[_Claim]) -> None:
        for g in rule.groups:
            s, e = m.span(g)
            if s >= 0:
                break
        else:
            return
        if e <= s:
            return
        s += shift
        e += shift
        if self._placeholders is not None and self._placeholders.fullmatch(text, s, e):
            return
        claims.append((s, e, rule.priority, rule.marker, rule.name, True))

    @staticmethod
    def _drop_protected(text: str, low: str, picked: list[tuple[int, int, set[int]]],
                        claims: list[_Claim], guards: list[tuple[int, int]]) -> None:
        """Remove claims that touch an existing marker or a block's BEGIN/END line."""
        protected = list(guards)
        for start, end, _ in picked:
            if low.find("[redacted:", start, end) >= 0:
                protected.extend(m.span() for m in MARKER_RE.finditer(text, start, end))
        if protected:
            claims[:] = [c for c in claims if not any(c[0] < pe and ps < c[1] for ps, pe in protected)]

    def _claim_blocks(self, text: str, low: str, lines: list[tuple[int, int, set[int]]], covered: int,
                      state: StreamRedactor | None, claims: list[_Claim], guards: list[tuple[int, int]]) -> None:
        block_ids = self._block_literal_ids
        for start, end, ids in lines:
            if end <= covered or (block_ids.isdisjoint(ids) and not self._block_always):
                continue
            selected = self._selected(low[start:end], set(ids), self._block_pairs) | self._block_always
            for index in sorted(selected):
                rule = self._block_rules[index]
                haystack = low if rule.on_lower else text
                while covered < end:
                    m = rule.begin.search(haystack, max(start, covered), end)
                    if m is None:
                        break
                    guards.append(m.span())
                    covered = self._claim_block_body(text, low, rule, m.end(), None, state, claims, guards)
                if covered >= end:
                    break

    def _claim_block_body(self, text: str, low: str, rule: _BlockRule, body_start: int,
                          open_block: _OpenBlock | None,
                          state: StreamRedactor | None, claims: list[_Claim], guards: list[tuple[int, int]]) -> int:
        """Claim body lines from ``body_start`` to the END (or the line limit); return where it stopped."""
        n = len(text)
        if open_block is None:
            # The rest of the BEGIN line is body too but does not count as a line.
            nl = text.find("\n", body_start)
            if nl < 0:
                limit, walked, hit_end = n, 0, True
            else:
                limit, walked, hit_end = _advance_lines(text, nl + 1, rule.max_lines, fallback=nl)
            lines_left = rule.max_lines - walked
            counted = False
        else:
            limit, walked, hit_end = _advance_lines(text, 0, open_block.lines_left, fallback=0)
            lines_left = open_block.lines_left - walked
            counted = open_block.counted
        m = rule.end.search(low if rule.on_lower else text, body_start, limit)
        body_end = m.start() if m else limit
        if m:
            guards.append(m.span())
        counted = _claim_segments(text, body_start, body_end, rule, counted, claims)
        if state is not None:
            if m is None and hit_end and lines_left > 0:
                state._open = _OpenBlock(rule, lines_left, counted)
            else:
                state._open = None
        return m.end() if m else max(limit, body_start)


class StreamRedactor:
    """Redacts consecutive blocks of one log file, remembering an open PEM block.

    A private key whose BEGIN line is in one block and whose body continues in
    the next is redacted in both; the key counts one hit.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._open: _OpenBlock | None = None

    @property
    def in_block(self) -> bool:
        """True while the stream is inside a private-key block."""
        return self._open is not None

    def redact(self, block: str, counts: collections.Counter[str] | None = None) -> str:
        if not isinstance(block, str):
            block = str(block)
        return self._redactor._redact(block, counts, self)

    def reset(self) -> None:
        """Forget any open block (e.g. after the file was truncated or replaced)."""
        self._open = None


# ------------------------------------------------------------------ helpers --


def _first(item: tuple[int, int, set[int]]) -> int:
    return item[0]


def _second(item: tuple[int, int, int]) -> int:
    return item[1]


def _as_env_name(flag: str) -> str:
    """A flag or configuration key in environment-variable style: --db-password -> DB_PASSWORD."""
    return flag.replace("-", "_").replace(".", "_").upper()


def _program_name(arg: str) -> str:
    base = arg.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].lower()
    return base[:-4] if base.endswith(".exe") else base


def _all_lines(low: str) -> Iterator[tuple[int, int]]:
    start = 0
    n = len(low)
    while start <= n:
        end = low.find("\n", start)
        if end < 0:
            end = n
        if end > start:
            yield start, end
        start = end + 1


def _advance_lines(text: str, pos: int, count: int, fallback: int) -> tuple[int, int, bool]:
    """Walk ``count`` lines from line start ``pos``: (end offset, lines walked, reached end of text)."""
    n = len(text)
    end = fallback
    walked = 0
    while walked < count:
        if pos >= n:
            return n, walked, True
        nl = text.find("\n", pos)
        if nl < 0:
            return n, walked + 1, True
        walked += 1
        end = nl
        pos = nl + 1
    return end, walked, False


def _claim_segments(text: str, start: int, end: int, rule: _BlockRule, counted: bool,
                    claims: list[_Claim]) -> bool:
    """Claim the non-blank part of each line of ``text[start:end]``; return whether the block was counted."""
    marker = rule.marker
    pos = start
    while pos < end:
        nl = text.find("\n", pos, end)
        seg_end = end if nl < 0 else nl
        s, e = pos, seg_end
        while s < e and text[s] in _BLANK:
            s += 1
        while e > s and text[e - 1] in _BLANK:
            e -= 1
        if e > s and text[s:e] != marker:
            claims.append((s, e, rule.priority, marker, rule.name, not counted))
            counted = True
        pos = seg_end + 1
    return counted


def _apply(text: str, claims: list[_Claim], counts: collections.Counter[str] | None) -> str:
    claims.sort(key=lambda c: (c[0], -c[1], c[2]))
    out: list[str] = []
    last = 0
    i, total = 0, len(claims)
    while i < total:
        best = claims[i]
        start, end = best[0], best[1]
        j = i + 1
        while j < total and claims[j][0] < end:
            c = claims[j]
            if c[1] > end:
                end = c[1]
            width, best_width = c[1] - c[0], best[1] - best[0]
            if width > best_width or (width == best_width and c[2] < best[2]):
                best = c
            j += 1
        out.append(text[last:start])
        out.append(best[3])
        last = end
        if counts is not None and best[5]:
            counts[best[4]] += 1
        i = j
    out.append(text[last:])
    return "".join(out)


def builtin_rules_path() -> str:
    """Filesystem path of the built-in rules file."""
    return str(resources.files("hostdiag.agent.redact").joinpath(BUILTIN_RULES_FILE))

