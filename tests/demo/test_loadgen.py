"""The load generator: conversations, the verdict on what the app saw, and real runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from intact.config import build_config
from intact.daemon import RunningDaemon, running_daemon
from intact.demo.loadgen import (
    TOOLS,
    Conversation,
    ConversationMix,
    LoadGenerator,
    LoadSettings,
    LoadStats,
    Observation,
    ObservedError,
    RequestResult,
    Reservoir,
    Verdict,
    judge,
    make_conversation,
)
from intact.demo.outcomes import RelayOutcomes
from intact.simulator import ExpectedAnswer, SimulatedUpstream, SimulatorSettings

pytestmark = pytest.mark.timeout(30)

TEXT = ExpectedAnswer(
    content="The quiet river carries a letter.", tool_calls=[], finish_reason="stop"
)
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}
TOOL = ExpectedAnswer(content=None, tool_calls=[CALL], finish_reason="tool_calls")
ERROR = ObservedError(
    "APIError", "all attempts failed", None, "stream_interrupted", "attempts_exhausted"
)


def seen(
    content: str = "",
    finish: str | None = None,
    *,
    error: ObservedError | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> Observation:
    return Observation(
        content=content, tool_calls=tool_calls or [], finish_reason=finish, error=error
    )


# --- the verdict -------------------------------------------------------------------------------


def test_byte_exact_text_with_its_finish_reason_is_exact() -> None:
    assert judge(TEXT, seen(TEXT.content or "", "stop")).verdict is Verdict.EXACT


def test_error_after_a_prefix_of_the_answer_is_an_explicit_error() -> None:
    judgement = judge(TEXT, seen("The quiet ri", error=ERROR))
    assert judgement.verdict is Verdict.EXPLICIT_ERROR
    assert "stream_interrupted:attempts_exhausted" in judgement.detail


def test_error_before_any_text_is_an_explicit_error() -> None:
    http = ObservedError("InternalServerError", "overloaded", 503, "server_error", None)
    assert judge(TEXT, seen(error=http)).verdict is Verdict.EXPLICIT_ERROR
    assert http.label == "http_503:server_error"


def test_clean_end_short_of_the_answer_is_a_silent_truncation() -> None:
    assert judge(TEXT, seen("The quiet river", "stop")).verdict is Verdict.SILENT_TRUNCATION


def test_whole_text_without_finish_reason_is_a_silent_truncation() -> None:
    judgement = judge(TEXT, seen(TEXT.content or "", None))
    assert judgement.verdict is Verdict.SILENT_TRUNCATION
    assert "finish_reason None" in judgement.detail


def test_duplicated_text_is_garbled_and_the_diff_shows_where() -> None:
    duplicated = "The quiet river river carries a letter."
    judgement = judge(TEXT, seen(duplicated, "stop"))
    assert judgement.verdict is Verdict.GARBLED
    assert "differs at char 16" in judgement.detail
    assert "expected 'The quiet river carries" in judgement.detail
    assert "got 'The quiet river river carries" in judgement.detail


def test_text_that_is_not_a_prefix_is_garbled_even_with_an_error() -> None:
    assert judge(TEXT, seen("The quiet rover", error=ERROR)).verdict is Verdict.GARBLED


def test_wrong_finish_reason_on_the_whole_text_is_garbled() -> None:
    assert judge(TEXT, seen(TEXT.content or "", "length")).verdict is Verdict.GARBLED


def test_equal_tool_calls_are_exact() -> None:
    assert judge(TOOL, seen("", "tool_calls", tool_calls=[CALL])).verdict is Verdict.EXACT


def test_half_a_tool_call_without_an_error_is_a_silent_truncation() -> None:
    half = {**CALL, "function": {"name": "get_weather", "arguments": '{"ci'}}
    verdict = judge(TOOL, seen("", None, tool_calls=[half])).verdict
    assert verdict is Verdict.SILENT_TRUNCATION


def test_a_different_tool_call_is_garbled() -> None:
    other = {**CALL, "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    assert judge(TOOL, seen("", "tool_calls", tool_calls=[other])).verdict is Verdict.GARBLED


def test_transport_errors_have_their_own_labels() -> None:
    assert ObservedError("APIConnectionError", "Connection error.").label == "connection_error"
    assert ObservedError.from_exception(TimeoutError()).label == "client_timeout"


# --- conversations and bounded stats -----------------------------------------------------------


def test_conversations_are_deterministic_per_seed_and_index() -> None:
    mix = ConversationMix(tools_fraction=0.3)
    assert make_conversation(7, 3, mix) == make_conversation(7, 3, mix)
    prompts = {make_conversation(7, i, mix).last_user_text() for i in range(50)}
    assert len(prompts) == 50


def test_mix_shapes_the_requests() -> None:
    everything = ConversationMix(non_stream_fraction=0.0, usage_fraction=1.0, tools_fraction=1.0)
    convs = [make_conversation(1, i, everything) for i in range(40)]
    assert all(c.stream and c.include_usage and c.tools == TOOLS for c in convs)
    # Some end with the tool results, so the expected answer is text again.
    assert {c.expected().finish_reason for c in convs} == {"tool_calls", "stop"}
    capped = ConversationMix(non_stream_fraction=1.0, max_tokens_fraction=1.0)
    for conv in (make_conversation(1, i, capped) for i in range(20)):
        assert not conv.stream and conv.max_tokens is not None
        assert conv.options() == {conv.max_tokens_key: conv.max_tokens}


def test_reservoir_percentiles_stay_bounded() -> None:
    sample = Reservoir(capacity=100)
    for value in range(10_000):
        sample.add(float(value))
    assert sample.count == 10_000
    p50 = sample.percentile(50)
    assert p50 is not None and 3_000 < p50 < 7_000
    assert Reservoir().percentile(95) is None


def test_stats_keep_only_the_first_anomalies() -> None:
    stats = LoadStats(max_anomalies=2)
    conv = Conversation("lg-0-0", "sim-1", ({"role": "user", "content": "hi"},), stream=True)
    broken = RequestResult(
        conv, seen("x", "stop"), judge(TEXT, seen("x", "stop")), 0.0, 1.0, 0.1, None
    )
    for _ in range(5):
        stats.record(broken)
    assert stats.garbled == 5 and stats.broken == 5
    assert len(stats.anomalies) == 2 and stats.anomalies_dropped == 3


# --- real runs: the openai SDK through intact's socket ----------------------------------------


FAST = SimulatorSettings(tok_per_s=0.0, ttft=0.0, repeat_prob=0.0, seed=3)


@contextlib.asynccontextmanager
async def daemon(
    tmp_path: Path, sim: SimulatedUpstream, telemetry: RelayOutcomes, **retry: Any
) -> AsyncIterator[RunningDaemon]:
    config = build_config(
        {
            "server": {"socket": str(tmp_path / "intact.sock"), "metrics_addr": "off"},
            "retry": {"base_delay": 0.01, **retry},
            "stream": {"stall_timeout": 0.3, "first_token_timeout": 1.0},
            "upstreams": [{"name": "sim", "base_url": sim.base_url, "resume": "prefill"}],
        }
    )
    async with running_daemon(config, telemetry=telemetry) as d:
        yield d


def one_stream(**mix: Any) -> LoadSettings:
    return LoadSettings(
        concurrency=1, requests=1, seed=1, mix=ConversationMix(non_stream_fraction=0.0, **mix)
    )


async def test_stream_broken_mid_way_is_recovered_and_judged_exact(tmp_path: Path) -> None:
    outcomes = RelayOutcomes()
    async with SimulatedUpstream(FAST) as sim, daemon(tmp_path, sim, outcomes) as d:
        sim.schedule_faults(["reset@5"])
        stats = await LoadGenerator(d.socket_path, one_stream()).run()
    assert stats.verdicts == {Verdict.EXACT: 1}
    assert outcomes.outcomes["recovered"] == 1
    assert outcomes.summary_for("lg-1-0") is not None


async def test_stream_that_cannot_be_recovered_is_judged_an_explicit_error(
    tmp_path: Path,
) -> None:
    outcomes = RelayOutcomes()
    async with (
        SimulatedUpstream(FAST) as sim,
        daemon(tmp_path, sim, outcomes, max_attempts=2) as d,
    ):
        sim.schedule_faults(["reset@5", "reset@0"])
        results: list[RequestResult] = []
        stats = await LoadGenerator(d.socket_path, one_stream(), on_result=results.append).run()
    assert stats.verdicts == {Verdict.EXPLICIT_ERROR: 1}
    assert stats.error_codes == {"stream_interrupted:attempts_exhausted": 1}
    assert results[0].observation.content  # text had reached the app before the error
    assert stats.anomalies == []  # an honest error is not an anomaly


@contextlib.asynccontextmanager
async def naive_proxy(socket_path: str, upstream: str) -> AsyncIterator[None]:
    """A relay with no recovery at all: it copies the upstream's bytes to the app."""

    async def relay(request: web.Request) -> web.StreamResponse:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{upstream}/chat/completions",
                data=await request.read(),
                headers={"Content-Type": "application/json"},
            ) as upstream_resp,
        ):
            response = web.StreamResponse(
                status=upstream_resp.status,
                headers={"Content-Type": upstream_resp.headers["Content-Type"]},
            )
            await response.prepare(request)
            with contextlib.suppress(aiohttp.ClientPayloadError):
                async for data in upstream_resp.content.iter_any():
                    await response.write(data)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", relay)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, socket_path).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def test_truncation_passed_through_without_intact_is_caught_as_silent(
    tmp_path: Path,
) -> None:
    socket_path = str(tmp_path / "naive.sock")
    async with SimulatedUpstream(FAST) as sim, naive_proxy(socket_path, sim.base_url):
        sim.schedule_faults(["truncate@mid"])
        stats = await LoadGenerator(socket_path, one_stream()).run()
    assert stats.verdicts == {Verdict.SILENT_TRUNCATION: 1}
    assert stats.anomalies[0].verdict is Verdict.SILENT_TRUNCATION
    assert "finish_reason None" in stats.anomalies[0].detail


