"""Snapshot source `logs`: recent lines of each tailed log file for the window.

With the flight recorder (the agent daemon), each log's ring already holds
redacted lines with the time they were read; the lines read within the window
go to ``logs/<safe-name>.log``.  Standalone (``agentctl collect`` without an
agent), each configured ``[[logs]]`` path or glob is read back from its end —
at most ``recorder.log_ring_bytes``, starting at a line boundary — with the
same line handling as the tailer (over-long lines cut, invalid UTF-8
replaced) and redacted before it is written.

``logs/index.json`` lists every log written (name, path, lines, bytes, whether
the member was cut, and where the lines came from).  The evidence gets, per
log, the error and warning lines per minute over the window (recorder) and
the error line total.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from hostdiag.agent.sources.base import SnapshotContext, SourceConfig, SourceSkipped
from hostdiag.agent.tail.lines import classify_block, cut_long_lines, decode_block

__all__ = ["LogsSource", "safe_name", "read_recent"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(name: str) -> str:
    """A bundle member name for a log: ``/`` becomes ``_``, anything outside [A-Za-z0-9._-] too."""
    out = _UNSAFE.sub("_", name.replace("/", "_"))
    if not out.strip("."):
        out = "log" + out  # never "." or ".."
    return out[:200]


def _member(name: str, taken: set[str]) -> str:
    """``/var/log/app.log`` -> ``logs/var_log_app.log``: readable, unique, one ``.log`` suffix."""
    stem = safe_name(name).lstrip("_")
    if stem.endswith(".log"):
        stem = stem[: -len(".log")]
    return f"logs/{_unique(stem or 'log', taken)}.log"


def _unique(name: str, taken: set[str]) -> str:
    candidate = name
    n = 2
    while candidate in taken:
        candidate = f"{name}-{n}"
        n += 1
    taken.add(candidate)
    return candidate


def read_recent(f: BinaryIO, max_bytes: int) -> tuple[bytes, bool]:
    """The last ``max_bytes`` of an open file, from a line start; and whether older data was left out."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    start = max(0, size - max_bytes)
    f.seek(start)
    data = f.read(size - start)
    cut = start > 0
    if cut:
        # Keep only whole lines: drop the start of a line that began before the tail.
        f.seek(start - 1)
        if f.read(1) != b"\n":
            nl = data.find(b"\n")
            data = data[nl + 1:] if nl >= 0 else b""
    return data, cut


def _default_opener(path: str) -> BinaryIO:
    return open(path, "rb")


