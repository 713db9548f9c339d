"""The simulated upstream's Anthropic Messages endpoint: `POST /v1/messages`.

It speaks Anthropic's wire format closely enough for the official `anthropic` SDK and
answers with the same deterministic text as the chat endpoint: the request is translated to
chat-shaped messages (`system` first; tool_use blocks become tool calls, tool_result blocks
tool messages), so a conversation gets the same answer over either API.

- Headers: `anthropic-version` is required (400 without it, as Anthropic); when the
  simulator has an `api_key`, `x-api-key` must carry it (401 authentication_error).
- Body: `model`, `max_tokens` (required), `messages` (string or text/tool blocks),
  `system`, `stream`, `temperature` (0..1), `stop_sequences`, `thinking`
  ({"type": "enabled", "budget_tokens": N>=1024}, N < max_tokens; temperature must then be
  1), `tools`, `tool_choice`. The model name's suffixes pick the variant as on chat
  (`sim-1:code`; `:reasoning` thinks like `thinking` does; `:refusal` answers with
  stop_reason "refusal").
- Continuations: a final assistant message is a prefill (the answer goes on exactly where
  it stops; a final assistant text ending in whitespace gets Anthropic's 400 "final
  assistant content cannot end with trailing whitespace"); an assistant message followed
  by a user turn asking to "continue" is an instruct continuation, with the chat
  endpoint's quirks (repeated tail, restart, paraphrase).
- Stream: `message_start`, per block `content_block_start` / `content_block_delta` /
  `content_block_stop` (a `ping` after the first block starts), `message_delta`
  (stop_reason, output_tokens), `message_stop`, each as `event: <type>` + `data: <json>`.
  With thinking, block 0 is the thinking (thinking_delta deltas, then one signature_delta)
  and the text is block 1.

Faults (the chat endpoint's names, drawn from the same script / seeded chance, recorded
with `api="messages"`): a position counts the events before the fault, message_start
included and the closing ones (the last content_block_stop, message_delta, message_stop)
excluded, so `error_event@0` is an error as the very first event after the 200 headers,
"last" strikes after every delta and "done" after message_delta, before message_stop.
`error_event` is Anthropic's in-band error on the 200 stream::

    event: error
    data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}

and for a non-streaming request a 529 overloaded_error. HTTP errors have Anthropic's body
{"type":"error","error":{"type","message"},"request_id"} and a `request-id` header:
http_429 rate_limit_error (with `retry-after`), http_500 api_error, http_503 and http_529
529 overloaded_error (Anthropic sends no 503), http_400 and context_length
invalid_request_error; "down" mode answers 529. `expected_message(body)` (or
`SimulatedUpstream.messages_api.expected`) is what an uninterrupted request gets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from intact.simulator.server import (
    ApiError,
    ChatRequest,
    Dialect,
    RequestKind,
    StreamEvent,
    StreamPlan,
    chunked,
    completion_token_count,
    named_sse,
    recognise_continuation,
    style_label,
)
from intact.simulator.server import partial_reasoning as reasoning_of_partial
from intact.simulator.text import (
    Completion,
    Message,
    ToolCall,
    answer_for,
    complete,
    content_text,
    prompt_tokens,
    request_variant,
)

if TYPE_CHECKING:
    from intact.simulator.server import SimulatedUpstream

MIN_THINKING_BUDGET = 1024
THINKING_DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
_BASE62 = string.digits + string.ascii_letters


def _base62(count: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(count))


def new_request_id() -> str:
    """An id like Anthropic's `request-id` header ("req_011C" + 20 characters)."""
    return "req_011C" + _base62(20)


# --- errors -----------------------------------------------------------------------------------


