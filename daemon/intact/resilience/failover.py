"""Which upstream gets a request's next attempt, and how long to wait before it.

Per request: stick to the upstream that just failed for its share of ``max_attempts``, then
move on in priority order, except after a first-token timeout, which moves on at once (a
silent upstream is not worth a second wait when another can answer); never pick an upstream
whose breaker is open; resume on the upstream that produced the partial answer unless
``recovery.resume_across_upstreams``. The wait before an attempt is the upstream's shared
pacing (after 429s and Retry-After, ``resilience.rate_limit``) and, after a failure of the
same upstream that named no wait, this request's backoff; failing over to another upstream
does not wait for the first one's backoff.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from intact.resilience.backoff import BackoffPolicy, BackoffSchedule
from intact.resilience.breaker import BreakerState, CircuitBreaker
from intact.resilience.classify import FailureKind, UpstreamFailure
from intact.resilience.rate_limit import RateLimitGate


class Candidate(Protocol):
    """What failover needs to know of an upstream."""

    @property
    def name(self) -> str: ...

    @property
    def breaker(self) -> CircuitBreaker: ...

    @property
    def backoff(self) -> BackoffPolicy: ...

    @property
    def rate_limit(self) -> RateLimitGate: ...

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

    @property
    def share(self) -> int:
        """Attempts an upstream gets before the request moves on."""
        return max(1, self.max_attempts // len(self.ups))

    def attempted(self, up: U) -> None:
        self.attempts[up.name] += 1

    def failed(self, up: U, failure: UpstreamFailure, now: float) -> None:
        self.last_upstream = up
        self.last_failure = failure
        if failure.kind is FailureKind.HTTP_429:
            up.rate_limit.rate_limited(now, failure.pushback, self.rng)
        elif failure.pushback is not None:
            up.rate_limit.pushed_back(now, failure.pushback)

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
            silent = (
                self.last_failure is not None
                and self.last_failure.kind is FailureKind.FIRST_TOKEN_TIMEOUT
            )
            if silent or self.attempts[current.name] >= self.share:
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
        """Seconds to wait before the next attempt on ``up`` (its pacing slot is taken by
        the caller once the attempt is certain); None if that is longer than the
        upstream's ``max_retry_after``."""
        paced = up.rate_limit.peek(now)
        if paced > up.max_retry_after:
            return None
        failure = self.last_failure
        if self.last_upstream is not up or failure is None:
            return paced
        if failure.kind is FailureKind.HTTP_429 or failure.pushback is not None:
            return paced  # the pacing already is this failure's backoff
        schedule = self._schedules.get(up.name)
        if schedule is None:
            schedule = up.backoff.schedule(self.rng)
            self._schedules[up.name] = schedule
        return max(paced, schedule.next_delay())
