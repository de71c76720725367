"""The metrics registry renders the Prometheus text format 0.0.4."""

from __future__ import annotations

import pytest

from hostdiag.collector.metrics import Registry


def test_render_counters_and_gauges() -> None:
    reg = Registry()
    c = reg.counter("hostdiag_test_total", "Things.\nCounted.", ["reason"])
    c.inc(reason="a")
    c.inc(2, reason='b"q')
    g = reg.gauge("hostdiag_gauge", "A gauge.")
    g.set(1.5)
    reg.gauge("hostdiag_cb", "By state.", ["state"], callback=lambda: {("open",): 3, ("closed",): 0})
    text = reg.render()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert "# HELP hostdiag_test_total Things.\\nCounted." in lines
    assert "# TYPE hostdiag_test_total counter" in lines
    assert 'hostdiag_test_total{reason="a"} 1' in lines
    assert 'hostdiag_test_total{reason="b\\"q"} 2' in lines
    assert "hostdiag_gauge 1.5" in lines
    assert 'hostdiag_cb{state="closed"} 0' in lines and 'hostdiag_cb{state="open"} 3' in lines


def test_misuse_is_refused() -> None:
    reg = Registry()
    c = reg.counter("x_total", "x", ["reason"])
    with pytest.raises(ValueError):
        c.inc(-1, reason="a")
    with pytest.raises(ValueError):
        c.inc(other="a")
    with pytest.raises(ValueError):
        reg.counter("x_total", "again")
