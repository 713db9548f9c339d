"""Retry budget: ratio of recent requests plus a reserve, over a sliding ttl."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intact.clock import FakeClock
from intact.config import RetryConfig
from intact.resilience.budget import BUDGET_BUCKETS, RetryBudget

# ratio * deposits is one float product; the budget allows 1e-9 of slack so that e.g.
# 0.29 * 100 (= 28.999999999999996) still buys 29 retries. Far below one whole retry.
FLOAT_SLACK = 1e-6


def withdraw_all(budget: RetryBudget, limit: int = 10_000) -> int:
    granted = 0
    while granted < limit and budget.try_withdraw():
        granted += 1
    return granted


def test_with_no_traffic_only_the_reserve_is_available() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, ttl=10.0, clock=FakeClock())
    assert budget.balance() == 10.0
    assert withdraw_all(budget) == 10
    assert budget.exhausted == 1


def test_each_refusal_is_counted() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, clock=FakeClock())
    assert [budget.try_withdraw() for _ in range(3)] == [False, False, False]
    assert budget.exhausted == 3


def test_deposits_buy_ratio_of_a_retry_each() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, clock=FakeClock())
    for _ in range(10):
        budget.deposit()
    assert withdraw_all(budget) == 2


def test_float_rounding_does_not_cost_a_whole_retry() -> None:
    budget = RetryBudget(ratio=0.29, min_per_second=0.0, clock=FakeClock())
    for _ in range(100):
        budget.deposit()
    assert withdraw_all(budget) == 29


def test_a_fractional_reserve_combines_with_deposits() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.05, ttl=10.0, clock=FakeClock())
    assert not budget.try_withdraw()  # reserve 0.5 < 1
    for _ in range(3):
        budget.deposit()
    assert withdraw_all(budget) == 1  # 0.5 + 0.6


def test_deposits_expire_after_ttl() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, ttl=10.0, clock=clock)
    for _ in range(100):
        budget.deposit()
    clock.advance(10.0)
    assert budget.balance() == 0.0
    assert not budget.try_withdraw()


def test_reserve_replenishes_once_withdrawals_leave_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, ttl=10.0, clock=clock)
    assert withdraw_all(budget) == 10
    clock.advance(10.0)
    assert budget.balance() <= 0.0  # withdrawals are remembered for at least ttl
    clock.advance(10.0 / BUDGET_BUCKETS)
    assert withdraw_all(budget) == 10


def test_deposits_fund_retries_made_later_within_ttl() -> None:
    # Why the bound is per trailing window of each decision, not per arbitrary window:
    # the window [5 s, 15 s] holds these 20 retries but none of the deposits that paid.
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, ttl=10.0, clock=clock)
    for _ in range(100):
        budget.deposit()
    clock.advance(5.0)
    assert withdraw_all(budget) == 20


def test_from_config_reads_the_budget_keys() -> None:
    cfg = RetryConfig(budget_ratio=0.5, budget_min_per_second=2.0, budget_ttl=4.0)
    budget = RetryBudget.from_config(cfg, clock=FakeClock())
    assert (budget.ratio, budget.min_per_second, budget.ttl, budget.reserve) == (0.5, 2.0, 4.0, 8.0)


def test_snapshot_reports_window_counts() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, ttl=10.0, clock=FakeClock())
    for _ in range(4):
        budget.deposit()
    withdraw_all(budget)
    assert budget.snapshot() == {
        "ratio": 0.5,
        "min_per_second": 0.0,
        "ttl": 10.0,
        "reserve": 0.0,
        "balance": 0.0,
        "deposits": 4,
        "withdrawals": 2,
        "exhausted": 1,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1, "min_per_second": 1.0}, "ratio = -0.1"),
        ({"ratio": 0.2, "min_per_second": float("nan")}, "min_per_second = nan"),
        ({"ratio": 0.2, "min_per_second": 1.0, "ttl": 0.0}, "ttl = 0.0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryBudget(**kwargs, clock=FakeClock())


operations = st.lists(
    st.one_of(
        st.just("deposit"),
        st.just("withdraw"),
        # Steps of 1/8 s keep FakeClock times exact, so the test's window edges and the
        # budget's bucket edges are computed without rounding.
        st.integers(min_value=1, max_value=120).map(lambda k: k / 8),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.29, 0.5, 1.0, 2.5]),
    min_per_second=st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0, 3.0]),
    ttl=st.integers(min_value=1, max_value=20),
    ops=operations,
)
def test_granted_withdrawals_never_exceed_the_budget(
    ratio: float, min_per_second: float, ttl: int, ops: list[str | float]
) -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=min_per_second, ttl=ttl, clock=clock)
    reserve = min_per_second * ttl
    deposits: list[float] = []
    grants: list[float] = []
    refused = 0
    for op in ops:
        if op == "deposit":
            budget.deposit()
            deposits.append(clock.now)
        elif op == "withdraw":
            if budget.try_withdraw():
                grants.append(clock.now)
            else:
                refused += 1
        else:
            assert isinstance(op, float)
            clock.advance(op)
    assert budget.exhausted == refused

    def count(times: list[float], low: float, high: float, *, closed: bool) -> int:
        return sum(1 for t in times if (low <= t if closed else low < t) and t <= high)

    for t in grants:
        # The trailing ttl window of every decision: withdrawals in [t - ttl, t] (the
        # one just granted included) against deposits in (t - ttl, t].
        spent = count(grants, t - ttl, t, closed=True)
        earned = count(deposits, t - ttl, t, closed=False)
        assert spent <= ratio * earned + reserve + FLOAT_SLACK
    for s in grants:
        # Any ttl window, wherever it starts: its withdrawals were funded by deposits made
        # in it or within one ttl before it (deposits are spent up to ttl after they are made).
        spent = count(grants, s, s + ttl, closed=True)
        earned = count(deposits, s - ttl, s + ttl, closed=False)
        assert spent <= ratio * earned + reserve + FLOAT_SLACK


@settings(max_examples=100, deadline=None)
@given(
    ratio=st.sampled_from([0.1, 0.2, 0.5, 1.0]),
    min_per_second=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    deposits=st.integers(min_value=0, max_value=200),
)
def test_a_fresh_budget_grants_every_whole_token(
    ratio: float, min_per_second: float, deposits: int
) -> None:
    budget = RetryBudget(ratio=ratio, min_per_second=min_per_second, ttl=10.0, clock=FakeClock())
    for _ in range(deposits):
        budget.deposit()
    assert withdraw_all(budget) == int(ratio * deposits + min_per_second * 10.0 + 1e-9)
