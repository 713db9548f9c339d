"""The retry budget, end to end: when an upstream keeps failing, retries stay a bounded
fraction of traffic and the requests beyond the budget end with an explicit error."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx

from support import MESSAGES, daemon_for, fast_sim, raw_client

BODY = {"model": "sim-1", "messages": MESSAGES, "stream": True}
RATIO, MIN_PER_SECOND, TTL = 0.1, 0.1, 1.0
# A tiny budget (reserve 0.1 token, 0.1 per request); the breaker is kept out of the way.
CONFIG: dict[str, Any] = {
    "retry": {
        "max_attempts": 6,
        "budget_ratio": RATIO,
        "budget_min_per_second": MIN_PER_SECOND,
        "budget_ttl": TTL,
    },
    "breaker": {"minimum_calls": 1000},
}


def budget_for(requests: int) -> int:
    """Whole retry tokens ``requests`` app requests earn within one ttl."""
    return math.floor(MIN_PER_SECOND * TTL + RATIO * requests + 1e-9)


async def test_failing_requests_cause_at_most_their_number_plus_the_budget_upstream(
    tmp_path: Path,
) -> None:
    n = 20
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **CONFIG) as d:
        sim.schedule_faults(["connect_drop"] * 100)
        async with raw_client(d.socket_path) as client:
            responses = [await client.post("/v1/chat/completions", json=BODY) for _ in range(n)]
        seen = sim.stats.chat_requests
    assert n <= seen <= n + budget_for(n)
    assert all(r.status_code == 502 for r in responses)
    assert {r.json()["error"]["code"] for r in responses} == {"retry_budget_exhausted"}


async def test_requests_beyond_the_budget_end_with_retry_budget_exhausted(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **CONFIG) as d:
        sim.schedule_faults(["connect_drop"] * 3)
        async with raw_client(d.socket_path) as client:
            responses: list[httpx.Response] = []
            for _ in range(3):
                responses.append(await client.post("/v1/chat/completions", json=BODY))
        assert sim.stats.chat_requests == 3  # one attempt each, no retry
        assert d.relay.upstreams[0].budget.exhausted == 3
    for resp in responses:
        assert resp.status_code == 502
        error = resp.json()["error"]
        assert error["code"] == "retry_budget_exhausted"
        assert error["message"].startswith("retry budget of upstream sim0 is spent")


async def test_a_retry_within_the_budget_still_recovers_invisibly(tmp_path: Path) -> None:
    # Nine requests earn 0.1 + 0.9 = 1 whole token: the ninth's retry is allowed.
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **CONFIG) as d:
        async with raw_client(d.socket_path) as client:
            for _ in range(8):
                assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
            sim.schedule_faults(["connect_drop"])
            ninth = await client.post("/v1/chat/completions", json=BODY)
        assert sim.stats.chat_requests == 10
    assert ninth.status_code == 200
    assert ninth.text.rstrip().endswith("data: [DONE]")
