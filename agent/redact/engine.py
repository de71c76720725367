"""Placeholder engine: replaced by the real rule engine."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

__all__ = ["Redactor", "load_redactor"]


class Redactor:
    rule_names: tuple[str, ...] = ()

    def redact(self, text: str, counts: collections.Counter[str] | None = None) -> str:
        return text

    def redact_argv(self, argv: Iterable[str], counts: collections.Counter[str] | None = None) -> list[str]:
        return list(argv)

    def redact_env(self, env: Mapping[str, str], counts: collections.Counter[str] | None = None) -> dict[str, str]:
        return dict(env)


def load_redactor(rules_file: str = "", disable: Iterable[str] = ()) -> Redactor:
    return Redactor()
