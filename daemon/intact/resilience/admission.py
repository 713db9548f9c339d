"""Admission: everything an attempt goes through between choosing an upstream and sending.

In order: the upstream's 429 pacing (a first attempt with somewhere else to go skips a paced
upstream), the backoff or the provider's own Retry-After (``FailoverPlan.delay_before``),
the request's deadline, the retry budget (a deposit per request, a withdrawal per retry),
the pacing slot and the wait, a bulkhead slot and, last, the breaker's permit: taken after
any wait, so an upstream whose breaker opened meanwhile is not called. Chat-shaped relays
(``relay.engine``) and pass-through (``relay.passthrough``) admit the same way; each turns a
``Refused`` into its own ending.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from intact.resilience.breaker import BreakerPermit
from intact.resilience.bulkhead import BulkheadSlot
from intact.resilience.failover import FailoverPlan
from intact.upstream.runtime import Target

log = structlog.get_logger("intact.relay")


class Refused(Exception):
    """An upstream cannot take the attempt now (wait too long, budget, slot, breaker)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


class Admission:
    """One request's admissions: it deposits in each upstream's retry budget once."""

    __slots__ = ("_deposited", "_now", "_sleep")

    def __init__(self, now: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
        self._now = now
        self._sleep = sleep
        self._deposited = False

    async def before_call(
        self,
        target: Target,
        plan: FailoverPlan[Target],
        *,
        first: bool,
        can_skip: bool,
        deadline: float,
        say_rate_limited: bool = True,
        budget_exhausted: Callable[[str], None] | None = None,
    ) -> None:
        """Pacing, backoff, deadline and budget, then the wait; raises Refused.
        ``say_rate_limited``: when pacing leaves no call before the deadline, refuse as a
        429 (else as the deadline)."""
        runtime = target.upstream
        name = runtime.name
        now = self._now()
        if first and can_skip and target.rate_limit.peek(now):
            # Paced after 429s: another upstream can answer now.
            raise Refused("rate_limited", f"upstream {name} is rate limiting (429)")
        wait = plan.delay_before(target, now)
        if wait is None:
            raise Refused(
                "retry_after_too_long",
                f"upstream {name} asked to wait longer than retry.max_retry_after",
            )
        if now + wait >= deadline:
            if target.rate_limit.paced and say_rate_limited:
                raise Refused(
                    "rate_limited",
                    f"upstream {name} is rate limiting (429) and no call slot is free before "
                    "the request's deadline",
                    status=429,
                    retry_after=wait,
                )
            raise Refused("deadline_exceeded", "the next attempt would pass the request deadline")
        if first:
            if not self._deposited:
                runtime.budget.deposit()
                self._deposited = True
        elif not runtime.budget.try_withdraw():
            if budget_exhausted is not None:
                budget_exhausted(name)
            log.warning("retry_budget_exhausted", upstream=name)
            raise Refused("retry_budget_exhausted", f"retry budget of upstream {name} is spent")
        # Last, the pacing slot (only for a call that will be made).
        wait = max(wait, target.rate_limit.reserve(self._now()))
        if wait > 0:
            await self._sleep(wait)


async def take_slot(target: Target) -> tuple[BulkheadSlot, BreakerPermit]:
    """A stream slot, then the breaker's permit; raises Refused."""
    runtime = target.upstream
    name = runtime.name
    slot = await runtime.bulkhead.acquire()
    if slot is None:
        raise Refused(
            "overloaded", f"upstream {name} has no free stream slot", status=503, retry_after=1.0
        )
    permit = target.breaker.try_acquire()
    if permit is None:
        slot.release()
        raise Refused(
            "upstream_unavailable",
            f"the circuit breaker of upstream {name} is open",
            status=503,
            retry_after=max(1.0, target.breaker.retry_after()),
        )
    return slot, permit
