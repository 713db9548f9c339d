"""Backoff as small composable values: a growth policy, a jitter policy and a cap.

Growth says how the un-jittered delay grows per retry, jitter spreads retries of many
clients apart (AWS "Exponential Backoff and Jitter"), and the cap bounds one sleep. Each
piece is a tiny frozen dataclass chosen by config, in the manner of tenacity's ``wait.py``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from intact.config import RetryConfig


class GrowthPolicy(Protocol):
    """The un-jittered delay of retry ``retry`` (0 for the first retry), in seconds."""

    def __call__(self, retry: int) -> float: ...


class JitterPolicy(Protocol):
    """Randomise one sleep given its ceiling and the previous sleep (for decorrelated)."""

    def __call__(self, ceiling: float, previous: float, rng: random.Random) -> float: ...


def _times(base: float, factor: float) -> float:
    """``base * factor`` that saturates at infinity instead of raising OverflowError."""
    if base == 0.0:
        return 0.0
    try:
        return base * float(factor)
    except OverflowError:  # factor is an int too large for a float
        return math.inf


@dataclass(frozen=True)
class ExponentialGrowth:
    """``base * 2**retry``: the usual choice, doubling per retry."""

    base: float

    def __call__(self, retry: int) -> float:
        if self.base == 0.0:
            return 0.0
        try:
            # ldexp is exact and raises instead of building a huge int for large retries.
            return math.ldexp(self.base, max(0, retry))
        except OverflowError:
            return math.inf


@dataclass(frozen=True)
class LinearGrowth:
    """``base * (retry + 1)``: gentler growth for upstreams that recover quickly."""

    base: float

    def __call__(self, retry: int) -> float:
        return _times(self.base, max(0, retry) + 1)


# fib(n) passes the largest float near n = 1477; past that the delay is infinite anyway.
_FIB_FINITE_LIMIT = 1476


@dataclass(frozen=True)
class FibonacciGrowth:
    """``base * fib(retry + 1)`` with fib = 1, 1, 2, 3, 5, ...: between linear and exponential."""

    base: float

    def __call__(self, retry: int) -> float:
        n = max(0, retry) + 1
        if n > _FIB_FINITE_LIMIT:
            return _times(self.base, math.inf)
        a, b = 1, 1  # fib(1), fib(2)
        for _ in range(n - 1):
            a, b = b, a + b
        return _times(self.base, a)


@dataclass(frozen=True)
class FullJitter:
    """``uniform(0, ceiling)``: the AWS study's recommendation, also Envoy's and gRPC's."""

    def __call__(self, ceiling: float, previous: float, rng: random.Random) -> float:
        return rng.uniform(0.0, ceiling)


@dataclass(frozen=True)
class EqualJitter:
    """``ceiling/2 + uniform(0, ceiling/2)``: never sleeps less than half the ceiling."""

    def __call__(self, ceiling: float, previous: float, rng: random.Random) -> float:
        half = ceiling / 2
        return half + rng.uniform(0.0, half)


@dataclass(frozen=True)
class DecorrelatedJitter:
    """``min(cap, uniform(base, max(base, previous * 3)))`` (AWS); grows from the last sleep."""

    base: float
    cap: float

    def __call__(self, ceiling: float, previous: float, rng: random.Random) -> float:
        return min(self.cap, rng.uniform(self.base, max(self.base, previous * 3)))


@dataclass(frozen=True)
class NoJitter:
    """The ceiling itself: deterministic, for tests and single-client setups."""

    def __call__(self, ceiling: float, previous: float, rng: random.Random) -> float:
        return ceiling


_GROWTHS: dict[str, type[ExponentialGrowth | LinearGrowth | FibonacciGrowth]] = {
    "exponential": ExponentialGrowth,
    "linear": LinearGrowth,
    "fibonacci": FibonacciGrowth,
}


_JITTERS: dict[str, Callable[[RetryConfig], JitterPolicy]] = {
    "full": lambda cfg: FullJitter(),
    "equal": lambda cfg: EqualJitter(),
    "decorrelated": lambda cfg: DecorrelatedJitter(base=cfg.base_delay, cap=cfg.max_delay),
    "none": lambda cfg: NoJitter(),
}


@dataclass(frozen=True)
class BackoffPolicy:
    """Growth, jitter and a cap; immutable and shared, with per-request state in a schedule."""

    growth: GrowthPolicy
    jitter: JitterPolicy
    max_delay: float

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> BackoffPolicy:
        """Map ``retry.backoff`` and ``retry.jitter`` to policy values."""
        try:
            growth = _GROWTHS[cfg.backoff](cfg.base_delay)
        except KeyError:
            raise ValueError(
                f"retry.backoff = {cfg.backoff!r} is not allowed: expected one of "
                + ", ".join(repr(k) for k in _GROWTHS)
            ) from None
        try:
            jitter = _JITTERS[cfg.jitter](cfg)
        except KeyError:
            raise ValueError(
                f"retry.jitter = {cfg.jitter!r} is not allowed: expected one of "
                + ", ".join(repr(k) for k in _JITTERS)
            ) from None
        return cls(growth=growth, jitter=jitter, max_delay=cfg.max_delay)

    def ceiling(self, retry: int) -> float:
        """The largest sleep retry ``retry`` may get before jitter: ``min(max_delay, growth)``."""
        return min(self.max_delay, self.growth(retry))

    def schedule(self, rng: random.Random) -> BackoffSchedule:
        """A fresh per-request schedule; pass a seeded ``rng`` for reproducible tests."""
        return BackoffSchedule(self, rng)


class BackoffSchedule:
    """The sleeps of one app request: counts retries and remembers the previous sleep."""

    __slots__ = ("_policy", "_previous", "_retry", "_rng")

    def __init__(self, policy: BackoffPolicy, rng: random.Random) -> None:
        self._policy = policy
        self._rng = rng
        self._retry = 0
        # Decorrelated jitter grows from the previous sleep; AWS seeds it with the base delay,
        # which is the first ceiling.
        self._previous = max(0.0, policy.ceiling(0))

    @property
    def retries(self) -> int:
        """How many delays this schedule has handed out."""
        return self._retry

    def next_delay(self) -> float:
        """The sleep before the next retry, always within ``[0, max_delay]``."""
        policy = self._policy
        ceiling = policy.ceiling(self._retry)
        delay = policy.jitter(ceiling, self._previous, self._rng)
        # `not delay >= 0` also catches NaN from inf arithmetic with a degenerate config.
        delay = 0.0 if not delay >= 0.0 else min(delay, policy.max_delay)
        self._retry += 1
        self._previous = delay
        return delay


__all__ = [
    "BackoffPolicy",
    "BackoffSchedule",
    "DecorrelatedJitter",
    "EqualJitter",
    "ExponentialGrowth",
    "FibonacciGrowth",
    "FullJitter",
    "GrowthPolicy",
    "JitterPolicy",
    "LinearGrowth",
    "NoJitter",
]
