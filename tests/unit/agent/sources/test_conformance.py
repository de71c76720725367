"""Every registered source follows the source protocol (see ``agent/sources/base.py``)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from hostdiag.agent.sources import REGISTRY
from hostdiag.agent.sources.base import SourceConfig

HERE = Path(__file__).resolve().parent
NAMES = sorted(REGISTRY)


def test_registry_is_not_empty() -> None:
    assert {"host", "processes", "sockets", "psi", "kernel", "units"} <= set(REGISTRY)


@pytest.mark.parametrize("key", NAMES)
def test_name_matches_key_and_module(key: str) -> None:
    cls = REGISTRY[key]
    assert isinstance(cls.name, str)
    assert cls.name == key
    assert cls.__module__.rsplit(".", 1)[-1] == key


@pytest.mark.parametrize("key", NAMES)
def test_config_is_a_frozen_source_config_whose_defaults_construct(key: str) -> None:
    cfg_cls = REGISTRY[key].Config
    assert dataclasses.is_dataclass(cfg_cls)
    assert issubclass(cfg_cls, SourceConfig)
    assert cfg_cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    cfg = cfg_cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.enabled = False  # type: ignore[misc]
    source = REGISTRY[key](cfg)
    assert source is not None


@pytest.mark.parametrize("key", NAMES)
def test_config_fields_have_docs(key: str) -> None:
    # Every key appears in docs/configuration.md; the one-line doc lives next to the field.
    own = [f for f in dataclasses.fields(REGISTRY[key].Config) if f.name not in {"enabled", "timeout_s"}]
    assert all(f.metadata.get("doc") for f in own), [f.name for f in own if not f.metadata.get("doc")]


@pytest.mark.parametrize("key", NAMES)
def test_collect_is_a_coroutine_function(key: str) -> None:
    collect = REGISTRY[key].collect
    assert inspect.iscoroutinefunction(collect)
    assert list(inspect.signature(collect).parameters) == ["self", "ctx"]


@pytest.mark.parametrize("key", NAMES)
def test_source_has_its_own_test_file(key: str) -> None:
    assert (HERE / f"test_{key}.py").is_file(), f"tests/unit/agent/sources/test_{key}.py is missing"