class AnthropicError(ApiError):
    """An error response in Anthropic's shape:
    {"type": "error", "error": {"type", "message"}, "request_id"}, with a `request-id`
    header."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, error_type=error_type, headers=headers)
        self.request_id = new_request_id()
        self.body = {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": self.request_id,
        }
        self.headers["request-id"] = self.request_id


def invalid_request(message: str) -> AnthropicError:
    return AnthropicError(400, "invalid_request_error", message)


def overloaded_error() -> AnthropicError:
    return AnthropicError(529, "overloaded_error", "Overloaded")


def api_error() -> AnthropicError:
    return AnthropicError(500, "api_error", "Internal server error")


def rate_limit_error(retry_after: float) -> AnthropicError:
    """A 429 rate_limit_error; `retry-after` in whole seconds unless ``retry_after`` is 0."""
    headers = {"retry-after": str(math.ceil(retry_after))} if retry_after > 0 else {}
    return AnthropicError(
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per "
        "minute. Please reduce the request rate, or try again later.",
        headers=headers,
    )


def prefill_rejected() -> AnthropicError:
    return invalid_request(
        "This model does not support assistant message prefill. "
        "The conversation must end with a user message."
    )


def prompt_too_long() -> AnthropicError:
    return invalid_request("prompt is too long: 208439 tokens > 200000 maximum")


MESSAGES_DIALECT = Dialect(
    api="messages",
    rate_limited=rate_limit_error,
    server_error=api_error,
    overloaded=overloaded_error,
    overloaded_529=overloaded_error,
    prefill_rejected=prefill_rejected,
    context_length=prompt_too_long,
    in_band_failure=overloaded_error,
    request_id_header="request-id",
)


OVERLOADED_ERROR_EVENT = named_sse(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
)
"""What error_event writes on a /v1/messages stream."""


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessagesRequest:
    """A validated Messages request and the chat-shaped request its answer is made from."""

    chat: ChatRequest
    stop_sequences: tuple[str, ...]
    thinking: bool
    """A thinking block comes first (`thinking` enabled, or a `:reasoning` model)."""

    @property
    def model(self) -> str:
        return self.chat.model

    @property
    def stream(self) -> bool:
        return self.chat.stream


def _blocks(value: Any, where: str) -> list[Mapping[str, Any]]:
    """The content blocks of a string or block list (a string is one text block)."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise invalid_request(f"{where}: Input should be a valid string or list")
    for i, block in enumerate(value):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise invalid_request(f"{where}.{i}: Input should be an object with a 'type'")
        if block["type"] in ("text", "thinking") and not isinstance(block.get(block["type"]), str):
            raise invalid_request(f"{where}.{i}.{block['type']}: Field required")
    return list(value)


def _text_of(blocks: Sequence[Mapping[str, Any]]) -> str:
    return "".join(str(b["text"]) for b in blocks if b.get("type") == "text")


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, Mapping) and b.get("type") == "text"
        )
    return ""


def chat_messages(system: Any, messages: Sequence[Any]) -> list[Message]:
    """Anthropic's system and messages as the chat-shaped messages the answer is keyed on:
    tool_use blocks become an assistant's tool calls, tool_result blocks tool messages,
    thinking blocks the assistant's `reasoning_content`."""
    out: list[Message] = []
    if system is not None:
        text = _text_of(_blocks(system, "system"))
        if text:
            out.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise invalid_request(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise invalid_request(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise invalid_request(f"messages.{i}.content: Field required")
        blocks = _blocks(message["content"], f"messages.{i}.content")
        if role == "user":
            results = [b for b in blocks if b.get("type") == "tool_result"]
            for result in results:
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": str(result.get("tool_use_id", "")),
                        "content": _tool_result_text(result.get("content")),
                    }
                )
            text = _text_of(blocks)
            if text or not results:
                out.append({"role": "user", "content": text})
            continue
        assistant: dict[str, Any] = {"role": "assistant", "content": _text_of(blocks)}
        thinking = "".join(str(b["thinking"]) for b in blocks if b.get("type") == "thinking")
        if thinking:
            assistant["reasoning_content"] = thinking
        uses = [b for b in blocks if b.get("type") == "tool_use"]
        if uses:
            assistant["tool_calls"] = [
                {
                    "id": str(use.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(use.get("name", "")),
                        "arguments": orjson.dumps(use.get("input", {})).decode(),
                    },
                }
                for use in uses
            ]
        out.append(assistant)
    return out


def _chat_tools(tools: Any) -> list[Any] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise invalid_request("tools: Input should be a valid list")
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
            raise invalid_request(f"tools.{i}.name: Field required")
        converted.append(
            {
                "type": "function",
                "function": {"name": tool["name"], "parameters": tool.get("input_schema", {})},
            }
        )
    return converted or None


def _chat_tool_choice(choice: Any) -> tuple[Any, bool]:
    """(chat tool_choice, parallel tool calls) of Anthropic's tool_choice."""
    if not isinstance(choice, Mapping):
        return None, True
    parallel = choice.get("disable_parallel_tool_use") is not True
    kind = choice.get("type")
    if kind == "none":
        return "none", parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}, parallel
    return "auto", parallel


