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


def test_histogram_renders_cumulative_buckets_sum_and_count() -> None:
    reg = Registry()
    h = reg.histogram("hostdiag_test_seconds", "Durations.", ["route"], buckets=(0.1, 1.0))
    h.observe(0.05, route="/a")
    h.observe(0.5, route="/a")
    h.observe(5.0, route="/a")
    lines = reg.render().splitlines()
    assert lines[:2] == ["# HELP hostdiag_test_seconds Durations.", "# TYPE hostdiag_test_seconds histogram"]
    assert lines[2:] == [
        'hostdiag_test_seconds_bucket{route="/a",le="0.1"} 1',
        'hostdiag_test_seconds_bucket{route="/a",le="1.0"} 2',
        'hostdiag_test_seconds_bucket{route="/a",le="+Inf"} 3',
        'hostdiag_test_seconds_sum{route="/a"} 5.55',
        'hostdiag_test_seconds_count{route="/a"} 3',
    ]
    assert h.count(route="/a") == 3
    with pytest.raises(ValueError):
        reg.histogram("hostdiag_bad_seconds", "x", ["le"])


def test_counter_with_a_callback_reads_its_value_at_scrape_time() -> None:
    reg = Registry()
    seen = {"n": 1}
    reg.counter("hostdiag_evaluations_total", "Evaluations.", callback=lambda: seen["n"])
    seen["n"] = 4
    assert "hostdiag_evaluations_total 4" in reg.render().splitlines()
