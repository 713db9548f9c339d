"""The shared 429 pacing of one upstream."""

from __future__ import annotations

import random

from intact.resilience.rate_limit import RateLimitGate


def test_spacing_doubles_per_429_and_calls_are_let_out_one_per_step() -> None:
    gate = RateLimitGate(base_delay=1.0, max_delay=30.0)
    rng = random.Random(1)
    for _ in range(3):
        gate.rate_limited(0.0, None, rng)
    assert gate.paced and 4.0 <= gate.peek(0.0) <= 6.0  # 1·2² plus up to 50% jitter
    first = gate.reserve(0.0)
    second = gate.reserve(0.0)
    assert second - first >= 4.0  # the next caller waits a whole step more


def test_the_first_success_ends_the_pacing_but_not_a_named_wait() -> None:
    gate = RateLimitGate(base_delay=1.0, max_delay=30.0)
    rng = random.Random(2)
    for _ in range(10):
        gate.rate_limited(0.0, None, rng)
        gate.reserve(0.0)  # callers queued far into the future
    gate.succeeded()
    assert not gate.paced and gate.peek(0.0) == 0.0 and gate.reserve(0.0) == 0.0
    gate.pushed_back(0.0, 5.0)  # a 503 with Retry-After: 5
    gate.succeeded()
    assert gate.peek(0.0) == 5.0


def test_a_named_wait_sets_the_step() -> None:
    gate = RateLimitGate(base_delay=1.0, max_delay=30.0)
    gate.rate_limited(10.0, 2.0, random.Random(3))
    assert gate.peek(10.0) == 2.0
