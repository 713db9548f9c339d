"""The app's side of a stream is judged as the app's: a slow reader is neither an upstream
stall nor a breaker failure, and an app that leaves is nobody's failure.

The upstream here is a small aiohttp server that streams a long answer as fast as the
socket takes it (about 1.1 MB in 1,500 chunks, far more than the kernel's socket buffers), so
an app that stops reading really does push back through intact to the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
from aiohttp import web

from intact.telemetry.api import NoTelemetry, Outcome, RequestSummary, RequestTrace
from support import MESSAGES, daemon_for, fast_sim, raw_client, sdk, stream_chat

CHUNKS = 1500
PIECE = "x" * 720  # content per chunk: the answer is ~1.1 MB of text


def _chunk(i: int, content: str | None, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {"content": content} if content is not None else {}
    if i == 0:
        delta["role"] = "assistant"
    obj = {
        "id": "chatcmpl-long",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "long-1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def long_answer() -> str:
    return "".join(f"{i:05d}{PIECE}" for i in range(CHUNKS))


@dataclass
class LongUpstream:
    """Streams CHUNKS content chunks at full speed; records how each stream ended."""

    chunks: int = CHUNKS
    requests: int = 0
    completed: int = 0
    closed_early: int = 0
    closed_at: list[float] = field(default_factory=list)
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            await resp.write(_chunk(0, ""))
            for i in range(self.chunks):
                await resp.write(_chunk(i + 1, f"{i:05d}{PIECE}"))
            await resp.write(_chunk(self.chunks + 1, None, "stop"))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.completed += 1
        except (ConnectionError, asyncio.CancelledError):
            self.closed_early += 1
            self.closed_at.append(time.monotonic())
            raise
        return resp


@contextlib.asynccontextmanager
async def long_upstream(chunks: int = CHUNKS) -> AsyncIterator[LongUpstream]:
    up = LongUpstream(chunks=chunks)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    up.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield up
    finally:
        await runner.cleanup()


class Summaries(NoTelemetry):
    """Keeps each request's summary (outcome, attempts, resumes, interruptions)."""

    def __init__(self) -> None:
        self.done: list[RequestSummary] = []

    def request(
        self, *, headers: Mapping[str, str], model: str, stream: bool, api: str = "chat"
    ) -> RequestTrace:
        trace = super().request(headers=headers, model=model, stream=stream, api=api)
        trace.finish = self.done.append  # type: ignore[method-assign]
        return trace


SLOW = {
    # 1 s of upstream silence is a stall: generous, so a busy 2-core test machine never
    # produces one; the app's pauses below are three times as long.
    "stream": {"stall_timeout": 1.0, "first_token_timeout": 5.0},
    "server": {"max_app_buffer_bytes": 64 * 1024},
}


async def _read_with_pause(client: openai.AsyncOpenAI, pause: float) -> tuple[str, str | None]:
    text, finish = "", None
    stream = await client.chat.completions.create(model="long-1", messages=MESSAGES, stream=True)
    n = 0
    async for chunk in stream:
        n += 1
        if n == 3:
            await asyncio.sleep(pause)  # the app stops reading
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish


async def test_a_slow_reader_gets_the_whole_answer_without_a_stall_or_a_resume(
    tmp_path: Path,
) -> None:
    telemetry = Summaries()
    async with (
        long_upstream() as up,
        daemon_for(
            tmp_path,
            [],
            telemetry=telemetry,
            upstreams=[{"name": "long", "base_url": up.base_url}],
            server={**SLOW["server"], "app_write_timeout": 10.0},
            stream=SLOW["stream"],
        ) as d,
    ):
        text, finish = await _read_with_pause(sdk(d.socket_path), pause=3 * 1.0)
        breaker = d.relay.upstreams[0].breaker.snapshot()
    assert text == long_answer() and finish == "stop"
    assert up.requests == 1 and up.completed == 1  # one upstream call, no resume
    assert (breaker["calls"], breaker["failures"]) == (1, 0)
    (summary,) = telemetry.done
    assert summary.outcome is Outcome.COMPLETED
    assert (summary.attempts, summary.resumes, summary.interruptions) == (1, 0, [])


async def test_an_app_that_stops_reading_too_long_gets_client_too_slow(tmp_path: Path) -> None:
    telemetry = Summaries()
    # An answer far larger than every socket buffer on the way (~70 MB): the upstream can
    # only finish it if intact keeps reading for an app that does not.
    async with (
        long_upstream(chunks=100_000) as up,
        daemon_for(
            tmp_path,
            [],
            telemetry=telemetry,
            upstreams=[{"name": "long", "base_url": up.base_url}],
            server={**SLOW["server"], "app_write_timeout": 0.5, "slow_app_linger": 20.0},
            stream=SLOW["stream"],
        ) as d,
    ):
        started = time.monotonic()
        try:
            await _read_with_pause(sdk(d.socket_path), pause=3.0)
        except openai.APIError as exc:
            error: openai.APIError | None = exc
        else:
            error = None
        breaker = d.relay.upstreams[0].breaker.snapshot()
    assert error is not None, "the SDK must raise, not take a cut answer as complete"
    assert isinstance(error.body, dict) and error.body.get("code") == "client_too_slow"
    # The upstream saw its connection closed once the app was judged too slow (~0.5 s),
    # long before the app came back (3 s).
    assert up.requests == 1 and up.completed == 0 and up.closed_early == 1
    assert up.closed_at[0] - started < 2.5
    assert (breaker["calls"], breaker["failures"]) == (1, 0)
    (summary,) = telemetry.done
    assert summary.outcome is Outcome.CANCELLED and summary.error_code == "client_too_slow"
    assert (summary.resumes, summary.interruptions) == (0, [])


