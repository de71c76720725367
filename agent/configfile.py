"""Strict loading of TOML configuration into frozen dataclasses.

Both daemons load their configuration through :func:`load_dataclass`: every key
must be known, every value must have the declared type, and every constraint in
a field's metadata must hold.  The first problem found is raised as a
:class:`ConfigError` naming the file, the dotted key and what is wrong, so the
daemon can print one line and exit with status 2.

Constraints are declared next to the field::

    window_s: float = field(default=900.0, metadata={"min": 10, "max": 86400})

Supported metadata: ``min``/``max`` (inclusive bounds for numbers),
``choices`` (allowed values), ``nonempty`` (strings and lists), ``regex``
(the string must compile as a Python regular expression) and ``doc`` (one
line for the generated key reference).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

__all__ = [
    "ConfigError",
    "load_dataclass",
    "read_toml",
    "parse_size",
    "reference_rows",
    "split_host_port",
    "is_loopback_host",
]

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem: which file, which key, what is wrong."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file = file
        self.key = key
        self.message = message


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning every failure into a :class:`ConfigError`."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(name, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(name, "", "is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(name, "", "permission denied") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(name, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "", f"invalid TOML: {exc}") from None


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(value: int | str) -> int:
    """A byte size from an int or a string such as ``"64 MiB"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size in bytes, got a boolean")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):  # a float, an array, a table, a date: TOML allows them all here
        raise ValueError(f"expected a size such as 1048576 or \"64 MiB\", got {type(value).__name__} {value!r:.40}")
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 1048576 or \"64 MiB\", got {value!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is None:
        if dataclasses.is_dataclass(tp):
            return "table"
        return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))
    if origin in (list, tuple):
        return f"array of {_type_name(get_args(tp)[0])}"
    if origin in (dict, collections.abc.Mapping):
        return f"table of {_type_name(get_args(tp)[1])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    return str(tp)


def _convert(tp: Any, value: Any, file: str, key: str, meta: dict[str, Any]) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union in config type at {key}")
        return _convert(args[0], value, file, key, meta)
    if meta.get("size"):
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ConfigError(file, key, str(exc)) from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(file, key, f"expected a table, got {_describe(value)}")
        return load_dataclass(tp, value, file, key)  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(file, key, f"expected {_type_name(tp)}, got {_describe(value)}")
        item_tp = get_args(tp)[0]
        items = [_convert(item_tp, v, file, f"{key}[{i}]", {}) for i, v in enumerate(value)]
        return tuple(items)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(file, key, f"expected {_type_name(tp)}, got {_describe(value)}")
        val_tp = get_args(tp)[1]
        return types.MappingProxyType(
            {str(k): _convert(val_tp, v, file, f"{key}.{k}", {}) for k, v in value.items()}
        )
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(file, key, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(file, key, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _check(value: Any, file: str, key: str, meta: dict[str, Any]) -> None:
    if value is None:
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(file, key, f"must be at least {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(file, key, f"must be at most {hi}, got {value}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(file, key, f"must be one of {allowed}, got {value!r}")
    if meta.get("nonempty") and not value:
        raise ConfigError(file, key, "must not be empty")
    if meta.get("regex") and isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(file, key, f"is not a valid regular expression: {exc}") from None


def load_dataclass(cls: type[T], data: dict[str, Any], file: str = "<config>", prefix: str = "") -> T:
    """Build ``cls`` from a TOML table, rejecting unknown keys and bad values.

    After the fields are converted, a ``validate(self)`` method on the class, if
    any, may raise ``ValueError((key, message))`` or ``ConfigError`` for checks
    that involve several fields.
    """
    if not isinstance(data, dict):
        raise ConfigError(file, prefix, f"expected a table, got {_describe(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(file, _join(prefix, key), f"unknown key (known keys here: {known})")
    kwargs: dict[str, Any] = {}
    for name, fld in fields.items():
        key = _join(prefix, name)
        meta = dict(fld.metadata)
        if name in data:
            value = _convert(hints[name], data[name], file, key, meta)
        else:
            if fld.default is not dataclasses.MISSING:
                value = fld.default
            elif fld.default_factory is not dataclasses.MISSING:
                value = fld.default_factory()
            else:
                raise ConfigError(file, key, "is required")
        _check(value, file, key, meta)
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            if exc.args and isinstance(exc.args[0], tuple):
                sub, msg = exc.args[0]
                raise ConfigError(file, _join(prefix, sub), msg) from None
            raise ConfigError(file, prefix, str(exc)) from None
    return obj


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def reference_rows(cls: type, prefix: str) -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, allowed, meaning) for every key of a config dataclass.

    Nested dataclass fields become their own rows under ``prefix.field``; this
    is what ``scripts/gen-config-docs`` renders into ``docs/configuration.md``.
    """
    hints = get_type_hints(cls)
    rows: list[tuple[str, str, str, str, str]] = []
    for fld in dataclasses.fields(cls):
        if fld.name == "file":
            continue
        tp = hints[fld.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(reference_rows(tp, _join(prefix, fld.name)))
            continue
        meta = dict(fld.metadata)
        if fld.default is not dataclasses.MISSING:
            default: Any = fld.default
        elif fld.default_factory is not dataclasses.MISSING:
            default = fld.default_factory()
        else:
            default = None
        allowed = []
        if "min" in meta or "max" in meta:
            allowed.append(f"{meta.get('min', '')} .. {meta.get('max', '')}".strip())
        if "choices" in meta:
            allowed.append("one of " + ", ".join(str(c) for c in meta["choices"]))
        if meta.get("regex"):
            allowed.append("regular expression")
        if meta.get("nonempty"):
            allowed.append("not empty")
        kind = "size" if meta.get("size") else _type_name(tp)
        rows.append((_join(prefix, fld.name), kind, _render_default(default, bool(meta.get("size"))),
                     "; ".join(allowed), str(meta.get("doc", ""))))
    return rows


def _render_default(value: Any, size: bool) -> str:
    if size and isinstance(value, int):
        for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value >= factor and value % factor == 0:
                return f'"{value // factor} {unit}"'
        return str(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_render_default(v, False) for v in value) + "]"
    if isinstance(value, collections.abc.Mapping):
        return "{}" if not value else "{" + ", ".join(f"{k} = {_render_default(v, False)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def split_host_port(value: str, *, min_port: int = 1) -> tuple[str, int]:
    """``"127.0.0.1:7443"`` / ``"[::1]:7443"`` / ``"localhost:7443"`` -> (host, port).

    Listeners pass ``min_port=0`` (any free port).  Raises ``ValueError`` with a
    readable message.
    """
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise ValueError(f"expected [ADDRESS]:PORT, got {value!r}")
        host, port_text = value[1:end], value[end + 2 :]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        if ":" in host:
            raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:7443, got {value!r}")
    if not host or not port_text.isdigit() or not min_port <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from {min_port} to 65535, got {port_text!r} in {value!r}")
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
