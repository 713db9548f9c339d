"""Which upstream gets a request's next attempt, and how long to wait before it.

Per request: stick to the upstream that just failed for its share of ``max_attempts``, then
move on in priority order; never pick an upstream whose breaker is open; resume on the
upstream that produced the partial answer unless ``recovery.resume_across_upstreams``. The
wait before an attempt is what the upstream asked for (Retry-After and friends) if it asked,
else backoff after its own failure, else nothing (failing over to another upstream does not
wait for the first one's backoff).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from intact.resilience.backoff import BackoffPolicy, BackoffSchedule
from intact.resilience.breaker import BreakerState, CircuitBreaker
from intact.resilience.classify import UpstreamFailure


class Candidate(Protocol):
    """What failover needs to know of an upstream."""

    @property
    def name(self) -> str: ...

    @property
    def breaker(self) -> CircuitBreaker: ...

    @property
    def backoff(self) -> BackoffPolicy: ...

    @property
    def max_retry_after(self) -> float: ...


U = TypeVar("U", bound=Candidate)


@dataclass
class FailoverPlan(Generic[U]):
    """One request's route through its upstreams (``ups`` in priority order)."""

    ups: Sequence[U]
    max_attempts: int
    rng: random.Random
    attempts: Counter[str] = field(default_factory=Counter)
    last_upstream: U | None = None
    last_failure: UpstreamFailure | None = None
    content_upstream: U | None = None  # the upstream whose text the app has
    _schedules: dict[str, BackoffSchedule] = field(default_factory=dict)
    _not_before: dict[str, float] = field(default_factory=dict)  # provider push-back

    @property
    def share(self) -> int:
        """Attempts an upstream gets before the request moves on."""
        return max(1, self.max_attempts // len(self.ups))

    def attempted(self, up: U) -> None:
        self.attempts[up.name] += 1

    def failed(self, up: U, failure: UpstreamFailure, now: float) -> None:
        self.last_upstream = up
        self.last_failure = failure
        if failure.pushback is not None:
            self._not_before[up.name] = now + failure.pushback

    def choose(
        self, *, resume: bool, resume_across: bool, passed_over: set[str]
    ) -> tuple[U, bool] | None:
        """The upstream for the next attempt, and whether another could be tried if this
        one has to be passed over; None when every candidate is open or passed over."""
        if resume and self.content_upstream is not None and not resume_across:
            order: Sequence[U] = [self.content_upstream]
        elif self.last_upstream is not None:
            current = self.last_upstream
            start = self.ups.index(current)
            if self.attempts[current.name] >= self.share:
                start += 1
            order = [self.ups[(start + i) % len(self.ups)] for i in range(len(self.ups))]
        else:
            order = self.ups
        usable = [
            u for u in order
            if u.name not in passed_over and u.breaker.state is not BreakerState.OPEN
        ]  # fmt: skip
        if not usable:
            return None
        return usable[0], len(usable) > 1

    def delay_before(self, up: U, now: float) -> float | None:
        """Seconds to wait before the next attempt on ``up``; None if the upstream asks
        for longer than ``max_retry_after``."""
        not_before = self._not_before.get(up.name)
        if not_before is not None:
            wait = not_before - now
            if wait > up.max_retry_after:
                return None
            if wait > 0:
                return wait
        failure = self.last_failure
        if self.last_upstream is not up or failure is None or failure.pushback is not None:
            return 0.0
        schedule = self._schedules.get(up.name)
        if schedule is None:
            schedule = up.backoff.schedule(self.rng)
            self._schedules[up.name] = schedule
        return schedule.next_delay()