class LogsSource:
    name = "logs"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        pass

    def __init__(self, config: Config, opener: Callable[[str], BinaryIO] | None = None) -> None:
        self.config = config
        self._opener = opener or _default_opener

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        if ctx.recorder is not None:
            return await self._from_recorder(ctx)
        return await self._from_files(ctx)

    # -- with the flight recorder -----------------------------------------------------
    async def _from_recorder(self, ctx: SnapshotContext) -> dict[str, Any]:
        rings = dict(ctx.recorder.log_rings()) if ctx.recorder is not None else {}
        if not rings:
            raise SourceSkipped("no logs are tailed (no [[logs]] configured and no journal)")
        since = ctx.now - ctx.window_s
        index: list[dict[str, Any]] = []
        evidence: dict[str, Any] = {}
        taken: set[str] = set()
        total_lines = 0
        for name in sorted(rings):
            ring = rings[name]
            lines = [text for t, text in ring.lines_since(since) if t <= ctx.now]
            member = _member(name, taken)
            written, truncated = await ctx.run_blocking(_write_lines, ctx.members, member, lines)
            index.append({
                "name": name, "path": _ring_path(name), "member": member, "lines": len(lines),
                "bytes": written, "truncated": truncated, "source": "recorder",
            })
            total_lines += len(lines)
            counts = [c for c in ring.level_counts(since) if c["minute"] <= ctx.now]
            evidence[name] = {
                "error_lines_per_min": [c["error"] for c in counts],
                "warning_lines_per_min": [c["warning"] for c in counts],
                "error_lines_total": sum(c["error"] for c in counts),
                "warning_lines_total": sum(c["warning"] for c in counts),
                "first_minute": counts[0]["minute"] if counts else None,
            }
        await ctx.run_blocking(ctx.members.write_json, "logs/index.json", index)
        ctx.evidence["logs"] = evidence
        return {"source": "recorder", "logs": len(index), "lines": total_lines,
                "truncated": [e["name"] for e in index if e["truncated"]]}

    # -- standalone -----------------------------------------------------------------
    async def _from_files(self, ctx: SnapshotContext) -> dict[str, Any]:
        sections = ctx.config.logs
        if not sections:
            raise SourceSkipped("no [[logs]] configured")
        max_bytes = ctx.config.recorder.log_ring_bytes
        max_line = ctx.config.recorder.max_line_bytes
        files: list[tuple[str, str]] = []  # (name, path)
        errors: dict[str, str] = {}
        for sec in sections:
            if any(c in sec.path for c in "*?["):
                matches = sorted(await ctx.run_blocking(glob.glob, sec.path))
                matches = [m for m in matches if os.path.isfile(m)]
                if not matches:
                    errors[sec.path] = "no file matches"
                files.extend((m, m) for m in matches)
            else:
                files.append((sec.name or sec.path, sec.path))
        index: list[dict[str, Any]] = []
        evidence: dict[str, Any] = {}
        taken: set[str] = set()
        total_lines = 0
        for name, path in files:
            try:
                data, cut = await ctx.run_blocking(self._read, path, max_bytes)
            except OSError as exc:
                errors[name] = f"{path}: {exc.strerror or exc}"
                continue
            block, n_cut = cut_long_lines(data if data.endswith(b"\n") or not data else data + b"\n", max_line)
            text, invalid = decode_block(block)
            text = ctx.redactor.redact(text, ctx.redaction_counts)
            n_lines = block.count(b"\n")
            n_errors, n_warnings = classify_block(block)
            member = _member(name, taken)
            written, truncated = await ctx.run_blocking(_write_text, ctx.members, member, text)
            index.append({
                "name": name, "path": path, "member": member, "lines": n_lines, "bytes": written,
                "truncated": truncated or cut, "source": "file-tail",
                "cut_lines": n_cut, "invalid_utf8_lines": invalid,
            })
            total_lines += n_lines
            # Without the recorder there are no read times: totals only.
            evidence[name] = {
                "error_lines_per_min": [],
                "warning_lines_per_min": [],
                "error_lines_total": n_errors,
                "warning_lines_total": n_warnings,
            }
        if files and not index:
            raise RuntimeError("no log could be read: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        await ctx.run_blocking(ctx.members.write_json, "logs/index.json", index)
        ctx.evidence["logs"] = evidence
        notes: dict[str, Any] = {"source": "file-tail", "logs": len(index), "lines": total_lines,
                                 "truncated": [e["name"] for e in index if e["truncated"]]}
        if errors:
            notes["errors"] = errors
        return notes

    def _read(self, path: str, max_bytes: int) -> tuple[bytes, bool]:
        with self._opener(path) as f:
            return read_recent(f, max_bytes)


def _ring_path(name: str) -> str:
    return "journald" if name == "journal" else name


def _write_lines(members: Any, member: str, lines: Iterable[str]) -> tuple[int, bool]:
    writer = members.open(member)
    written = 0
    truncated = False
    try:
        batch: list[str] = []
        size = 0
        for line in lines:
            batch.append(line)
            size += len(line)
            if size >= 256 * 1024:
                data = ("\n".join(batch) + "\n").encode("utf-8", "replace")
                written += len(data)
                if not writer.write(data):
                    truncated = True
                    break
                batch, size = [], 0
        if batch and not truncated:
            data = ("\n".join(batch) + "\n").encode("utf-8", "replace")
            written += len(data)
            if not writer.write(data):
                truncated = True
    finally:
        writer.close()
    return written, truncated


def _write_text(members: Any, member: str, text: str) -> tuple[int, bool]:
    writer = members.open(member)
    try:
        data = text.encode("utf-8", "replace")
        ok = writer.write(data) if data else True
    finally:
        writer.close()
    return len(data), not ok
