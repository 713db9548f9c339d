"""Hardening, each promise with its test: slow or greedy apps are cut off within named bounds,
secrets never leave the daemon, and bad input from an upstream is classified and answered
with an explicit error (never a crash, a hang or a leak)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from intact.config import Config
from intact.daemon import RunningDaemon, running_daemon
from intact.telemetry.runtime import start_telemetry
from support import (
    MESSAGES,
    daemon_for,
    fast_config,
    fast_sim,
    raw_client,
    restored_logging,
    sdk,
    stream_chat,
)
from telemetry.helpers import Sinks

CHAT = {"model": "sim-1", "messages": MESSAGES, "stream": True}
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: intact\r\n"
    b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield from restored_logging()


@contextlib.asynccontextmanager
async def observed(cfg: Config) -> AsyncIterator[tuple[RunningDaemon, Sinks]]:
    """A daemon with real telemetry into in-memory sinks (logs as JSON lines)."""
    spans, reader, stream = InMemorySpanExporter(), InMemoryMetricReader(), io.StringIO()
    rt = start_telemetry(cfg, span_exporter=spans, metric_readers=[reader], log_stream=stream)
    try:
        async with running_daemon(
            cfg, telemetry=rt.telemetry, metrics_handler=rt.metrics_handler
        ) as d:
            yield d, Sinks(rt, spans, reader, stream)
    finally:
        rt.shutdown(timeout=1.0)


async def read_until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    """Everything intact sends until it closes the connection (a reset counts as closed)."""
    got = b""
    async with asyncio.timeout(limit):
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionResetError, BrokenPipeError):
                return got
            if not data:
                return got
            got += data


async def trickle(writer: asyncio.StreamWriter, data: bytes, per_second: int = 2) -> None:
    """Send ``data`` ``per_second`` bytes a second (a slowloris client)."""
    with contextlib.suppress(ConnectionError):
        for i in range(0, len(data), per_second):
            writer.write(data[i : i + per_second])
            await writer.drain()
            await asyncio.sleep(1.0)


# --- slow and greedy apps ---------------------------------------------------------------


async def test_a_request_head_trickled_2_bytes_a_second_is_cut_at_request_read_timeout(
    tmp_path: Path,
) -> None:
    over = {"server": {"request_read_timeout": 1.0}}
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **over) as d:
        reader, writer = await asyncio.open_unix_connection(d.socket_path)
        started = time.monotonic()
        slowloris = asyncio.create_task(trickle(writer, HEAD))
        got = await read_until_closed(reader, limit=10.0)
        elapsed = time.monotonic() - started
        slowloris.cancel()
        writer.close()
        assert got == b""  # closed, no response: the request never arrived
        assert 1.0 <= elapsed < 2.0  # server.request_read_timeout, plus scheduling slack
        assert d.connections is not None and d.connections.snapshot()["read_timeouts"] == 1
        assert d.access is not None
        assert d.access.snapshot()[-1]["refused"]["read_timeout"] == 1
        assert sim.stats.chat_requests == 0
        assert (await stream_chat(sdk(d.socket_path))).error is None  # still serving


async def test_a_request_body_trickled_2_bytes_a_second_gets_408_at_request_read_timeout(
    tmp_path: Path,
) -> None:
    over = {"server": {"request_read_timeout": 1.0}}
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **over) as d:
        reader, writer = await asyncio.open_unix_connection(d.socket_path)
        writer.write(HEAD)  # the head at once, then the body trickles
        started = time.monotonic()
        slowloris = asyncio.create_task(trickle(writer, b'{"model": "sim-1"' + b" " * 183))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        answered = time.monotonic() - started
        body = await read_until_closed(reader, limit=10.0)
        closed = time.monotonic() - started
        slowloris.cancel()
        writer.close()
        assert head.startswith(b"HTTP/1.1 408 ")
        assert b"Connection: close" in head
        assert orjson.loads(body)["error"]["code"] == "request_timeout"
        assert 1.0 <= answered < 2.0  # server.request_read_timeout, plus slack
        # aiohttp reads (and drops) what the app still sends; the read clock bounds that too.
        assert closed < 2 * 1.0 + 1.0
        assert d.access is not None
        assert d.access.snapshot()[-1]["refused"]["read_timeout"] == 1  # counted once
        assert sim.stats.chat_requests == 0
        assert (await stream_chat(sdk(d.socket_path))).error is None


async def test_a_connection_that_sends_nothing_is_closed_at_idle_timeout(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, server={"idle_timeout": 0.5}) as d:
        reader, writer = await asyncio.open_unix_connection(d.socket_path)
        started = time.monotonic()
        assert await read_until_closed(reader, limit=10.0) == b""
        assert 0.5 <= time.monotonic() - started < 1.5
        writer.close()


async def test_a_fast_request_is_not_touched_by_the_read_clock(tmp_path: Path) -> None:
    # Keep-alive reuse across several requests, each arriving well within the bound.
    over = {"server": {"request_read_timeout": 0.5}}
    async with fast_sim() as sim, daemon_for(tmp_path, sim, **over) as d:
        async with raw_client(d.socket_path) as client:
            for _ in range(3):
                resp = await client.post("/v1/chat/completions", json=CHAT)
                assert resp.status_code == 200
                await asyncio.sleep(0.6)  # idle longer than the read bound: not a slow read
        assert d.connections is not None and d.connections.snapshot()["read_timeouts"] == 0


async def test_connections_over_the_per_peer_cap_get_429_and_are_closed(tmp_path: Path) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, server={"max_connections_per_peer": 2}) as d,
    ):
        held = [await asyncio.open_unix_connection(d.socket_path) for _ in range(2)]
        async with raw_client(d.socket_path) as client:
            resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 429
        assert resp.headers["retry-after"] == "1"
        assert resp.headers["connection"] == "close"
        assert resp.json()["error"]["code"] == "too_many_connections"
        assert sim.stats.chat_requests == 0
        assert d.connections is not None
        assert d.connections.snapshot()["busiest_peer_connections"] == 2
        # One of the held connections closes: the peer may connect again.
        held[0][1].close()
        for _ in range(100):
            if d.connections.snapshot()["busiest_peer_connections"] < 2:
                break
            await asyncio.sleep(0.02)
        assert (await stream_chat(sdk(d.socket_path))).error is None
        snap = d.connections.snapshot()
        assert snap["refused_over_limit"] == 1
        held[1][1].close()


# --- secrets never leave the daemon -----------------------------------------------------

SECRET = "sk-intact-test-7f3a9c2e5b1d4068a9e7c1f0"
KEY_ENV = "TEST_UPSTREAM_KEY_SECRET"


def leaks(text: str) -> list[str]:
    """Pieces of SECRET (8 chars or more) found in ``text``. A provider's 401 may echo a
    masked key (first 3 and last 4 characters, as OpenAI does); nothing longer may show."""
    return sorted({SECRET[i : i + 8] for i in range(len(SECRET) - 7) if SECRET[i : i + 8] in text})


async def test_the_api_key_never_appears_in_logs_spans_metrics_errors_or_debug_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    async with (
        fast_sim(api_key=SECRET, retry_after=0.01) as good,
        fast_sim(api_key="sk-some-other-key-entirely-0000") as locked,
    ):
        ups = [
            {"name": "good", "base_url": good.base_url, "api_key_env": KEY_ENV,
             "models": ["sim-1"], "resume": "prefill"},
            {"name": "locked", "base_url": locked.base_url, "api_key_env": KEY_ENV,
             "models": ["locked-1"]},
            {"name": "gone", "base_url": "http://127.0.0.1:9/v1", "api_key_env": KEY_ENV,
             "models": ["gone-1"]},
        ]  # fmt: skip
        cfg = fast_config(
            tmp_path,
            ups,
            retry={"max_attempts": 2},
            telemetry={"log_format": "json", "log_level": "debug", "log_content": True},
        )
        answers: list[str] = []
        async with observed(cfg) as (d, sinks), raw_client(d.socket_path) as client:

            async def ask(model: str, stream: bool = True) -> None:
                body = {"model": model, "messages": MESSAGES, "stream": stream}
                resp = await client.post("/v1/chat/completions", json=body)
                answers.append(f"{resp.status_code} {dict(resp.headers)} {resp.text}")

            await ask("sim-1")  # works: the key is used
            for faults in (
                ["http_429", "http_429"],
                ["http_500", "http_500"],
                ["http_503", "http_503"],
                ["connect_drop", "connect_drop"],
                ["reset@3", "reset@0"],
                ["error_event@2", "error_event@0"],
                ["http_400"],
            ):
                good.schedule_faults(faults)
                await ask("sim-1")
            good.schedule_faults(["http_500", "http_500"])
            await ask("sim-1", stream=False)
            await ask("locked-1")  # 401: the provider rejects the key
            await ask("gone-1")  # connection refused
            models = await client.get("/v1/models")
            answers.append(models.text)
            async with aiohttp.ClientSession() as admin:
                async with admin.get(f"{d.admin_url}/debug/state") as resp:
                    state = await resp.text()
                async with admin.get(f"{d.admin_url}/metrics") as resp:
                    metrics = await resp.text()
        assert good.stats.chat_requests > 8  # the key really was sent upstream
        assert any("401" in a for a in answers) and any("429" in a for a in answers)
        # The provider's 401 echoes the key masked (first 3, last 4 characters), as OpenAI's
        # does, and intact passes the provider's error through: that much reaches the app.
        assert SECRET[-4:] in "\n".join(answers)
    spans = "\n".join(span.to_json() for span in sinks.finished_spans())
    logs = sinks.log_stream.getvalue()
    assert "request_done" in logs and "chat sim-1" in spans  # the sinks did record
    for where, text in {
        "logs": logs,
        "spans": spans,
        "metrics": metrics,
        "debug state": state,
        "app responses": "\n".join(answers),
    }.items():
        assert leaks(text) == [], f"API key in {where}"


def test_debug_state_hides_credentials_in_base_urls() -> None:
    from intact.admin import public_url

    assert public_url("https://user:s3cret@api.example.com/v1") == "https://api.example.com/v1"
    assert public_url("https://x.example.com/v1?api-key=s3cret&v=2") == (
        "https://x.example.com/v1?api-key=redacted&v=redacted"
    )
    assert public_url("http://10.0.0.5:8000/v1") == "http://10.0.0.5:8000/v1"


# --- bad input from upstreams -----------------------------------------------------------


def _chunk(content: str) -> bytes:
    obj = {
        "id": "chatcmpl-bad",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bad",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                     "finish_reason": None}],
    }  # fmt: skip
    return b"data: " + orjson.dumps(obj) + b"\n\n"


OVERSIZED = 9 * 1024 * 1024  # past the SSE decoder's 8 MiB bound on one event


@dataclass
class BadUpstream:
    """Answers each chat request with the bad input its model names."""

    base_url: str = ""
    requests: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        case = body["model"]
        if case == "html":
            return web.Response(
                text="<html><body><h1>502 Bad Gateway</h1></body></html>",
                content_type="text/html",
            )
        if case == "json-error":
            err = {"error": {"message": "The server is overloaded.", "type": "server_error"}}
            return web.json_response(err)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            if case == "not-json":
                await resp.write(b"data: this is not JSON\n\n")
            elif case == "json-array":
                await resp.write(b"data: [1, 2, 3]\n\n")
            elif case == "oversized":
                await resp.write(b'data: {"pad": "')
                piece = b"x" * 65536
                for _ in range(OVERSIZED // len(piece)):
                    await resp.write(piece)
            elif case in ("keepalive-first", "keepalive-mid"):
                if case == "keepalive-mid":
                    await resp.write(_chunk("Hello"))
                while True:  # comments forever
                    await resp.write(b": keep-alive\n\n")
                    await asyncio.sleep(0.05)
            elif case == "good":
                await resp.write(_chunk("Hello there."))
                done = {**orjson.loads(_chunk("")[6:])}
                done["choices"][0]["delta"] = {}
                done["choices"][0]["finish_reason"] = "stop"
                await resp.write(b"data: " + orjson.dumps(done) + b"\n\ndata: [DONE]\n\n")
        return resp


@contextlib.asynccontextmanager
async def bad_upstream() -> AsyncIterator[BadUpstream]:
    up = BadUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield up
    finally:
        await runner.cleanup()


def bad_config(tmp_path: Path, up: BadUpstream, **over: Any) -> Config:
    ups = [{"name": "bad", "base_url": up.base_url, "resume": "prefill"}]
    return fast_config(
        tmp_path,
        ups,
        retry={"max_attempts": 2},
        telemetry={"log_format": "json"},
        **over,
    )


async def outcome(d: RunningDaemon, model: str) -> tuple[int, str | None, float]:
    """(HTTP status, error code, seconds) of one streamed request; a stream that ended with
    an SSE error event reports that event's code."""
    started = time.monotonic()
    async with raw_client(d.socket_path, timeout=60) as client:
        body = {"model": model, "messages": MESSAGES, "stream": True}
        resp = await client.post("/v1/chat/completions", json=body)
    elapsed = time.monotonic() - started
    if resp.status_code != 200:
        return resp.status_code, resp.json()["error"]["code"], elapsed
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    last = events[-1]
    code = None if last == "[DONE]" else orjson.loads(last)["error"]["code"]
    return 200, code, elapsed


