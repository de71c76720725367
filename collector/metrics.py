"""A tiny metrics registry rendered in the Prometheus text format 0.0.4.

Counters and gauges with optional labels, counters and gauges computed at
scrape time by a callback (the number of connected agents, incidents by
state, signal evaluations), and histograms with fixed buckets (request
latencies in seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

__all__ = ["Registry", "Counter", "Gauge", "Histogram", "CONTENT_TYPE", "LATENCY_BUCKETS_S"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]

# Request latency buckets in seconds: a millisecond to a minute.  A long-lived
# stream (an agent's Connect) lands in +Inf, which is what it is.
LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._values: dict[LabelValues, float] = {}
        if not self.label_names:
            self._values[()] = 0.0

    def _key(self, labels: Mapping[str, str] | None) -> LabelValues:
        labels = labels or {}
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[tuple[LabelValues, float]]:
        return sorted(self._values.items())

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key, value in self.samples():
            if self.label_names:
                pairs = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(self.label_names, key))
                lines.append(f"{self.name}{{{pairs}}} {_format_value(value)}")
            else:
                lines.append(f"{self.name} {_format_value(value)}")
        return lines


class Counter(_Metric):
    kind = "counter"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Iterable[str] = (),
        callback: Callable[[], Mapping[LabelValues, float] | float] | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        # A count kept elsewhere (e.g. by the signal engine), read at scrape time.
        self._callback = callback

    def samples(self) -> list[tuple[LabelValues, float]]:
        if self._callback is None:
            return super().samples()
        result = self._callback()
        if isinstance(result, Mapping):
            return sorted((tuple(k), float(v)) for k, v in result.items())
        return [((), float(result))]

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Iterable[str] = (),
        callback: Callable[[], Mapping[LabelValues, float] | float] | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        self._callback = callback

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = float(value)

    def samples(self) -> list[tuple[LabelValues, float]]:
        if self._callback is None:
            return super().samples()
        result = self._callback()
        if isinstance(result, Mapping):
            return sorted((tuple(k), float(v)) for k, v in result.items())
        return [((), float(result))]


class Histogram(_Metric):
    """Cumulative buckets, ``_sum`` and ``_count`` per label set (the Prometheus histogram)."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = (),
                 buckets: Iterable[float] = LATENCY_BUCKETS_S) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if "le" in self.label_names:
            raise ValueError(f"{name}: 'le' is reserved for buckets")
        self._values.clear()
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ([0] * (len(self.buckets) + 1), [0.0])
        counts, total = series
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1
        total[0] += value

    def count(self, **labels: str) -> int:
        series = self._series.get(self._key(labels))
        return series[0][-1] if series else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key in sorted(self._series):
            counts, total = self._series[key]
            pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(self.label_names, key)]
            bounds = [*(repr(float(b)) for b in self.buckets), "+Inf"]
            for bound, n in zip(bounds, counts):
                le = 'le="' + bound + '"'
                lines.append(f"{self.name}_bucket{{{','.join([*pairs, le])}}} {n}")
            suffix = f"{{{','.join(pairs)}}}" if pairs else ""
            lines.append(f"{self.name}_sum{suffix} {_format_value(total[0])}")
            lines.append(f"{self.name}_count{suffix} {counts[-1]}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(
        self,
        name: str,
        help_text: str,
        labels: Iterable[str] = (),
        callback: Callable[[], Mapping[LabelValues, float] | float] | None = None,
    ) -> Counter:
        return self._add(Counter(name, help_text, labels, callback))  # type: ignore[return-value]

    def histogram(
        self, name: str, help_text: str, labels: Iterable[str] = (), buckets: Iterable[float] = LATENCY_BUCKETS_S
    ) -> Histogram:
        return self._add(Histogram(name, help_text, labels, buckets))  # type: ignore[return-value]

    def gauge(
        self,
        name: str,
        help_text: str,
        labels: Iterable[str] = (),
        callback: Callable[[], Mapping[LabelValues, float] | float] | None = None,
    ) -> Gauge:
        return self._add(Gauge(name, help_text, labels, callback))  # type: ignore[return-value]

    def get(self, name: str) -> _Metric:
        return self._metrics[name]

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._metrics):
            lines.extend(self._metrics[name].render())
        return "\n".join(lines) + "\n"
