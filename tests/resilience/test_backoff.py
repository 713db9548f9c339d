"""Backoff policies: growth sequences, jitter bounds, and the [0, max_delay] guarantee."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intact.config import RetryConfig
from intact.resilience.backoff import (
    BackoffPolicy,
    DecorrelatedJitter,
    EqualJitter,
    ExponentialGrowth,
    FibonacciGrowth,
    FullJitter,
    LinearGrowth,
    NoJitter,
)

BACKOFFS = ("exponential", "linear", "fibonacci")
JITTERS = ("full", "equal", "decorrelated", "none")


def test_exponential_growth_doubles_from_base() -> None:
    assert [ExponentialGrowth(0.25)(n) for n in range(5)] == [0.25, 0.5, 1.0, 2.0, 4.0]


def test_linear_growth_adds_base_per_retry() -> None:
    assert [LinearGrowth(0.5)(n) for n in range(4)] == [0.5, 1.0, 1.5, 2.0]


def test_fibonacci_growth_follows_fib_from_one_one() -> None:
    assert [FibonacciGrowth(1.0)(n) for n in range(8)] == [1, 1, 2, 3, 5, 8, 13, 21]
    assert FibonacciGrowth(0.1)(4) == pytest.approx(0.5)


@pytest.mark.parametrize("growth", [ExponentialGrowth, LinearGrowth, FibonacciGrowth])
@pytest.mark.parametrize("retry", [1_000, 10_000, 10**12, 10**400])
def test_growth_saturates_instead_of_overflowing(growth: type, retry: int) -> None:
    value = growth(0.25)(retry)
    assert isinstance(value, float)
    assert value >= growth(0.25)(100)  # saturates upwards, never NaN
    assert growth(0.0)(retry) == 0.0


def test_growth_returns_floats_even_for_int_base() -> None:
    assert all(
        isinstance(g(1)(3), float) for g in (ExponentialGrowth, LinearGrowth, FibonacciGrowth)
    )


def test_full_jitter_stays_within_zero_and_ceiling() -> None:
    rng = random.Random(1)
    draws = [FullJitter()(4.0, 0.0, rng) for _ in range(2_000)]
    assert min(draws) >= 0.0
    assert max(draws) <= 4.0
    assert min(draws) < 0.1
    assert max(draws) > 3.9


def test_equal_jitter_stays_within_half_ceiling_and_ceiling() -> None:
    rng = random.Random(2)
    draws = [EqualJitter()(4.0, 0.0, rng) for _ in range(2_000)]
    assert min(draws) >= 2.0
    assert max(draws) <= 4.0


def test_decorrelated_jitter_grows_from_previous_within_base_and_cap() -> None:
    rng = random.Random(3)
    jitter = DecorrelatedJitter(base=0.5, cap=8.0)
    draws = [jitter(0.0, 2.0, rng) for _ in range(2_000)]
    assert min(draws) >= 0.5
    assert max(draws) <= 6.0  # 3 * previous
    assert max(jitter(0.0, 100.0, rng) for _ in range(100)) == 8.0


def test_no_jitter_returns_the_ceiling() -> None:
    assert NoJitter()(3.5, 1.0, random.Random(0)) == 3.5


def test_default_config_is_exponential_full_jitter_capped_at_max_delay() -> None:
    policy = BackoffPolicy.from_config(RetryConfig())
    assert policy == BackoffPolicy(
        growth=ExponentialGrowth(0.25), jitter=FullJitter(), max_delay=8.0
    )
    assert [policy.ceiling(n) for n in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


@pytest.mark.parametrize(
    ("backoff", "jitter", "expected"),
    [
        ("linear", "equal", BackoffPolicy(LinearGrowth(0.25), EqualJitter(), 8.0)),
        ("fibonacci", "none", BackoffPolicy(FibonacciGrowth(0.25), NoJitter(), 8.0)),
        (
            "exponential",
            "decorrelated",
            BackoffPolicy(ExponentialGrowth(0.25), DecorrelatedJitter(0.25, 8.0), 8.0),
        ),
    ],
)
def test_from_config_maps_backoff_and_jitter(
    backoff: str, jitter: str, expected: BackoffPolicy
) -> None:
    cfg = RetryConfig(backoff=backoff, jitter=jitter)  # type: ignore[arg-type]
    assert BackoffPolicy.from_config(cfg) == expected


def test_from_config_names_an_unknown_strategy() -> None:
    with pytest.raises(ValueError, match=r"retry\.backoff = 'cubic'"):
        BackoffPolicy.from_config(RetryConfig(backoff="cubic"))  # type: ignore[arg-type]


def test_no_jitter_schedule_walks_the_capped_growth() -> None:
    policy = BackoffPolicy.from_config(RetryConfig(jitter="none", base_delay=1.0, max_delay=5.0))
    schedule = policy.schedule(random.Random(0))
    assert [schedule.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert schedule.retries == 5


def test_schedules_of_one_policy_are_independent() -> None:
    policy = BackoffPolicy.from_config(RetryConfig(jitter="none"))
    first = policy.schedule(random.Random(0))
    first.next_delay()
    first.next_delay()
    assert policy.schedule(random.Random(0)).next_delay() == 0.25


@pytest.mark.parametrize("retry", [0, 1, 3, 5, 8])
def test_full_jitter_is_uniform_below_capped_exponential(retry: int) -> None:
    cfg = RetryConfig()
    upper = min(cfg.max_delay, cfg.base_delay * 2**retry)
    rng = random.Random(42)
    draws = []
    for _ in range(2_000):
        schedule = BackoffPolicy.from_config(cfg).schedule(rng)
        for _ in range(retry):
            schedule.next_delay()
        draws.append(schedule.next_delay())
    assert min(draws) >= 0.0
    assert max(draws) <= upper
    assert max(draws) > 0.95 * upper
    assert statistics.mean(draws) == pytest.approx(upper / 2, rel=0.05)


def test_decorrelated_schedule_starts_between_base_and_three_base() -> None:
    cfg = RetryConfig(jitter="decorrelated", base_delay=1.0, max_delay=100.0)
    rng = random.Random(7)
    firsts = [BackoffPolicy.from_config(cfg).schedule(rng).next_delay() for _ in range(500)]
    assert min(firsts) >= 1.0
    assert max(firsts) <= 3.0


delays = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    base_delay=delays,
    max_delay=delays,
    backoff=st.sampled_from(BACKOFFS),
    jitter=st.sampled_from(JITTERS),
    retries=st.integers(min_value=1, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_every_delay_is_within_zero_and_max_delay(
    base_delay: float, max_delay: float, backoff: str, jitter: str, retries: int, seed: int
) -> None:
    cfg = RetryConfig(
        base_delay=base_delay,
        max_delay=max_delay,
        backoff=backoff,  # type: ignore[arg-type]
        jitter=jitter,  # type: ignore[arg-type]
    )
    schedule = BackoffPolicy.from_config(cfg).schedule(random.Random(seed))
    for _ in range(retries):
        assert 0.0 <= schedule.next_delay() <= max_delay


@given(
    retry=st.integers(min_value=0, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_full_jitter_never_exceeds_capped_exponential(retry: int, seed: int) -> None:
    cfg = RetryConfig()
    policy = BackoffPolicy.from_config(cfg)
    delay = policy.jitter(policy.ceiling(retry), 0.0, random.Random(seed))
    assert 0.0 <= delay <= min(cfg.max_delay, cfg.base_delay * 2.0 ** min(retry, 64))


@given(
    base=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=100.0),
    retries=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_decorrelated_stays_within_cap_and_at_least_base(
    base: float, cap: float, retries: int, seed: int
) -> None:
    cfg = RetryConfig(jitter="decorrelated", base_delay=base, max_delay=cap)
    schedule = BackoffPolicy.from_config(cfg).schedule(random.Random(seed))
    for _ in range(retries):
        delay = schedule.next_delay()
        assert 0.0 <= delay <= cap
        if base <= cap:
            assert delay >= base
