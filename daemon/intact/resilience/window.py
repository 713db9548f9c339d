"""Event counts over a sliding time window, kept as a ring of time buckets.

The breaker (calls, failures) and the retry budget (deposits, withdrawals) both need "how
many in the last N seconds" for every request, with fixed memory. Buckets are evicted by
subtracting them from running totals as time moves on, so recording and reading are O(1)
amortised and nothing grows with traffic.
"""

from __future__ import annotations

import math


class BucketRing:
    """Several counters (``series``) over a ring of ``ring`` buckets of ``span/buckets`` s."""

    __slots__ = ("_counts", "_head", "_ring", "_scale", "totals")

    def __init__(self, *, span: float, buckets: int, ring: int, series: int, now: float) -> None:
        self._scale = buckets / span
        self._ring = ring
        self._counts = [[0] * ring for _ in range(series)]
        self.totals = [0] * series  # per series, over the whole ring
        self._head = self._index(now)

    def _index(self, now: float) -> int:
        # now * buckets / span rather than now / (span / buckets): one rounding, not two.
        return math.floor(now * self._scale)

    def advance(self, now: float) -> None:
        """Drop the buckets that have slid out of the ring by ``now``."""
        index = self._index(now)
        if index <= self._head:  # same bucket (or a clock that stepped back)
            return
        if index - self._head >= self._ring:
            for counts in self._counts:
                counts[:] = [0] * self._ring
            self.totals = [0] * len(self.totals)
        else:
            for expired in range(self._head + 1, index + 1):
                slot = expired % self._ring
                for series, counts in enumerate(self._counts):
                    self.totals[series] -= counts[slot]
                    counts[slot] = 0
        self._head = index

    def add(self, series: int, now: float) -> None:
        """Count one event of ``series`` at ``now``."""
        self.advance(now)
        self._counts[series][self._head % self._ring] += 1
        self.totals[series] += 1

    def oldest(self, series: int) -> int:
        """The count in the oldest bucket of the ring (the one evicted next)."""
        return self._counts[series][(self._head + 1) % self._ring]
