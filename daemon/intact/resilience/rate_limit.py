"""Pacing of calls to an upstream that is rate limiting us, shared by every request.

Per-request backoff cannot protect a rate-limited provider: each request backs off on its
own clock, and together they keep hammering. Instead, consecutive 429s from one upstream set
one spacing for every request to it, growing from ``retry.rate_limit_base_delay`` (doubling
per 429, plus up to 50% jitter, at most ``retry.rate_limit_max_delay``) unless the provider
names its own wait (Retry-After and friends). While the spacing is set, calls to the upstream
are let out one per spacing, in order of arrival; its first success clears it.
"""

from __future__ import annotations

import random

from intact.config import RetryConfig


class RateLimitGate:
    """One upstream's call pacing after 429s and provider push-back."""

    __slots__ = ("_base", "_cap", "_hold", "_next", "_spacing", "consecutive")

    def __init__(self, base_delay: float, max_delay: float) -> None:
        self._base = base_delay
        self._cap = max_delay
        self._next = 0.0  # loop time of the next call let out while paced
        self._hold = 0.0  # no call before this loop time (a provider's own Retry-After)
        self._spacing = 0.0  # seconds between calls while paced
        self.consecutive = 0  # 429s in a row

    @classmethod
    def from_config(cls, retry: RetryConfig) -> RateLimitGate:
        return cls(retry.rate_limit_base_delay, retry.rate_limit_max_delay)

    @property
    def paced(self) -> bool:
        return self._spacing > 0

    def peek(self, now: float) -> float:
        """Seconds until a call would be let out, without taking the slot."""
        return max(0.0, max(self._next, self._hold) - now)

    def reserve(self, now: float) -> float:
        """Take the next call slot (only when the call will be made); return the seconds
        to wait for it (0 when neither paced nor held)."""
        slot = max(now, self._next, self._hold)
        if self._spacing:
            self._next = slot + self._spacing
        return slot - now

    def rate_limited(self, now: float, pushback: float | None, rng: random.Random) -> None:
        """A 429 (``pushback``: the wait it named, if any)."""
        self.consecutive += 1
        if pushback is not None:
            step = pushback
            self._hold = max(self._hold, now + pushback)
        else:
            step = min(self._cap, self._base * 2 ** min(self.consecutive - 1, 30))
            step = min(self._cap, step * (1 + 0.5 * rng.random()))
        self._spacing = step
        self._next = max(self._next, now + step)

    def pushed_back(self, now: float, seconds: float) -> None:
        """A provider asked every caller to wait (e.g. 503 with Retry-After)."""
        self._hold = max(self._hold, now + seconds)

    def succeeded(self) -> None:
        """The upstream served a call: pacing ends (a provider's own wait still holds)."""
        self.consecutive = 0
        self._spacing = 0.0
        self._next = 0.0
