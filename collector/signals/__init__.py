"""Severity signals: declarative rules over bundle evidence, combined per incident.

See ``docs/signal-rules.md``.
"""
