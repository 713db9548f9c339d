"""The simulated upstream's variants on the wire: styles by model name, reasoning, refusals,
logprobs, multi-token chunks, and the expected answer it publishes for any request."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from intact.simulator import SimulatedUpstream, SimulatorSettings, expected_answer
from intact.simulator.server import expected_for_request
from intact.simulator.text import Variant, answer_for
from intact.simulator.tokenizer import tokenize

pytestmark = pytest.mark.timeout(10)

MESSAGES: Any = [{"role": "user", "content": "Show me something."}]
FAST: dict[str, Any] = {"tok_per_s": 0.0, "ttft": 0.0, "repeat_prob": 0.0, "seed": 5}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def started(**overrides: Any) -> SimulatedUpstream:
    sim = SimulatedUpstream(SimulatorSettings(**{**FAST, **overrides}))
    await sim.start()
    return sim


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedUpstream]:
    async with await started() as upstream:
        yield upstream


async def stream(http: aiohttp.ClientSession, sim: SimulatedUpstream, **body: Any) -> list[Any]:
    payload = {"model": "sim-1", "messages": MESSAGES, "stream": True, **body}
    async with http.post(f"{sim.base_url}/chat/completions", json=payload) as response:
        assert response.status == 200, await response.text()
        raw = await response.read()
    events = [block.removeprefix("data: ") for block in raw.decode().split("\n\n") if block]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


async def whole(http: aiohttp.ClientSession, sim: SimulatedUpstream, **body: Any) -> Any:
    payload = {"model": "sim-1", "messages": MESSAGES, **body}
    async with http.post(f"{sim.base_url}/chat/completions", json=payload) as response:
        return response.status, await response.json()


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events if e["choices"]]


def joined(events: list[Any], key: str) -> str:
    return "".join(d.get(key) or "" for d in deltas(events))


# --- styles by model name ----------------------------------------------------------------------


@pytest.mark.parametrize("style", ["prose", "code", "table", "cjk", "json", "mixed"])
async def test_model_suffix_picks_the_style_stream_and_whole_alike(
    style: str, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    expected = expected_answer(MESSAGES, variant=Variant(style=style))
    events = await stream(http, sim, model=f"sim-1:{style}")
    assert joined(events, "content") == expected.content
    assert {e["model"] for e in events} == {f"sim-1:{style}"}
    _status, body = await whole(http, sim, model=f"gpt-4o:{style}")
    assert body["choices"][0]["message"]["content"] == expected.content


async def test_server_default_style_applies_without_a_suffix(http: aiohttp.ClientSession) -> None:
    async with await started(style="cjk") as sim:
        events = await stream(http, sim)
        assert joined(events, "content") == answer_for(MESSAGES, variant=Variant(style="cjk")).text
        prose = await stream(http, sim, model="sim-1:prose")
        assert joined(prose, "content") == answer_for(MESSAGES).text
        assert sim.stats.requests_by_style == {"cjk": 1, "prose": 1}


async def test_unknown_model_suffix_is_a_404_naming_the_allowed_ones(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    status, body = await whole(http, sim, model="sim-1:poem")
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert (
        "allowed after ':': prose, code, table, cjk, json, mixed, reasoning, refusal"
        in (body["error"]["message"])
    )


async def test_response_format_json_schema_gets_a_json_object_with_its_keys(
    sim: SimulatedUpstream,
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {}}}
    response = await openai.AsyncOpenAI(
        base_url=sim.base_url, api_key="x", max_retries=0
    ).chat.completions.create(
        model="sim-1",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "f", "schema": schema}},
    )
    assert list(json.loads(response.choices[0].message.content or "")) == ["city", "days"]


def test_settings_reject_unknown_styles_and_reasoning_fields() -> None:
    with pytest.raises(ValueError, match="style must be one of prose, code"):
        SimulatorSettings(style="poetry")
    with pytest.raises(ValueError, match="reasoning_field must be one of reasoning_content"):
        SimulatorSettings(reasoning_field="thoughts")
    with pytest.raises(ValueError, match="max_tokens_per_chunk must be >= 1"):
        SimulatorSettings(max_tokens_per_chunk=0)


# --- reasoning ---------------------------------------------------------------------------------


async def test_reasoning_streams_in_reasoning_content_before_any_content(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    events = await stream(http, sim, model="sim-1:code:reasoning", stream_options={
        "include_usage": True})  # fmt: skip
    answer = answer_for(MESSAGES, variant=Variant(style="code", reasoning=True))
    shapes = [sorted(d) for d in deltas(events)]
    assert shapes[0] == ["content", "refusal", "role"]
    thinking = len(answer.reasoning)
    assert shapes[1 : 1 + thinking] == [["reasoning_content"]] * thinking
    assert set(map(tuple, shapes[1 + thinking : -1])) == {("content",)}
    assert joined(events, "reasoning_content") == answer.reasoning_text
    assert joined(events, "content") == answer.text
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == thinking + len(answer.tokens)
    assert usage["completion_tokens_details"] == {"reasoning_tokens": thinking}


async def test_reasoning_field_name_is_a_setting_and_non_streaming_carries_it(
    http: aiohttp.ClientSession,
) -> None:
    answer = answer_for(MESSAGES, variant=Variant(reasoning=True))
    async with await started(reasoning_field="reasoning") as sim:
        events = await stream(http, sim, model="sim-1:reasoning")
        assert joined(events, "reasoning") == answer.reasoning_text
        assert joined(events, "reasoning_content") == ""
        _status, body = await whole(http, sim, model="sim-1:reasoning")
    message = body["choices"][0]["message"]
    assert message["reasoning"] == answer.reasoning_text and message["content"] == answer.text


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_resume_inside_reasoning_continues_the_reasoning_then_answers(
    field: str, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    answer = answer_for(MESSAGES, variant=Variant(reasoning=True))
    cut = len("".join(answer.reasoning[:9]))
    partial = {"role": "assistant", "content": "", field: answer.reasoning_text[:cut]}
    events = await stream(
        http,
        sim,
        model="sim-1:reasoning",
        messages=[*MESSAGES, partial],
        continue_final_message=True,
        add_generation_prompt=False,
    )
    assert answer.reasoning_text[:cut] + joined(events, "reasoning_content") == (
        answer.reasoning_text
    )
    assert joined(events, "content") == answer.text


async def test_resume_after_content_started_sends_no_reasoning(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    answer = answer_for(MESSAGES, variant=Variant(reasoning=True))
    partial = {"role": "assistant", "content": answer.text[:30], "prefix": True}
    events = await stream(http, sim, model="sim-1:reasoning", messages=[*MESSAGES, partial])
    assert joined(events, "reasoning_content") == ""
    assert answer.text[:30] + joined(events, "content") == answer.text


# --- refusals ----------------------------------------------------------------------------------


async def test_refusal_streams_in_delta_refusal_with_null_content(
    sim: SimulatedUpstream,
) -> None:
    client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    chunks = [
        chunk
        async for chunk in await client.chat.completions.create(
            model="sim-1:refusal", messages=MESSAGES, stream=True
        )
    ]
    first = chunks[0].choices[0].delta
    assert (first.role, first.content, first.refusal) == ("assistant", None, "")
    assert all(chunk.choices[0].delta.content is None for chunk in chunks)
    refusal = "".join(chunk.choices[0].delta.refusal or "" for chunk in chunks)
    assert refusal == expected_answer(MESSAGES, variant=Variant(refusal=True)).refusal
    assert chunks[-1].choices[0].finish_reason == "stop"
    whole = await client.chat.completions.create(model="sim-1:refusal", messages=MESSAGES)
    assert whole.choices[0].message.content is None
    assert whole.choices[0].message.refusal == refusal


# --- logprobs ----------------------------------------------------------------------------------


async def test_logprobs_describe_each_chunks_token_like_openai(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    events = await stream(http, sim, model="sim-1:cjk", logprobs=True, top_logprobs=3)
    assert events[0]["choices"][0]["logprobs"] is None  # the role chunk
    assert events[-1]["choices"][0]["logprobs"] is None  # the finish chunk
    for event in events[1:-1]:
        choice = event["choices"][0]
        logprobs = choice["logprobs"]
        assert set(logprobs) == {"content", "refusal"} and logprobs["refusal"] is None
        [entry] = logprobs["content"]
        assert entry["token"] == choice["delta"]["content"]
        assert entry["bytes"] == list(entry["token"].encode())
        assert -math.log(2) <= entry["logprob"] <= 0
        top = entry["top_logprobs"]
        assert len(top) == 3 and top[0]["token"] == entry["token"]
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert len({t["token"] for t in top}) == 3
        assert sum(math.exp(t["logprob"]) for t in top) <= 1.0
    again = await stream(http, sim, model="sim-1:cjk", logprobs=True, top_logprobs=3)
    assert [e["choices"][0]["logprobs"] for e in again] == [
        e["choices"][0]["logprobs"] for e in events
    ]


async def test_logprobs_without_top_logprobs_and_on_whole_responses(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    events = await stream(http, sim, logprobs=True)
    assert events[1]["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []
    _status, body = await whole(http, sim, logprobs=True, top_logprobs=1)
    entries = body["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == list(answer_for(MESSAGES).tokens)
    _status, plain = await whole(http, sim)
    assert plain["choices"][0]["logprobs"] is None


async def test_refusal_logprobs_go_in_the_refusal_list(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    events = await stream(http, sim, model="sim-1:refusal", logprobs=True)
    logprobs = events[1]["choices"][0]["logprobs"]
    assert logprobs["content"] is None
    assert logprobs["refusal"][0]["token"] == events[1]["choices"][0]["delta"]["refusal"]


async def test_top_logprobs_needs_logprobs_and_a_sane_count(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    status, body = await whole(http, sim, top_logprobs=2)
    assert status == 400 and body["error"]["param"] == "top_logprobs"
    status, body = await whole(http, sim, logprobs=True, top_logprobs=21)
    assert status == 400 and "0 to 20" in body["error"]["message"]


async def test_prefill_continuation_logprobs_match_the_uninterrupted_stream(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    events = await stream(http, sim, logprobs=True, top_logprobs=2)
    entries = [e["choices"][0]["logprobs"]["content"][0] for e in events[1:-1]]
    partial = "".join(entry["token"] for entry in entries[:12])
    resumed = await stream(
        http,
        sim,
        logprobs=True,
        top_logprobs=2,
        messages=[*MESSAGES, {"role": "assistant", "content": partial}],
        continue_final_message=True,
        add_generation_prompt=False,
    )
    assert [e["choices"][0]["logprobs"]["content"][0] for e in resumed[1:-1]] == entries[12:]


# --- chunks of several tokens ------------------------------------------------------------------


async def test_chunks_may_carry_several_tokens_and_their_logprobs(
    http: aiohttp.ClientSession,
) -> None:
    async with await started(max_tokens_per_chunk=3) as sim:
        events = await stream(http, sim, model="sim-1:table", logprobs=True)
    sizes = []
    for event in events[1:-1]:
        choice = event["choices"][0]
        tokens = [entry["token"] for entry in choice["logprobs"]["content"]]
        assert "".join(tokens) == choice["delta"]["content"]
        assert tokenize(choice["delta"]["content"]) == tokens or len(tokens) > 1
        sizes.append(len(tokens))
    assert set(sizes) == {1, 2, 3}
    expected = answer_for(MESSAGES, variant=Variant(style="table")).text
    assert joined(events, "content") == expected


# --- the expected answer ----------------------------------------------------------------------


async def test_admin_expected_gives_the_uninterrupted_answer_to_any_request_body(
    http: aiohttp.ClientSession,
) -> None:
    async with await started(style="mixed") as sim:
        admin = sim.base_url.removesuffix("/v1") + "/admin/expected"
        body = {"model": "sim-1:reasoning", "messages": MESSAGES, "max_tokens": 500}
        async with http.post(admin, json=body) as response:
            published = await response.json()
        events = await stream(http, sim, model="sim-1:reasoning", max_tokens=500)
        assert published["content"] == joined(events, "content")
        assert published["reasoning"] == joined(events, "reasoning_content")
        assert published["style"] in ("prose", "code", "table", "cjk", "json")
        assert sim.expected_answer(body) == expected_for_request(body, default_style="mixed")
        resume = {**body, "messages": [*MESSAGES, {"role": "assistant", "content": "Th"}]}
        assert (
            sim.expected_answer({**resume, "continue_final_message": True}).content
            == (published["content"])
        )
        async with http.post(admin, json={"model": "sim-1:nope", "messages": MESSAGES}) as bad:
            assert bad.status == 404
