"""Routing that beats a slow or refusing provider: hedged first tokens, failover on
first-token timeouts, model routes and fallbacks, rate-limit pacing, bounded worst cases.

Two simulated upstreams on loopback; times are scaled down (a "30 s" timeout is 0.6 s here)
so each pattern runs in about a second.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import openai

from intact.config import build_config, merge_tables
from intact.resilience.worst_case import worst_cases
from intact.simulator import expected_answer
from intact.telemetry.api import NoTelemetry, RequestSummary, RequestTrace
from support import MESSAGES, daemon_for, fast_config, fast_sim, sdk, stream_chat

EXPECTED = expected_answer(MESSAGES)


class Recorder(NoTelemetry):
    """Keeps request summaries and hedge results."""

    def __init__(self) -> None:
        self.summaries: list[RequestSummary] = []
        self.hedges: list[tuple[str, bool]] = []

    def request(
        self, *, headers: Mapping[str, str], model: str, stream: bool, api: str = "chat"
    ) -> RequestTrace:
        trace = super().request(headers=headers, model=model, stream=stream, api=api)
        trace.finish = self.summaries.append  # type: ignore[method-assign]
        trace.hedge = lambda *, upstream, won: self.hedges.append((upstream, won))  # type: ignore[method-assign]
        return trace


def two(primary: Any, fallback: Any, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": "primary", "base_url": primary.base_url, "resume": "prefill", **extra},
        {"name": "fallback", "base_url": fallback.base_url, "resume": "prefill"},
    ]


async def _disconnected(sim: Any, within: float = 2.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if sim.stats.client_disconnects:
            return True
        await asyncio.sleep(0.01)
    return False


# -- hedged first tokens -------------------------------------------------------------------


async def test_a_silent_primary_is_answered_by_the_hedge_within_hedge_after(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    async with (
        fast_sim(ttft=30.0) as silent,
        fast_sim() as fallback,
        daemon_for(
            tmp_path,
            [silent, fallback],
            telemetry=rec,
            upstreams=two(silent, fallback),
            routing={"hedge_after": 0.3},
            stream={"first_token_timeout": 30.0},
        ) as d,
    ):
        started = time.monotonic()
        seen = await stream_chat(sdk(d.socket_path))
        elapsed = time.monotonic() - started
        assert await _disconnected(silent), "the losing primary must see its request cancelled"
    assert seen.error is None and seen.text == EXPECTED.content
    assert elapsed < 0.3 + 1.0, f"answered after {elapsed:.2f}s, not within hedge_after"
    assert rec.hedges == [("fallback", True)]
    (summary,) = rec.summaries
    assert summary.upstream == "fallback" and summary.attempts == 2


async def test_a_slow_primary_is_beaten_by_the_hedge_and_cancelled(tmp_path: Path) -> None:
    rec = Recorder()
    async with (
        fast_sim(ttft=2.0) as slow,  # "first token at 20 s"
        fast_sim(ttft=0.1) as fallback,
        daemon_for(
            tmp_path,
            [slow, fallback],
            telemetry=rec,
            upstreams=two(slow, fallback),
            routing={"hedge_after": 0.3},
        ) as d,
    ):
        started = time.monotonic()
        seen = await stream_chat(sdk(d.socket_path))
        elapsed = time.monotonic() - started
        assert await _disconnected(slow)
        breaker = d.relay.upstreams[0].breaker.snapshot()
    assert seen.error is None and seen.text == EXPECTED.content
    assert elapsed < 1.5
    assert rec.hedges == [("fallback", True)]
    assert breaker["failures"] == 0  # losing a race is not a failure of the primary


async def test_a_primary_that_answers_first_wins_and_the_hedge_is_cancelled(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    async with (
        fast_sim(ttft=0.5) as primary,
        fast_sim(ttft=5.0) as fallback,
        daemon_for(
            tmp_path,
            [primary, fallback],
            telemetry=rec,
            upstreams=two(primary, fallback),
            routing={"hedge_after": 0.2},
        ) as d,
    ):
        seen = await stream_chat(sdk(d.socket_path))
        assert await _disconnected(fallback)
    assert seen.error is None and seen.text == EXPECTED.content
    assert rec.hedges == [("fallback", False)]
    assert rec.summaries[0].upstream == "primary"


async def test_no_hedge_to_an_upstream_whose_breaker_is_open(tmp_path: Path) -> None:
    rec = Recorder()
    async with (
        fast_sim(ttft=0.6) as primary,
        fast_sim() as fallback,
        daemon_for(
            tmp_path,
            [primary, fallback],
            telemetry=rec,
            upstreams=two(primary, fallback),
            routing={"hedge_after": 0.1},
            breaker={"minimum_calls": 1, "failure_rate_threshold": 0.5, "open_duration": 30},
        ) as d,
    ):
        breaker = d.relay.upstreams[1].breaker
        permit = breaker.try_acquire()
        assert permit is not None
        from intact.resilience.breaker import CallOutcome

        permit.record(CallOutcome.FAILURE)
        seen = await stream_chat(sdk(d.socket_path))
        calls = fallback.stats.chat_requests
    assert seen.error is None
    assert rec.hedges == [] and calls == 0


# -- failover on first-token timeouts --------------------------------------------------------


async def test_a_first_token_timeout_fails_over_at_once_when_hedging_is_off(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim(ttft=30.0) as silent,
        fast_sim() as fallback,
        daemon_for(
            tmp_path,
            [silent, fallback],
            upstreams=two(silent, fallback),
            routing={"hedge_after": "off"},
            stream={"first_token_timeout": 0.5},
        ) as d,
    ):
        started = time.monotonic()
        seen = await stream_chat(sdk(d.socket_path))
        elapsed = time.monotonic() - started
        silent_calls = silent.stats.chat_requests
    assert seen.error is None and seen.text == EXPECTED.content
    assert silent_calls == 1, "the silent upstream's share must not be spent on timeouts"
    assert elapsed < 0.5 + 0.8


# -- routes and fallbacks --------------------------------------------------------------------


async def test_a_route_rewrites_the_model_and_fails_over_to_another_name(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim() as primary,
        fast_sim() as fallback,
        daemon_for(
            tmp_path,
            [primary, fallback],
            upstreams=two(primary, fallback),
            routes=[{"model": "gpt-4o-mini", "targets": ["primary:sim-1", "fallback:sim-2"]}],
            routing={"hedge_after": "off"},
        ) as d,
    ):
        primary.set_mode("down")
        seen = await stream_chat(sdk(d.socket_path), model="gpt-4o-mini")
        sent = [r.body["model"] for r in fallback.stats.recent_requests]
    assert seen.error is None and seen.text == EXPECTED.content
    assert sent == ["sim-2"]


async def test_context_length_exceeded_falls_back_and_the_response_names_that_model(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim() as small,
        fast_sim() as large,
        daemon_for(
            tmp_path,
            [small, large],
            upstreams=two(small, large),
            routes=[
                {
                    "model": "gpt-4o-mini",
                    "targets": ["primary:sim-1"],
                    "context_fallbacks": ["fallback:sim-2"],
                }
            ],
        ) as d,
    ):
        small.schedule_faults(["context_length"])
        client = sdk(d.socket_path)
        completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        small.schedule_faults(["context_length"])
        seen = await stream_chat(client, model="gpt-4o-mini")
        # Without a fallback chain the app gets the upstream's own 400.
        small.schedule_faults(["context_length"])
        try:
            await client.chat.completions.create(model="sim-1", messages=MESSAGES)
        except openai.BadRequestError as exc:
            refused: openai.BadRequestError | None = exc
        else:
            refused = None
    assert completion.model == "sim-2"
    assert completion.choices[0].message.content == EXPECTED.content
    assert seen.error is None and seen.text == EXPECTED.content
    assert refused is not None and refused.code == "context_length_exceeded"


# -- rate limits -------------------------------------------------------------------------------


async def test_a_persistent_429_without_retry_after_gets_few_calls(tmp_path: Path) -> None:
    """Scaled: rate_limit_base_delay 0.05 s stands for 1 s, so 3 s here is a minute. Apps
    keep sending (10 requests, one every "6 s"); unpaced, 10 x 6 attempts would be 60 calls
    within the minute. Paced and shared, the provider sees a handful."""
    base = 0.05
    async with (
        fast_sim(retry_after=0.0) as sim,
        daemon_for(
            tmp_path,
            sim,
            retry={
                "rate_limit_base_delay": base,
                "rate_limit_max_delay": 30 * base,
                "max_attempts": 6,
                "budget_min_per_second": 100.0,
            },
            stream={"answer_start_timeout": 60 * base},
        ) as d,
    ):
        sim.schedule_faults(["http_429"] * 200)
        client = sdk(d.socket_path)

        async def later(i: int) -> Any:
            await asyncio.sleep(i * 6 * base)
            return await stream_chat(client)

        started = time.monotonic()
        results = await asyncio.gather(*(later(i) for i in range(10)))
        elapsed = time.monotonic() - started
        calls = sim.stats.chat_requests
        at = [r.at for r in sim.stats.recent_requests]
    assert all(isinstance(r.error, openai.RateLimitError) for r in results), [
        r.error for r in results
    ]
    in_first_minute = sum(1 for t in at if t - at[0] <= 60 * base)
    assert in_first_minute <= 12, (in_first_minute, calls, elapsed)
    # One request alone: its attempts spread out (1 + 2 + 4 + 8 "s" at least).
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert max(gaps) >= 4 * base, gaps


async def test_pacing_ends_with_the_first_success(tmp_path: Path) -> None:
    async with (
        fast_sim(retry_after=0.0) as sim,
        daemon_for(tmp_path, sim, retry={"rate_limit_base_delay": 0.05}) as d,
    ):
        sim.schedule_faults(["http_429", "http_429"])
        seen = await stream_chat(sdk(d.socket_path))
        gate = d.relay.upstreams[0].rate_limit
        started = time.monotonic()
        again = await stream_chat(sdk(d.socket_path))
        elapsed = time.monotonic() - started
    assert seen.error is None and again.error is None
    assert not gate.paced and elapsed < 0.5


# -- the documented worst cases hold ------------------------------------------------------------

SCALE = 0.02  # 30 s -> 0.6 s


def _scaled(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "stream": {
            "first_token_timeout": 30 * SCALE,
            "answer_start_timeout": 60 * SCALE,
            "stall_timeout": 20 * SCALE,
            "total_timeout": 600 * SCALE,
        },
        "retry": {
            "base_delay": 0.25 * SCALE,
            "max_delay": 8 * SCALE,
            "rate_limit_base_delay": 1 * SCALE,
            "rate_limit_max_delay": 30 * SCALE,
            "budget_min_per_second": 100.0,
        },
        "routing": {"hedge_after": 3 * SCALE},
    }
    return merge_tables(raw, over)


async def _measure(tmp_path: Path, sim: Any, faults: list[str], **over: Any) -> tuple[float, int]:
    async with daemon_for(tmp_path, sim, **_scaled(**over)) as d:
        sim.schedule_faults(faults)
        started = time.monotonic()
        await stream_chat(sdk(d.socket_path))
        return time.monotonic() - started, sim.stats.chat_requests


def _case(tmp_path: Path, pattern: str) -> Any:
    cfg = fast_config(tmp_path, [{"name": "u", "base_url": "http://127.0.0.1:9/v1"}], **_scaled())
    return next(c for c in worst_cases(cfg) if c.pattern.startswith(pattern))


async def test_documented_worst_cases_hold(tmp_path: Path) -> None:
    slack = 0.4  # scheduling and response times on a busy 2-core machine
    async with fast_sim(ttft=30.0) as silent:
        seconds, calls = await _measure(tmp_path, silent, [])
    case = _case(tmp_path, "silent upstream")
    assert seconds <= case.seconds + slack and calls <= case.calls, (seconds, calls, case)

    async with fast_sim(retry_after=0.0) as limited:
        seconds, calls = await _measure(tmp_path, limited, ["http_429"] * 20)
    case = _case(tmp_path, "persistent 429")
    assert seconds <= case.seconds + slack and calls <= case.calls, (seconds, calls, case)

    async with fast_sim() as failing:
        seconds, calls = await _measure(tmp_path, failing, ["http_500"] * 20)
    case = _case(tmp_path, "persistent 5xx")
    assert seconds <= case.seconds + slack and calls <= case.calls, (seconds, calls, case)


def test_default_worst_cases_stay_within_a_minute() -> None:
    cfg = build_config({"upstreams": [{"name": "a"}, {"name": "b", "base_url": "http://b/v1"}]})
    for case in worst_cases(cfg):
        if case.pattern != "a stream that keeps streaming":
            assert case.seconds <= 60, case


async def test_answer_start_timeout_does_not_cut_an_answer_that_started(tmp_path: Path) -> None:
    """answer_start_timeout bounds the wait for the first chunk only, not the answer."""
    async with (
        fast_sim(tok_per_s=150.0) as sim,  # ~1.4 s of streaming
        daemon_for(tmp_path, sim, stream={"answer_start_timeout": 0.5}) as d,
    ):
        seen = await stream_chat(sdk(d.socket_path))
    assert seen.error is None and seen.text == EXPECTED.content


async def test_no_hedge_once_the_primary_has_answered(tmp_path: Path) -> None:
    """A long answer that started before hedge_after is not raced by a stray hedge."""
    rec = Recorder()
    async with (
        fast_sim(ttft=0.05, tok_per_s=150.0) as primary,  # ~1.4 s of answer
        fast_sim() as fallback,
        daemon_for(
            tmp_path,
            [primary, fallback],
            telemetry=rec,
            upstreams=two(primary, fallback),
            routing={"hedge_after": 0.3},
        ) as d,
    ):
        seen = await stream_chat(sdk(d.socket_path))
        calls = fallback.stats.chat_requests
    assert seen.error is None and seen.text == EXPECTED.content
    assert rec.hedges == [] and calls == 0
    assert rec.summaries[0].attempts == 1
