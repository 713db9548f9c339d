"""Mid-stream recovery: whatever breaks, the app gets the exact answer or an explicit error."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intact.simulator import expected_answer
from support import MESSAGES, daemon_for, fast_sim, sdk, sse_lines, stream_chat

EXPECTED = expected_answer(MESSAGES)
MID_STREAM = ["reset", "stall", "error_event", "truncate"]
BEFORE_RESPONSE = ["http_429", "http_500", "http_503", "connect_drop"]
POSITIONS = ["0", "1", "mid", "last"]  # no chunk, role only, middle, all text but no finish


def assert_prefix_of_answer(text: str, answer: str | None = EXPECTED.content) -> None:
    assert answer is not None and answer.startswith(text), "app got text that is not a prefix"


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", MID_STREAM)
async def test_stream_fault_at_any_position_gives_the_exact_answer(
    tmp_path: Path, kind: str, position: str
) -> None:
    async with fast_sim(retry_after=0.05) as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults([f"{kind}@{position}"])
        seen = await stream_chat(sdk(d.socket_path))
    assert seen.error is None
    assert seen.text == EXPECTED.content
    assert seen.finish_reason == EXPECTED.finish_reason
    assert seen.roles == 1 and len(seen.chunk_ids) == 1
    assert sim.stats.faults_injected[kind] == 1


@pytest.mark.parametrize("kind", BEFORE_RESPONSE)
async def test_fault_before_the_response_is_retried_invisibly(tmp_path: Path, kind: str) -> None:
    async with fast_sim(retry_after=0.05) as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults([kind])
        seen = await stream_chat(sdk(d.socket_path))
    assert seen.error is None and seen.text == EXPECTED.content and seen.roles == 1


@pytest.mark.parametrize(
    "spec", [f"{k}@{p}" for k in MID_STREAM for p in POSITIONS] + BEFORE_RESPONSE
)
async def test_non_stream_request_recovers_from_every_fault(tmp_path: Path, spec: str) -> None:
    async with fast_sim(retry_after=0.05) as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults([spec])
        resp = await sdk(d.socket_path).chat.completions.create(model="sim-1", messages=MESSAGES)
    assert resp.choices[0].message.content == EXPECTED.content
    assert resp.choices[0].finish_reason == EXPECTED.finish_reason


@pytest.mark.parametrize("mode", ["prefill", "prefix", "instruct"])
async def test_each_resume_mode_continues_from_the_partial_text(tmp_path: Path, mode: str) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(
            tmp_path, sim, upstreams=[{"name": "s", "base_url": sim.base_url, "resume": mode}]
        ) as d,
    ):
        sim.schedule_faults(["reset@20"])
        seen = await stream_chat(sdk(d.socket_path))
        resume_body = sim.stats.recent_requests[-1].body
    assert seen.error is None and seen.text == EXPECTED.content
    assert sim.stats.requests_by_kind[mode] == 1
    messages = resume_body["messages"]
    assert messages[: len(MESSAGES)] == MESSAGES
    partial = messages[len(MESSAGES)]
    assert partial["role"] == "assistant" and EXPECTED.content.startswith(partial["content"])
    assert len(partial["content"]) > 0
    if mode == "prefill":
        assert resume_body["continue_final_message"] is True
        assert resume_body["add_generation_prompt"] is False
    elif mode == "prefix":
        assert partial["prefix"] is True
    else:
        assert messages[-1]["role"] == "user" and "Continue" in messages[-1]["content"]


async def test_repeated_tail_in_the_continuation_is_spliced_out(tmp_path: Path) -> None:
    async with (
        fast_sim(repeat_prob=1.0, whitespace_variation_prob=0.5) as sim,
        daemon_for(tmp_path, sim) as d,
    ):
        for cut in (3, 9, 17, 40, "last"):
            sim.schedule_faults([f"reset@{cut}"])
            seen = await stream_chat(sdk(d.socket_path))
            assert seen.error is None and seen.text == EXPECTED.content, f"cut at {cut}"


async def test_continuation_that_starts_over_is_spliced_without_duplicates(tmp_path: Path) -> None:
    async with fast_sim(restart_prob=1.0) as sim, daemon_for(tmp_path, sim) as d:
        for cut in (2, 12, "mid", "last"):
            sim.schedule_faults([f"error_event@{cut}"])
            seen = await stream_chat(sdk(d.socket_path))
            assert seen.error is None and seen.text == EXPECTED.content, f"cut at {cut}"


async def test_continuation_interrupted_again_is_resumed_again(tmp_path: Path) -> None:
    async with fast_sim(repeat_prob=0.5) as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@5", "truncate@7", "stall@3", "error_event@1"])
        lines = await sse_lines(
            d.socket_path, {"model": "sim-1", "messages": MESSAGES, "stream": True}
        )
    text = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in lines
        if line.startswith(b"data: {") and b'"choices":[{' in line
    )
    assert text == EXPECTED.content
    assert b": intact attempts=5 resumed=4" in lines
    assert lines[-1] == b"data: [DONE]"


async def test_usage_after_recovery_reports_original_prompt_and_received_tokens(
    tmp_path: Path,
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        clean = await stream_chat(sdk(d.socket_path), stream_options={"include_usage": True})
        sim.schedule_faults(["reset@30"])
        healed = await stream_chat(sdk(d.socket_path), stream_options={"include_usage": True})
    assert healed.text == clean.text
    assert healed.usage.prompt_tokens == clean.usage.prompt_tokens
    assert healed.usage.completion_tokens == clean.usage.completion_tokens


async def test_max_tokens_shrinks_by_what_was_already_generated(tmp_path: Path) -> None:
    expected = expected_answer(MESSAGES, max_tokens=25)
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@11"])
        seen = await stream_chat(sdk(d.socket_path), max_tokens=25)
        resume_body = sim.stats.recent_requests[-1].body
    assert seen.text == expected.content and seen.finish_reason == "length"
    assert resume_body["max_tokens"] == 25 - 10  # ten content chunks were delivered


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "refund",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
    },
]


@pytest.mark.parametrize("cut", [2, 3, 5, 8, "mid", "last"])
async def test_tool_call_cut_mid_arguments_arrives_whole(tmp_path: Path, cut: object) -> None:
    msgs = [{"role": "user", "content": "refund order 77 please"}]
    expected = expected_answer(msgs, tools=TOOLS)
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults([f"reset@{cut}"])
        seen = await stream_chat(sdk(d.socket_path), msgs, tools=TOOLS)
    assert seen.error is None and seen.finish_reason == "tool_calls"
    got = [(c["name"], orjson.loads(c["arguments"])) for _, c in sorted(seen.tool_calls.items())]
    want = [
        (c["function"]["name"], orjson.loads(c["function"]["arguments"]))
        for c in expected.tool_calls
    ]
    assert got == want


async def test_attempts_exhausted_mid_stream_is_an_explicit_error(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, retry={"max_attempts": 3}) as d:
        sim.schedule_faults(["reset@10", "reset@2", "reset@2"])
        seen = await stream_chat(sdk(d.socket_path))
    assert isinstance(seen.error, openai.APIError)
    assert seen.error.code == "attempts_exhausted"
    assert seen.error.type == "stream_interrupted"
    assert seen.text and seen.finish_reason is None
    assert_prefix_of_answer(seen.text)


async def test_spent_retry_budget_mid_stream_is_an_explicit_error(tmp_path: Path) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, retry={"budget_ratio": 0.0, "budget_min_per_second": 0.0}) as d,
    ):
        sim.schedule_faults(["reset@10"])
        seen = await stream_chat(sdk(d.socket_path))
    assert isinstance(seen.error, openai.APIError)
    assert seen.error.code == "retry_budget_exhausted"
    assert_prefix_of_answer(seen.text)


async def test_open_breaker_mid_stream_is_an_explicit_error(tmp_path: Path) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(
            tmp_path,
            sim,
            breaker={"minimum_calls": 1, "failure_rate_threshold": 0.5, "open_duration": 30.0},
        ) as d,
    ):
        sim.schedule_faults(["reset@10"])
        seen = await stream_chat(sdk(d.socket_path))
    assert isinstance(seen.error, openai.APIError)
    assert seen.error.code == "upstream_unavailable"
    assert_prefix_of_answer(seen.text)


async def test_restart_mode_cannot_continue_visible_text(tmp_path: Path) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(
            tmp_path, sim, upstreams=[{"name": "s", "base_url": sim.base_url, "resume": "restart"}]
        ) as d,
    ):
        sim.schedule_faults(["reset@1"])  # only the role delta was visible: regenerate
        ok = await stream_chat(sdk(d.socket_path))
        sim.schedule_faults(["reset@10"])
        lost = await stream_chat(sdk(d.socket_path))
    assert ok.error is None and ok.text == EXPECTED.content
    assert isinstance(lost.error, openai.APIError) and lost.error.code == "not_resumable"
    assert_prefix_of_answer(lost.text)


async def test_n_above_one_cannot_be_resumed_after_output(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@6"])
        seen = await stream_chat(sdk(d.socket_path), n=2)
        sim.schedule_faults(["http_500"])
        before = await stream_chat(sdk(d.socket_path), n=2)
    assert isinstance(seen.error, openai.APIError) and seen.error.code == "not_resumable"
    assert before.error is None  # before the first byte a retry is still invisible


async def test_continuation_upstream_4xx_after_output_is_explicit(tmp_path: Path) -> None:
    # A provider that refuses prefill (Claude 4.6 answers 400) refuses the resume request:
    # the stream must end explicitly, never as if complete.
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@10", "http_400"])
        seen = await stream_chat(sdk(d.socket_path))
        assert sim.stats.chat_requests == 2  # a final refusal is not retried
    assert isinstance(seen.error, openai.APIError)
    assert seen.error.code == "resume_rejected" and "prefill" in seen.error.message
    assert_prefix_of_answer(seen.text)


# -- the invariant, over random fault schedules -------------------------------------------

FAULT = st.one_of(
    st.sampled_from(["none", *BEFORE_RESPONSE]),
    st.tuples(
        st.sampled_from(MID_STREAM), st.one_of(st.integers(0, 60), st.sampled_from(["mid", "last"]))
    ).map(lambda kp: f"{kp[0]}@{kp[1]}"),
)


async def _scenario(
    schedule: list[str], repeat: float, restart: float, mode: str, stream: bool, max_attempts: int
) -> tuple[dict[str, Any], int]:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            fast_sim(
                repeat_prob=repeat,
                restart_prob=restart,
                retry_after=0.01,
                whitespace_variation_prob=0.5,
            ) as sim,
            daemon_for(
                Path(tmp),
                sim,
                retry={"max_attempts": max_attempts},
                stream={"stall_timeout": 0.15, "first_token_timeout": 0.3},
                upstreams=[{"name": "s", "base_url": sim.base_url, "resume": mode}],
            ) as d,
        ):
            sim.schedule_faults(schedule)
            client = sdk(d.socket_path)
            if stream:
                seen = await stream_chat(client)
                return {
                    "text": seen.text,
                    "finish": seen.finish_reason,
                    "error": seen.error,
                }, sim.stats.chat_requests
            try:
                resp = await client.chat.completions.create(model="sim-1", messages=MESSAGES)
            except openai.APIError as exc:
                return {"text": "", "finish": None, "error": exc}, sim.stats.chat_requests
            choice = resp.choices[0]
            return {
                "text": choice.message.content,
                "finish": choice.finish_reason,
                "error": None,
            }, sim.stats.chat_requests


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=st.lists(FAULT, min_size=0, max_size=7),
    repeat=st.sampled_from([0.0, 0.5, 1.0]),
    restart=st.sampled_from([0.0, 0.3]),
    mode=st.sampled_from(["prefill", "prefix", "instruct"]),
    stream=st.booleans(),
    max_attempts=st.integers(2, 6),
)
def test_invariant_holds_for_random_fault_schedules(
    schedule: list[str], repeat: float, restart: float, mode: str, stream: bool, max_attempts: int
) -> None:
    seen, requests = asyncio.run(_scenario(schedule, repeat, restart, mode, stream, max_attempts))
    assert requests <= max_attempts
    faults = [s for s in schedule if s != "none"]
    if seen["error"] is None:
        # Complete: every character once, in order, with the upstream's finish_reason.
        assert seen["text"] == EXPECTED.content
        assert seen["finish"] == EXPECTED.finish_reason
    else:
        # Explicit error: only when attempts ran out, and what arrived is a prefix.
        assert len(faults) >= max_attempts
        assert isinstance(seen["error"], openai.APIError)
        assert_prefix_of_answer(seen["text"])
    if len(faults) < max_attempts:
        assert seen["error"] is None


async def test_continuation_sends_no_empty_chunks(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@4"])
        lines = await sse_lines(
            d.socket_path, {"model": "sim-1", "messages": MESSAGES, "stream": True}
        )
    chunks = [orjson.loads(line[6:]) for line in lines if line.startswith(b"data: {")]
    for chunk in chunks[1:]:
        choice = chunk["choices"][0]
        assert choice["delta"] or choice["finish_reason"], chunk


@pytest.mark.parametrize("kind", MID_STREAM)
async def test_break_right_after_the_max_tokens_th_token_ends_with_length(
    tmp_path: Path, kind: str
) -> None:
    expected = expected_answer(MESSAGES, max_tokens=10)
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults([f"{kind}@last"])
        seen = await stream_chat(sdk(d.socket_path), max_tokens=10)
        assert sim.stats.chat_requests == 1  # nothing left to ask the upstream for
    assert seen.error is None
    assert seen.text == expected.content
    assert seen.finish_reason == "length"


@pytest.mark.parametrize("across", [False, True])
async def test_resume_moves_to_the_next_upstream_only_when_allowed(
    tmp_path: Path, across: bool
) -> None:
    async with (
        fast_sim(tok_per_s=50.0) as primary,
        fast_sim() as secondary,
        daemon_for(
            tmp_path,
            [primary, secondary],
            recovery={"resume_across_upstreams": across},
            retry={"max_attempts": 4},
        ) as d,
    ):
        primary.schedule_faults(["reset@10"])
        task = asyncio.create_task(stream_chat(sdk(d.socket_path)))
        while primary.stats.chat_requests == 0:
            await asyncio.sleep(0.005)
        primary.set_mode("down")  # the primary dies mid-answer
        seen = await task
        resumed_elsewhere = secondary.stats.requests_by_kind["prefill"]
    if across:
        assert seen.error is None and seen.text == EXPECTED.content
        assert resumed_elsewhere == 1
    else:
        assert isinstance(seen.error, openai.APIError)
        assert seen.error.code == "attempts_exhausted"
        assert_prefix_of_answer(seen.text)
        assert secondary.stats.chat_requests == 0


@pytest.mark.parametrize("kind", MID_STREAM)
async def test_break_after_the_finish_chunk_completes_without_a_resume(
    tmp_path: Path, kind: str
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults([f"{kind}@done"])  # finish_reason sent; usage and [DONE] lost
        seen = await stream_chat(sdk(d.socket_path), stream_options={"include_usage": True})
        assert sim.stats.chat_requests == 1
    assert seen.error is None
    assert seen.text == EXPECTED.content
    assert seen.finish_reason == EXPECTED.finish_reason
    assert seen.usage is not None and seen.usage.completion_tokens > 0


async def test_a_bug_inside_intact_ends_the_stream_explicitly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from intact.relay.delivery import AttemptFilter

    original = AttemptFilter.on_chunk
    calls = 0

    async def broken(self: AttemptFilter, obj: dict[str, Any], raw: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 6:
            raise RuntimeError("a bug")
        await original(self, obj, raw)

    monkeypatch.setattr(AttemptFilter, "on_chunk", broken)
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        seen = await stream_chat(sdk(d.socket_path))
        assert (await stream_chat(sdk(d.socket_path))).error is None  # still serving
    assert isinstance(seen.error, openai.APIError)
    assert seen.error.code == "internal_error"
    assert_prefix_of_answer(seen.text)
