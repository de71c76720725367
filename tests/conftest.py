"""Shared test helpers for every suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def poll(predicate: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.02, what: str = "") -> object:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate!r}")
        time.sleep(interval_s)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., object]:
    """``wait_for(predicate, timeout_s=10, what="...")``: poll with a deadline (no fixed sleeps)."""
    return poll
