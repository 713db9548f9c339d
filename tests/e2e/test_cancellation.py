"""An app that goes away cancels its upstream request promptly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai

from intact.simulator import expected_answer
from support import MESSAGES, daemon_for, fast_sim, raw_client, sdk, stream_chat


async def test_app_disconnect_closes_the_upstream_within_100ms(tmp_path: Path) -> None:
    async with fast_sim(tok_per_s=20.0) as sim, daemon_for(tmp_path, sim) as d:
        body = {"model": "sim-1", "messages": MESSAGES, "stream": True}
        async with raw_client(d.socket_path) as client:
            req = client.build_request("POST", "/v1/chat/completions", json=body)
            resp = await client.send(req, stream=True)
            await anext(resp.aiter_bytes())  # the first bytes arrived: the stream is live
            closed_at = time.monotonic()
            await resp.aclose()  # the app goes away mid-stream
        for _ in range(100):
            if sim.stats.disconnects:
                break
            await asyncio.sleep(0.01)
        assert sim.stats.disconnects, "the upstream never saw its client go away"
        assert sim.stats.disconnects[0].at - closed_at < 0.1
        assert d.relay.active == 0


async def test_app_disconnect_during_a_stall_closes_the_upstream(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, stream={"stall_timeout": 30.0}) as d:
        sim.schedule_faults(["stall@3"])
        body = {"model": "sim-1", "messages": MESSAGES, "stream": True}
        async with raw_client(d.socket_path) as client:
            req = client.build_request("POST", "/v1/chat/completions", json=body)
            resp = await client.send(req, stream=True)
            await anext(resp.aiter_bytes())
            await asyncio.sleep(0.05)  # the upstream is now stalled
            closed_at = time.monotonic()
            await resp.aclose()
        for _ in range(100):
            if sim.stats.disconnects:
                break
            await asyncio.sleep(0.01)
        assert sim.stats.disconnects and sim.stats.disconnects[0].at - closed_at < 0.1


async def test_shutdown_lets_streams_finish_within_the_drain_timeout(tmp_path: Path) -> None:
    async with fast_sim(tok_per_s=200.0) as sim:
        async with daemon_for(tmp_path, sim, server={"drain_timeout": 5.0}) as d:
            task = asyncio.create_task(stream_chat(sdk(d.socket_path)))
            while sim.stats.active_streams == 0:
                await asyncio.sleep(0.01)
        seen = await task  # the daemon stopped only after the stream was done
    assert seen.error is None
    assert seen.text == expected_answer(MESSAGES).content


async def test_stream_cut_by_the_drain_deadline_gets_an_explicit_error(tmp_path: Path) -> None:
    async with fast_sim(tok_per_s=5.0) as sim:
        async with daemon_for(tmp_path, sim, server={"drain_timeout": 0.3}) as d:
            task = asyncio.create_task(stream_chat(sdk(d.socket_path)))
            while sim.stats.active_streams == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # some text reached the app
        seen = await task
    assert isinstance(seen.error, openai.APIError)
    assert seen.error.code == "daemon_shutdown"
    assert (expected_answer(MESSAGES).content or "").startswith(seen.text)