async def test_cancel_stops_every_client_and_counts_the_cut_requests(tmp_path: Path) -> None:
    slow = SimulatorSettings(tok_per_s=5.0, ttft=0.0, seed=3)
    async with SimulatedUpstream(slow) as sim, daemon(tmp_path, sim, RelayOutcomes()) as d:
        load = LoadGenerator(d.socket_path, LoadSettings(concurrency=4, seed=1))
        task = asyncio.create_task(load.run())
        await asyncio.sleep(0.5)
        assert load.stats.in_flight == 4
        load.cancel()
        stats = await asyncio.wait_for(task, 5)
    assert stats.cancelled == 4 and stats.in_flight == 0 and stats.done == 0
    assert not os.path.exists(d.socket_path)


async def test_stop_lets_the_requests_in_flight_finish(tmp_path: Path) -> None:
    paced = SimulatorSettings(tok_per_s=200.0, ttft=0.0, seed=3)
    async with SimulatedUpstream(paced) as sim, daemon(tmp_path, sim, RelayOutcomes()) as d:
        load = LoadGenerator(d.socket_path, LoadSettings(concurrency=3, seed=1))
        task = asyncio.create_task(load.run())
        await asyncio.sleep(0.2)
        load.stop()
        stats = await asyncio.wait_for(task, 10)
    assert stats.cancelled == 0 and stats.in_flight == 0
    assert stats.done == stats.issued >= 3
    assert stats.exact == stats.done


async def test_a_crashing_result_hook_is_raised_not_swallowed(tmp_path: Path) -> None:
    def crash(result: RequestResult) -> None:
        raise RuntimeError("hook bug")

    async with SimulatedUpstream(FAST) as sim, daemon(tmp_path, sim, RelayOutcomes()) as d:
        with pytest.raises(RuntimeError, match="hook bug"):
            await LoadGenerator(d.socket_path, one_stream(), on_result=crash).run()
