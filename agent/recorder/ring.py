"""A fixed-capacity ring of timestamped samples.

Samples are stored serialized (orjson bytes), so the memory a ring holds is
bounded by ``capacity`` times the size of one sample, whatever the traffic.
"""

from __future__ import annotations

import bisect
import collections
from typing import Any

import orjson

__all__ = ["SampleRing"]


class SampleRing:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ts: collections.deque[float] = collections.deque(maxlen=capacity)
        self._data: collections.deque[bytes] = collections.deque(maxlen=capacity)
        self.bytes_used = 0
        self.total_appended = 0

    def __len__(self) -> int:
        return len(self._ts)

    def append(self, ts: float, sample: dict[str, Any]) -> None:
        blob = orjson.dumps(sample)
        if len(self._data) == self.capacity:
            self.bytes_used -= len(self._data[0])
        self._ts.append(ts)
        self._data.append(blob)
        self.bytes_used += len(blob)
        self.total_appended += 1

    def since(self, since: float) -> list[dict[str, Any]]:
        """Samples with a timestamp at or after ``since``, oldest first."""
        ts = list(self._ts)
        start = bisect.bisect_left(ts, since)
        data = list(self._data)
        return [orjson.loads(b) for b in data[start:]]

    def latest(self) -> dict[str, Any] | None:
        return orjson.loads(self._data[-1]) if self._data else None

    def oldest_ts(self) -> float | None:
        return self._ts[0] if self._ts else None
