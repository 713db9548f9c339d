"""A retry budget per upstream, so retries cannot multiply load when an upstream struggles.

Finagle's RetryBudget (and Linkerd's): each app request deposits ``ratio`` of a token,
each retry or resume withdraws a whole one, tokens are counted over the last ``ttl``
seconds, and a reserve of ``min_per_second * ttl`` keeps retries possible at low traffic.

Guarantee: at every granted withdrawal at time t, the withdrawals granted in [t - ttl, t]
are at most ``ratio * deposits in (t - ttl, t] + reserve``. Time buckets err on the refusing
side: deposits may leave the count up to one bucket (ttl/20) early, withdrawals leave it up
to one bucket late.

No locks: single asyncio event loop, no awaits inside.
"""

from __future__ import annotations

import math

from intact.clock import SYSTEM_CLOCK, Clock
from intact.config import RetryConfig
from intact.resilience.window import BucketRing

# Buckets per ttl; the ring keeps one more so withdrawals can be counted over >= ttl while
# deposits are counted over <= ttl.
BUDGET_BUCKETS = 20
_RING = BUDGET_BUCKETS + 1
_DEPOSITS, _WITHDRAWALS = 0, 1
# ratio * deposits is a float product (0.29 * 100 == 28.999999999999996); without this slack
# the last whole token would sometimes be refused.
_EPSILON = 1e-9


class RetryBudget:
    """Allows retries up to ``ratio`` of recent requests plus a per-second reserve."""

    def __init__(
        self,
        *,
        ratio: float,
        min_per_second: float,
        ttl: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        for key, value, ok in (
            ("ratio", ratio, ratio >= 0),
            ("min_per_second", min_per_second, min_per_second >= 0),
            ("ttl", ttl, ttl > 0),
        ):
            if not (ok and math.isfinite(value)):
                allowed = "> 0" if key == "ttl" else ">= 0"
                raise ValueError(f"{key} = {value!r} is not allowed: expected a number {allowed}")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.ttl = ttl
        self.reserve = min_per_second * ttl
        self._clock = clock
        # One bucket more than ttl: deposits count over at most ttl (the newest
        # BUDGET_BUCKETS buckets), withdrawals over at least ttl (the whole ring), so
        # bucketing can only ever refuse a retry, never grant an extra one.
        self._ring = BucketRing(
            span=ttl, buckets=BUDGET_BUCKETS, ring=_RING, series=2, now=clock.monotonic()
        )
        self._exhausted = 0

    @classmethod
    def from_config(cls, cfg: RetryConfig, clock: Clock = SYSTEM_CLOCK) -> RetryBudget:
        """The budget of ``retry.budget_ratio``, ``budget_min_per_second`` and ``budget_ttl``."""
        return cls(
            ratio=cfg.budget_ratio,
            min_per_second=cfg.budget_min_per_second,
            ttl=cfg.budget_ttl,
            clock=clock,
        )

    @property
    def exhausted(self) -> int:
        """How many withdrawals were refused."""
        return self._exhausted

    def deposit(self) -> None:
        """Record one app request (call once per request, not per attempt)."""
        self._ring.add(_DEPOSITS, self._clock.monotonic())

    def try_withdraw(self) -> bool:
        """Take one token for a retry or resume; False (and counted) when the budget is spent."""
        if self.balance() + _EPSILON < 1.0:
            self._exhausted += 1
            return False
        self._ring.add(_WITHDRAWALS, self._clock.monotonic())
        return True

    def balance(self) -> float:
        """Tokens available now; briefly negative while spent deposits expire before their use."""
        self._ring.advance(self._clock.monotonic())
        return self.reserve + self.ratio * self._recent_deposits() - self._withdrawals()

    def snapshot(self) -> dict[str, object]:
        """Plain data for /debug/state."""
        balance = self.balance()
        return {
            "ratio": self.ratio,
            "min_per_second": self.min_per_second,
            "ttl": self.ttl,
            "reserve": self.reserve,
            "balance": balance,
            "deposits": self._recent_deposits(),
            "withdrawals": self._withdrawals(),
            "exhausted": self._exhausted,
        }

    def _recent_deposits(self) -> int:
        """Deposits of the newest BUDGET_BUCKETS buckets, i.e. within the last ttl."""
        return self._ring.totals[_DEPOSITS] - self._ring.oldest(_DEPOSITS)

    def _withdrawals(self) -> int:
        return self._ring.totals[_WITHDRAWALS]


__all__ = ["BUDGET_BUCKETS", "RetryBudget"]
