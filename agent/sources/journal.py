"""Snapshot source `journal`: journald entries for the window, as ``journal.ndjson``.

Runs ``journalctl -o json --since=@<now - window> --until=@<now> -n <max_entries>``
(plus ``--unit`` for each of ``[journal] units``) and streams its output: at
most ``[journal] max_entries`` entries are kept, the process is killed if the
snapshot gives up on the source (its timeout) or once the cap is reached.

Each entry keeps journald's own fields and the well-known ones
(``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER``, ``CODE_*``, …); other
application-defined fields are dropped, as they may hold anything.  ``MESSAGE``
and ``_CMDLINE`` are redacted (a batch of entries in one redactor call).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from hostdiag.agent.sources.base import SnapshotContext, SourceConfig, SourceSkipped
from hostdiag.agent.tail.journal import entry_level, entry_time, find_journalctl, message_text, redact_many
from hostdiag.agent.tail.lines import LEVEL_ERROR, LEVEL_WARNING

__all__ = ["JournalSource", "KEPT_FIELDS"]

# Fields written to the bundle: journald's trusted fields (leading "_") are
# kept; of the others, only these.
KEPT_FIELDS = frozenset({
    "MESSAGE", "MESSAGE_ID", "PRIORITY", "SYSLOG_IDENTIFIER", "SYSLOG_FACILITY", "SYSLOG_PID",
    "CODE_FILE", "CODE_LINE", "CODE_FUNC", "ERRNO", "UNIT", "USER_UNIT", "INVOCATION_ID",
    "__REALTIME_TIMESTAMP", "__MONOTONIC_TIMESTAMP", "__CURSOR",
})
_REDACTED_FIELDS = ("MESSAGE", "_CMDLINE")
_BATCH = 500
_READ_CHUNK = 1 << 16
_MAX_LINE = 4 << 20


class JournalSource:
    name = "journal"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        journalctl: str = field(
            default="journalctl", metadata={"nonempty": True, "doc": "journalctl to run (a name on PATH or a path)"}
        )

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        jcfg = ctx.config.journal
        if jcfg.enabled == "off":
            raise SourceSkipped("[journal] enabled = \"off\"")
        binary = find_journalctl(self.config.journalctl)
        if binary is None:
            raise SourceSkipped(f"{self.config.journalctl} not found")
        since = ctx.now - ctx.window_s
        args = [
            binary, "-o", "json", f"--since=@{int(since)}", f"--until=@{int(ctx.now) + 1}",
            "-n", str(jcfg.max_entries), "--no-pager", "--quiet",
        ]
        for unit in jcfg.units:
            args += ["--unit", unit]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        writer = None
        kept = 0
        bad = 0
        dropped_fields: collections.Counter[str] = collections.Counter()
        per_minute: dict[int, list[int]] = {}
        capped = False
        stderr_task = asyncio.get_running_loop().create_task(_read_tail(proc.stderr, 4096))
        try:
            writer = await ctx.run_blocking(ctx.members.open, "journal.ndjson")
            member_cut = False
            buf = b""
            assert proc.stdout is not None
            while not capped:
                chunk = await proc.stdout.read(_READ_CHUNK)
                if not chunk:
                    break
                buf += chunk
                end = buf.rfind(b"\n")
                if end < 0:
                    if len(buf) > _MAX_LINE:
                        buf = b""
                        bad += 1
                    continue
                lines, buf = buf[:end].split(b"\n"), buf[end + 1:]
                entries = []
                for raw in lines:
                    if not raw:
                        continue
                    try:
                        entry = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        bad += 1
                        continue
                    if not isinstance(entry, dict):
                        bad += 1
                        continue
                    t = entry_time(entry)
                    if t is not None and not (since <= t <= ctx.now + 1):
                        continue  # journalctl -n can reach before --since
                    entries.append(entry)
                    if kept + len(entries) >= jcfg.max_entries:
                        capped = True
                        break
                for i in range(0, len(entries), _BATCH):
                    rows = self._rows(entries[i:i + _BATCH], ctx, dropped_fields, per_minute)
                    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
                    if not member_cut and not await ctx.run_blocking(writer.write, data):
                        member_cut = True
                kept += len(entries)
            if capped and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            rc = await proc.wait()
            err = await stderr_task
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            if not stderr_task.done():
                stderr_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await stderr_task
            if writer is not None:
                await ctx.run_blocking(writer.close)
        if rc != 0 and not capped and kept == 0:
            detail = err.decode("utf-8", "replace").strip()[-500:]
            raise RuntimeError(f"journalctl exited with status {rc}" + (f": {detail}" if detail else ""))
        first = int(since // 60) * 60
        minutes = range(first, int(ctx.now // 60) * 60 + 1, 60)
        ctx.evidence["journal"] = {
            "entries": kept,
            "error_entries": sum(v[0] for v in per_minute.values()),
            "warning_entries": sum(v[1] for v in per_minute.values()),
            "error_entries_per_min": [per_minute.get(m, (0, 0))[0] for m in minutes],
            "warning_entries_per_min": [per_minute.get(m, (0, 0))[1] for m in minutes],
            "first_minute": first,
        }
        notes: dict[str, Any] = {"entries": kept, "capped": capped, "member_truncated": member_cut}
        if bad:
            notes["unparsed_lines"] = bad
        if dropped_fields:
            notes["dropped_fields"] = dict(dropped_fields.most_common(20))
        if rc != 0 and not capped:
            notes["journalctl_exit_status"] = rc
        return notes

    @staticmethod
    def _rows(entries: list[dict[str, Any]], ctx: SnapshotContext, dropped: collections.Counter[str],
              per_minute: dict[int, list[int]]) -> list[dict[str, Any]]:
        rows = []
        for entry in entries:
            row = {}
            for key, value in entry.items():
                if key.startswith("_") or key in KEPT_FIELDS:
                    row[key] = value
                else:
                    dropped[key] += 1
            rows.append(row)
        for key in _REDACTED_FIELDS:
            idx = [i for i, r in enumerate(rows) if key in r]
            if not idx:
                continue
            texts = redact_many(ctx.redactor, [message_text(rows[i][key]) for i in idx], ctx.redaction_counts)
            for i, text in zip(idx, texts):
                rows[i][key] = text
        for row in rows:
            t = entry_time(row)
            if t is None:
                continue
            minute = int(t // 60) * 60
            level = entry_level(row, row.get("MESSAGE", ""))
            slot = per_minute.setdefault(minute, [0, 0])
            if level == LEVEL_ERROR:
                slot[0] += 1
            elif level == LEVEL_WARNING:
                slot[1] += 1
        return rows


async def _read_tail(stream: asyncio.StreamReader | None, keep_bytes: int) -> bytes:
    """Read a stream to its end, keeping its last ``keep_bytes``."""
    if stream is None:
        return b""
    kept = b""
    while True:
        chunk = await stream.read(1 << 14)
        if not chunk:
            return kept
        kept = (kept + chunk)[-keep_bytes:]
