"""A circuit breaker per upstream: stop calling an upstream whose recent calls mostly fail.

resilience4j's TIME_BASED breaker, adapted: the failure rate over a sliding time window
opens it, a timer moves it to half-open, and a fixed number of probes decide between
closing and re-opening.

No locks: every method runs to completion on the one asyncio event loop without awaiting,
so no other task can observe a half-made state change.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from intact.clock import SYSTEM_CLOCK, Clock
from intact.config import BreakerConfig
from intact.resilience.window import BucketRing

# The window is split into this many time buckets: memory stays bounded whatever the call
# rate, and a call leaves the window between window*(1 - 1/20) and window after it happened.
WINDOW_BUCKETS = 20


class BreakerState(enum.IntEnum):
    """Breaker states; the values are the encoding of the state metric."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CallOutcome(enum.Enum):
    """What a call says about upstream health; IGNORED (429, final 4xx, cancel) says nothing."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


TransitionCallback = Callable[[str, BreakerState, BreakerState], None]

_CALLS, _FAILURES = 0, 1


class _OutcomeWindow:
    """Calls and failures over the breaker's sliding time window."""

    __slots__ = ("_ring",)

    def __init__(self, window: float, now: float) -> None:
        self._ring = BucketRing(
            span=window, buckets=WINDOW_BUCKETS, ring=WINDOW_BUCKETS, series=2, now=now
        )

    @property
    def calls(self) -> int:
        return self._ring.totals[_CALLS]

    @property
    def failures(self) -> int:
        return self._ring.totals[_FAILURES]

    def advance(self, now: float) -> None:
        self._ring.advance(now)

    def record(self, now: float, failed: bool) -> None:
        self._ring.add(_CALLS, now)
        if failed:
            self._ring.add(_FAILURES, now)

    def convert_to_failure(self, now: float, judged_at: float, window: float) -> None:
        """A call recorded as a success turned out to fail: one call, one failure. If the
        success has already slid out of the window, the failure counts as a new call."""
        if now - judged_at < window * (1 - 1 / WINDOW_BUCKETS):
            self._ring.add(_FAILURES, now)
        else:
            self.record(now, failed=True)

    def failure_rate(self) -> float:
        calls = self.calls
        return min(1.0, self.failures / calls) if calls else 0.0


