"""``agentctl inspect BUNDLE``: verify a bundle and say what is in it.

Every member's size and sha256 are checked against the manifest
(:func:`hostdiag.agent.bundle.verify_bundle`); the summary shows what the
manifest records about the snapshot.  Manifest fields may be missing (an older
or partial bundle) or hostile (a bundle from elsewhere): whatever is present is
shown, with control characters escaped, and nothing missing is fatal.

Exit status: 0 when everything verifies, 1 otherwise (including a file that
cannot be read).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

import orjson

from hostdiag.agent.bundle import VerifyReport, verify_bundle

__all__ = ["run_inspect"]

_MAX_SHOWN = 200  # characters of any one value in the human summary


def run_inspect(path: str, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Verify ``path`` and print a summary (or one JSON object); 0 if it verifies."""
    try:
        st = os.stat(path)
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or exc}"
        if as_json:
            _write_json(out, {"path": path, "ok": False, "problems": [problem]})
        else:
            out.write(f"agentctl inspect: {problem}\n")
        return 1
    report = verify_bundle(path)
    if as_json:
        _write_json(out, _as_document(path, st.st_size, report))
    else:
        out.write(_human(path, st.st_size, report))
    return 0 if report.ok else 1


def _write_json(out: TextIO, doc: dict[str, Any]) -> None:
    out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def _as_document(path: str, size: int, report: VerifyReport) -> dict[str, Any]:
    manifest = report.manifest or {}
    return {
        "path": path,
        "ok": report.ok,
        "problems": report.problems,
        "bundle_id": manifest.get("bundle_id"),
        "host_id": manifest.get("host_id"),
        "created_at": manifest.get("created_at"),
        "size_bytes": size,
        "sha256": report.sha256,
        "uncompressed_bytes": sum(m["size_bytes"] or 0 for m in report.members),
        "members": report.members,
        "manifest": report.manifest,
        "evidence": report.evidence,
    }


# --------------------------------------------------------------------------
# Human summary


def _text(value: Any, limit: int = _MAX_SHOWN) -> str:
    """Printable text: no terminal escapes or newlines from a bundle reach the screen."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    clean = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - loop always returns


def _when(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            return _text(value)
    return _text(value)


def _seconds(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f} s"
    return "-" if value is None else _text(value)


def _span(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g} s"
    return _text(value)


def _pairs(mapping: Any) -> str:
    if isinstance(mapping, dict):
        if not mapping:
            return "-"
        return _text(", ".join(f"{k}={v}" for k, v in mapping.items()))
    return _text(mapping)


def _human(path: str, size: int, report: VerifyReport) -> str:
    m = report.manifest or {}
    lines: list[str] = []

    def row(label: str, value: str) -> None:
        lines.append(f"{label:<11} {value}")

    uncompressed = sum(x["size_bytes"] or 0 for x in report.members)
    row("Bundle", _text(m.get("bundle_id")))
    row("File", f"{_text(path)} ({_size(size)}, {_size(uncompressed)} uncompressed)")
    row("Host", _text(m.get("host_id")))
    if "labels" in m:
        row("Labels", _pairs(m.get("labels")))
    if "agent_version" in m:
        row("Agent", _text(m.get("agent_version")))
    row("Created", _text(m.get("created_at")))
    window = m.get("window")
    if isinstance(window, dict):
        row(
            "Window",
            f"{_when(window.get('start'))} .. {_when(window.get('end'))} ({_span(window.get('seconds'))})",
        )
    elif window is not None:
        row("Window", _text(window))
    for label, key in (("Trigger", "trigger"), ("Incident", "incident_id"), ("Profile", "profile"),
                       ("Recorder", "recorder")):
        if key in m:
            row(label, _text(m.get(key)))

    sources = m.get("sources")
    if isinstance(sources, dict) and sources:
        lines.append("")
        lines.append("Sources")
        width = min(max(len(_text(name, 40)) for name in sources), 40)
        for name, info in sources.items():
            info = info if isinstance(info, dict) else {"status": info}
            detail = []
            if info.get("error"):
                detail.append(f"error: {_text(info.get('error'))}")
            if info.get("notes"):
                detail.append(_pairs(info.get("notes")))
            lines.append(
                f"  {_text(name, 40):<{width}}  {_text(info.get('status'), 10):<8} "
                f"{_seconds(info.get('duration_s')):>9}  {'; '.join(detail)}".rstrip()
            )

    redaction = m.get("redaction")
    if isinstance(redaction, dict):
        lines.append("")
        lines.append("Redaction")
        counted = [(k, v) for k, v in redaction.items()]
        if not counted:
            lines.append("  no secrets found")
        width = min(max((len(_text(k, 40)) for k, _ in counted), default=0), 40)
        for rule, count in sorted(counted, key=lambda kv: (-kv[1] if isinstance(kv[1], int) else 0, str(kv[0]))):
            lines.append(f"  {_text(rule, 40):<{width}}  {_text(count)}")

    truncations = m.get("truncations")
    if isinstance(truncations, list):
        lines.append("")
        lines.append("Truncations")
        if not truncations:
            lines.append("  none")
        for item in truncations:
            if isinstance(item, dict):
                lines.append(
                    f"  {_text(item.get('member'))}: {_text(item.get('reason'))}, "
                    f"kept {_size(item.get('kept_bytes'))}"
                )
            else:
                lines.append(f"  {_text(item)}")

    lines.append("")
    lines.append(f"Members ({len(report.members)})")
    if report.members:
        width = min(max(len(_text(x["name"], 60)) for x in report.members), 60)
        for x in report.members:
            if x["size_bytes"] is None:
                status = "MISSING"
            elif x["expected_sha256"] is None and x["name"] == "manifest.json":
                status = ""
            else:
                status = "ok" if x["ok"] else "BAD"
            lines.append(f"  {_text(x['name'], 60):<{width}}  {_size(x['size_bytes']):>10}  {status}".rstrip())
    lines.append(f"Total       {_size(uncompressed)} in {len(report.members)} members, {_size(size)} on disk")

    lines.append("")
    if report.ok:
        lines.append(f"VERIFIED: every member matches the manifest (file sha256 {report.sha256})")
    else:
        count = len(report.problems)
        lines.append(f"NOT VERIFIED: {count} problem{'s' if count != 1 else ''}")
        for problem in report.problems:
            lines.append(f"  - {_text(problem, 500)}")
    return "\n".join(lines) + "\n"