def _int_field(body: Mapping[str, Any], name: str, *, minimum: int) -> int:
    value = body.get(name)
    if value is None:
        raise invalid_request(f"{name}: Field required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_request(f"{name}: Input should be a valid integer")
    if value < minimum:
        raise invalid_request(f"{name}: Input should be greater than or equal to {minimum}")
    return value


def _thinking(body: Mapping[str, Any], max_tokens: int) -> bool:
    thinking = body.get("thinking")
    if thinking is None:
        return False
    if not isinstance(thinking, Mapping) or thinking.get("type") not in (
        "enabled",
        "disabled",
        "adaptive",
    ):
        raise invalid_request("thinking: Input tag should be 'enabled', 'disabled' or 'adaptive'")
    if thinking["type"] == "disabled":
        return False
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise invalid_request("thinking.enabled.budget_tokens: Field required")
        if budget < MIN_THINKING_BUDGET:
            raise invalid_request(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to "
                f"{MIN_THINKING_BUDGET}"
            )
        if max_tokens <= budget:
            raise invalid_request(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult "
                f"our documentation at {THINKING_DOCS}#max-tokens-and-context-window-size"
            )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise invalid_request(
            "`temperature` may only be set to 1 when thinking is enabled. Please consult our "
            f"documentation at {THINKING_DOCS}"
        )
    return True


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid_request("stop_sequences: Input should be a valid list of strings")
    if any(not s.strip() for s in value):
        raise invalid_request("stop_sequences: each stop sequence must contain non-whitespace")
    return tuple(value)


def messages_request(body: Any, *, default_style: str = "prose") -> MessagesRequest:
    """Validate a Messages request body as Anthropic does (AnthropicError on a bad one) and
    recognise its continuation convention."""
    if not isinstance(body, Mapping):
        raise invalid_request("Request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("model: Field required")
    max_tokens = _int_field(body, "max_tokens", minimum=1)
    messages = body.get("messages")
    if messages is None:
        raise invalid_request("messages: Field required")
    if not isinstance(messages, list):
        raise invalid_request("messages: Input should be a valid list")
    if not messages:
        raise invalid_request("messages: at least one message is required")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid_request("stream: Input should be a valid boolean")
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise invalid_request("temperature: Input should be a valid number")
        if not 0 <= temperature <= 1:
            raise invalid_request("temperature: range: 0..1")
    thinking = _thinking(body, max_tokens)
    converted = chat_messages(body.get("system"), messages)

    kind: RequestKind
    partial: str | None
    if messages[-1].get("role") == "assistant":
        final = converted[-1]
        partial_text = content_text(final)
        if partial_text != partial_text.rstrip():
            raise invalid_request(
                "messages: final assistant content cannot end with trailing whitespace"
            )
        kind, conversation, partial = "prefill", converted[:-1], partial_text
    else:
        kind, conversation, partial = recognise_continuation({}, converted)
    try:
        variant = request_variant(model, None, default_style=default_style)
    except ValueError as error:
        raise AnthropicError(404, "not_found_error", f"model: {model}: {error}") from None
    if thinking:
        variant = replace(variant, reasoning=True)
    tool_choice, parallel = _chat_tool_choice(body.get("tool_choice"))
    chat = ChatRequest(
        body=body,
        model=model,
        messages=converted,
        kind=kind,
        conversation=conversation,
        partial=partial,
        stream=stream,
        include_usage=False,
        n=1,
        max_tokens=max_tokens,
        tools=_chat_tools(body.get("tools")),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        variant=variant,
        partial_reasoning=reasoning_of_partial(kind, converted),
    )
    return MessagesRequest(
        chat=chat,
        stop_sequences=_stop_sequences(body.get("stop_sequences")),
        thinking=variant.reasoning,
    )


# --- what the model says -------------------------------------------------------------------


def apply_stop_sequences(
    completion: Completion, stop_sequences: Sequence[str]
) -> tuple[Completion, str | None]:
    """The completion cut before the first stop sequence in its text, and that sequence."""
    if not stop_sequences or completion.tool_calls:
        return completion, None
    text = completion.text
    found = [(text.find(s), s) for s in stop_sequences if s in text]
    if not found:
        return completion, None
    at, sequence = min(found)
    kept: list[str] = []
    length = 0
    for token in completion.tokens:
        if length + len(token) > at:
            if at > length:
                kept.append(token[: at - length])
            break
        kept.append(token)
        length += len(token)
    return replace(completion, tokens=tuple(kept), finish_reason="stop_sequence"), sequence


def stop_reason(completion: Completion) -> str:
    if completion.finish_reason == "length":
        return "max_tokens"
    if completion.finish_reason == "tool_calls":
        return "tool_use"
    if completion.finish_reason == "stop_sequence":
        return "stop_sequence"
    return "refusal" if completion.refusal else "end_turn"


def thinking_signature(thinking: str) -> str:
    """The opaque signature of a thinking block (deterministic, base64 like Anthropic's)."""
    digest = hashlib.sha256(b"signature\x00" + thinking.encode()).digest()
    return base64.b64encode(b"\x12\x08" + digest + digest[::-1]).decode()


def tool_use_id(call: ToolCall) -> str:
    return "toolu_01" + call.id.removeprefix("call_")[:22]


def content_blocks(completion: Completion) -> list[dict[str, Any]]:
    """The non-streaming `content` of a completion: thinking, text, tool_use blocks."""
    blocks: list[dict[str, Any]] = []
    if completion.reasoning:
        thinking = completion.reasoning_text
        blocks.append(
            {"type": "thinking", "thinking": thinking, "signature": thinking_signature(thinking)}
        )
    if completion.tokens:
        blocks.append({"type": "text", "text": completion.text})
    for call in completion.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call),
                "name": call.name,
                "input": orjson.loads(call.arguments),
            }
        )
    return blocks