class BreakerPermit:
    """Leave to make one call; report its outcome exactly once (later reports are no-ops)."""

    __slots__ = ("_breaker", "_done", "_generation", "_judged_at", "_late", "_probe", "_succeeded")

    def __init__(self, breaker: CircuitBreaker, generation: int, probe: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._probe = probe
        self._done = False
        self._succeeded = False
        self._judged_at = 0.0
        self._late = False

    @property
    def probe(self) -> bool:
        """Whether this is a half-open probe call."""
        return self._probe

    def record(self, outcome: CallOutcome) -> None:
        """Report the call's outcome; only the first report counts."""
        if self._done:
            return
        self._done = True
        self._succeeded = outcome is CallOutcome.SUCCESS
        self._judged_at = self._breaker._clock.monotonic()
        self._breaker._on_outcome(self._generation, self._probe, outcome)

    def record_late_failure(self) -> None:
        """The call was judged a success (a stream that started) but broke afterwards.

        Streams are judged when their first chunk arrives: judging them at their end would
        let fast failures outrun slow successes and open the breaker on a cold start. A
        later mid-stream drop turns that provisional success into a failure (one call, one
        failure; for a probe, a failed probe), so an upstream that breaks 90% of its streams
        has a failure rate of 0.9. Only once, and only after a SUCCESS.
        """
        if not self._succeeded or self._late:
            return
        self._late = True
        self._breaker._on_late_failure(self._generation, self._probe, self._judged_at)

    def release(self) -> None:
        """Give the permit back without judging the upstream (IGNORED unless recorded)."""
        self.record(CallOutcome.IGNORED)


class CircuitBreaker:
    """One upstream's breaker: CLOSED -> OPEN -> HALF_OPEN -> CLOSED or OPEN.

    Single event loop only: no method awaits, so no locks are needed (or taken).
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        # Bumped on every transition; a permit from an older generation reports into a
        # state that no longer exists and is ignored.
        self._generation = 0
        self._transitions = 0
        self._window = _OutcomeWindow(config.window, clock.monotonic())
        self._opened_at = 0.0
        self._probes_granted = 0  # half-open slots taken (in flight or succeeded)
        self._probes_succeeded = 0

    @property
    def state(self) -> BreakerState:
        """The current state; reading it moves OPEN to HALF_OPEN once open_duration passed."""
        if (
            self._state is BreakerState.OPEN
            and self._clock.monotonic() - self._opened_at >= self.config.open_duration
        ):
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def try_acquire(self) -> BreakerPermit | None:
        """A permit to call the upstream, or None when OPEN or every probe slot is taken."""
        state = self.state
        if state is BreakerState.CLOSED:
            return BreakerPermit(self, self._generation, probe=False)
        if state is BreakerState.HALF_OPEN and self._probes_granted < self.config.half_open_probes:
            self._probes_granted += 1
            return BreakerPermit(self, self._generation, probe=True)
        return None

    def retry_after(self) -> float:
        """Seconds until half-open probes are allowed; 0 when not OPEN."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        remaining = self._opened_at + self.config.open_duration - self._clock.monotonic()
        return max(0.0, remaining)

    def snapshot(self) -> dict[str, object]:
        """Plain data for /debug/state."""
        state = self.state
        self._window.advance(self._clock.monotonic())
        half_open = state is BreakerState.HALF_OPEN
        return {
            "name": self.name,
            "state": state.name,
            "failure_rate": self._window.failure_rate(),
            "calls": self._window.calls,
            "failures": self._window.failures,
            "open_remaining": self.retry_after(),
            "probes_in_flight": self._probes_granted - self._probes_succeeded if half_open else 0,
            "probes_succeeded": self._probes_succeeded if half_open else 0,
            "transitions": self._transitions,
        }

    def _on_outcome(self, generation: int, probe: bool, outcome: CallOutcome) -> None:
        # Permits are only granted in CLOSED and HALF_OPEN, so a current-generation permit
        # always reports into the state that granted it.
        if generation != self._generation:
            return
        if probe:
            self._on_probe_outcome(outcome)
            return
        if outcome is CallOutcome.IGNORED:
            return
        self._window.record(self._clock.monotonic(), failed=outcome is CallOutcome.FAILURE)
        self._check_threshold()

    def _check_threshold(self) -> None:
        window = self._window
        if (
            window.calls >= self.config.minimum_calls
            and window.failure_rate() >= self.config.failure_rate_threshold
        ):
            self._transition(BreakerState.OPEN)

    def _on_late_failure(self, generation: int, probe: bool, judged_at: float) -> None:
        if probe:
            # A probe that already closed the breaker belongs to an older generation.
            if generation == self._generation:
                self._transition(BreakerState.OPEN)
            return
        if self._state is not BreakerState.CLOSED or generation != self._generation:
            return
        self._window.convert_to_failure(self._clock.monotonic(), judged_at, self.config.window)
        self._check_threshold()

    def _on_probe_outcome(self, outcome: CallOutcome) -> None:
        if outcome is CallOutcome.FAILURE:
            self._transition(BreakerState.OPEN)
        elif outcome is CallOutcome.IGNORED:
            self._probes_granted -= 1  # the probe said nothing; let another one through
        else:
            self._probes_succeeded += 1
            if self._probes_succeeded >= self.config.half_open_probes:
                self._transition(BreakerState.CLOSED)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        now = self._clock.monotonic()
        self._state = new
        self._generation += 1
        self._transitions += 1
        self._probes_granted = self._probes_succeeded = 0
        if new is BreakerState.OPEN:
            self._opened_at = now
        elif new is BreakerState.CLOSED:
            self._window = _OutcomeWindow(self.config.window, now)
        # Last, so the callback sees the finished state (and may read it).
        if self._on_transition is not None:
            self._on_transition(self.name, old, new)


__all__ = [
    "WINDOW_BUCKETS",
    "BreakerPermit",
    "BreakerState",
    "CallOutcome",
    "CircuitBreaker",
    "TransitionCallback",
]
