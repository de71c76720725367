"""What signal evaluation produces: findings and the incident's suggestion.

Both are plain frozen dataclasses that round-trip through JSON (the metadata
store keeps the suggestion as JSON; :mod:`hostdiag.collector.signals.proto`
turns it into the ``Suggestion`` message).  Severity is an int: 1..4 for
P1..P4, 0 for "nothing fired".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

__all__ = [
    "Finding",
    "Suggestion",
    "severity_label",
    "format_value",
    "format_duration",
    "format_bytes",
    "compact",
]

MAX_TEXT_CHARS = 200
MAX_LIST_ITEMS = 20


def severity_label(severity: int) -> str:
    return f"P{severity}" if severity in (1, 2, 3, 4) else "none"


def format_duration(seconds: float | None) -> str:
    """``45 s``, ``3 min``, ``2 h 5 min``, ``3 d 4 h``."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "?"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 2 * 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def format_bytes(value: float) -> str:
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _clean(text: str) -> str:
    """One line of printable text, at most MAX_TEXT_CHARS (evidence is untrusted)."""
    out = "".join(c if c.isprintable() else " " for c in text)
    return out if len(out) <= MAX_TEXT_CHARS else out[: MAX_TEXT_CHARS - 1] + "…"


def format_value(value: Any, spec: str = "") -> str:
    """A value for an explanation: numbers trimmed, ``bytes``/``duration`` specs, ``?`` when missing."""
    if value is None:
        return "?"
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_num(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if spec == "bytes":
            return format_bytes(value)
        if spec == "duration":
            return format_duration(value)
        if spec:
            try:
                return format(value, spec)
            except ValueError:
                pass
        if isinstance(value, float):
            text = f"{value:.2f}".rstrip("0").rstrip(".")
            return text if text not in ("-0", "") else "0"
        return str(value)
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, list):
        shown = ", ".join(format_value(v) for v in value[:5])
        return _clean(shown + (f", … ({len(value)} in all)" if len(value) > 5 else ""))
    if isinstance(value, dict):
        return _clean(orjson.dumps(value, default=str).decode())
    return _clean(str(value))


def compact(value: Any, depth: int = 0) -> Any:
    """``value`` made small enough to show as evidence: long lists and strings cut, depth bounded."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= 3:
        return "…"
    if isinstance(value, list):
        out = [compact(v, depth + 1) for v in value[:MAX_LIST_ITEMS]]
        if len(value) > MAX_LIST_ITEMS:
            out.append(f"… {len(value) - MAX_LIST_ITEMS} more")
        return out
    if isinstance(value, Mapping):
        items = list(value.items())
        out_map = {str(k)[:64]: compact(v, depth + 1) for k, v in items[:MAX_LIST_ITEMS]}
        if len(items) > MAX_LIST_ITEMS:
            out_map["…"] = f"{len(items) - MAX_LIST_ITEMS} more keys"
        return out_map
    return _clean(str(value))


@dataclass(frozen=True)
class Finding:
    """One rule that fired on one host (``host_id``) or on the incident as a whole (``host_id`` "")."""

    rule: str
    severity: int
    host_id: str
    explanation: str
    guide: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    inhibited: bool = False
    family: str = ""
    tier: int = 1
    key: str = ""
    scope: str = "host"

    @property
    def evidence_json(self) -> str:
        return orjson.dumps(dict(self.evidence), option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True)
class Suggestion:
    """The incident's suggested severity (0: nothing fired) and why."""

    severity: int
    explanation: str
    guide: str
    findings: tuple[Finding, ...]
    evaluated_at_ms: int
    hosts_selected: int
    hosts_reporting: int
    hosts_affected: int
    rule: str = ""

    def to_json(self) -> str:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Suggestion:
        doc = orjson.loads(text)
        findings = tuple(Finding(**f) for f in doc.pop("findings", []))
        return cls(findings=findings, **doc)
