"""The simulated upstream's Anthropic Messages and OpenAI Responses endpoints, over real
loopback sockets, driven by the official `anthropic` and `openai` SDKs (and raw HTTP where
the wire itself is the point): wire format, continuations, faults, background mode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest

from intact.simulator import SimulatedUpstream
from intact.simulator import responses_api as responses_module
from intact.simulator.anthropic_api import expected_message
from intact.simulator.responses_api import expected_response
from support import StartSim

pytestmark = pytest.mark.timeout(10)

FAST: dict[str, Any] = {
    "tok_per_s": 0.0,
    "ttft": 0.0,
    "repeat_prob": 0.0,
    "seed": 7,
    "stall_max": 0.3,
}
QUESTION = "Tell me a story about a lighthouse."
SYSTEM = "You are helpful."
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "x"}


_clients: list[anthropic.AsyncAnthropic | openai.AsyncOpenAI] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    """The SDK clients a test made are closed before its event loop is."""
    yield
    while _clients:
        await _clients.pop().close()


def claude(sim: SimulatedUpstream, api_key: str = "x") -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(
        base_url=sim.base_url.removesuffix("/v1"), api_key=api_key, max_retries=0
    )
    _clients.append(client)
    return client


def oai(sim: SimulatedUpstream) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    _clients.append(client)
    return client


def messages_body(messages: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "model": "sim-1",
        "max_tokens": 4096,
        "system": SYSTEM,
        "messages": messages or [{"role": "user", "content": QUESTION}],
        **extra,
    }


def responses_body(input_: Any = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-1", "instructions": SYSTEM, "input": input_, **extra}


def parse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; every event names its type twice, equally."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        name, data = name_line[len("event: ") :], json.loads(data_line[len("data: ") :])
        assert data["type"] == name
        events.append((name, data))
    return events


async def read_raw(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any] | None,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, BaseException | None]:
    """What a stream delivered before it ended or broke (POST with a body, else GET)."""
    received = b""
    try:
        request = http.post(url, json=body, headers=headers) if body else http.get(url)
        async with request as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for piece in response.content.iter_any():
                received += piece
    except (aiohttp.ClientError, TimeoutError) as error:
        return received, error
    return received, None


async def stream_messages(
    http: aiohttp.ClientSession, sim: SimulatedUpstream, body: dict[str, Any]
) -> tuple[list[tuple[str, dict[str, Any]]], BaseException | None]:
    raw, error = await read_raw(
        http, f"{sim.base_url}/messages", {**body, "stream": True}, ANTHROPIC_HEADERS
    )
    return parse_events(raw), error


async def drain(stream: AsyncIterator[Any], into: list[Any]) -> None:
    """Read a stream to its end (or its error), keeping what arrived in `into`."""
    async for event in stream:
        into.append(event)


def text_of(events: list[tuple[str, dict[str, Any]]], delta: str = "text_delta") -> str:
    return "".join(
        data["delta"][delta.removesuffix("_delta")]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == delta
    )


# --- Anthropic Messages ---------------------------------------------------------------------


async def test_messages_non_streaming_is_the_expected_message(sim: SimulatedUpstream) -> None:
    body = messages_body()
    raw = await claude(sim).messages.with_raw_response.create(**body)
    assert raw.headers["request-id"].startswith("req_")
    message = await raw.parse()
    expected = sim.messages_api.expected(body)
    assert expected == expected_message(body)
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn" == expected.stop_reason
    assert [block.model_dump() for block in message.content] == [
        {"type": "text", "text": expected.text, "citations": None}
    ]
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    record = sim.stats.recent_requests[-1]
    assert (record.api, record.kind, record.fault) == ("messages", "normal", None)
    assert sim.stats.requests_by_api["messages"] == 1


async def test_messages_stream_has_anthropics_event_sequence(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    body = messages_body()
    events, error = await stream_messages(http, sim, body)
    assert error is None
    names = [name for name, _ in events]
    deltas = names.count("content_block_delta")
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0 and start["usage"]["output_tokens"] == 1
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"]["output_tokens"] == deltas
    assert text_of(events) == sim.messages_api.expected(body).text


async def test_messages_stream_through_the_sdk_gives_the_expected_message(
    sim: SimulatedUpstream,
) -> None:
    body = messages_body()
    async with claude(sim).messages.stream(**body) as stream:
        message = await stream.get_final_message()
    assert message.content[0].type == "text"
    assert message.content[0].text == sim.messages_api.expected(body).text


async def test_messages_thinking_streams_a_signed_thinking_block_first(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    body = messages_body(thinking={"type": "enabled", "budget_tokens": 1024})
    events, _ = await stream_messages(http, sim, body)
    expected = sim.messages_api.expected(body)
    assert expected.thinking
    starts = [
        data["content_block"]["type"] for name, data in events if name == "content_block_start"
    ]
    assert starts == ["thinking", "text"]
    thinking_deltas = [
        data["delta"]["type"] for name, data in events if name == "content_block_delta"
    ]
    signature_at = thinking_deltas.index("signature_delta")
    assert set(thinking_deltas[:signature_at]) == {"thinking_delta"}
    assert set(thinking_deltas[signature_at + 1 :]) == {"text_delta"}
    assert text_of(events, "thinking_delta") == expected.thinking
    assert text_of(events) == expected.text
    async with claude(sim).messages.stream(**body) as stream:
        message = await stream.get_final_message()
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.model_dump(exclude_none=True)["content"] == expected.content


async def test_messages_max_tokens_and_stop_sequences_stop_the_answer(
    sim: SimulatedUpstream,
) -> None:
    client = claude(sim)
    short = messages_body(max_tokens=5)
    message = await client.messages.create(**short)
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == sim.messages_api.expected(short).text
    whole = sim.messages_api.expected(messages_body()).text
    word = whole.split()[3]
    stopped = messages_body(stop_sequences=[word])
    message = await client.messages.create(**stopped)
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", word)
    assert message.content[0].text == whole[: whole.index(word)]


async def test_messages_refuses_bad_requests_as_anthropic_does(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(api_key="secret")
    url = f"{sim.base_url}/messages"
    good = {"anthropic-version": "2023-06-01", "x-api-key": "secret"}

    async def refusal(body: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with http.post(url, json=body, headers=headers) as response:
            assert response.headers["request-id"].startswith("req_")
            return response.status, await response.json()

    status, error = await refusal(messages_body(), {**good, "x-api-key": "wrong"})
    assert (status, error["error"]["type"]) == (401, "authentication_error")
    assert error["type"] == "error" and error["request_id"].startswith("req_")
    status, error = await refusal(messages_body(), {"x-api-key": "secret"})
    assert (status, error["error"]["message"]) == (400, "anthropic-version: header is required")
    no_max = {k: v for k, v in messages_body().items() if k != "max_tokens"}
    status, error = await refusal(no_max, good)
    assert (status, error["error"]["type"]) == (400, "invalid_request_error")
    assert "max_tokens" in error["error"]["message"]
    trailing = messages_body(
        [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Here is "}]
    )
    status, error = await refusal(trailing, good)
    assert status == 400
    assert (
        "final assistant content cannot end with trailing whitespace" in error["error"]["message"]
    )
    status, error = await refusal(
        messages_body(max_tokens=1000, thinking={"type": "enabled", "budget_tokens": 1024}), good
    )
    assert status == 400 and "budget_tokens" in error["error"]["message"]


async def test_messages_prefill_and_instruct_continue_the_same_answer(
    sim: SimulatedUpstream,
) -> None:
    client = claude(sim)
    whole = sim.messages_api.expected(messages_body()).text
    for cut in (1, len(whole) // 3, len(whole) // 2, len(whole) - 2):
        partial = whole[:cut].rstrip()
        user = {"role": "user", "content": QUESTION}
        prefill = messages_body([user, {"role": "assistant", "content": partial}])
        message = await client.messages.create(**prefill)
        assert partial + message.content[0].text == whole
        assert sim.stats.recent_requests[-1].kind == "prefill"
        instruct = messages_body(
            [
                user,
                {"role": "assistant", "content": [{"type": "text", "text": partial}]},
                {"role": "user", "content": "Please continue exactly where you stopped."},
            ]
        )
        message = await client.messages.create(**instruct)
        assert partial + message.content[0].text == whole
        assert sim.stats.recent_requests[-1].kind == "instruct"


async def test_messages_in_band_overloaded_error_mid_stream_and_first(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    sim.schedule_faults(["error_event@4", "error_event@0"])
    events, error = await stream_messages(http, sim, messages_body())
    assert error is None
    assert [name for name, _ in events][:4] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
    ]
    assert events[4:] == [("error", overloaded)]
    events, error = await stream_messages(http, sim, messages_body())
    assert events == [("error", overloaded)]
    sim.schedule_faults(["error_event@3"])
    stream = await claude(sim).messages.create(**messages_body(), stream=True)
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async for _ in stream:
            pass
    assert sim.stats.faults_injected["error_event"] == 3
    assert [r.fault for r in sim.stats.recent_requests] == [
        "error_event@4",
        "error_event@0",
        "error_event@3",
    ]


async def test_messages_mid_stream_faults_cut_the_stream(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    sim.schedule_faults(["reset@5", "truncate@last", "error_event@done"])
    events, error = await stream_messages(http, sim, messages_body())
    assert isinstance(error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError)
    assert len(events) == 5
    events, error = await stream_messages(http, sim, messages_body())
    assert error is None
    assert text_of(events) == sim.messages_api.expected(messages_body()).text
    assert events[-1][0] == "content_block_delta"
    events, _ = await stream_messages(http, sim, messages_body())
    assert [name for name, _ in events][-3:] == ["content_block_stop", "message_delta", "error"]
    sim.schedule_faults(["reset@3"])
    stream = await claude(sim).messages.create(**messages_body(), stream=True)
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        async for _ in stream:
            pass


@pytest.mark.parametrize(
    ("spec", "status", "error_type"),
    [
        ("http_429", 429, "rate_limit_error"),
        ("http_500", 500, "api_error"),
        ("http_503", 529, "overloaded_error"),
        ("http_529", 529, "overloaded_error"),
        ("http_400", 400, "invalid_request_error"),
        ("context_length", 400, "invalid_request_error"),
        ("error_event@3", 529, "overloaded_error"),  # a non-streaming request
    ],
)
async def test_messages_http_faults_have_anthropic_bodies(
    spec: str, status: int, error_type: str, sim: SimulatedUpstream
) -> None:
    sim.schedule_faults([spec])
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude(sim).messages.create(**messages_body())
    assert caught.value.status_code == status
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert caught.value.response.headers["request-id"] == body["request_id"]
    if spec == "http_429":
        assert caught.value.response.headers["retry-after"] == "1"
    assert sim.stats.recent_requests[-1].api == "messages"


async def test_messages_connect_drop_and_down_mode(sim: SimulatedUpstream) -> None:
    sim.schedule_faults(["connect_drop"])
    with pytest.raises(anthropic.APIConnectionError):
        await claude(sim).messages.create(**messages_body())
    sim.set_mode("down")
    with pytest.raises(anthropic.OverloadedError):
        await claude(sim).messages.create(**messages_body())


# --- OpenAI Responses -----------------------------------------------------------------------


async def test_responses_non_streaming_is_the_expected_response(sim: SimulatedUpstream) -> None:
    body = responses_body()
    response = await oai(sim).responses.create(**body)
    expected = sim.responses_api.expected(body)
    assert expected == expected_response(body)
    assert response.id.startswith("resp_")
    assert (response.object, response.status) == ("response", "completed")
    assert response.output_text == expected.text
    [item] = response.output
    assert item.type == "message" and item.status == "completed"
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert sim.stats.recent_requests[-1].api == "responses"


async def test_responses_stream_is_openais_event_sequence(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    body = responses_body()
    raw, error = await read_raw(http, f"{sim.base_url}/responses", {**body, "stream": True})
    assert error is None
    events = parse_events(raw)
    names = [name for name, _ in events]
    deltas = names.count("response.output_text.delta")
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    item = events[2][1]["item"]
    assert item["type"] == "message" and item["status"] == "in_progress"
    assert item["content"] == [] and item["id"].startswith("msg_")
    assert events[3][1]["part"] == {"type": "output_text", "text": "", "annotations": []}
    delta = events[4][1]
    assert (delta["item_id"], delta["output_index"], delta["content_index"]) == (item["id"], 0, 0)
    assert delta["logprobs"] == []
    expected = sim.responses_api.expected(body).text
    assert events[-4][1]["text"] == expected
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed"
    assert completed["usage"]["input_tokens_details"] == {"cached_tokens": 0}
    assert completed["output"][0]["content"][0]["text"] == expected


async def test_responses_stream_through_the_sdk_parses_every_event(
    sim: SimulatedUpstream,
) -> None:
    body = responses_body(model="sim-1:reasoning")
    stream = await oai(sim).responses.create(**body, stream=True)
    events = [event async for event in stream]
    assert all(type(event).__name__.startswith("Response") for event in events)
    assert events[-1].type == "response.completed"
    final = events[-1].response
    expected = sim.responses_api.expected(body)
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == expected.text
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == expected.reasoning
    assert final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens > 0


async def test_responses_max_output_tokens_makes_the_response_incomplete(
    sim: SimulatedUpstream,
) -> None:
    body = responses_body(max_output_tokens=16)
    response = await oai(sim).responses.create(**body)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == sim.responses_api.expected(body).text
    stream = await oai(sim).responses.create(**body, stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    with pytest.raises(openai.BadRequestError, match="max_output_tokens"):
        await oai(sim).responses.create(**responses_body(max_output_tokens=5))


async def test_responses_prefill_and_instruct_continue_the_same_answer(
    sim: SimulatedUpstream,
) -> None:
    client = oai(sim)
    whole = sim.responses_api.expected(responses_body()).text
    user = {"role": "user", "content": QUESTION}
    for cut in (1, len(whole) // 2, len(whole) - 1):
        partial = whole[:cut]
        assistant = {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": partial}],
        }
        response = await client.responses.create(**responses_body([user, assistant]))
        assert partial + response.output_text == whole
        assert sim.stats.recent_requests[-1].kind == "prefill"
        resume = {"role": "user", "content": [{"type": "input_text", "text": "continue"}]}
        response = await client.responses.create(**responses_body([user, assistant, resume]))
        assert partial + response.output_text == whole
        assert sim.stats.recent_requests[-1].kind == "instruct"


async def test_responses_error_event_then_response_failed_ends_the_stream(
    sim: SimulatedUpstream,
) -> None:
    sim.schedule_faults(["error_event@3"])
    stream = await oai(sim).responses.create(**responses_body(), stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "error",
        "response.failed",
    ]
    error, failed = events[-2:]
    assert error.model_dump() == {
        "type": "error",
        "code": "server_error",
        "message": "The server had an error while processing your request. Sorry about that!",
        "param": None,
        "sequence_number": 3,
    }
    assert failed.sequence_number == 4
    assert failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.error.code == "server_error"


async def test_responses_faults_break_or_refuse_like_chat(sim: SimulatedUpstream) -> None:
    client = oai(sim)
    sim.schedule_faults(["reset@4"])
    stream = await client.responses.create(**responses_body(), stream=True)
    seen: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        await drain(stream, seen)
    assert len(seen) == 4
    for spec, error_class in [
        ("http_429", openai.RateLimitError),
        ("http_500", openai.InternalServerError),
        ("http_503", openai.InternalServerError),
        ("http_400", openai.BadRequestError),
        ("context_length", openai.BadRequestError),
        ("connect_drop", openai.APIConnectionError),
        ("error_event@2", openai.InternalServerError),  # a non-streaming request
    ]:
        sim.schedule_faults([spec])
        with pytest.raises(error_class):
            await client.responses.create(**responses_body())
    assert sim.stats.faults_injected["http_503"] == 1
    assert {r.api for r in sim.stats.recent_requests} == {"responses"}


async def test_background_response_is_stored_polled_and_reattached_from_any_event(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(tok_per_s=400.0)
    client = oai(sim)
    body = responses_body(background=True)
    queued = await client.responses.create(**body)
    assert (queued.status, queued.background) == ("queued", True)
    during = await client.responses.retrieve(queued.id)
    assert during.status in ("queued", "in_progress")
    # A reset cuts the first watcher; its reattach gets exactly the events it missed.
    sim.schedule_faults(["none", "reset@6"])
    url = f"{sim.base_url}/responses/{queued.id}?stream=true"
    raw, error = await read_raw(http, url + "&starting_after=-1", None)
    assert error is None
    whole = parse_events(raw)
    assert whole[-1][0] == "response.completed"
    assert [data["sequence_number"] for _, data in whole] == list(range(len(whole)))
    raw, error = await read_raw(http, url + "&starting_after=2", None)
    assert isinstance(error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError)
    first = parse_events(raw)
    assert first == whole[3:9]
    last = first[-1][1]["sequence_number"]
    raw, error = await read_raw(http, url + f"&starting_after={last}", None)
    assert error is None
    assert parse_events(raw) == whole[last + 1 :]
    done = await client.responses.retrieve(queued.id)
    assert done.status == "completed"
    assert done.output_text == sim.responses_api.expected(body).text
    assert [r.kind for r in sim.stats.recent_requests] == ["normal", *["reattach"] * 3]


async def test_background_generation_outlives_a_broken_stream(start_sim: StartSim) -> None:
    sim = await start_sim(tok_per_s=300.0)
    client = oai(sim)
    sim.schedule_faults(["reset@5"])
    stream = await client.responses.create(**responses_body(background=True), stream=True)
    seen: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        await drain(stream, seen)
    assert seen[0].type == "response.created"
    assert seen[0].response.status == "queued"
    response_id = seen[0].response.id
    resumed = await client.responses.retrieve(
        response_id, stream=True, starting_after=seen[-1].sequence_number
    )
    rest = [event async for event in resumed]
    assert rest[0].sequence_number == seen[-1].sequence_number + 1
    assert rest[-1].type == "response.completed"
    assert rest[-1].response.output_text == sim.responses_api.expected(responses_body()).text


async def test_background_cancel_unknown_ids_and_store_false(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(tok_per_s=20.0)
    client = oai(sim)
    queued = await client.responses.create(**responses_body(background=True))
    cancelled = await client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    assert (await client.responses.retrieve(queued.id)).status == "cancelled"
    assert not sim.responses_api.tasks
    raw, error = await read_raw(
        http, f"{sim.base_url}/responses/{queued.id}?stream=true&starting_after=-1", None
    )
    assert error is None
    assert "response.completed" not in [name for name, _ in parse_events(raw)]
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.retrieve("resp_nope")
    not_found: Any = caught.value.body
    assert not_found["message"] == "Response with id 'resp_nope' not found."
    with pytest.raises(openai.BadRequestError, match="store"):
        await client.responses.create(**responses_body(background=True, store=False))


async def test_background_store_is_bounded_and_stop_cancels_generation(
    start_sim: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responses_module, "MAX_STORED_RESPONSES", 3)
    sim = await start_sim(tok_per_s=5.0)
    client = oai(sim)
    ids = [(await client.responses.create(**responses_body(background=True))).id for _ in range(5)]
    assert [sim.responses_api.stored(i) is not None for i in ids] == [
        False,
        False,
        True,
        True,
        True,
    ]
    tasks = sim.responses_api.tasks
    assert len(tasks) == 3
    await sim.stop()
    await asyncio.sleep(0)
    assert all(task.done() for task in tasks)
    assert not sim.responses_api.tasks


async def test_a_reattach_counts_as_one_request_for_the_fault_script(
    sim: SimulatedUpstream,
) -> None:
    client = oai(sim)
    sim.schedule_faults(["none", "http_503"])
    queued = await client.responses.create(**responses_body(background=True))
    with pytest.raises(openai.InternalServerError):
        await client.responses.retrieve(queued.id, stream=True, starting_after=0)
    assert sim.pending_faults == ()
    assert sim.stats.recent_requests[-1].fault == "http_503"


async def test_admin_expected_answers_for_every_api_and_http_529_everywhere(
    sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    admin = sim.base_url.removesuffix("/v1") + "/admin/expected"
    async with http.post(admin + "?api=messages", json=messages_body()) as response:
        assert (await response.json())["text"] == sim.messages_api.expected(messages_body()).text
    async with http.post(admin + "?api=responses", json=responses_body()) as response:
        expected = sim.responses_api.expected(responses_body())
        assert (await response.json())["text"] == expected.text
    # The same conversation gets the same answer over every API.
    chat = {
        "model": "sim-1",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
    }
    assert sim.expected_answer(chat).content == expected.text
    sim.schedule_faults(["http_529"])
    async with http.post(f"{sim.base_url}/chat/completions", json=chat) as response:
        assert response.status == 529
        assert (await response.json())["error"]["type"] == "server_error"
    assert sim.stats.requests_by_api == {"chat": 1}


async def test_tools_are_called_streamed_and_answered_after_their_results(
    sim: SimulatedUpstream,
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools: Any = [{"name": "get_weather", "description": "Weather.", "input_schema": schema}]
    body = messages_body(tools=tools)
    async with claude(sim).messages.stream(**body) as stream:
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert (
        message.model_dump(exclude_none=True)["content"] == sim.messages_api.expected(body).content
    )
    results: Any = [
        {"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}
        for block in message.content
        if block.type == "tool_use"
    ]
    after = messages_body(
        [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": message.model_dump(exclude_none=True)["content"]},
            {"role": "user", "content": results},
        ],
        tools=tools,
    )
    answer = await claude(sim).messages.create(**after)
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].type == "text"
    assert answer.content[0].text == sim.messages_api.expected(after).text

    function: Any = [{"type": "function", "name": "get_weather", "parameters": schema}]
    body = responses_body(tools=function)
    async with oai(sim).responses.stream(**body) as responses:
        response = await responses.get_final_response()
    calls = [(i.call_id, i.name, i.arguments) for i in response.output if i.type == "function_call"]
    expected = sim.responses_api.expected(body).function_calls
    assert calls == [(c["call_id"], c["name"], c["arguments"]) for c in expected]
    follow_up: Any = [
        {"role": "user", "content": QUESTION},
        *({"type": "function_call", "call_id": c, "name": n, "arguments": a} for c, n, a in calls),
        *({"type": "function_call_output", "call_id": c, "output": "sunny"} for c, _, _ in calls),
    ]
    after_calls = responses_body(follow_up, tools=function)
    response = await oai(sim).responses.create(**after_calls)
    assert response.output_text == sim.responses_api.expected(after_calls).text
