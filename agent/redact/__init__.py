"""Host-side redaction of secrets (interface; the engine lives in ``engine.py``).

Public API (stable; other modules rely on it):

* ``load_redactor(rules_file: str = "", disable: Iterable[str] = ()) -> Redactor``
  — the built-in rules (``rules.toml``) plus an optional extra rules file in the
  same format; ``disable`` turns built-in rules off by name.  A bad rules file
  raises ``hostdiag.agent.configfile.ConfigError``.
* ``Redactor.redact(text, counts=None) -> str`` — any text (a log block of many
  lines, a config file); ``counts`` (a ``collections.Counter``) gets +1 per hit
  under the rule's name.  Line breaks are never added or removed.
* ``Redactor.redact_argv(argv, counts=None) -> list[str]``
* ``Redactor.redact_env(env, counts=None) -> dict[str, str]``
* ``Redactor.rule_names -> tuple[str, ...]``
* ``Redactor.stream() -> StreamRedactor`` — per log file: ``.redact(block,
  counts)`` remembers a private-key block left open at the end of a block.

See docs/redaction.md for the rules file format.
"""

from hostdiag.agent.redact.engine import MARKER_RE, Redactor, StreamRedactor, load_redactor

__all__ = ["MARKER_RE", "Redactor", "StreamRedactor", "load_redactor"]