# -- an app that leaves is nobody's failure -----------------------------------------------


async def _leave_after(
    socket_path: str, body: dict[str, Any], *, reads: int, then: Any = None
) -> None:
    """Open a stream, take ``reads`` network reads (0: leave before the first byte), await
    ``then`` if given, then close the connection."""
    async with raw_client(socket_path) as client:
        req = client.build_request("POST", "/v1/chat/completions", json=body)
        if reads == 0:
            task = asyncio.create_task(client.send(req, stream=True))
            await asyncio.sleep(0.1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        resp = await client.send(req, stream=True)
        it = resp.aiter_bytes()
        for _ in range(reads):
            await anext(it)
        if then is not None:
            await then()
        await resp.aclose()


async def _settled(d: Any, telemetry: Summaries) -> None:
    for _ in range(200):
        if telemetry.done and d.relay.active == 0:
            return
        await asyncio.sleep(0.01)


async def test_an_app_leaving_at_any_phase_touches_no_breaker_budget_or_interruption(
    tmp_path: Path,
) -> None:
    body = {"model": "sim-1", "messages": MESSAGES, "stream": True}
    phases: dict[str, tuple[dict[str, Any], list[str]]] = {
        # before the first byte: the upstream is still thinking (ttft 0.5 s)
        "before_first_byte": ({"ttft": 0.5}, []),
        # mid-stream
        "mid_stream": ({"tok_per_s": 20.0}, []),
        # during a resume's backoff: the stream broke, intact waits 1 s to resume
        "resume_backoff": ({"tok_per_s": 50.0}, ["reset@3"]),
    }
    for name, (sim_over, faults) in phases.items():
        telemetry = Summaries()
        retry = {
            "base_delay": 1.0,
            "max_delay": 1.0,
            "jitter": "none",
            "budget_min_per_second": 100.0,
        }
        async with (
            fast_sim(**sim_over) as sim,
            daemon_for(tmp_path, sim, telemetry=telemetry, retry=retry) as d,
        ):
            sim.schedule_faults(faults)

            async def broken(sim: Any = sim) -> None:
                while not sim.stats.faults_injected:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # intact is now backing off before its resume

            reads = 0 if name == "before_first_byte" else 1
            await _leave_after(d.socket_path, body, reads=reads, then=broken if faults else None)
            await _settled(d, telemetry)
            up = d.relay.upstreams[0]
            breaker = up.breaker.snapshot()
            budget = up.budget.snapshot()
            requests = sim.stats.chat_requests
        (summary,) = telemetry.done
        assert summary.outcome is Outcome.CANCELLED, name
        expected = len(faults)  # only the deliberate upstream fault counts
        assert breaker["failures"] == expected, (name, breaker)
        assert len(summary.interruptions) == expected, (name, summary)
        assert budget["withdrawals"] == expected, (name, budget)
        assert requests == 1, name  # the resume was never sent


async def test_writes_to_a_vanished_app_are_never_upstream_interruptions(
    tmp_path: Path,
) -> None:
    """Regression: a failed write to the app was classified as an upstream reset, logged as
    upstream_interrupted, resumed and charged to the breaker, over and over."""
    telemetry = Summaries()
    async with (
        fast_sim(tok_per_s=200.0) as sim,
        daemon_for(tmp_path, sim, telemetry=telemetry) as d,
    ):
        body = {"model": "sim-1", "messages": MESSAGES, "stream": True}
        for _ in range(20):
            await _leave_after(d.socket_path, body, reads=1)
        for _ in range(200):
            if len(telemetry.done) == 20 and d.relay.active == 0:
                break
            await asyncio.sleep(0.01)
        breaker = d.relay.upstreams[0].breaker.snapshot()
        requests = sim.stats.chat_requests
    assert len(telemetry.done) == 20
    assert all(s.resumes == 0 and not s.interruptions for s in telemetry.done)
    assert breaker["failures"] == 0
    assert requests == 20  # one upstream call per app request: nothing resumed


async def test_completed_streams_still_complete(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        seen = await stream_chat(sdk(d.socket_path))
    assert seen.error is None and seen.finish_reason == "stop"


async def test_a_quiet_stretch_with_nothing_to_write_is_not_the_apps_slowness(
    tmp_path: Path,
) -> None:
    """Regression: the app's write clock ran while intact had nothing to send it (a stall
    and its resume), and the stream's end was then judged client_too_slow."""
    async with (
        fast_sim(tok_per_s=100.0) as sim,
        daemon_for(
            tmp_path,
            sim,
            server={"app_write_timeout": 0.5},
            stream={"stall_timeout": 0.8},
        ) as d,
    ):
        sim.schedule_faults(["stall@5"])
        seen = await stream_chat(sdk(d.socket_path))
    assert seen.error is None and seen.finish_reason == "stop"
