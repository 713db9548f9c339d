"""Traces: one SERVER span per app request, one GenAI CLIENT span per upstream attempt, W3C
trace context in from the app and out to the upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from intact.simulator import SimulatedUpstream, SimulatorSettings, expected_answer
from telemetry.helpers import (
    FAST_SIM,
    MESSAGES,
    app_client,
    daemon_config,
    serving,
    stream_chat,
)

pytestmark = pytest.mark.timeout(15)

APP_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN_ID = "00f067aa0ba902b7"
APP_TRACEPARENT = f"00-{APP_TRACE_ID}-{APP_SPAN_ID}-01"


def split(spans: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in spans]
    attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
    attempts.sort(key=lambda s: s.attributes["intact.attempt"] if s.attributes else 0)
    return servers[0], attempts


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


async def test_recovered_stream_has_a_server_span_and_a_client_span_per_attempt(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url)
    sinks = start_sinks(cfg)
    sim.schedule_faults(["reset@5", "error_event@10"])
    async with serving(cfg, sinks) as d:
        got = await stream_chat(app_client(d.socket_path), stream_options={"include_usage": True})
    assert got.error is None
    assert got.text == expected_answer(MESSAGES).content

    server, attempts = split(sinks.finished_spans())
    assert server.name == "POST /v1/chat/completions"
    assert server.status.status_code is StatusCode.UNSET
    assert {k: server.attributes[k] for k in (
        "intact.outcome", "intact.attempts", "intact.interruptions", "intact.resumes",
        "gen_ai.request.model", "gen_ai.request.stream", "http.response.status_code",
    )} == {
        "intact.outcome": "recovered", "intact.attempts": 3, "intact.interruptions": 2,
        "intact.resumes": 2, "gen_ai.request.model": "sim-1", "gen_ai.request.stream": True,
        "http.response.status_code": 200,
    }  # fmt: skip
    assert server.attributes["intact.interruption.kinds"] == ("reset", "error_event")

    assert [a.name for a in attempts] == ["chat sim-1"] * 3
    trace_id, server_span_id = hex_ids(server)
    for number, (attempt, reason) in enumerate(
        zip(attempts, ["initial", "resume", "resume"], strict=True), start=1
    ):
        attrs = dict(attempt.attributes or {})
        assert attempt.parent is not None
        assert format(attempt.parent.span_id, "016x") == server_span_id
        assert hex_ids(attempt)[0] == trace_id
        assert {k: attrs[k] for k in (
            "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
            "gen_ai.request.stream", "server.address", "server.port", "intact.attempt",
            "intact.attempt.reason", "intact.upstream",
        )} == {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "sim-1", "gen_ai.request.stream": True,
            "server.address": "127.0.0.1", "server.port": sim.port, "intact.attempt": number,
            "intact.attempt.reason": reason, "intact.upstream": "sim",
        }  # fmt: skip
        assert "gen_ai.system" not in attrs
        assert "intact.first_chunk" in [e.name for e in attempt.events]

    first, second, last = attempts
    for failed, kind in ((first, "reset"), (second, "error_event")):
        assert failed.status.status_code is StatusCode.ERROR
        assert failed.attributes is not None
        assert failed.attributes["error.type"] == kind
        assert failed.attributes["intact.interruption.kind"] == kind
        [event] = [e for e in failed.events if e.name == "intact.interruption"]
        assert event.attributes is not None
        assert event.attributes["kind"] == kind
        assert event.attributes["message"]
    assert second.attributes is not None and last.attributes is not None
    assert second.attributes["intact.resume.mode"] == "prefill"
    assert second.attributes["intact.resume.prefix_chars"] > 0
    assert (
        last.attributes["intact.resume.prefix_chars"]
        > second.attributes["intact.resume.prefix_chars"]
    )

    assert last.status.status_code is StatusCode.UNSET
    assert "error.type" not in last.attributes
    assert str(last.attributes["gen_ai.response.id"]).startswith("chatcmpl-")
    assert last.attributes["gen_ai.response.model"] == "sim-1"
    assert last.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert last.attributes["gen_ai.usage.input_tokens"] > 0
    assert (
        last.attributes["gen_ai.usage.output_tokens"] == last.attributes["intact.delivered_tokens"]
    )


@pytest.fixture
async def recording_proxy(sim: SimulatedUpstream) -> AsyncIterator[tuple[str, list[Any]]]:
    """A loopback hop in front of the simulator that records each request's headers."""
    seen: list[Any] = []
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.copy())
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        url = f"{sim.base_url}/chat/completions"
        async with session.post(url, data=body, headers=headers) as upstream:
            resp = web.StreamResponse(
                status=upstream.status,
                headers={"Content-Type": upstream.headers.get("Content-Type", "text/plain")},
            )
            await resp.prepare(request)
            async for data in upstream.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1", seen
    await runner.cleanup()
    await session.close()


