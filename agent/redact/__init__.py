"""Host-side redaction of secrets (interface; the engine lives in ``engine.py``).

Public API (stable; other modules rely on it):

* ``load_redactor(rules_file: str = "", disable: Iterable[str] = ()) -> Redactor``
* ``Redactor.redact(text, counts=None) -> str`` — any text (a log block of many
  lines, a config file); ``counts`` (a ``collections.Counter``) gets +1 per hit
  under the rule's name.
* ``Redactor.redact_argv(argv, counts=None) -> list[str]``
* ``Redactor.redact_env(env, counts=None) -> dict[str, str]``
* ``Redactor.rule_names -> tuple[str, ...]``
"""

from hostdiag.agent.redact.engine import Redactor, load_redactor

__all__ = ["Redactor", "load_redactor"]
