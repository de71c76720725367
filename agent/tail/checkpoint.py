"""The tail checkpoint file: where each tailed file (and the journal) was read up to.

The file is JSON, replaced atomically: the new content goes to a temporary file
in the same directory, which is fsynced, renamed over the old one, and then the
directory is fsynced so the rename itself is durable.  A crash at any point
leaves either the old checkpoint or the new one, never a torn mix.

Format (version 1)::

    {"version": 1, "saved_at": 1714564800.0,
     "files": [{"name": "app", "watch_path": "/var/log/app.log", "path": "/var/log/app.log",
                "dev": 2049, "ino": 131, "fp": "<sha256 hex>", "fp_len": 1024,
                "offset": 52311, "state": "active", "seen_at": 1714564800.0}, ...],
     "journal": {"cursor": "s=...;i=...", "saved_at": 1714564800.0}}
"""

from __future__ import annotations

import logging
import os
from typing import Any

import orjson

__all__ = ["write_atomic", "load_checkpoint", "save_checkpoint", "CHECKPOINT_VERSION"]

log = logging.getLogger("hostdiag.agent.tail")

CHECKPOINT_VERSION = 1


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: write a temporary file, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o750, exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def load_checkpoint(path: str) -> tuple[dict[str, Any], str | None]:
    """The checkpoint at ``path`` (empty when absent) and an error text if it was unusable.

    An unreadable or corrupt checkpoint is not fatal: the tailer starts as if it
    had none, and says why.
    """
    empty: dict[str, Any] = {"version": CHECKPOINT_VERSION, "files": [], "journal": {}}
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return empty, None
    except OSError as exc:
        return empty, f"cannot read the checkpoint {path}: {exc.strerror or exc}"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return empty, f"the checkpoint {path} is not valid JSON ({exc}); starting without it"
    if not isinstance(doc, dict) or doc.get("version") != CHECKPOINT_VERSION:
        return empty, f"the checkpoint {path} has an unknown format; starting without it"
    files = [e for e in doc.get("files", []) if _valid_entry(e)]
    journal = doc.get("journal") if isinstance(doc.get("journal"), dict) else {}
    return {"version": CHECKPOINT_VERSION, "files": files, "journal": journal}, None


def _valid_entry(e: Any) -> bool:
    if not isinstance(e, dict):
        return False
    try:
        return (
            isinstance(e["dev"], int) and isinstance(e["ino"], int) and isinstance(e["fp"], str)
            and isinstance(e["fp_len"], int) and isinstance(e["offset"], int) and e["offset"] >= 0
            and isinstance(e.get("watch_path", ""), str) and isinstance(e.get("path", ""), str)
        )
    except KeyError:
        return False


def save_checkpoint(path: str, files: list[dict[str, Any]], journal: dict[str, Any], saved_at: float) -> None:
    doc = {"version": CHECKPOINT_VERSION, "saved_at": saved_at, "files": files, "journal": journal}
    write_atomic(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
