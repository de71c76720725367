"""Shared fixtures for the redaction tests."""

from __future__ import annotations

import pytest

from hostdiag.agent.redact import Redactor, load_redactor


@pytest.fixture(scope="session")
def redactor() -> Redactor:
    """The built-in rule set, as the agent loads it."""
    return load_redactor()