def input_tokens(request: MessagesRequest) -> int:
    return prompt_tokens(request.chat.messages, continues_final=request.chat.kind == "prefill")


def _usage(input_count: int, output_count: int) -> dict[str, Any]:
    return {
        "input_tokens": input_count,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_count,
        "service_tier": "standard",
    }


def message_body(
    request: MessagesRequest,
    completion: Completion,
    stop_sequence: str | None,
    *,
    message_id: str,
) -> dict[str, Any]:
    """The non-streaming Message object."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content_blocks(completion),
        "stop_reason": stop_reason(completion),
        "stop_sequence": stop_sequence,
        "usage": _usage(input_tokens(request), completion_token_count(completion)),
    }


def plan_message_stream(
    request: MessagesRequest,
    completion: Completion,
    stop_sequence: str | None,
    *,
    message_id: str,
    max_tokens_per_chunk: int = 1,
) -> StreamPlan:
    """Every event of a streamed Message, paced one token (or chunk) per step; the closing
    events (the last content_block_stop, message_delta) are the "finish" ones and
    message_stop the trailer."""
    events: list[StreamEvent] = []
    step = 0

    def add(payload: dict[str, Any], at: int, *, finish: bool = False) -> None:
        events.append(StreamEvent(named_sse(payload), at, finish))

    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(input_tokens(request), 1),
    }
    add({"type": "message_start", "message": start}, 0)

    # (opening block, its deltas) per content block
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if completion.reasoning:
        thinking = completion.reasoning_text
        deltas: list[dict[str, Any]] = [
            {"type": "thinking_delta", "thinking": "".join(group)}
            for group in chunked(
                completion.reasoning, max_tokens_per_chunk, "thinking\x00" + thinking
            )
        ]
        deltas.append({"type": "signature_delta", "signature": thinking_signature(thinking)})
        blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
    if completion.tokens:
        groups = chunked(completion.tokens, max_tokens_per_chunk, "text\x00" + completion.text)
        text_deltas = [{"type": "text_delta", "text": "".join(group)} for group in groups]
        blocks.append(({"type": "text", "text": ""}, text_deltas))
    for call in completion.tool_calls:
        fragments = random.Random(call.id)  # the same fragments as the chat endpoint's
        pieces: list[dict[str, Any]] = [{"type": "input_json_delta", "partial_json": ""}]
        offset = 0
        while offset < len(call.arguments):
            size = fragments.randint(3, 12)
            piece = call.arguments[offset : offset + size]
            pieces.append({"type": "input_json_delta", "partial_json": piece})
            offset += size
        opening = {"type": "tool_use", "id": tool_use_id(call), "name": call.name, "input": {}}
        blocks.append((opening, pieces))

    if not blocks:
        add({"type": "ping"}, 0)
    for index, (opening, deltas) in enumerate(blocks):
        add({"type": "content_block_start", "index": index, "content_block": opening}, step)
        if index == 0:
            add({"type": "ping"}, step)
        for delta in deltas:
            if delta["type"] == "signature_delta":
                step -= 1  # the signature comes with the last thinking token
            add({"type": "content_block_delta", "index": index, "delta": delta}, step)
            step += 1
        last = index == len(blocks) - 1
        add({"type": "content_block_stop", "index": index}, max(0, step - 1), finish=last)
    add(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(completion), "stop_sequence": stop_sequence},
            "usage": {"output_tokens": completion_token_count(completion)},
        },
        max(0, step - 1),
        finish=True,
    )
    return StreamPlan(events=events, trailer=named_sse({"type": "message_stop"}))


# --- what tests compare against --------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedMessage:
    """What an uninterrupted, non-streaming Messages request gets (a continuation request is
    answered as its conversation: the whole answer)."""

    text: str
    """The text blocks' text."""
    thinking: str | None
    stop_reason: str
    stop_sequence: str | None
    content: list[dict[str, Any]]
    """The Message's content blocks, signatures and tool_use ids included."""
    style: str | None


