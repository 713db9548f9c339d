"""The simulated upstream over real loopback sockets: wire format, continuations, faults."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest

from intact.simulator import (
    ALL_FAULT_KINDS,
    SimulatedUpstream,
    SimulatorSettings,
    expected_answer,
    parse_fault_spec,
)
from intact.simulator.faults import FaultSpec
from intact.simulator.styles import paraphrase
from intact.simulator.text import Variant, answer_for
from support import StartSim

pytestmark = pytest.mark.timeout(10)

# Any, so the same literals feed raw JSON bodies and the typed openai SDK.
MESSAGES: Any = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Tell me a story about a lighthouse."},
]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
FAST: dict[str, Any] = {"tok_per_s": 0.0, "ttft": 0.0, "repeat_prob": 0.0, "seed": 7}


def sdk(sim: SimulatedUpstream, api_key: str = "x") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key=api_key, max_retries=0)


def chat_body(messages: list[dict[str, Any]] = MESSAGES, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-1", "messages": messages, **extra}


def parse_sse(raw: bytes) -> list[Any]:
    """The data payloads of an SSE body: JSON objects, or the string "[DONE]"."""
    events: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def post_stream(
    http: aiohttp.ClientSession, sim: SimulatedUpstream, body: dict[str, Any]
) -> list[Any]:
    async with http.post(f"{sim.base_url}/chat/completions", json={**body, "stream": True}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"] == "text/event-stream"
        return parse_sse(await r.read())


async def post_json(
    http: aiohttp.ClientSession, sim: SimulatedUpstream, body: Any
) -> tuple[int, Any]:
    async with http.post(f"{sim.base_url}/chat/completions", json=body) as r:
        return r.status, await r.json()


def streamed_text(events: list[Any], index: int = 0) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", [])
        if choice["index"] == index
    )


def content_chunks(events: list[Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if isinstance(e, dict) and e.get("choices") and "content" in e["choices"][0]["delta"]
    ]


def finish_reasons(events: list[Any]) -> list[str]:
    return [
        choice["finish_reason"]
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", [])
        if choice["finish_reason"] is not None
    ]


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    """Wait (polling every 5 ms) until `condition` holds; fail after `within` seconds."""
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


async def complete_text(
    http: aiohttp.ClientSession, sim: SimulatedUpstream, body: dict[str, Any]
) -> tuple[str, str]:
    status, payload = await post_json(http, sim, body)
    assert status == 200, payload
    choice = payload["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


# --- answers and wire format -----------------------------------------------------------------


async def test_stream_non_stream_and_expected_answer_agree(sim: SimulatedUpstream) -> None:
    client = sdk(sim)
    whole = await client.chat.completions.create(model="sim-1", messages=MESSAGES)
    stream = await client.chat.completions.create(model="sim-1", messages=MESSAGES, stream=True)
    pieces, finish = [], None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    expected = expected_answer(MESSAGES)
    assert whole.choices[0].message.content == "".join(pieces) == expected.content
    assert whole.choices[0].finish_reason == finish == expected.finish_reason == "stop"
    assert whole.object == "chat.completion"
    assert whole.system_fingerprint == "fp_intact_sim"
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0


async def test_answer_ignores_model_name_and_sampling_parameters(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    plain, _ = await complete_text(http, sim, chat_body())
    other, _ = await complete_text(
        http, sim, chat_body(model="gpt-4o", temperature=1.7, top_p=0.3, seed=99)
    )
    changed, _ = await complete_text(http, sim, chat_body([{"role": "user", "content": "Hi"}]))
    assert plain == other != changed


async def test_stream_has_role_chunk_one_chunk_per_token_finish_chunk_and_done(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    events = await post_stream(http, sim, chat_body())
    tokens = answer_for(MESSAGES).tokens
    first, *middle, finish, done = events
    assert done == "[DONE]"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [e["choices"][0]["delta"]["content"] for e in middle] == list(tokens)
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    ids = {e["id"] for e in events[:-1]}
    assert len(ids) == 1
    assert re.fullmatch(r"chatcmpl-[0-9a-f]+", ids.pop())
    for event in events[:-1]:
        assert event["object"] == "chat.completion.chunk"
        assert event["model"] == "sim-1"
        assert event["system_fingerprint"] == "fp_intact_sim"
        assert isinstance(event["created"], int)
        assert "usage" not in event


async def test_chunk_ids_are_random_per_request(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    one = await post_stream(http, sim, chat_body(max_tokens=2))
    two = await post_stream(http, sim, chat_body(max_tokens=2))
    assert one[0]["id"] != two[0]["id"]


async def test_include_usage_adds_usage_null_to_chunks_and_a_final_usage_chunk(
    sim: SimulatedUpstream,
) -> None:
    stream = await sdk(sim).chat.completions.create(
        model="sim-1",
        messages=MESSAGES,
        stream=True,
        max_tokens=5,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens == (4 + 9) + 2 * 3 + 3  # tokens + 3 per message + 3
    assert last.usage.total_tokens == last.usage.prompt_tokens + 5
    assert chunks[-2].choices[0].finish_reason == "length"


async def test_max_tokens_truncates_with_finish_length(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    text, finish = await complete_text(http, sim, chat_body(max_completion_tokens=6))
    assert text == "".join(answer_for(MESSAGES).tokens[:6])
    assert finish == "length"
    assert expected_answer(MESSAGES, max_tokens=6).content == text


async def test_n_choices_are_interleaved_and_each_is_its_own_answer(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    events = await post_stream(http, sim, chat_body(n=2))
    indexes = [e["choices"][0]["index"] for e in events[:-1]]
    assert indexes[:4] == [0, 0, 1, 1]  # role + first token of each choice, then alternating
    zero, one = streamed_text(events, 0), streamed_text(events, 1)
    assert zero == answer_for(MESSAGES).text
    assert one == answer_for(MESSAGES, choice=1).text != zero
    assert sorted(finish_reasons(events)) == ["stop", "stop"]
    _status, whole = await post_json(http, sim, chat_body(n=2))
    assert [c["message"]["content"] for c in whole["choices"]] == [zero, one]


async def test_tool_calls_stream_as_openai_does_and_match_expected_answer(
    sim: SimulatedUpstream,
) -> None:
    messages: Any = [{"role": "user", "content": "Weather in Oslo and Lima?"}]
    stream = await sdk(sim).chat.completions.create(
        model="sim-1",
        messages=messages,
        tools=[WEATHER_TOOL],
        stream=True,
    )
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    first = True
    async for chunk in stream:
        delta = chunk.choices[0].delta
        if first:
            assert delta.role == "assistant"
            assert delta.content is None
            first = False
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"arguments": ""})
            if part.id:
                entry.update(id=part.id, name=part.function.name)  # type: ignore[union-attr]
            else:
                assert 3 <= len(part.function.arguments or "") <= 12  # type: ignore[union-attr]
            entry["arguments"] += part.function.arguments or ""  # type: ignore[union-attr]
        finish = chunk.choices[0].finish_reason or finish
    expected = expected_answer(messages, tools=[WEATHER_TOOL])
    got = [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for _, c in sorted(calls.items())
    ]
    assert got == expected.tool_calls
    assert all(isinstance(json.loads(c["arguments"]), dict) for c in calls.values())
    assert finish == "tool_calls"


async def test_non_streaming_tool_calls_have_null_content(sim: SimulatedUpstream) -> None:
    response = await sdk(sim).chat.completions.create(
        model="sim-1",
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
    )
    message = response.choices[0].message
    assert message.content is None
    assert [c.model_dump() for c in message.tool_calls or []] == expected_answer(
        MESSAGES, tools=[WEATHER_TOOL]
    ).tool_calls
    assert response.choices[0].finish_reason == "tool_calls"


# --- continuations ---------------------------------------------------------------------------


def continuation_body(style: str, partial: str, **extra: Any) -> dict[str, Any]:
    if style == "prefill":
        return chat_body(
            [*MESSAGES, {"role": "assistant", "content": partial}],
            continue_final_message=True,
            add_generation_prompt=False,
            **extra,
        )
    if style == "prefix":
        return chat_body(
            [*MESSAGES, {"role": "assistant", "content": partial, "prefix": True}], **extra
        )
    return chat_body(
        [
            *MESSAGES,
            {"role": "assistant", "content": partial},
            {"role": "user", "content": "Please continue exactly where you stopped."},
        ],
        **extra,
    )


@pytest.mark.parametrize("style", ["prefill", "prefix", "instruct"])
async def test_continuation_from_every_cut_restores_the_full_answer(
    style: str, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    full = answer_for(MESSAGES).text
    for cut in [*range(0, len(full), 5), len(full)]:
        body = continuation_body(style, full[:cut])
        events = await post_stream(http, sim, body) if cut % 2 else None
        text = streamed_text(events) if events else (await complete_text(http, sim, body))[0]
        assert full[:cut] + text == full, cut
    assert sim.stats.requests_by_kind[style] == len(range(0, len(full), 5)) + 1


async def test_prefill_with_add_generation_prompt_is_rejected_like_vllm(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    body = {**continuation_body("prefill", "Once"), "add_generation_prompt": True}
    status, payload = await post_json(http, sim, body)
    assert status == 400
    assert payload["error"]["message"] == (
        "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
    )


async def test_continuation_with_shrunk_max_tokens_matches_the_uninterrupted_response(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    tokens = answer_for(MESSAGES).tokens
    limit = 20
    uninterrupted, finish = await complete_text(http, sim, chat_body(max_tokens=limit))
    for generated in (0, 3, 11, 19):
        cut = len("".join(tokens[:generated])) + (2 if len(tokens[generated]) > 3 else 0)
        body = continuation_body("prefill", uninterrupted[:cut], max_tokens=limit - generated)
        text, rest_finish = await complete_text(http, sim, body)
        assert uninterrupted[:cut] + text == uninterrupted
        assert rest_finish == finish == "length"


async def test_prefill_and_prefix_never_repeat_even_with_instruct_quirks_at_one(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(repeat_prob=1.0, restart_prob=1.0, paraphrase_prob=1.0)
    full = answer_for(MESSAGES).text
    for style in ("prefill", "prefix"):
        for cut in (25, 64, 101):
            text, _ = await complete_text(http, sim, continuation_body(style, full[:cut]))
            assert full[:cut] + text == full


async def test_instruct_repeat_quirk_starts_with_the_last_words_of_the_partial(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(repeat_prob=1.0, whitespace_variation_prob=0.0, max_repeat_words=3)
    full = answer_for(MESSAGES).text
    for cut in (25, 64, 101, 150):
        partial = full[:cut]
        text, _ = await complete_text(http, sim, continuation_body("instruct", partial))
        rest = full[cut:]
        assert text.endswith(rest)
        echoed = text[: len(text) - len(rest)]
        assert partial.endswith(echoed) and 1 <= len(echoed.split()) <= 3
        start = cut - len(echoed)
        assert start == 0 or partial[start - 1].isspace()


async def test_instruct_restart_quirk_sends_the_whole_answer_again(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(restart_prob=1.0)
    full = answer_for(MESSAGES).text
    text, finish = await complete_text(http, sim, continuation_body("instruct", full[:70]))
    assert text == full
    assert finish == "stop"


async def test_instruct_paraphrase_quirk_rewords_the_start_and_goes_elsewhere(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(paraphrase_prob=1.0)
    full = expected_answer(MESSAGES, variant=Variant(style="code")).content or ""
    body = {**continuation_body("instruct", full[:50]), "model": "sim-1:code"}
    text, _ = await complete_text(http, sim, body)
    assert text != full and text[:20] != full[:20]
    assert any(text.startswith(paraphrase(full[:k])) for k in range(2, 30))


async def test_prefill_echo_quirk_repeats_the_partial_in_the_first_delta(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(prefill_echo_prob=1.0)
    full = answer_for(MESSAGES).text
    events = await post_stream(http, sim, continuation_body("prefill", full[:40]))
    contents = [c["choices"][0]["delta"]["content"] for c in content_chunks(events)]
    assert contents[1] == full[:40]  # after the role chunk's ""
    assert "".join(contents[2:]) == full[40:]


@pytest.mark.parametrize("style", ["prose", "code", "table", "cjk", "json"])
async def test_prefill_at_chunk_boundaries_of_every_style_restores_the_answer(
    style: str, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    body = chat_body(model=f"sim-2:{style}")
    events = await post_stream(http, sim, body)
    pieces = [c["choices"][0]["delta"]["content"] for c in content_chunks(events)][1:]
    full = "".join(pieces)
    assert full == expected_answer(MESSAGES, variant=Variant(style=style)).content
    for chunks in range(0, len(pieces), max(1, len(pieces) // 7)):
        partial = "".join(pieces[:chunks])
        resume = {**continuation_body("prefill", partial), "model": f"sim-2:{style}"}
        text, finish = await complete_text(http, sim, resume)
        assert partial + text == full and finish == "stop", chunks


# --- faults as a client sees them ------------------------------------------------------------


async def read_stream_until_failure(
    http: aiohttp.ClientSession, sim: SimulatedUpstream, give_up_after: float = 2.0
) -> tuple[bytes, BaseException | None]:
    received = b""
    try:
        async with http.post(
            f"{sim.base_url}/chat/completions",
            json=chat_body(stream=True),
            timeout=aiohttp.ClientTimeout(total=give_up_after),
        ) as response:
            assert response.status == 200
            async for piece in response.content.iter_any():
                received += piece
    except (aiohttp.ClientError, TimeoutError) as error:
        return received, error
    return received, None


async def test_reset_aborts_the_connection_after_the_given_chunks(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    sim.schedule_faults(["reset@3"])
    received, error = await read_stream_until_failure(http, sim)
    assert isinstance(error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError)
    assert len(parse_sse(received)) == 3
    assert sim.stats.faults_injected["reset"] == 1


async def test_stall_at_zero_sends_headers_and_then_nothing(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    sim.schedule_faults(["stall@0"])
    started = time.monotonic()
    received, error = await read_stream_until_failure(http, sim, give_up_after=0.4)
    assert isinstance(error, TimeoutError)
    assert received == b""
    assert time.monotonic() - started >= 0.35


async def test_stall_gives_up_after_stall_max(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(stall_max=0.2)
    sim.schedule_faults(["stall@2"])
    received, error = await read_stream_until_failure(http, sim)
    assert isinstance(error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError)
    assert len(parse_sse(received)) == 2


async def test_error_event_arrives_mid_stream_then_the_body_ends_without_done(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    sim.schedule_faults(["error_event@4"])
    received, error = await read_stream_until_failure(http, sim)
    assert error is None
    events = parse_sse(received)
    assert len(events) == 5
    assert events[-1] == {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


async def test_error_event_is_raised_by_the_openai_sdk(sim: SimulatedUpstream) -> None:
    sim.schedule_faults(["error_event@2"])
    stream = await sdk(sim).chat.completions.create(
        model="sim-1",
        messages=MESSAGES,
        stream=True,
    )
    with pytest.raises(openai.APIError, match="server had an error"):
        async for _ in stream:
            pass


async def test_truncate_ends_the_body_cleanly_without_finish_or_done(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    sim.schedule_faults(["truncate@mid"])
    received, error = await read_stream_until_failure(http, sim)
    assert error is None
    events = parse_sse(received)
    total = 1 + len(answer_for(MESSAGES).tokens)
    assert len(events) == total // 2
    assert "[DONE]" not in events
    assert finish_reasons(events) == []


async def test_fault_at_last_sends_every_content_chunk_but_not_the_finish(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    sim.schedule_faults(["truncate@last", "truncate@100000"])
    for _ in range(2):
        received, _ = await read_stream_until_failure(http, sim)
        events = parse_sse(received)
        assert streamed_text(events) == answer_for(MESSAGES).text
        assert finish_reasons(events) == []


async def test_http_429_carries_retry_after_headers_and_openai_body(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(retry_after=1.5)
    sim.schedule_faults(["http_429"])
    async with http.post(f"{sim.base_url}/chat/completions", json=chat_body()) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "2"
        assert response.headers["retry-after-ms"] == "1500"
        body = await response.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("spec", "status"), [("http_500", 500), ("http_503", 503)])
async def test_http_5xx_faults_have_openai_server_error_bodies(
    spec: str, status: int, sim: SimulatedUpstream
) -> None:
    sim.schedule_faults([spec])
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk(sim).chat.completions.create(model="sim-1", messages=MESSAGES)
    assert caught.value.status_code == status
    assert caught.value.body["type"] == "server_error"  # type: ignore[index]


async def test_connect_drop_closes_before_any_response_byte(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    sim.schedule_faults(["connect_drop"])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(f"{sim.base_url}/chat/completions", json=chat_body()):
            pass


async def test_mid_stream_faults_on_non_streaming_requests(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(stall_max=0.1)
    sim.schedule_faults(["reset@3", "error_event@3", "truncate@3", "stall@3"])
    with pytest.raises(aiohttp.ClientError):
        await post_json(http, sim, chat_body())
    assert (await post_json(http, sim, chat_body()))[0] == 500
    with pytest.raises(aiohttp.ClientPayloadError):
        await post_json(http, sim, chat_body())
    with pytest.raises(aiohttp.ClientError):
        await post_json(http, sim, chat_body())


async def test_scripted_faults_are_consumed_one_per_request_in_order(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    sim.schedule_faults(["http_500", "none"])
    sim.schedule_faults(["http_429"])
    statuses = [(await post_json(http, sim, chat_body()))[0] for _ in range(4)]
    assert statuses == [500, 200, 429, 200]
    assert [r.fault for r in sim.stats.recent_requests] == ["http_500", None, "http_429", None]


def test_fault_specs_parse_and_bad_ones_name_the_allowed_kinds() -> None:
    assert parse_fault_spec("reset@3") == FaultSpec("reset", 3)
    assert parse_fault_spec("stall@0") == FaultSpec("stall", 0)
    assert parse_fault_spec("error_event@last") == FaultSpec("error_event", "last")
    assert parse_fault_spec("truncate@mid") == FaultSpec("truncate", "mid")
    assert parse_fault_spec("http_429") == FaultSpec("http_429")
    with pytest.raises(ValueError, match=r"'explode'.*allowed: reset, stall"):
        parse_fault_spec("explode@2")
    with pytest.raises(ValueError, match="takes no position"):
        parse_fault_spec("http_429@2")
    with pytest.raises(ValueError, match="must be a chunk count"):
        parse_fault_spec("reset@soon")
    assert set(ALL_FAULT_KINDS) == {
        "reset",
        "stall",
        "error_event",
        "truncate",
        "http_429",
        "http_500",
        "http_503",
        "connect_drop",
    }


async def test_seeded_random_injection_replays_the_same_faults(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    async def run(seed: int) -> list[str | None]:
        sim = await start_sim(
            seed=seed, fault_rate=0.5, kinds=("http_500", "http_429", "truncate", "error_event")
        )
        for _ in range(30):
            async with http.post(
                f"{sim.base_url}/chat/completions", json=chat_body(stream=True)
            ) as r:
                await r.read()
        return [r.fault for r in sim.stats.recent_requests]

    first, again, other = await run(11), await run(11), await run(12)
    assert first == again != other
    assert 5 < sum(f is not None for f in first) < 25


async def test_continuation_fault_rate_applies_only_to_continuations(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(fault_rate=0.0, continuation_fault_rate=1.0, kinds=("http_503",))
    assert (await post_json(http, sim, chat_body()))[0] == 200
    resume = continuation_body("prefix", "Once")
    assert (await post_json(http, sim, resume))[0] == 503


# --- modes, auth, errors, admin --------------------------------------------------------------


async def test_down_mode_answers_every_chat_request_with_503_without_retry_after(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    sim.set_mode("down")
    async with http.post(f"{sim.base_url}/chat/completions", json=chat_body()) as response:
        assert response.status == 503
        assert "Retry-After" not in response.headers
        assert (await response.json())["error"]["type"] == "server_error"
    assert sim.stats.requests_by_mode["down"] == 1


async def test_slow_mode_stretches_time_to_first_token(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ttft=0.03, tok_per_s=1000.0, slow_factor=10.0)
    started = time.monotonic()
    await post_stream(http, sim, chat_body(max_tokens=2))
    normal = time.monotonic() - started
    sim.set_mode("slow")
    started = time.monotonic()
    await post_stream(http, sim, chat_body(max_tokens=2))
    slow = time.monotonic() - started
    assert normal < 0.2 <= 0.3 <= slow < 1.5


async def test_pacing_spaces_chunks_at_tok_per_s(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ttft=0.05, tok_per_s=100.0)
    arrivals: list[float] = []
    started = time.monotonic()
    async with http.post(
        f"{sim.base_url}/chat/completions", json=chat_body(stream=True, max_tokens=21)
    ) as response:
        async for _ in response.content.iter_any():
            arrivals.append(time.monotonic() - started)
    assert 0.04 <= arrivals[0] < 0.2
    assert 0.24 <= arrivals[-1] < 0.8  # ttft + 20 steps at 10 ms


async def test_many_paced_streams_run_concurrently(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ttft=0.0, tok_per_s=100.0)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        results = await asyncio.gather(
            *(post_stream(session, sim, chat_body(max_tokens=30)) for _ in range(200))
        )
        elapsed = time.monotonic() - started
    assert all(
        streamed_text(r) == expected_answer(MESSAGES, max_tokens=30).content for r in results
    )
    assert elapsed < 2.0  # 0.3 s of pacing each, all at once
    assert sim.stats.completed_streams == 200


async def test_api_key_is_required_when_configured(start_sim: StartSim) -> None:
    sim = await start_sim(api_key="sk-right")
    with pytest.raises(openai.AuthenticationError) as caught:
        await sdk(sim, "sk-wrong-key").chat.completions.create(model="sim-1", messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"
    response = await sdk(sim, "sk-right").chat.completions.create(model="sim-1", messages=MESSAGES)
    assert response.choices[0].message.content == expected_answer(MESSAGES).content


async def test_models_are_listed(sim: SimulatedUpstream) -> None:
    models = [model.id async for model in sdk(sim).models.list()]
    assert models == ["sim-1", "sim-2"]


async def test_malformed_requests_get_openai_shaped_400s(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sim.base_url}/chat/completions", data=b"{not json") as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    status, body = await post_json(http, sim, {"model": "sim-1"})
    assert (status, body["error"]["code"]) == (400, "missing_required_parameter")
    status, body = await post_json(http, sim, {"model": "sim-1", "messages": []})
    assert (status, body["error"]["code"]) == (400, "empty_array")
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_admin_endpoints_control_mode_faults_and_stats(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    admin = sim.base_url.removesuffix("/v1") + "/admin"
    async with http.post(f"{admin}/mode", json={"mode": "slow"}) as response:
        assert response.status == 200
    assert sim.mode == "slow"
    async with http.post(f"{admin}/mode", json={"mode": "sideways"}) as response:
        assert response.status == 400
    sim.set_mode("normal")
    async with http.post(f"{admin}/faults", json={"schedule": ["http_500"]}) as response:
        assert (await response.json())["pending"] == ["http_500"]
    async with http.post(f"{admin}/faults", json={"schedule": ["reset@2"]}) as response:
        assert (await response.json())["pending"] == ["http_500", "reset@2"]
    async with http.post(f"{admin}/faults", json={"schedule": ["melt"]}) as response:
        assert response.status == 400
        assert "allowed" in (await response.json())["error"]["message"]
    async with http.delete(f"{admin}/faults") as response:
        assert response.status == 200
    assert sim.pending_faults == ()
    await post_json(http, sim, chat_body())
    async with http.get(f"{admin}/stats") as response:
        stats = await response.json()
    assert stats["chat_requests"] == 1
    assert stats["requests_by_kind"]["normal"] == 1
    assert stats["requests_by_mode"]["normal"] == 1
    assert stats["completed_responses"] == 1
    async with http.post(f"{admin}/reset-stats") as response:
        assert (await response.json())["chat_requests"] == 0
    assert sim.stats.chat_requests == 0


# --- lifecycle -------------------------------------------------------------------------------


async def test_stop_is_prompt_while_a_stalled_stream_is_open(
    http: aiohttp.ClientSession,
) -> None:
    sim = SimulatedUpstream(SimulatorSettings(**FAST))
    await sim.start()
    sim.schedule_faults(["stall@1"])
    reader = asyncio.create_task(read_stream_until_failure(http, sim, give_up_after=5))
    await eventually(lambda: sim.stats.active_streams == 1)
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 0.5
    _received, error = await reader
    assert error is not None
    assert sim.stats.client_disconnects == 0


async def test_client_disconnect_is_noticed_within_milliseconds(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(ttft=0.0, tok_per_s=20.0)
    async with http.post(f"{sim.base_url}/chat/completions", json=chat_body(stream=True)) as r:
        await r.content.readuntil(b"\n\n")
        assert sim.stats.active_streams == 1
        r.close()
        left = time.monotonic()
    await eventually(lambda: bool(sim.stats.disconnects))
    assert sim.stats.disconnects[0].at - left < 0.1
    assert sim.stats.client_disconnects == 1
    await asyncio.sleep(0.01)
    assert sim.stats.active_streams == 0
