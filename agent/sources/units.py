"""Snapshot source ``units``: failed and restarting systemd units.

Runs ``systemctl list-units --state=failed,activating --output=json`` (with
``--plain --no-legend`` so that systemd versions without JSON output print a
table that is parsed instead), then one ``systemctl show`` for those units to
read ``NRestarts`` (how often systemd restarted a service: a crash loop shows
as a unit in ``activating``/``auto-restart`` with a growing count), the result
and the main process's exit status.

Skipped when systemd is not the init system (no ``/run/systemd/system``).  A
``systemctl`` that is still running when the snapshot gives up on the source
is killed.

Member ``units.json``: ``{"format": "json"|"plain", "units": [{unit, load,
active, sub, description, restarts, result, exit_status, state_since}]}``.

Evidence ``evidence["units"]``: ``failed_units`` (names), ``restarting_units``
(names of units waiting to be restarted), ``restarts`` (``{unit: NRestarts}``
for units restarted at least once).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from typing import Any

from hostdiag.agent.sources.base import SnapshotContext, SourceConfig, SourceSkipped

__all__ = ["UnitsSource", "parse_list_units", "parse_show", "run_command"]

SHOW_PROPERTIES = ("Id", "NRestarts", "Result", "ExecMainStatus", "ActiveState", "SubState", "StateChangeTimestamp")


def parse_list_units(output: str) -> tuple[str, list[dict[str, str]]]:
    """Units from ``list-units`` output: JSON (systemd 246+) or the plain table."""
    text = output.strip()
    if text.startswith("["):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, list):
            units = []
            for item in data:
                if not isinstance(item, dict):
                    continue
                units.append(
                    {
                        "unit": str(item.get("unit", item.get("name", ""))),
                        "load": str(item.get("load", "")),
                        "active": str(item.get("active", "")),
                        "sub": str(item.get("sub", "")),
                        "description": str(item.get("description", "")),
                    }
                )
            return "json", [u for u in units if u["unit"]]
    units = []
    for line in text.splitlines():
        fields = line.split(None, 4)
        if fields and fields[0] in ("●", "*"):  # failed-unit marker without --plain
            fields = line.split(None, 5)[1:]
        if len(fields) < 4 or "." not in fields[0]:
            continue  # headers, legends ("0 loaded units listed."), blank lines
        units.append(
            {
                "unit": fields[0],
                "load": fields[1],
                "active": fields[2],
                "sub": fields[3],
                "description": fields[4] if len(fields) > 4 else "",
            }
        )
    return "plain", units


def parse_show(output: str) -> dict[str, dict[str, str]]:
    """``systemctl show`` output for several units: blocks of ``Key=value`` split by blank lines."""
    out: dict[str, dict[str, str]] = {}
    block: dict[str, str] = {}
    for line in output.splitlines() + [""]:
        if not line.strip():
            if block.get("Id"):
                out[block["Id"]] = block
            block = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            block[key] = value
    return out


async def run_command(argv: list[str]) -> tuple[int, str, str]:
    """Run a command, return ``(exit status, stdout, stderr)``; kill it if cancelled."""
    env = dict(os.environ, LC_ALL="C", SYSTEMD_PAGER="", SYSTEMD_COLORS="0", SYSTEMD_URLIFY="0")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await asyncio.shield(proc.wait())
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


class UnitsSource:
    name = "units"

    @dataclass(frozen=True)
    class Config(SourceConfig):
        systemctl: str = field(default="systemctl", metadata={"nonempty": True, "doc": "systemctl command"})
        systemd_dir: str = field(
            default="/run/systemd/system", metadata={"nonempty": True, "doc": "exists when systemd is running"}
        )
        max_units: int = field(default=200, metadata={"min": 1, "max": 10000, "doc": "most units reported"})

    def __init__(self, config: Config) -> None:
        self.config = config

    async def collect(self, ctx: SnapshotContext) -> dict[str, Any]:
        cfg = self.config
        if not await ctx.run_blocking(os.path.isdir, cfg.systemd_dir):
            raise SourceSkipped(f"systemd is not running ({cfg.systemd_dir} does not exist)")
        argv = [
            cfg.systemctl, "list-units", "--state=failed,activating", "--output=json",
            "--no-pager", "--no-legend", "--plain", "--full",
        ]
        try:
            status, out, err = await run_command(argv)
        except FileNotFoundError:
            raise SourceSkipped(f"{cfg.systemctl} not found") from None
        fmt, units = parse_list_units(out)
        if status != 0 and not units:
            raise RuntimeError(f"systemctl list-units exited with status {status}: {err.strip()[:500]}")
        notes: dict[str, Any] = {"format": fmt}
        if len(units) > cfg.max_units:
            notes["units_omitted"] = len(units) - cfg.max_units
            units = units[: cfg.max_units]

        details: dict[str, dict[str, str]] = {}
        if units:
            show_argv = [cfg.systemctl, "show", "--no-pager"]
            for prop in SHOW_PROPERTIES:
                show_argv += ["-p", prop]
            show_argv += ["--", *(u["unit"] for u in units)]
            status, out, err = await run_command(show_argv)
            details = parse_show(out)
            if status != 0:
                notes["show_error"] = f"status {status}: {err.strip()[:200]}"

        rows = []
        for u in units:
            d = details.get(u["unit"], {})
            rows.append(
                {
                    **u,
                    "restarts": _int(d.get("NRestarts")),
                    "result": d.get("Result") or None,
                    "exit_status": _int(d.get("ExecMainStatus")),
                    "state_since": d.get("StateChangeTimestamp") or None,
                }
            )
        await ctx.run_blocking(ctx.members.write_json, "units.json", {"format": fmt, "units": rows})
        ctx.evidence[self.name] = {
            "failed_units": [r["unit"] for r in rows if r["active"] == "failed"],
            "restarting_units": [r["unit"] for r in rows if r["active"] == "activating" and r["sub"] == "auto-restart"],
            "restarts": {r["unit"]: r["restarts"] for r in rows if r["restarts"]},
        }
        notes["failed"] = len(ctx.evidence[self.name]["failed_units"])
        notes["units"] = len(rows)
        return notes
