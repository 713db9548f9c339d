"""The concurrency bound per upstream: a request that finds every stream slot taken waits at
most queue_timeout (or not at all when the queue is full) and then gets 503 overloaded."""

from __future__ import annotations

import time
from pathlib import Path

import openai

from intact.simulator import expected_answer
from support import MESSAGES, daemon_for, fast_sim, raw_client, sdk, stream_chat

BODY = {"model": "sim-1", "messages": MESSAGES, "stream": True}


def one_slot(sim_url: str, *, queue_timeout: float, max_queued: int) -> list[dict[str, object]]:
    return [
        {
            "name": "only",
            "base_url": sim_url,
            "max_concurrent_streams": 1,
            "queue_timeout": queue_timeout,
            "max_queued": max_queued,
        }
    ]


async def test_request_waiting_past_queue_timeout_gets_503_overloaded(tmp_path: Path) -> None:
    # 20 tokens a second: the first stream holds the only slot for seconds.
    async with (
        fast_sim(tok_per_s=20.0) as sim,
        daemon_for(
            tmp_path, sim, upstreams=one_slot(sim.base_url, queue_timeout=0.1, max_queued=4)
        ) as d,
        raw_client(d.socket_path) as first,
        first.stream("POST", "/v1/chat/completions", json=BODY) as slow,
    ):
        # Keep the iterator: closing it would hang up the slow stream.
        chunks = slow.aiter_bytes()
        await anext(chunks)  # the slow stream is in flight
        started = time.monotonic()
        async with raw_client(d.socket_path) as second:
            refused = await second.post("/v1/chat/completions", json=BODY)
        waited = time.monotonic() - started
        assert sim.stats.chat_requests == 1
        assert d.relay.upstreams[0].bulkhead.timed_out == 1
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused.json()["error"]["type"] == "upstream_unavailable"
    assert 0.1 <= waited < 0.5


async def test_request_finding_the_queue_full_is_refused_at_once(tmp_path: Path) -> None:
    async with (
        fast_sim(tok_per_s=20.0) as sim,
        daemon_for(
            tmp_path, sim, upstreams=one_slot(sim.base_url, queue_timeout=5.0, max_queued=0)
        ) as d,
        raw_client(d.socket_path) as first,
        first.stream("POST", "/v1/chat/completions", json=BODY) as slow,
    ):
        chunks = slow.aiter_bytes()
        await anext(chunks)
        started = time.monotonic()
        seen = await stream_chat(sdk(d.socket_path))
        waited = time.monotonic() - started
        assert sim.stats.chat_requests == 1
        assert d.relay.upstreams[0].bulkhead.rejected == 1
    assert isinstance(seen.error, openai.APIStatusError)
    assert seen.error.status_code == 503
    assert seen.error.code == "overloaded"
    assert seen.error.response.headers["retry-after"] == "1"
    assert waited < 0.5


async def test_queued_request_is_served_when_the_slot_frees_in_time(tmp_path: Path) -> None:
    async with (
        fast_sim(tok_per_s=500.0) as sim,
        daemon_for(
            tmp_path, sim, upstreams=one_slot(sim.base_url, queue_timeout=5.0, max_queued=1)
        ) as d,
    ):
        async with (
            raw_client(d.socket_path) as first,
            first.stream("POST", "/v1/chat/completions", json=BODY) as running,
        ):
            chunks = running.aiter_bytes()
            await anext(chunks)
            queued = await stream_chat(sdk(d.socket_path))
        assert sim.stats.chat_requests == 2
    assert queued.error is None
    assert queued.text == expected_answer(MESSAGES).content