# (model, what the app gets, the interruption kind counted, bound in seconds)
BAD_INPUT = [
    ("not-json", (502, "attempts_exhausted"), "protocol_error", 3.0),
    ("json-array", (502, "attempts_exhausted"), "protocol_error", 3.0),
    ("oversized", (502, "attempts_exhausted"), "protocol_error", 5.0),
    ("html", (502, "attempts_exhausted"), "protocol_error", 3.0),
    ("json-error", (502, "attempts_exhausted"), "error_event", 3.0),
    # first_token_timeout (1 s) per attempt: comments are not a first token
    ("keepalive-first", (504, "attempts_exhausted"), "first_token_timeout", 4.0),
]


@pytest.mark.parametrize(("model", "expected", "kind", "bound"), BAD_INPUT)
async def test_bad_upstream_input_is_classified_and_answered_explicitly(
    tmp_path: Path, model: str, expected: tuple[int, str], kind: str, bound: float
) -> None:
    async with bad_upstream() as up, observed(bad_config(tmp_path, up)) as (d, sinks):
        status, code, elapsed = await outcome(d, model)
        assert (status, code) == expected
        assert elapsed < bound
        assert up.requests == 2  # retried once (retry.max_attempts = 2), then told
        assert await outcome(d, "good") == (200, None, pytest.approx(0, abs=bound))
    assert sinks.counts("intact.interruptions", "kind") == {(kind,): 2}
    [failed] = [ln for ln in sinks.log_lines() if ln["event"] == "request_done"][:1]
    assert failed["outcome"] == "failed"


