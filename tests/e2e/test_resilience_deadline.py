"""The whole-request deadline (`stream.total_timeout`, shortened by the `intact-timeout`
header): every attempt and backoff fits inside it, and running out is an explicit error."""

from __future__ import annotations

import time
from pathlib import Path

import openai

from intact.simulator import expected_answer
from support import MESSAGES, daemon_for, fast_sim, raw_client, sdk, stream_chat

BODY = {"model": "sim-1", "messages": MESSAGES, "stream": True}
SHORT = {"intact-timeout": "0.5"}

DEADLINE_BUG = (
    "BUG: the watchdog's DEADLINE failure is non-retryable, so run() hands it to "
    "final_error() instead of give_up('deadline_exceeded'): before the first byte the app "
    "gets 502 upstream_error/code 'deadline', after it stream_interrupted/'resume_rejected'"
)


async def test_intact_timeout_on_a_stalled_upstream_ends_within_the_deadline(
    tmp_path: Path,
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["stall@0"] * 3)
        started = time.monotonic()
        async with raw_client(d.socket_path) as client:
            resp = await client.post("/v1/chat/completions", json=BODY, headers=SHORT)
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.0
    assert resp.status_code >= 500
    assert resp.json()["error"]["message"].startswith("request deadline of")


async def test_intact_timeout_on_a_stalled_upstream_is_a_504_deadline_exceeded(
    tmp_path: Path,
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["stall@0"] * 3)
        async with raw_client(d.socket_path) as client:
            resp = await client.post("/v1/chat/completions", json=BODY, headers=SHORT)
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "deadline_exceeded"


async def test_intact_timeout_spanning_several_attempts_is_a_504_deadline_exceeded(
    tmp_path: Path,
) -> None:
    # The first attempt times out at 0.3 s; the second is cut by the 0.5 s deadline.
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, stream={"first_token_timeout": 0.3}) as d,
    ):
        sim.schedule_faults(["stall@0"] * 3)
        started = time.monotonic()
        async with raw_client(d.socket_path) as client:
            resp = await client.post("/v1/chat/completions", json=BODY, headers=SHORT)
        elapsed = time.monotonic() - started
        assert sim.stats.chat_requests == 2
    assert 0.5 <= elapsed < 1.0
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "deadline_exceeded"


async def test_total_timeout_reached_mid_stream_ends_with_an_explicit_stream_error(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, stream={"total_timeout": 0.5, "stall_timeout": 5.0}) as d,
    ):
        sim.schedule_faults(["stall@4"])
        started = time.monotonic()
        seen = await stream_chat(sdk(d.socket_path))
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.0
    assert seen.text == expected_answer(MESSAGES, max_tokens=3).content
    assert seen.finish_reason is None
    assert isinstance(seen.error, openai.APIError)
    assert seen.error.type == "stream_interrupted"


async def test_total_timeout_reached_mid_stream_is_reported_as_deadline_exceeded(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, stream={"total_timeout": 0.5, "stall_timeout": 5.0}) as d,
    ):
        sim.schedule_faults(["stall@4"])
        seen = await stream_chat(sdk(d.socket_path))
    assert isinstance(seen.error, openai.APIError)
    assert seen.error.code == "deadline_exceeded"


async def test_request_within_its_intact_timeout_is_answered_normally(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["http_500"])
        seen = await stream_chat(sdk(d.socket_path), extra_headers={"intact-timeout": "5"})
        assert sim.stats.chat_requests == 2
    assert seen.error is None
    assert seen.text == expected_answer(MESSAGES).content