def expected_message(body: Mapping[str, Any], *, default_style: str = "prose") -> ExpectedMessage:
    """The uninterrupted answer to a /v1/messages body, from a simulator whose default style
    is `default_style`. Raises AnthropicError for a bad body."""
    request = messages_request(body, default_style=default_style)
    chat = request.chat
    answer = answer_for(
        chat.conversation,
        tools=chat.tools,
        tool_choice=chat.tool_choice,
        parallel_tool_calls=chat.parallel_tool_calls,
        variant=chat.variant,
    )
    completion = complete(answer, chat.max_tokens if chat.kind == "normal" else None)
    completion, stop_sequence = apply_stop_sequences(completion, request.stop_sequences)
    return ExpectedMessage(
        text=completion.text,
        thinking=completion.reasoning_text if completion.reasoning else None,
        stop_reason=stop_reason(completion),
        stop_sequence=stop_sequence,
        content=content_blocks(completion),
        style=None if completion.tool_calls else answer.kind,
    )


# --- the endpoint ------------------------------------------------------------------------------


class MessagesEndpoint:
    """`POST /v1/messages` of a SimulatedUpstream (its settings, faults, stats, pacing)."""

    def __init__(self, upstream: SimulatedUpstream) -> None:
        self._upstream = upstream

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self._handle)

    def expected(self, body: Mapping[str, Any]) -> ExpectedMessage:
        """What an uninterrupted request with `body` gets from this simulator."""
        return expected_message(body, default_style=self._upstream.settings.style)

    def _authenticate(self, request: web.Request) -> None:
        key = self._upstream.settings.api_key
        if key is None:
            return
        given = request.headers.get("x-api-key")
        if not given:
            raise AnthropicError(401, "authentication_error", "x-api-key header is required")
        if not secrets.compare_digest(given.encode(), key.encode()):
            raise AnthropicError(401, "authentication_error", "invalid x-api-key")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        return await self._upstream._other_route(
            request,
            self._answer,
            dialect=MESSAGES_DIALECT,
            authenticate=self._authenticate,
            request_id=new_request_id(),
        )

    async def _answer(self, request: web.Request, request_id: str) -> web.StreamResponse:
        upstream = self._upstream
        settings = upstream.settings
        stats = upstream.stats
        arrived = asyncio.get_running_loop().time()
        stats.requests_by_api["messages"] += 1
        if "anthropic-version" not in request.headers:
            raise invalid_request("anthropic-version: header is required")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise invalid_request("There was an error parsing the body as JSON") from None
        parsed = messages_request(body, default_style=settings.style)
        chat = parsed.chat
        # Synchronous from here to the first await: seeded draws in arrival order.
        mode = upstream.mode
        stats.requests_by_kind[chat.kind] += 1
        stats.requests_by_mode[mode] += 1
        stats.requests_by_style[style_label(chat)] += 1
        rng = random.Random(upstream._rng.getrandbits(64))
        completion = upstream._completions(chat, rng)[0]
        completion, stop_sequence = apply_stop_sequences(completion, parsed.stop_sequences)
        message_id = "msg_01" + _base62(22)
        plan = plan_message_stream(
            parsed,
            completion,
            stop_sequence,
            message_id=message_id,
            max_tokens_per_chunk=settings.max_tokens_per_chunk,
        )
        fault = upstream._faults.next_fault(
            continuation=chat.kind != "normal", total_chunks=plan.content_chunks
        )
        upstream._record(request_id, chat, mode, fault, api="messages")
        dropped = upstream._before_response(request, fault, MESSAGES_DIALECT)
        if dropped is not None:
            return dropped
        pacing = upstream._pacing(mode)
        if chat.stream:
            return await upstream._stream(
                request,
                request_id,
                plan,
                fault,
                pacing,
                arrived,
                error_event=lambda _sent: OVERLOADED_ERROR_EVENT,
                headers={
                    "Content-Type": "text/event-stream; charset=utf-8",
                    "Cache-Control": "no-cache",
                    "request-id": request_id,
                },
            )
        whole = message_body(parsed, completion, stop_sequence, message_id=message_id)
        return await upstream._respond_whole(
            request, request_id, whole, plan, fault, pacing, arrived, MESSAGES_DIALECT
        )
