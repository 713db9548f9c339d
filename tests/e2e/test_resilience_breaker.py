"""The per-upstream circuit breaker, end to end: what opens it, what the app and the upstream
see while it is open, and how half-open probes close or re-open it."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from intact.daemon import RunningDaemon
from intact.resilience.breaker import BreakerState, CallOutcome
from intact.simulator import expected_answer
from support import MESSAGES, daemon_for, fast_sim, raw_client, sdk, stream_chat

EXPECTED = expected_answer(MESSAGES)
BODY = {"model": "sim-1", "messages": MESSAGES, "stream": True}

# Opens once 4 calls in the window failed at least half the time; one attempt per request
# so every app request is exactly one breaker call.
BREAKER = {
    "minimum_calls": 4,
    "failure_rate_threshold": 0.5,
    "window": 5.0,
    "open_duration": 0.5,
    "half_open_probes": 2,
}
ONE_ATTEMPT = {"max_attempts": 1}


def breaker_config(**over: Any) -> dict[str, Any]:
    return {"breaker": {**BREAKER, **over}, "retry": ONE_ATTEMPT}


async def post(d: RunningDaemon, body: dict[str, Any] = BODY) -> httpx.Response:
    async with raw_client(d.socket_path) as client:
        return await client.post("/v1/chat/completions", json=body)


def state(d: RunningDaemon) -> BreakerState:
    return d.relay.upstreams[0].breaker.state


async def trip(d: RunningDaemon, sim: Any) -> None:
    """Four failed calls: the breaker opens."""
    sim.schedule_faults(["http_500"] * 4)
    for _ in range(4):
        assert (await post(d)).status_code == 500
    assert state(d) is BreakerState.OPEN


async def test_breaker_opens_when_the_failure_rate_reaches_the_threshold(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **breaker_config()) as d:
        sim.schedule_faults(["http_500", "none", "http_503"])
        assert [(await post(d)).status_code for _ in range(3)] == [500, 200, 503]
        assert state(d) is BreakerState.CLOSED  # 3 calls: below minimum_calls
        sim.schedule_faults(["connect_drop"])
        assert (await post(d)).status_code == 502
        assert state(d) is BreakerState.OPEN  # 3 failures of 4 calls


async def test_breaker_stays_closed_below_the_failure_rate_threshold(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **breaker_config()) as d:
        sim.schedule_faults(["http_500", "none", "none", "none", "none", "http_500"])
        codes = [(await post(d)).status_code for _ in range(6)]
        assert codes == [500, 200, 200, 200, 200, 500]
        assert state(d) is BreakerState.CLOSED  # 2 of 6 failed


async def test_open_breaker_sends_nothing_upstream_and_answers_503_upstream_unavailable(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, **breaker_config(open_duration=5.0)) as d,
    ):
        await trip(d, sim)
        before = sim.stats.chat_requests
        responses = [await post(d) for _ in range(5)]
        assert sim.stats.chat_requests == before
    for resp in responses:
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "upstream_unavailable"
        assert resp.json()["error"]["type"] == "upstream_unavailable"
        assert 1 <= int(resp.headers["retry-after"]) <= 5


async def test_open_breaker_raises_a_503_in_the_sdk(tmp_path: Path) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, **breaker_config(open_duration=5.0)) as d,
    ):
        await trip(d, sim)
        seen = await stream_chat(sdk(d.socket_path))
    assert seen.error is not None
    assert getattr(seen.error, "status_code", None) == 503
    assert getattr(seen.error, "code", None) == "upstream_unavailable"
    assert seen.text == ""


async def test_half_open_lets_at_most_half_open_probes_through(tmp_path: Path) -> None:
    # Each answer takes 0.3 s, so both probes are still in flight when the rest arrive.
    async with fast_sim(ttft=0.3) as sim, daemon_for(tmp_path, sim, **breaker_config()) as d:
        await trip(d, sim)
        await asyncio.sleep(BREAKER["open_duration"])
        assert state(d) is BreakerState.HALF_OPEN
        before = sim.stats.chat_requests
        responses = await asyncio.gather(*(post(d) for _ in range(5)))
        probes = sim.stats.chat_requests - before
    assert probes == BREAKER["half_open_probes"]
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 503, 503, 503]
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.json()["error"]["code"] == "upstream_unavailable" for r in refused)
    assert all("retry-after" in r.headers for r in refused)


async def test_successful_probes_close_the_breaker(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **breaker_config()) as d:
        await trip(d, sim)
        await asyncio.sleep(BREAKER["open_duration"])
        first = await stream_chat(sdk(d.socket_path))
        assert state(d) is BreakerState.HALF_OPEN  # one of two probes done
        second = await stream_chat(sdk(d.socket_path))
        assert state(d) is BreakerState.CLOSED
    assert first.text == second.text == EXPECTED.content


async def test_a_failing_probe_reopens_the_breaker(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **breaker_config()) as d:
        await trip(d, sim)
        await asyncio.sleep(BREAKER["open_duration"])
        sim.schedule_faults(["http_503"])
        probe = await post(d)
        assert state(d) is BreakerState.OPEN
        before = sim.stats.chat_requests
        after = await post(d)
        assert sim.stats.chat_requests == before
    assert probe.status_code == 503
    assert probe.json()["error"]["message"].startswith("The engine is currently overloaded")
    assert after.status_code == 503
    assert after.json()["error"]["code"] == "upstream_unavailable"


async def test_a_429_storm_never_opens_the_breaker(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **breaker_config()) as d:
        sim.schedule_faults(["http_429"] * 10)
        codes = [(await post(d)).status_code for _ in range(10)]
        assert state(d) is BreakerState.CLOSED
        seen = await stream_chat(sdk(d.socket_path))
        assert sim.stats.chat_requests == 11
    assert codes == [429] * 10
    assert seen.text == EXPECTED.content


@pytest.mark.parametrize("final", ["bad_request", "unauthorized"])
async def test_final_4xx_never_count_against_the_breaker(
    tmp_path: Path, final: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_KEY", "sk-right")
    key = "sk-right" if final == "bad_request" else "sk-other"
    body = {**BODY, "max_tokens": 0} if final == "bad_request" else BODY
    async with (
        fast_sim(api_key=key) as sim,
        daemon_for(
            tmp_path,
            sim,
            **breaker_config(),
            upstreams=[{"name": "a", "base_url": sim.base_url, "api_key_env": "SIM_KEY"}],
        ) as d,
    ):
        codes = [(await post(d, body)).status_code for _ in range(8)]
        assert state(d) is BreakerState.CLOSED
        assert sim.stats.chat_requests == 8
    assert codes == [400 if final == "bad_request" else 401] * 8


async def test_upstream_down_drives_closed_open_half_open_closed_and_readiness(
    tmp_path: Path,
) -> None:
    # Several attempts per request: the breaker opens in the middle of the first one.
    config: dict[str, Any] = {"breaker": BREAKER, "retry": {"max_attempts": 6}}
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, **config) as d,
        httpx.AsyncClient(base_url=d.admin_url or "") as admin,
    ):
        assert (await admin.get("/readyz")).status_code == 200
        sim.set_mode("down")
        down = await post(d)
        assert sim.stats.requests_by_mode["down"] == BREAKER["minimum_calls"]
        assert state(d) is BreakerState.OPEN
        not_ready = await admin.get("/readyz")
        debug = (await admin.get("/debug/state")).json()

        await asyncio.sleep(BREAKER["open_duration"])
        assert state(d) is BreakerState.HALF_OPEN
        assert (await admin.get("/readyz")).status_code == 200
        sim.set_mode("normal")
        answers = [await stream_chat(sdk(d.socket_path)) for _ in range(2)]
        assert state(d) is BreakerState.CLOSED
        ready = await admin.get("/readyz")

    assert down.status_code == 503
    assert down.json()["error"]["code"] == "upstream_unavailable"
    assert int(down.headers["retry-after"]) == math.ceil(BREAKER["open_duration"])
    assert not_ready.status_code == 503
    assert not_ready.json() == {"ready": False, "usable_upstreams": []}
    assert debug["upstreams"][0]["breaker"]["state"] == "OPEN"
    assert [a.text for a in answers] == [EXPECTED.content] * 2
    assert ready.json() == {"ready": True, "usable_upstreams": ["sim0"]}


async def test_streams_are_judged_at_their_first_chunk_so_slow_successes_count_at_once(
    tmp_path: Path,
) -> None:
    # Four long streams are in flight when three fast failures arrive. Judged at the end,
    # the window would hold 3 failures of 3 calls; judged at the first chunk it holds
    # 4 successes and 3 failures, below the threshold.
    async with (
        fast_sim(tok_per_s=10.0) as sim,
        daemon_for(tmp_path, sim, **breaker_config()) as d,
    ):
        slow = [asyncio.create_task(post(d)) for _ in range(4)]
        while sim.stats.active_streams < 4:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the first chunks are out
        sim.schedule_faults(["http_500"] * 3)
        assert [(await post(d)).status_code for _ in range(3)] == [500] * 3
        assert state(d) is BreakerState.CLOSED
        for task in slow:
            task.cancel()


async def test_a_stream_dropped_after_its_first_chunk_still_counts_as_a_failure(
    tmp_path: Path,
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **breaker_config()) as d:
        sim.schedule_faults(["reset@5", "reset@5"])
        await stream_chat(sdk(d.socket_path))
        snap = d.relay.upstreams[0].breaker.snapshot()
        # The call: a success at its first chunk, turned into a failure when it broke.
        assert (snap["calls"], snap["failures"]) == (1, 1)
        sim.schedule_faults(["reset@5"] * 3)
        for _ in range(3):
            await stream_chat(sdk(d.socket_path))
        assert state(d) is BreakerState.OPEN  # 4 calls, 4 failures


async def test_a_retry_waiting_out_retry_after_does_not_call_an_upstream_whose_breaker_opened(
    tmp_path: Path,
) -> None:
    async with (
        fast_sim(retry_after=0.4) as sim,
        daemon_for(tmp_path, sim, breaker=BREAKER, retry={"max_attempts": 2}) as d,
    ):
        sim.schedule_faults(["http_429"])
        waiting = asyncio.create_task(post(d))
        while sim.stats.chat_requests < 1:
            await asyncio.sleep(0.01)
        # Other traffic opens the breaker while the first request sleeps. (Requests to an
        # upstream that answered 429 are paced, so other requests cannot do it in time;
        # failures are recorded on the breaker directly.)
        breaker = d.relay.upstreams[0].breaker
        for _ in range(4):
            permit = breaker.try_acquire()
            assert permit is not None
            permit.record(CallOutcome.FAILURE)
        assert state(d) is BreakerState.OPEN
        seen_before = sim.stats.chat_requests
        resp = await waiting
        assert sim.stats.chat_requests == seen_before  # the woken retry sent nothing
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "upstream_unavailable"
