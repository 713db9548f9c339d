"""Regressions of the relay redesign: who is charged for what, and non-streaming requests
that recover invisibly whenever nothing reached the app."""

from __future__ import annotations

from pathlib import Path

import openai

from intact.resilience.breaker import BreakerState
from intact.simulator import expected_answer
from support import MESSAGES, daemon_for, fast_sim, sdk, stream_chat

EXPECTED = expected_answer(MESSAGES)


async def test_an_upstream_that_breaks_90_percent_of_streams_mid_way_trips_its_breaker(
    tmp_path: Path,
) -> None:
    """Each mid-stream drop used to count as 1 success + 1 failure: rate 0.47, never open."""
    breaker = {
        "minimum_calls": 20,
        "failure_rate_threshold": 0.5,
        "window": 60.0,
        "open_duration": 30.0,
    }
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, breaker=breaker, retry={"max_attempts": 1}) as d,
    ):
        sim.schedule_faults([("none" if i % 10 == 0 else "reset@2") for i in range(20)])
        for _ in range(20):
            await stream_chat(sdk(d.socket_path))
        snap = d.relay.upstreams[0].breaker.snapshot()
    assert snap["state"] == BreakerState.OPEN.name
    assert snap["transitions"] == 1


async def _complete(client: openai.AsyncOpenAI, **kw: object) -> openai.types.chat.ChatCompletion:
    return await client.chat.completions.create(model="sim-1", messages=MESSAGES, **kw)  # type: ignore[call-overload, no-any-return]


async def test_non_stream_n2_is_re_run_after_a_break(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@6"])
        completion = await _complete(sdk(d.socket_path), n=2)
        assert sim.stats.chat_requests == 2
    assert len(completion.choices) == 2
    assert {c.index for c in completion.choices} == {0, 1}
    assert completion.choices[0].message.content == EXPECTED.content
    assert all(c.finish_reason == "stop" for c in completion.choices)


async def test_non_stream_restart_mode_is_re_run_after_a_break(tmp_path: Path) -> None:
    ups = [{"name": "s", "base_url": "", "resume": "restart"}]
    async with fast_sim() as sim:
        ups[0]["base_url"] = sim.base_url
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            sim.schedule_faults(["reset@10"])
            completion = await _complete(sdk(d.socket_path))
            assert sim.stats.chat_requests == 2
    assert completion.choices[0].message.content == EXPECTED.content
    assert completion.choices[0].finish_reason == "stop"


async def test_non_stream_refused_continuation_is_a_failure_not_the_apps_bad_request(
    tmp_path: Path,
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@10", "http_400"])
        try:
            await _complete(sdk(d.socket_path))
        except openai.APIStatusError as exc:
            error = exc
        else:
            raise AssertionError("a refused continuation must not look like an answer")
    assert error.status_code == 502
    assert isinstance(error.body, dict) and error.body.get("code") == "resume_rejected"


async def test_stream_restart_mode_still_refuses_once_text_was_shown(tmp_path: Path) -> None:
    ups = [{"name": "s", "base_url": "", "resume": "restart"}]
    async with fast_sim() as sim:
        ups[0]["base_url"] = sim.base_url
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            sim.schedule_faults(["reset@10"])
            seen = await stream_chat(sdk(d.socket_path))
    assert isinstance(seen.error, openai.APIError) and seen.error.code == "not_resumable"
