"""Per-chunk timing against the simulated upstream's schedule, and the statistics of it.

The simulator paces every stream exactly: the role chunk and the first token are due at
its time to first token, token k (k >= 1) 1/tok_per_s later each. It does not stamp the
send time into the chunks, so each chunk's delay is measured against that schedule: for a
stream's content chunk i (role chunk = 0, first token = 1, ...) the arrival minus
(i - 1)/tok_per_s is the same number for every chunk that arrived on time; the smallest of
them is the stream's on-time offset, and each chunk's *lateness* is how far it arrived
behind it. The lateness of the direct path is the simulator's and the client's own jitter;
a relay's lateness minus the direct path's (same workload, same run, quantile by quantile)
is the delay the relay adds. The first two chunks are left out: both are due at step 0,
and a relay may merge or split them (the time to first token covers them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

SKIP_FIRST = 2


def lateness(
    arrivals: Sequence[float], tok_per_s: float, window: tuple[float, float]
) -> list[float]:
    """Seconds each content chunk arrived behind the stream's on-time schedule, for the
    chunks that arrived inside ``window`` (start, end)."""
    if tok_per_s <= 0 or len(arrivals) <= SKIP_FIRST + 2:
        return []
    step = 1.0 / tok_per_s
    shifted = [t - (i - 1) * step for i, t in enumerate(arrivals) if i >= SKIP_FIRST]
    on_time = min(shifted)
    start, end = window
    return [
        x - on_time for x, t in zip(shifted, arrivals[SKIP_FIRST:], strict=True) if start <= t < end
    ]


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[min(rank, len(ordered) - 1)]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p99, max and count of ``values`` (NaN for an empty list)."""
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 50),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else math.nan,
        "n": float(len(ordered)),
    }


def largest_gap(arrivals: Sequence[float]) -> float:
    """The longest silence between two consecutive events (0 with fewer than two)."""
    return max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0)
