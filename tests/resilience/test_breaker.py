"""Circuit breaker: opening on failure rate, open period, half-open probes, epochs, window."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from intact.clock import FakeClock
from intact.config import BreakerConfig
from intact.resilience.breaker import (
    WINDOW_BUCKETS,
    BreakerPermit,
    BreakerState,
    CallOutcome,
    CircuitBreaker,
)

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
Transition = tuple[str, BreakerState, BreakerState]


def make(clock: FakeClock, **overrides: float) -> tuple[CircuitBreaker, list[Transition]]:
    settings_ = {
        "failure_rate_threshold": 0.5,
        "minimum_calls": 4,
        "window": 10.0,
        "open_duration": 5.0,
        "half_open_probes": 2,
        **overrides,
    }
    cfg = BreakerConfig(**settings_)  # type: ignore[arg-type]
    log: list[Transition] = []
    breaker = CircuitBreaker("up", cfg, clock=clock, on_transition=lambda *t: log.append(t))
    return breaker, log


def call(breaker: CircuitBreaker, outcome: CallOutcome) -> None:
    permit = breaker.try_acquire()
    assert permit is not None
    permit.record(outcome)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.minimum_calls):
        call(breaker, CallOutcome.FAILURE)
    assert breaker.state is OPEN


def test_stays_closed_below_minimum_calls_even_when_all_fail() -> None:
    breaker, _ = make(FakeClock())
    for _ in range(3):
        call(breaker, CallOutcome.FAILURE)
    assert breaker.state is CLOSED


def test_opens_when_failure_rate_reaches_threshold_at_minimum_calls() -> None:
    breaker, log = make(FakeClock())
    for outcome in (CallOutcome.SUCCESS, CallOutcome.FAILURE, CallOutcome.SUCCESS):
        call(breaker, outcome)
    assert breaker.state is CLOSED
    call(breaker, CallOutcome.FAILURE)  # 2 of 4 = 0.5 >= threshold
    assert breaker.state is OPEN
    assert log == [("up", CLOSED, OPEN)]


def test_a_success_that_completes_minimum_calls_can_open_it() -> None:
    breaker, _ = make(FakeClock())
    for _ in range(3):
        call(breaker, CallOutcome.FAILURE)
    call(breaker, CallOutcome.SUCCESS)  # 3 of 4 failed
    assert breaker.state is OPEN


def test_stays_closed_below_threshold() -> None:
    breaker, _ = make(FakeClock())
    for outcome in [CallOutcome.SUCCESS, CallOutcome.SUCCESS, CallOutcome.FAILURE] * 10:
        call(breaker, outcome)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["failure_rate"] == 1 / 3


def test_ignored_outcomes_never_open_it() -> None:
    breaker, _ = make(FakeClock(), minimum_calls=1)
    for _ in range(100):
        call(breaker, CallOutcome.IGNORED)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["calls"] == 0


def test_open_rejects_every_call_and_says_how_long() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    trip(breaker)
    clock.advance(2.0)
    assert all(breaker.try_acquire() is None for _ in range(50))
    assert breaker.retry_after() == 3.0


def test_moves_to_half_open_after_open_duration() -> None:
    clock = FakeClock()
    breaker, log = make(clock)
    trip(breaker)
    clock.advance(4.999)
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN
    assert breaker.retry_after() == 0.0
    assert log == [("up", CLOSED, OPEN), ("up", OPEN, HALF_OPEN)]


def half_open(clock: FakeClock, **overrides: float) -> tuple[CircuitBreaker, list[Transition]]:
    breaker, log = make(clock, **overrides)
    trip(breaker)
    clock.advance(breaker.config.open_duration)
    assert breaker.state is HALF_OPEN
    return breaker, log


def test_half_open_grants_exactly_half_open_probes_permits() -> None:
    breaker, _ = half_open(FakeClock(), half_open_probes=3)
    probes = [breaker.try_acquire() for _ in range(10)]
    assert sum(p is not None for p in probes) == 3
    assert probes[3:] == [None] * 7
    assert breaker.snapshot()["probes_in_flight"] == 3


def test_closes_with_a_fresh_window_after_all_probes_succeed() -> None:
    breaker, log = half_open(FakeClock())
    first, second = breaker.try_acquire(), breaker.try_acquire()
    assert first is not None
    assert second is not None
    first.record(CallOutcome.SUCCESS)
    assert breaker.state is HALF_OPEN
    assert breaker.try_acquire() is None  # a succeeded probe keeps its slot
    second.record(CallOutcome.SUCCESS)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["calls"] == 0
    assert log[-1] == ("up", HALF_OPEN, CLOSED)


def test_one_probe_failure_reopens_for_a_new_open_period() -> None:
    clock = FakeClock()
    breaker, log = half_open(clock)
    first, second = breaker.try_acquire(), breaker.try_acquire()
    assert first is not None
    assert second is not None
    first.record(CallOutcome.SUCCESS)
    second.record(CallOutcome.FAILURE)
    assert breaker.state is OPEN
    assert breaker.retry_after() == 5.0
    assert log[-1] == ("up", HALF_OPEN, OPEN)


def test_ignored_probe_frees_its_slot() -> None:
    breaker, _ = half_open(FakeClock(), half_open_probes=1)
    probe = breaker.try_acquire()
    assert probe is not None
    assert breaker.try_acquire() is None
    probe.release()
    assert breaker.state is HALF_OPEN
    assert breaker.try_acquire() is not None


def test_outcome_is_recorded_exactly_once() -> None:
    breaker, _ = half_open(FakeClock(), half_open_probes=2)
    probe = breaker.try_acquire()
    assert probe is not None
    probe.record(CallOutcome.SUCCESS)
    probe.record(CallOutcome.FAILURE)  # no-op
    probe.release()  # no-op: does not free the succeeded slot
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot()["probes_succeeded"] == 1
    assert breaker.try_acquire() is not None
    assert breaker.try_acquire() is None


def test_window_slides_so_old_failures_expire() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, window=10.0)
    for _ in range(3):
        call(breaker, CallOutcome.FAILURE)
    clock.advance(10.0)
    call(breaker, CallOutcome.FAILURE)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["calls"] == 1


def test_window_keeps_calls_younger_than_window_minus_one_bucket() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, window=10.0)
    for _ in range(3):
        call(breaker, CallOutcome.FAILURE)
    clock.advance(10.0 * (1 - 1 / WINDOW_BUCKETS) - 0.01)
    call(breaker, CallOutcome.FAILURE)
    assert breaker.state is OPEN


def test_stale_closed_permit_does_not_affect_half_open() -> None:
    clock = FakeClock()
    breaker, log = make(clock, half_open_probes=1)
    late = breaker.try_acquire()
    assert late is not None
    trip(breaker)
    clock.advance(5.0)
    assert breaker.state is HALF_OPEN
    late.record(CallOutcome.FAILURE)
    assert breaker.state is HALF_OPEN
    assert log == [("up", CLOSED, OPEN), ("up", OPEN, HALF_OPEN)]


def test_stale_probe_from_an_earlier_half_open_period_is_ignored() -> None:
    clock = FakeClock()
    breaker, _ = half_open(clock, half_open_probes=2)
    stale, failing = breaker.try_acquire(), breaker.try_acquire()
    assert stale is not None
    assert failing is not None
    failing.record(CallOutcome.FAILURE)
    clock.advance(5.0)
    assert breaker.state is HALF_OPEN
    fresh = breaker.try_acquire()
    assert fresh is not None
    stale.record(CallOutcome.SUCCESS)
    fresh.record(CallOutcome.SUCCESS)
    assert breaker.state is HALF_OPEN  # only one of the two probes of this period succeeded


def test_stale_probe_after_closing_does_not_touch_the_new_window() -> None:
    clock = FakeClock()
    breaker, _ = half_open(clock, half_open_probes=1, minimum_calls=1)
    probe = breaker.try_acquire()
    assert probe is not None
    probe.record(CallOutcome.SUCCESS)
    assert breaker.state is CLOSED
    probe.record(CallOutcome.FAILURE)  # already recorded
    assert breaker.state is CLOSED


def test_transition_callback_sees_every_transition_once_in_order() -> None:
    clock = FakeClock()
    breaker, log = make(clock, half_open_probes=1)
    trip(breaker)
    clock.advance(5.0)
    call(breaker, CallOutcome.FAILURE)
    clock.advance(5.0)
    call(breaker, CallOutcome.SUCCESS)
    for _ in range(3):
        breaker.snapshot()
    assert log == [
        ("up", CLOSED, OPEN),
        ("up", OPEN, HALF_OPEN),
        ("up", HALF_OPEN, OPEN),
        ("up", OPEN, HALF_OPEN),
        ("up", HALF_OPEN, CLOSED),
    ]
    assert breaker.snapshot()["transitions"] == 5


def test_snapshot_reports_the_open_period() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    trip(breaker)
    clock.advance(1.5)
    assert breaker.snapshot() == {
        "name": "up",
        "state": "OPEN",
        "failure_rate": 1.0,
        "calls": 4,
        "failures": 4,
        "open_remaining": 3.5,
        "probes_in_flight": 0,
        "probes_succeeded": 0,
        "transitions": 1,
    }


def test_state_values_are_the_metric_encoding() -> None:
    assert [int(s) for s in (CLOSED, HALF_OPEN, OPEN)] == [0, 1, 2]


LEGAL_EDGES = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}
WINDOW = 10.0
WIDTH = WINDOW / WINDOW_BUCKETS


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, outcomes and time steps against invariants and a small model."""

    permits = Bundle("permits")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.log: list[Transition] = []
        self.trip_checks: list[tuple[object, object]] = []

    @initialize(
        threshold=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
        minimum_calls=st.integers(min_value=1, max_value=6),
        probes=st.integers(min_value=1, max_value=3),
    )
    def setup(self, threshold: float, minimum_calls: int, probes: int) -> None:
        cfg = BreakerConfig(
            failure_rate_threshold=threshold,
            minimum_calls=minimum_calls,
            window=WINDOW,
            open_duration=5.0,
            half_open_probes=probes,
        )
        self.breaker = CircuitBreaker("m", cfg, clock=self.clock, on_transition=self.on_transition)
        self.cfg = cfg
        # Model: epoch = transitions so far; what each permit was granted in.
        self.granted: dict[int, tuple[int, bool]] = {}
        self.recorded: set[int] = set()
        self.alive: list[BreakerPermit] = []
        self.closed_calls: list[tuple[float, bool]] = []  # current closed epoch, (time, failed)
        self.probe_slots = 0  # probes granted this half-open period, minus ignored ones
        self.probe_successes = 0

    def on_transition(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.log.append((name, old, new))
        self.probe_slots = self.probe_successes = 0
        if new is CLOSED:
            self.closed_calls = []
        if (old, new) == (CLOSED, OPEN):
            snap = self.breaker.snapshot()
            self.trip_checks.append((snap["calls"], snap["failure_rate"]))

    @property
    def epoch(self) -> int:
        return len(self.log)

    @rule(target=permits)
    def acquire(self) -> BreakerPermit | None:
        state = self.breaker.state
        permit = self.breaker.try_acquire()
        if state is OPEN:
            assert permit is None
        elif state is CLOSED:
            assert permit is not None
        elif permit is None:
            assert self.probe_slots == self.cfg.half_open_probes
        else:
            self.probe_slots += 1
        if permit is not None:
            self.alive.append(permit)  # keeps id(permit) unique for the run
            self.granted[id(permit)] = (self.epoch, state is HALF_OPEN)
        return permit

    @rule(permit=permits, outcome=st.sampled_from(list(CallOutcome)))
    def record(self, permit: BreakerPermit | None, outcome: CallOutcome) -> None:
        if permit is None:
            return
        first = id(permit) not in self.recorded
        self.recorded.add(id(permit))
        epoch, probe = self.granted[id(permit)]
        state = self.breaker.state  # may turn OPEN into HALF_OPEN first
        expected_state = state
        current = first and epoch == self.epoch
        if current and probe:
            if outcome is CallOutcome.IGNORED:
                self.probe_slots -= 1
            elif outcome is CallOutcome.FAILURE:
                expected_state = OPEN
            else:
                self.probe_successes += 1
                if self.probe_successes == self.cfg.half_open_probes:
                    expected_state = CLOSED
        elif current and outcome is not CallOutcome.IGNORED:
            self.closed_calls.append((self.clock.now, outcome is CallOutcome.FAILURE))
        permit.record(outcome)
        if current and not probe and outcome is not CallOutcome.IGNORED:
            # A judged call opens the breaker exactly when the window crosses the threshold.
            snap = self.breaker.snapshot()
            judged = (
                snap["calls"] >= self.cfg.minimum_calls  # type: ignore[operator]
                and snap["failure_rate"] >= self.cfg.failure_rate_threshold  # type: ignore[operator]
            )
            expected_state = OPEN if judged else CLOSED
        assert self.breaker.state is expected_state

    @rule(outcome=st.sampled_from([CallOutcome.SUCCESS, *CallOutcome]))  # success-leaning
    def call_and_record(self, outcome: CallOutcome) -> None:
        permit = self.acquire()
        self.record(permit, outcome)

    @rule(steps=st.integers(min_value=0, max_value=100))
    def advance(self, steps: int) -> None:
        self.clock.advance(steps / 8)  # dyadic steps keep bucket arithmetic exact

    @precondition(lambda self: self.breaker.retry_after() > 0)
    @rule()
    def wait_out_open_period(self) -> None:
        self.clock.advance(self.breaker.retry_after())

    @invariant()
    def transitions_follow_legal_edges(self) -> None:
        for _, old, new in self.log:
            assert (old, new) in LEGAL_EDGES
        for (_, _, new), (_, old, _) in zip(self.log, self.log[1:], strict=False):
            assert new == old

    @invariant()
    def breaker_only_opened_at_the_threshold(self) -> None:
        for calls, rate in self.trip_checks:
            assert calls >= self.cfg.minimum_calls  # type: ignore[operator]
            assert rate >= self.cfg.failure_rate_threshold  # type: ignore[operator]

    @invariant()
    def probes_never_exceed_the_limit(self) -> None:
        snap = self.breaker.snapshot()
        assert snap["transitions"] == len(self.log)
        if self.log:
            assert self.log[-1][2] is self.breaker.state
        if self.breaker.state is HALF_OPEN:
            granted = snap["probes_in_flight"] + snap["probes_succeeded"]  # type: ignore[operator]
            assert granted == self.probe_slots <= self.cfg.half_open_probes

    @invariant()
    def window_counts_recent_calls(self) -> None:
        if self.breaker.state is not CLOSED:
            return
        snap = self.breaker.snapshot()
        now = self.clock.now
        surely_in = [f for t, f in self.closed_calls if t > now - WINDOW + WIDTH]
        maybe_in = [f for t, f in self.closed_calls if t > now - WINDOW]
        assert len(surely_in) <= snap["calls"] <= len(maybe_in)  # type: ignore[operator]
        assert sum(surely_in) <= snap["failures"] <= sum(maybe_in)  # type: ignore[operator]

    @invariant()
    def open_rejects_everything(self) -> None:
        if self.breaker.state is OPEN:
            assert self.breaker.try_acquire() is None
            assert self.breaker.retry_after() > 0


BreakerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_breaker_state_machine = BreakerMachine.TestCase


def test_late_failure_turns_the_provisional_success_into_a_failure() -> None:
    breaker, _ = make(FakeClock())
    permit = breaker.try_acquire()
    assert permit is not None
    permit.record(CallOutcome.SUCCESS)
    permit.record_late_failure()
    permit.record_late_failure()  # only once
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == (1, 1)


def test_late_failure_after_the_success_left_the_window_counts_as_a_new_call() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    permit = breaker.try_acquire()
    assert permit is not None
    permit.record(CallOutcome.SUCCESS)
    clock.advance(breaker.config.window * 2)
    permit.record_late_failure()
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == (1, 1)


def test_an_upstream_that_breaks_90_percent_of_streams_mid_way_opens_the_breaker() -> None:
    """Regression: each mid-stream drop used to count as 1 success + 1 failure (rate 0.47)."""
    clock = FakeClock()
    breaker, log = make(clock, minimum_calls=100, failure_rate_threshold=0.5)
    for i in range(100):
        permit = breaker.try_acquire()
        if permit is None:
            break
        permit.record(CallOutcome.SUCCESS)  # the first chunk arrived
        if i % 10:
            permit.record_late_failure()  # ...then the stream broke
        clock.advance(0.01)
    assert breaker.state is OPEN
    assert log[-1] == ("up", CLOSED, OPEN)


def test_late_failure_without_a_success_is_ignored() -> None:
    breaker, _ = make(FakeClock())
    for outcome in (CallOutcome.FAILURE, CallOutcome.IGNORED):
        permit = breaker.try_acquire()
        assert permit is not None
        permit.record(outcome)
        permit.record_late_failure()
    snap = breaker.snapshot()
    assert (snap["calls"], snap["failures"]) == (1, 1)


def test_probe_that_breaks_after_its_first_chunk_reopens() -> None:
    clock = FakeClock()
    breaker, log = make(clock)
    trip(breaker)
    clock.advance(5.0)
    assert breaker.state is HALF_OPEN
    probe = breaker.try_acquire()
    assert probe is not None and probe.probe
    probe.record(CallOutcome.SUCCESS)
    probe.record_late_failure()
    assert breaker.state is OPEN
    assert log[-1] == ("up", HALF_OPEN, OPEN)


def test_late_failure_of_a_probe_that_already_closed_the_breaker_is_ignored() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, half_open_probes=1)
    trip(breaker)
    clock.advance(5.0)
    probe = breaker.try_acquire()
    assert probe is not None
    probe.record(CallOutcome.SUCCESS)
    assert breaker.state is CLOSED
    probe.record_late_failure()
    assert breaker.state is CLOSED
    assert breaker.snapshot()["failures"] == 0
