"""Retries before the first byte: which failures are retried, how long intact waits, how many
attempts it makes, and what the app sees when it stops (the upstream's own error, or an
explicit one of intact's)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intact.simulator import SimulatedUpstream, expected_answer
from support import MESSAGES, daemon_for, fast_sim, raw_client, sdk, stream_chat

EXPECTED = expected_answer(MESSAGES)
BODY = {"model": "sim-1", "messages": MESSAGES, "stream": True}


async def _wait_for_disconnects(sim: SimulatedUpstream, count: int) -> None:
    for _ in range(100):
        if sim.stats.client_disconnects >= count:
            return
        await asyncio.sleep(0.01)


# -- provider push-back (429 + Retry-After) ---------------------------------------------


async def test_429_retry_waits_the_providers_retry_after_and_is_invisible(tmp_path: Path) -> None:
    async with fast_sim(retry_after=0.3) as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["http_429"])
        started = time.monotonic()
        seen = await stream_chat(sdk(d.socket_path))
        elapsed = time.monotonic() - started
        assert sim.stats.chat_requests == 2
    assert elapsed >= 0.3
    assert seen.error is None
    assert seen.text == EXPECTED.content
    assert seen.finish_reason == EXPECTED.finish_reason
    assert seen.roles == 1


async def test_retry_after_above_max_retry_after_passes_the_429_through_at_once(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim(retry_after=5.0) as sim,
        daemon_for(tmp_path, sim, retry={"max_retry_after": 1.0}) as d,
    ):
        sim.schedule_faults(["http_429"])
        started = time.monotonic()
        async with raw_client(d.socket_path) as client:
            resp = await client.post("/v1/chat/completions", json=BODY)
        elapsed = time.monotonic() - started
        assert sim.stats.chat_requests == 1
    assert elapsed < 1.0
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "5"
    assert resp.headers["retry-after-ms"] == "5000"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert resp.json()["error"]["message"] == (
        "Rate limit reached for requests. Please try again in 5s."
    )


async def test_429_whose_wait_would_pass_the_request_deadline_fails_fast(tmp_path: Path) -> None:
    async with fast_sim(retry_after=2.0) as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["http_429"])
        started = time.monotonic()
        async with raw_client(d.socket_path) as client:
            resp = await client.post(
                "/v1/chat/completions", json=BODY, headers={"intact-timeout": "0.5"}
            )
        elapsed = time.monotonic() - started
        assert sim.stats.chat_requests == 1
    assert elapsed < 0.5
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "2"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"


# -- retryable failures before the first byte -------------------------------------------


@pytest.mark.parametrize("fault", ["http_500", "http_503", "connect_drop", "reset@0", "truncate@0"])
async def test_failure_before_the_first_byte_is_retried_invisibly(
    tmp_path: Path, fault: str
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults([fault])
        seen = await stream_chat(sdk(d.socket_path))
        assert sim.stats.chat_requests == 2
        assert sum(sim.stats.faults_injected.values()) == 1
    assert seen.error is None
    assert seen.text == EXPECTED.content
    assert seen.finish_reason == EXPECTED.finish_reason
    assert seen.roles == 1
    assert len(seen.chunk_ids) == 1


async def test_several_failures_in_a_row_are_all_retried_within_max_attempts(
    tmp_path: Path,
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, retry={"max_attempts": 4}) as d:
        sim.schedule_faults(["http_500", "connect_drop", "http_503"])
        seen = await stream_chat(sdk(d.socket_path))
        assert sim.stats.chat_requests == 4
    assert seen.error is None
    assert seen.text == EXPECTED.content
    assert seen.roles == 1


async def test_stall_before_the_first_token_is_abandoned_after_first_token_timeout(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, stream={"first_token_timeout": 0.3}) as d,
    ):
        sim.schedule_faults(["stall@0"])
        started = time.monotonic()
        seen = await stream_chat(sdk(d.socket_path))
        elapsed = time.monotonic() - started
        assert sim.stats.chat_requests == 2
        await _wait_for_disconnects(sim, 1)
        assert sim.stats.client_disconnects == 1  # the stalled attempt was hung up on
    assert 0.3 <= elapsed < 1.0
    assert seen.error is None
    assert seen.text == EXPECTED.content
    assert seen.roles == 1


async def test_stall_mid_stream_is_detected_and_resumed_without_duplicate_text(
    tmp_path: Path,
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, stream={"stall_timeout": 0.3}) as d:
        sim.schedule_faults(["stall@4"])
        started = time.monotonic()
        seen = await stream_chat(sdk(d.socket_path))
        elapsed = time.monotonic() - started
        assert sim.stats.chat_requests == 2
        assert sim.stats.requests_by_kind["prefill"] == 1
    assert elapsed >= 0.3
    assert seen.error is None
    assert seen.text == EXPECTED.content
    assert seen.finish_reason == EXPECTED.finish_reason
    assert seen.roles == 1
    assert len(seen.chunk_ids) == 1


async def test_stall_mid_stream_is_detected_after_stall_timeout_not_first_token_timeout(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, stream={"stall_timeout": 0.2, "first_token_timeout": 1.0}) as d,
    ):
        sim.schedule_faults(["stall@4"])
        started = time.monotonic()
        seen = await stream_chat(sdk(d.socket_path))
        elapsed = time.monotonic() - started
    assert seen.text == EXPECTED.content
    assert 0.2 <= elapsed < 0.6  # the stall at ~0 s plus 0.2 s, then a fast resume


async def test_stall_mid_stream_without_attempts_left_ends_with_an_explicit_error(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, retry={"max_attempts": 1}, stream={"stall_timeout": 0.3}) as d,
    ):
        sim.schedule_faults(["stall@4"])  # the role chunk and three tokens, then silence
        seen = await stream_chat(sdk(d.socket_path))
        assert sim.stats.chat_requests == 1
    assert seen.text == expected_answer(MESSAGES, max_tokens=3).content
    assert seen.finish_reason is None
    assert isinstance(seen.error, openai.APIError)
    assert seen.error.type == "stream_interrupted"
    assert seen.error.code == "attempts_exhausted"
    assert "no event for 0.3s mid-stream" in seen.error.message


# -- final errors are not retried -------------------------------------------------------


async def test_401_is_not_retried_and_reaches_the_app_unchanged(tmp_path: Path) -> None:
    async with fast_sim(api_key="sk-upstream-only") as sim, daemon_for(tmp_path, sim) as d:
        seen = await stream_chat(sdk(d.socket_path))
        assert sim.stats.chat_requests == 1
    assert isinstance(seen.error, openai.AuthenticationError)
    assert seen.error.status_code == 401
    assert seen.error.code == "invalid_api_key"
    assert seen.error.body == {
        "message": "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer "
        "YOUR_KEY).",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


async def test_400_from_the_upstream_is_not_retried_and_reaches_the_app_unchanged(
    tmp_path: Path,
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        # intact does not police max_tokens; the upstream refuses it.
        seen = await stream_chat(sdk(d.socket_path), max_tokens=0)
        assert sim.stats.chat_requests == 1
    assert isinstance(seen.error, openai.BadRequestError)
    assert seen.error.body == {
        "message": "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, "
        "but got 0 instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "integer_below_min_value",
    }


# -- the attempts bound -----------------------------------------------------------------

# Faults that strike before any chunk reaches the app, so each one costs an attempt.
BEFORE_FIRST_BYTE = ["http_429", "http_500", "http_503", "connect_drop", "reset@0", "truncate@0"]
# What the app gets when the last attempt failed this way: the upstream's own status, or
# intact's 502 when the upstream never answered with one.
FINAL_STATUS = {"http_429": 429, "http_500": 500, "http_503": 503}


@settings(max_examples=25, deadline=None)
@given(
    max_attempts=st.integers(min_value=1, max_value=5),
    faults=st.lists(st.sampled_from(BEFORE_FIRST_BYTE), max_size=7),
)
async def test_upstream_sees_at_most_max_attempts_requests_per_app_request(
    max_attempts: int, faults: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            fast_sim(retry_after=0.01) as sim,
            daemon_for(Path(tmp), sim, retry={"max_attempts": max_attempts}) as d,
        ):
            sim.schedule_faults(faults)
            seen = await stream_chat(sdk(d.socket_path))
            requests = sim.stats.chat_requests
    assert requests == min(max_attempts, len(faults) + 1)
    if len(faults) < max_attempts:
        assert seen.error is None
        assert seen.text == EXPECTED.content
        assert seen.roles == 1
    else:
        assert isinstance(seen.error, openai.APIStatusError)
        assert seen.error.status_code == FINAL_STATUS.get(faults[max_attempts - 1], 502)
        assert seen.text == ""