async def test_app_traceparent_parents_the_server_span_and_each_attempt_propagates_its_own(
    tmp_path: Path,
    sim: SimulatedUpstream,
    recording_proxy: tuple[str, list[Any]],
    start_sinks: Any,
) -> None:
    proxy_url, seen = recording_proxy
    cfg = daemon_config(tmp_path, proxy_url)
    sinks = start_sinks(cfg)
    # An error event is a clean SSE stream, so the proxy needs no fault plumbing of its own.
    sim.schedule_faults(["error_event@6"])
    async with serving(cfg, sinks) as d:
        got = await stream_chat(
            app_client(d.socket_path), extra_headers={"traceparent": APP_TRACEPARENT}
        )
    assert got.error is None

    server, attempts = split(sinks.finished_spans())
    assert hex_ids(server)[0] == APP_TRACE_ID
    assert server.parent is not None
    assert server.parent.is_remote
    assert format(server.parent.span_id, "016x") == APP_SPAN_ID
    assert len(attempts) == 2
    assert len(seen) == 2
    for headers, attempt in zip(seen, attempts, strict=True):
        trace_id, span_id = hex_ids(attempt)
        assert trace_id == APP_TRACE_ID
        assert headers["traceparent"] == f"00-{APP_TRACE_ID}-{span_id}-01"


async def test_without_traceparent_the_server_span_is_a_root(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url)
    sinks = start_sinks(cfg)
    async with serving(cfg, sinks) as d:
        got = await stream_chat(app_client(d.socket_path))
    assert got.error is None
    server, [attempt] = split(sinks.finished_spans())
    assert server.parent is None
    assert server.attributes is not None
    assert server.attributes["intact.outcome"] == "completed"
    assert attempt.attributes is not None
    assert attempt.attributes["intact.attempt.reason"] == "initial"
    assert "intact.resume.mode" not in attempt.attributes


async def test_failed_stream_marks_the_server_span_as_error(
    tmp_path: Path, sim: SimulatedUpstream, start_sinks: Any
) -> None:
    cfg = daemon_config(tmp_path, sim.base_url, retry={"max_attempts": 2})
    sinks = start_sinks(cfg)
    sim.schedule_faults(["http_500", "http_500"])
    async with serving(cfg, sinks) as d:
        got = await stream_chat(app_client(d.socket_path))
    assert got.error is not None
    server, attempts = split(sinks.finished_spans())
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["intact.outcome"] == "failed"
    assert server.attributes["error.type"] == "attempts_exhausted"
    assert [a.attributes["intact.attempt.reason"] for a in attempts if a.attributes] == [
        "initial", "retry",
    ]  # fmt: skip
    for attempt in attempts:
        assert attempt.attributes is not None
        assert attempt.attributes["error.type"] == "http_5xx"
        assert attempt.attributes["http.response.status_code"] == 500


async def test_rejected_request_is_not_an_interruption_nor_a_server_error(
    tmp_path: Path, start_sinks: Any
) -> None:
    async with SimulatedUpstream(SimulatorSettings(**FAST_SIM, api_key="secret")) as sim:
        cfg = daemon_config(tmp_path, sim.base_url)
        sinks = start_sinks(cfg)
        async with serving(cfg, sinks) as d:
            got = await stream_chat(app_client(d.socket_path))
    assert got.error is not None
    assert getattr(got.error, "status_code", None) == 401
    server, [attempt] = split(sinks.finished_spans())
    assert server.status.status_code is StatusCode.UNSET
    assert server.attributes is not None
    assert server.attributes["intact.outcome"] == "rejected"
    assert server.attributes["http.response.status_code"] == 401
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.attributes is not None
    assert attempt.attributes["error.type"] == "http_4xx"
    assert "intact.interruption.kind" not in attempt.attributes
    assert not [e for e in attempt.events if e.name == "intact.interruption"]
