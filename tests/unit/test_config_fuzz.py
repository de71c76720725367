"""Config loaders against random TOML-shaped data: ConfigError or a config, never anything else.

A config file is input a person (or a configuration tool) writes; a typo must
give an error naming the key, not a traceback.  These properties feed the
agent's and the collector's ``parse_config`` tables whose sections and keys are
mostly the real ones (so values reach the field checks) with random values of
every TOML type, plus unknown names.  Examples are derandomized: CI is repeatable.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostdiag.agent import config as agent_config
from hostdiag.agent.configfile import ConfigError
from hostdiag.agent.probes import ProbeSection
from hostdiag.agent.sources import REGISTRY
from hostdiag.collector import config as collector_config

FUZZ = settings(
    max_examples=150, derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 4096, 65536, 2**31, 2**40]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.05, 1e-9, 1e308, math.inf, math.nan]),
    st.text(max_size=20),
    st.sampled_from(["", "1 MiB", "256 MiB", "16 GiB", "-1 KiB", "1.5 KiB", "lots", "127.0.0.1:0", "[::1]:7443",
                     "info", "P1", "tokens", "none", "http://127.0.0.1:1/x", "default", "5 s"]),
    st.datetimes(min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2100, 1, 1)),
    st.dates(),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def _keys(cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    # Keys that name files or directories get harmless values: the loaders check such paths,
    # and a random one must not point at something real on the test machine.
    def safe(item: tuple[str, Any]) -> tuple[str, Any]:
        key, value = item
        if any(word in key for word in ("file", "dir", "path", "socket")) and isinstance(value, str):
            return key, "/nonexistent/hostdiag-fuzz/" + "".join(c for c in value if c.isalnum())[:12]
        return key, value

    pairs = st.tuples(st.sampled_from(keys) | st.text(min_size=1, max_size=10), _VALUES).map(safe)
    return st.lists(pairs, max_size=6).map(dict)


def _collector_data() -> st.SearchStrategy[dict[str, Any]]:
    section = _table(_keys(collector_config.CollectorSection))
    return st.dictionaries(st.sampled_from(["collector"]) | st.text(max_size=8), section | _VALUES, max_size=2)


def _agent_data() -> st.SearchStrategy[dict[str, Any]]:
    simple = {
        "agent": agent_config.AgentSection, "recorder": agent_config.RecorderSection,
        "journal": agent_config.JournalSection, "bundle": agent_config.BundleSection,
        "redaction": agent_config.RedactionSection, "collector": agent_config.CollectorSection,
        "spool": agent_config.SpoolSection, "expect": agent_config.ExpectSection,
    }
    sections: dict[str, st.SearchStrategy[Any]] = {name: _table(_keys(cls)) for name, cls in simple.items()}
    sections["logs"] = st.lists(_table(_keys(agent_config.LogSection)), max_size=3)
    sections["probes"] = st.lists(_table(_keys(ProbeSection)), max_size=3)
    sections["profiles"] = st.dictionaries(
        st.sampled_from(["default", "quick"]) | st.text(max_size=6), _table(_keys(agent_config.ProfileSection)),
        max_size=2,
    )
    sections["sources"] = st.dictionaries(
        st.sampled_from(sorted(REGISTRY)) | st.text(max_size=6),
        st.one_of(*[_table(_keys(REGISTRY[name].Config)) for name in sorted(REGISTRY)]),
        max_size=2,
    )
    pair = st.one_of(*[st.tuples(st.just(name), s | _VALUES) for name, s in sections.items()],
                     st.tuples(st.text(max_size=8), _VALUES))
    return st.lists(pair, max_size=4).map(dict)


@FUZZ
@given(_collector_data())
def test_the_collector_config_loader_raises_only_config_error(data: dict[str, Any]) -> None:
    try:
        config = collector_config.parse_config(data, "fuzz.toml")
    except ConfigError as exc:
        assert exc.file == "fuzz.toml", exc
    else:
        assert isinstance(config, collector_config.CollectorConfig)


@FUZZ
@given(_agent_data())
def test_the_agent_config_loader_raises_only_config_error(data: dict[str, Any]) -> None:
    try:
        config = agent_config.parse_config(data, "fuzz.toml")
    except ConfigError as exc:
        assert exc.file == "fuzz.toml", exc
    else:
        assert isinstance(config, agent_config.AgentConfig)