async def test_endless_keepalives_mid_stream_count_as_a_stall(tmp_path: Path) -> None:
    async with bad_upstream() as up:
        cfg = bad_config(tmp_path, up, stream={"total_timeout": 5.0, "stall_timeout": 0.3})
        async with observed(cfg) as (d, _):
            _, code, elapsed = await outcome(d, "keepalive-mid")
    assert code != "deadline_exceeded" and elapsed < 2.0


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_bad_input_leaves_no_fds_tasks_or_memory_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rounds = int(os.environ.get("BAD_INPUT_ROUNDS", "4"))
    # Every request fails here: keep the breaker out of it, this is about what is left over.
    # No in-memory telemetry sinks here: they keep every span and log line by design.
    async with (
        bad_upstream() as up,
        running_daemon(bad_config(tmp_path, up, breaker={"minimum_calls": 1000})) as d,
    ):
        # Warm up: connection pools, and the allocator's high-water mark for the 9 MiB case.
        for model, *_ in BAD_INPUT:
            await outcome(d, model)
        gc.collect()
        before = (_rss_kib(), _fds(), len(asyncio.all_tasks()))
        rss = []
        for _ in range(rounds):
            for model, expected, _kind, _bound in BAD_INPUT:
                assert (await outcome(d, model))[:2] == expected
            gc.collect()
            rss.append(_rss_kib())
        await asyncio.sleep(0.2)  # let closed connections finish closing
        after = (_rss_kib(), _fds(), len(asyncio.all_tasks()))
        assert await outcome(d, "good") == (200, None, pytest.approx(0, abs=5))
    with capsys.disabled():
        print(
            f"\nbad input, {rounds} rounds of {len(BAD_INPUT)} cases: RSS {before[0]} KiB, "
            f"after each round {rss} KiB; fds {before[1]} -> {after[1]}; "
            f"tasks {before[2]} -> {after[2]}"
        )
    assert after[1] <= before[1] + 2  # no leaked sockets
    assert after[2] <= before[2]  # no leaked tasks
    # Flat: a leak of what one round handles (9 MiB lines, twice) would add up round after
    # round; one 9 MiB buffer the allocator has not handed back yet is not a trend.
    assert min(rss[-2:]) - rss[0] < 8 * 1024
