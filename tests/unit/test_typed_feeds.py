"""The Messages and Responses feeds on hand-made event sequences: the seams a real upstream
produces that the simulator rarely does (a break right after a block's stop, a
continuation that thinks first, a tool call already shown)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from intact.config import RecoveryConfig
from intact.errors import AppError
from intact.relay.messages import MessagesAnswer
from intact.relay.responses import ResponsesAnswer
from intact.resilience.classify import UpstreamFailure


class Sink:
    """Records what the app would receive."""

    committed = True

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send_chunk(self, chunk: Mapping[str, Any], raw: bytes | None) -> None:
        self.events.append(orjson.loads(raw) if raw else dict(chunk))

    async def send_comment(self, text: str) -> None:
        return None

    async def flow(self) -> None:
        return None

    def reset(self) -> bool:
        return False

    async def finish(self, headers: Mapping[str, str]) -> None:
        return None

    async def fail(self, error: AppError) -> None:
        return None

    def text(self) -> str:
        out = ""
        for e in self.events:
            if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta":
                out += e["delta"]["text"]
            elif e["type"] == "response.output_text.delta":
                out += e["delta"]
        return out


async def feed(target: Any, events: list[dict[str, Any]]) -> None:
    for event in events:
        await target.on_chunk(event, orjson.dumps(event))


def message_start(mid: str = "msg_1") -> dict[str, Any]:
    usage = {"input_tokens": 10, "output_tokens": 1}
    return {"type": "message_start", "message": {"id": mid, "model": "m", "usage": usage}}


def block(index: int, kind: str = "text") -> dict[str, Any]:
    body: dict[str, Any] = {"type": kind}
    if kind == "text":
        body["text"] = ""
    return {"type": "content_block_start", "index": index, "content_block": body}


def text(index: int, value: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": value},
    }


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(reason: str = "end_turn", tokens: int = 9) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": None},
        "usage": {"output_tokens": tokens},
    }


async def test_a_break_right_after_the_text_blocks_stop_is_continued_in_the_same_block() -> None:
    sink = Sink()
    answer = MessagesAnswer(sink, RecoveryConfig(), 100)  # type: ignore[arg-type]
    first = answer.attempt("instruct")
    await feed(first, [message_start(), block(0), text(0, "The cat "), text(0, "sat."), stop(0)])
    assert not first.finished
    assert [e["type"] for e in sink.events][-1] == "content_block_delta"  # the stop is held
    assert answer.why_not_resumable("instruct") is None
    second = answer.attempt("instruct")
    await feed(
        second,
        [message_start("msg_2"), block(0), text(0, " It purred."), stop(0), message_delta()],
    )
    await second.send_trailer()
    types = [e["type"] for e in sink.events]
    assert types.count("message_start") == 1
    assert types.count("content_block_start") == 1
    assert types.count("content_block_stop") == 1
    assert sink.text() == "The cat sat. It purred."
    last = sink.events[-1]
    assert last["type"] == "message_delta"
    assert last["usage"]["output_tokens"] == 3  # what the app received, one per delta


async def test_a_continuation_that_thinks_first_has_its_thinking_dropped() -> None:
    sink = Sink()
    answer = MessagesAnswer(sink, RecoveryConfig(), 100)  # type: ignore[arg-type]
    first = answer.attempt("instruct")
    thinking = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "hm"},
    }
    await feed(
        first,
        [message_start(), block(0, "thinking"), thinking, stop(0), block(1), text(1, "Yes, ")],
    )
    second = answer.attempt("instruct")
    await feed(
        second,
        [
            message_start(),
            block(0, "thinking"),
            thinking,
            stop(0),
            block(1),
            text(1, "it is."),
            stop(1),
            message_delta(),
        ],
    )
    await second.send_trailer()
    starts = [e["index"] for e in sink.events if e["type"] == "content_block_start"]
    assert starts == [0, 1]
    assert sink.text() == "Yes, it is."
    body = orjson.loads(
        answer.next_call(
            {"model": "m", "max_tokens": 50, "messages": [], "thinking": {"type": "enabled"}},
            "instruct",
            "go on",
            model="m",
            upstream="u",
        ).body
        or b""
    )
    assert "thinking" not in body


async def test_a_break_inside_thinking_or_after_a_tool_use_is_not_resumable() -> None:
    answer = MessagesAnswer(Sink(), RecoveryConfig(), 100)  # type: ignore[arg-type]
    await feed(answer.attempt(), [message_start(), block(0, "thinking")])
    assert "thinking" in (answer.why_not_resumable("instruct") or "")
    answer = MessagesAnswer(Sink(), RecoveryConfig(), 100)  # type: ignore[arg-type]
    await feed(
        answer.attempt(),
        [
            message_start(),
            block(0),
            text(0, "Let me look."),
            stop(0),
            block(1, "tool_use"),
            stop(1),
        ],
    )
    assert "tool_use" in (answer.why_not_resumable("instruct") or "")


async def test_an_in_band_overloaded_error_is_a_retryable_failure() -> None:
    answer = MessagesAnswer(Sink(), RecoveryConfig(), 100)  # type: ignore[arg-type]
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamFailure) as failure:
        await feed(answer.attempt(), [overloaded])
    assert failure.value.retryable


def r_event(kind: str, seq: int, **kw: Any) -> dict[str, Any]:
    return {"type": kind, "sequence_number": seq, **kw}


def r_opening(rid: str, item: str) -> list[dict[str, Any]]:
    response = {
        "id": rid,
        "object": "response",
        "model": "m",
        "status": "in_progress",
        "output": [],
    }
    return [
        r_event("response.created", 0, response=response),
        r_event("response.in_progress", 1, response=response),
        r_event(
            "response.output_item.added",
            2,
            output_index=0,
            item={
                "id": item,
                "type": "message",
                "role": "assistant",
                "content": [],
                "status": "in_progress",
            },
        ),
        r_event(
            "response.content_part.added",
            3,
            item_id=item,
            output_index=0,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        ),
    ]


def r_delta(seq: int, item: str, value: str) -> dict[str, Any]:
    return r_event(
        "response.output_text.delta",
        seq,
        item_id=item,
        output_index=0,
        content_index=0,
        delta=value,
        logprobs=[],
    )


async def test_a_responses_continuation_is_renumbered_onto_the_apps_item() -> None:
    sink = Sink()
    answer = ResponsesAnswer(sink, RecoveryConfig(), None, background=False)  # type: ignore[arg-type]
    answer.next_call({"model": "m", "input": "hi"}, "instruct", "go on", model="m", upstream="u")
    first = answer.attempt("instruct")
    await feed(
        first,
        [
            *r_opening("resp_1", "msg_1"),
            r_delta(4, "msg_1", "One two"),
            r_delta(5, "msg_1", " three."),
        ],
    )
    await feed(
        first,
        [
            r_event(
                "response.output_text.done",
                6,
                item_id="msg_1",
                output_index=0,
                content_index=0,
                text="One two three.",
            )
        ],
    )
    call = answer.next_call(
        {"model": "m", "input": "hi"}, "instruct", "go on", model="m", upstream="u"
    )
    assert call.method == "POST"
    sent = orjson.loads(call.body or b"")
    assert sent["input"][-2] == {
        "type": "message",
        "role": "assistant",
        "content": "One two three.",
    }
    second = answer.attempt("instruct")
    response2 = {
        "id": "resp_2",
        "object": "response",
        "model": "m",
        "status": "completed",
        "output": [],
        "usage": {"input_tokens": 20, "output_tokens": 2, "total_tokens": 22},
    }
    await feed(
        second,
        [
            *r_opening("resp_2", "msg_2"),
            r_delta(4, "msg_2", " Four."),
            r_event("response.completed", 9, response=response2),
        ],
    )
    assert second.finished
    await second.send_trailer()
    seqs = [e["sequence_number"] for e in sink.events]
    assert seqs == list(range(len(seqs)))
    assert sink.text() == "One two three. Four."
    assert {e.get("item_id") for e in sink.events if "item_id" in e} == {"msg_1"}
    final = sink.events[-1]
    assert final["type"] == "response.completed"
    assert final["response"]["id"] == "resp_1"
    assert final["response"]["output"][0]["content"][0]["text"] == "One two three. Four."
    done_texts = [e["text"] for e in sink.events if e["type"] == "response.output_text.done"]
    assert done_texts == ["One two three. Four."]


async def test_a_background_response_is_reattached_after_the_last_number_sent() -> None:
    sink = Sink()
    answer = ResponsesAnswer(sink, RecoveryConfig(), None, background=True)  # type: ignore[arg-type]
    answer.next_call({"model": "m", "input": "hi"}, "instruct", "go on", model="m", upstream="u")
    first = answer.attempt("instruct")
    await feed(first, [*r_opening("resp_1", "msg_1"), r_delta(4, "msg_1", "One")])
    call = answer.next_call(
        {"model": "m", "input": "hi"}, "instruct", "go on", model="m", upstream="u"
    )
    assert (call.method, call.path, call.query) == (
        "GET",
        "/responses/resp_1",
        "stream=true&starting_after=4",
    )
    other = answer.next_call(
        {"model": "m", "input": "hi"}, "instruct", "go on", model="m", upstream="v"
    )
    assert other.method == "POST"  # another upstream does not hold the response


def llama_events(rid: str, item: str, pieces: list[str]) -> list[dict[str, Any]]:
    """Responses events as llama.cpp's server sends them: no output_index and no
    sequence_number (seen on llama-server; the feed must key items by id)."""
    response = {"id": rid, "object": "response", "status": "in_progress"}
    added = {
        "content": [],
        "id": item,
        "role": "assistant",
        "status": "in_progress",
        "type": "message",
    }
    out: list[dict[str, Any]] = [
        {"type": "response.created", "response": response},
        {"type": "response.in_progress", "response": response},
        {"type": "response.output_item.added", "item": added},
        {
            "type": "response.content_part.added",
            "item_id": item,
            "part": {"type": "output_text", "text": ""},
        },
    ]
    out += [{"type": "response.output_text.delta", "item_id": item, "delta": p} for p in pieces]
    return out


async def test_responses_without_output_index_or_sequence_numbers_still_splice() -> None:
    sink = Sink()
    answer = ResponsesAnswer(sink, RecoveryConfig(), None, background=False)  # type: ignore[arg-type]
    answer.next_call({"model": "m", "input": "hi"}, "instruct", "go on", model="m", upstream="u")
    first = answer.attempt("instruct")
    await feed(first, llama_events("resp_1", "msg_1", ["I'm", " glad"]))
    done = {"type": "response.output_text.done", "item_id": "msg_1", "text": "I'm glad"}
    await feed(first, [done])
    assert sink.events[-1]["type"] == "response.output_text.delta"  # .done is held
    call = answer.next_call(
        {"model": "m", "input": "hi"}, "instruct", "go on", model="m", upstream="u"
    )
    sent = orjson.loads(call.body or b"")
    assert sent["input"][0] == {"type": "message", "role": "user", "content": "hi"}
    assert sent["input"][1] == {"type": "message", "role": "assistant", "content": "I'm glad"}
    second = answer.attempt("instruct")
    final = {
        "id": "resp_2",
        "status": "completed",
        "usage": {"input_tokens": 30, "output_tokens": 3},
    }
    await feed(
        second,
        [
            *llama_events("resp_2", "msg_2", [" you", "'re here."]),
            {"type": "response.completed", "response": final},
        ],
    )
    await second.send_trailer()
    assert sink.text() == "I'm glad you're here."
    assert sink.events[-1]["response"]["id"] == "resp_1"
    assert sink.events[-1]["response"]["output"][0]["content"][0]["text"] == "I'm glad you're here."


async def test_a_continuation_that_only_restates_the_partial_is_not_an_ending() -> None:
    """The model re-emits the partial and stops (seen on the real model): ending there would
    close the answer where it broke."""
    sink = Sink()
    answer = MessagesAnswer(sink, RecoveryConfig(), 100)  # type: ignore[arg-type]
    partial = "The answer lies in the intricate dance of atmospheric"
    await feed(answer.attempt("instruct"), [message_start(), block(0), text(0, partial)])
    second = answer.attempt("instruct")
    with pytest.raises(UpstreamFailure) as failure:
        await feed(
            second,
            [message_start(), block(0), text(0, partial), stop(0), message_delta("end_turn")],
        )
    assert "restated" in failure.value.message
    assert sink.text() == partial


def sdk_accepts(events: list[dict[str, Any]]) -> None:
    """Replay what the app got through the openai SDK's own Responses stream accumulator
    (what ``client.responses.stream()`` runs): it indexes items and parts as announced."""
    from openai._models import construct_type
    from openai._types import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))  # type: ignore[arg-type]


def r_response(rid: str, status: str = "in_progress", **kw: Any) -> dict[str, Any]:
    return {"id": rid, "object": "response", "model": "m", "status": status, "output": [], **kw}


async def test_a_rerun_after_only_response_created_announces_its_part() -> None:
    """An in-band error right after response.created: the rerun's message item is new to
    the app, so its content_part.added must reach it (the SDK indexes the part)."""
    sink = Sink()
    answer = ResponsesAnswer(sink, RecoveryConfig(), None, background=False)  # type: ignore[arg-type]
    body = {"model": "m", "input": "hi"}
    answer.next_call(body, "instruct", "go on", model="m", upstream="u")
    await feed(answer.attempt(), [r_event("response.created", 0, response=r_response("resp_1"))])
    answer.next_call(body, "instruct", "go on", model="m", upstream="u")
    rerun = answer.attempt()
    usage = {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}
    part = {"type": "output_text", "text": "Hello.", "annotations": []}
    item = {
        "id": "msg_2",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [part],
    }
    final = r_response("resp_2", "completed", usage=usage, output=[item])
    done = r_event("response.completed", 9, response=final)
    await feed(rerun, [*r_opening("resp_2", "msg_2"), r_delta(4, "msg_2", "Hello."), done])
    await rerun.send_trailer()
    types = [e["type"] for e in sink.events]
    assert types.index("response.content_part.added") < types.index("response.output_text.delta")
    sdk_accepts(sink.events)
    # The first response.created was held back: the app sees the rerun's response only.
    assert {e["response"]["id"] for e in sink.events if "response" in e} == {"resp_2"}


async def test_two_message_items_keep_their_own_text() -> None:
    sink = Sink()
    answer = ResponsesAnswer(sink, RecoveryConfig(), None, background=False)  # type: ignore[arg-type]
    body = {"model": "m", "input": "hi"}
    answer.next_call(body, "instruct", "go on", model="m", upstream="u")
    first = answer.attempt()
    intro = [*r_opening("resp_1", "msg_1"), r_delta(4, "msg_1", "Intro.")]
    item2 = {
        "id": "msg_b",
        "type": "message",
        "role": "assistant",
        "content": [],
        "status": "in_progress",
    }
    part = {"type": "output_text", "text": "", "annotations": []}
    second_item = [
        r_event(
            "response.output_text.done",
            5,
            item_id="msg_1",
            output_index=0,
            content_index=0,
            text="Intro.",
        ),
        r_event(
            "response.content_part.done",
            5,
            item_id="msg_1",
            output_index=0,
            content_index=0,
            part={**part, "text": "Intro."},
        ),
        r_event(
            "response.output_item.done",
            5,
            output_index=0,
            item={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{**part, "text": "Intro."}],
            },
        ),
        r_event("response.output_item.added", 6, output_index=1, item=item2),
        r_event(
            "response.content_part.added",
            7,
            item_id="msg_b",
            output_index=1,
            content_index=0,
            part=part,
        ),
        r_event(
            "response.output_text.delta",
            8,
            item_id="msg_b",
            output_index=1,
            content_index=0,
            delta="The cat",
        ),
    ]
    await feed(first, [*intro, *second_item])
    answer.next_call(body, "instruct", "go on", model="m", upstream="u")
    cont = answer.attempt()
    usage = {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11}
    done = r_event("response.completed", 9, response=r_response("resp_2", "completed", usage=usage))
    await feed(cont, [*r_opening("resp_2", "msg_2"), r_delta(4, "msg_2", " sat."), done])
    await cont.send_trailer()
    output = sink.events[-1]["response"]["output"]
    texts = [item["content"][0]["text"] for item in output]
    assert texts[-1] == "The cat sat."
    sdk_accepts(sink.events)


async def test_what_responses_cannot_continue_is_refused() -> None:
    answer = ResponsesAnswer(Sink(), RecoveryConfig(), None, background=False)  # type: ignore[arg-type]
    answer.next_call({"model": "m"}, "prefill", "", model="m", upstream="u")
    json_body = {
        "model": "m",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {}}},
    }
    await feed(
        answer.attempt(), [*r_opening("resp_1", "msg_1"), r_delta(4, "msg_1", '{"name": "Al')]
    )
    assert "JSON" in (answer.why_not_resumable("prefill", json_body) or "")
    refusal = ResponsesAnswer(Sink(), RecoveryConfig(), None, background=False)  # type: ignore[arg-type]
    opening = r_opening("resp_1", "msg_1")
    opening[-1] = {**opening[-1], "part": {"type": "refusal", "refusal": ""}}
    sorry = r_event(
        "response.refusal.delta", 4, item_id="msg_1", output_index=0, content_index=0, delta="Sorry"
    )
    await feed(refusal.attempt(), [*opening, sorry])
    assert "refusal" in (refusal.why_not_resumable("instruct", {}) or "")
    # Background: a reattach only on the upstream that holds the response; elsewhere the
    # usual rules hold.
    bg = ResponsesAnswer(Sink(), RecoveryConfig(), None, background=True)  # type: ignore[arg-type]
    bg.next_call({"model": "m"}, "instruct", "", model="m", upstream="u")
    call_item = {
        "id": "fc_1",
        "type": "function_call",
        "name": "f",
        "arguments": "{}",
        "call_id": "c",
    }
    await feed(
        bg.attempt(),
        [
            r_event("response.created", 0, response=r_response("resp_1")),
            r_event("response.output_item.added", 1, output_index=0, item=call_item),
            r_event("response.output_item.done", 2, output_index=0, item=call_item),
        ],
    )
    assert bg.why_not_resumable("instruct", {}, "u") is None
    assert "function_call" in (bg.why_not_resumable("instruct", {}, "other") or "")


async def test_the_envelope_is_held_until_the_first_content_event() -> None:
    """message_start / response.created come before any token: an error right after them is
    retried as if nothing was sent, even for an app that turned resuming off."""
    sink = Sink()
    answer = MessagesAnswer(sink, RecoveryConfig(), 100)  # type: ignore[arg-type]
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamFailure):
        await feed(answer.attempt(), [message_start(), {"type": "ping"}, overloaded])
    assert sink.events == [] and not answer.started
    assert answer.why_not_resumable("off") is None
    rerun = answer.attempt()
    await feed(rerun, [message_start("msg_2"), {"type": "ping"}, block(0), text(0, "Hi.")])
    assert [e["type"] for e in sink.events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
    ]
    assert sink.events[0]["message"]["id"] == "msg_2"

    r_sink = Sink()
    responses = ResponsesAnswer(r_sink, RecoveryConfig(), None, background=False)  # type: ignore[arg-type]
    responses.next_call({"model": "m"}, "off", "", model="m", upstream="u")
    with pytest.raises(UpstreamFailure):
        await feed(
            responses.attempt(),
            [
                r_event("response.created", 0, response=r_response("resp_1")),
                r_event("error", 1, code="server_error", message="x"),
            ],
        )
    assert r_sink.events == [] and responses.why_not_resumable("off") is None
