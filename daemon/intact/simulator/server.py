"""The simulated upstream: an OpenAI-compatible chat completions server that fails on purpose.

It speaks the wire format closely enough for the official `openai` SDK, answers with the
deterministic text of `simulator.text`, understands the three continuation conventions
intact resumes with (vLLM prefill, DeepSeek/Mistral prefix, a plain "continue" instruction),
and injects the faults of `simulator.faults` at exact chunk positions. `intact demo`, the
tests, the chaos run and the benchmarks all run against it.

What a request gets (see `simulator.text` for the text itself):
- the model name's suffixes pick the variant: `sim-1:code`, `sim-1:cjk:reasoning`,
  `sim-1:refusal`, `sim-1:mixed` (styles prose, code, table, cjk, json, mixed); no style
  suffix means `SimulatorSettings.style`; `response_format` json_object / json_schema
  means JSON (a schema's properties become the top-level keys);
- reasoning arrives in `delta.reasoning_content` (or `delta.reasoning`, by setting) before
  any `delta.content`; a refusal in `delta.refusal` with `content` null;
- `logprobs: true` (and `top_logprobs`) puts OpenAI's `logprobs.content` on every chunk;
- a continuation of reasoning passes the partial reasoning as the assistant message's
  `reasoning_content` (or `reasoning`) with empty content.
`POST /admin/expected` (or `SimulatedUpstream.expected_answer`) answers what an
uninterrupted request with a given body would get.

Besides chat it answers `POST /v1/embeddings`, `POST /v1/completions` (stream and not),
`POST /v1/audio/transcriptions` (multipart) and `GET /v1/models/{id}` (see
`simulator.other_endpoints`), with the same API key check, modes and faults: a scripted or
random fault applies to whichever request comes next. Every /v1/ request's method, path,
query and headers are kept in `SimulatorStats.http_requests`.

It also speaks Anthropic's `POST /v1/messages` (`simulator.anthropic_api`) and OpenAI's
`POST /v1/responses` with background mode (`simulator.responses_api`): the same text (a
conversation gets the same answer over every API), continuations, pacing and named faults,
each in that API's wire format and error shapes (`Dialect`). `messages_api.expected(body)`
and `responses_api.expected(body)` (or `POST /admin/expected?api=messages|responses`) are
their uninterrupted answers; `RequestRecord.api` and `SimulatorStats.requests_by_api` tell
the APIs apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import re
import secrets
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import BodyPartReader, web
from multidict import CIMultiDict, CIMultiDictProxy

from intact.simulator.faults import (
    AFTER_FINISH,
    ALL_FAULT_KINDS,
    CONNECT_DROP,
    CONTEXT_LENGTH,
    ERROR_EVENT,
    HTTP_400,
    HTTP_429,
    HTTP_500,
    HTTP_503,
    HTTP_529,
    OPT_IN_KINDS,
    RESET,
    STALL,
    TRUNCATE,
    FaultInjector,
    FaultSpec,
    InjectedFault,
    parse_fault_spec,
)
from intact.simulator.logprobs import MAX_TOP_LOGPROBS, logprobs_for
from intact.simulator.other_endpoints import (
    completion_choice,
    completion_object,
    completion_request,
    completion_tokens,
    embeddings_response,
    transcription,
)
from intact.simulator.text import (
    PROSE,
    STYLES,
    Completion,
    ContinuationQuirks,
    ExpectedAnswer,
    Message,
    Variant,
    answer_for,
    complete,
    content_text,
    continue_answer,
    conversation_digest,
    expected_answer,
    prompt_tokens,
    request_variant,
    resolve_style,
)
from intact.simulator.tokenizer import tokenize

MODES: tuple[str, ...] = ("normal", "down", "slow")
REQUEST_KINDS: tuple[str, ...] = ("normal", "prefill", "prefix", "instruct")
SYSTEM_FINGERPRINT = "fp_intact_sim"
MAX_CHOICES = 128
RECENT_REQUESTS_KEPT = 1000

RequestKind = Literal["normal", "prefill", "prefix", "instruct"]
REASONING_FIELDS: tuple[str, ...] = ("reasoning_content", "reasoning")


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SimulatorSettings:
    """How the simulated upstream paces, answers and fails. Validated on construction."""

    tok_per_s: float = 60.0
    """Content chunks per second per choice; 0 sends everything as fast as possible."""
    ttft: float = 0.25
    """Seconds from the request to the first chunk (headers are sent at once)."""
    fault_rate: float = 0.0
    """Chance a normal request gets a random fault once the scripted schedule is empty."""
    continuation_fault_rate: float | None = None
    """Chance a continuation request gets a random fault; None means `fault_rate`."""
    kinds: tuple[str, ...] = ALL_FAULT_KINDS
    """Fault kinds random injection picks from (uniformly)."""
    seed: int | None = None
    """Seed of every random decision (faults, quirks); None seeds from the OS."""
    style: str = "prose"
    """Text style of requests whose model name has no style suffix (one of STYLES)."""
    reasoning_field: str = "reasoning_content"
    """Delta field reasoning arrives in: "reasoning_content" (DeepSeek, vLLM) or
    "reasoning" (OpenRouter, newer vLLM)."""
    repeat_prob: float = 0.1
    """Chance an instruct continuation first repeats the tail of the partial (the last
    words, CJK characters, or line of code)."""
    whitespace_variation_prob: float = 0.3
    """Chance (given a repeat of words) that whitespace in the repeated tail is altered."""
    restart_prob: float = 0.0
    """Chance an instruct continuation starts the answer over, exactly."""
    paraphrase_prob: float = 0.0
    """Chance an instruct continuation starts over with a slightly reworded opening
    ("Here is" -> "Here's") and then goes on differently."""
    prefill_echo_prob: float = 0.0
    """Chance a prefill/prefix continuation's first delta repeats the whole partial, as
    llama-server does for a bare trailing assistant message."""
    max_repeat_words: int = 6
    """Most words a repeated tail has (it has 1 to this many)."""
    max_tokens_per_chunk: int = 1
    """Most tokens one chunk carries (each chunk 1 to this many, like vLLM's stream
    interval); the relay counts chunks, the model counts tokens."""
    retry_after: float = 1.0
    """Seconds advertised by http_429 in Retry-After / retry-after-ms; 0 sends none."""
    api_key: str | None = None
    """When set, requests must carry `Authorization: Bearer <api_key>`."""
    models: tuple[str, ...] = ("sim-1", "sim-2")
    """Model ids listed by GET /v1/models (chat requests accept any name)."""
    stall_max: float = 3600.0
    """Longest a stall holds the connection open before the server drops it."""
    slow_factor: float = 10.0
    """In "slow" mode ttft is multiplied and tok_per_s divided by this."""

    def __post_init__(self) -> None:
        for name in (
            "fault_rate",
            "repeat_prob",
            "whitespace_variation_prob",
            "restart_prob",
            "paraphrase_prob",
            "prefill_echo_prob",
        ):
            _check_probability(name, getattr(self, name))
        if self.style not in STYLES:
            raise ValueError(
                f"simulator style must be one of {', '.join(STYLES)}, got {self.style!r}"
            )
        if self.reasoning_field not in REASONING_FIELDS:
            raise ValueError(
                f"simulator reasoning_field must be one of {', '.join(REASONING_FIELDS)}, "
                f"got {self.reasoning_field!r}"
            )
        for name in ("max_repeat_words", "max_tokens_per_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"simulator {name} must be >= 1, got {getattr(self, name)!r}")
        if self.continuation_fault_rate is not None:
            _check_probability("continuation_fault_rate", self.continuation_fault_rate)
        for name in ("tok_per_s", "ttft", "retry_after", "stall_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"simulator {name} must be >= 0, got {getattr(self, name)!r}")
        if self.slow_factor <= 0:
            raise ValueError(f"simulator slow_factor must be > 0, got {self.slow_factor!r}")
        allowed = (*ALL_FAULT_KINDS, *OPT_IN_KINDS)
        unknown = [kind for kind in self.kinds if kind not in allowed]
        if unknown:
            raise ValueError(
                f"simulator kinds has unknown fault kinds {unknown}; allowed: {', '.join(allowed)}"
            )


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"simulator {name} must be between 0 and 1, got {value!r}")


DEFAULT_SETTINGS = SimulatorSettings()


# --- stats ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One generation request as the simulator saw it (the body is kept for assertions).

    `api` tells the endpoints apart: "chat" (/v1/chat/completions), "messages"
    (/v1/messages) or "responses" (/v1/responses, and its GET reattach streams, whose `kind`
    is "reattach")."""

    request_id: str
    at: float
    kind: str
    mode: str
    stream: bool
    fault: str | None
    body: Mapping[str, Any] = field(repr=False)
    api: str = "chat"

    def as_json(self) -> dict[str, Any]:
        return {
            "api": self.api,
            "request_id": self.request_id,
            "at": self.at,
            "kind": self.kind,
            "mode": self.mode,
            "stream": self.stream,
            "fault": self.fault,
        }


@dataclass(frozen=True)
class HttpRecord:
    """One /v1/ request as it reached the simulator: what a relay passed on."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str] = field(repr=False)


@dataclass(frozen=True)
class ClientDisconnect:
    """A client that went away mid-response, and when (time.monotonic()) the server noticed."""

    request_id: str
    at: float
    chunks_sent: int


@dataclass
class SimulatorStats:
    """What happened since start (or the last reset); `active_streams` is always live."""

    chat_requests: int = 0
    requests_by_api: Counter[str] = field(default_factory=Counter)
    """Generation requests by API: "chat", "messages", "responses" (reattaches included)."""
    requests_by_kind: Counter[str] = field(default_factory=Counter)
    requests_by_mode: Counter[str] = field(default_factory=Counter)
    requests_by_style: Counter[str] = field(default_factory=Counter)
    """Chat requests by the text style they were answered in (after "mixed" resolved)."""
    faults_injected: Counter[str] = field(default_factory=Counter)
    completed_streams: int = 0
    completed_responses: int = 0
    """Non-streaming responses delivered in full."""
    client_disconnects: int = 0
    disconnects: deque[ClientDisconnect] = field(
        default_factory=lambda: deque(maxlen=RECENT_REQUESTS_KEPT)
    )
    active_streams: int = 0
    recent_requests: deque[RequestRecord] = field(
        default_factory=lambda: deque(maxlen=RECENT_REQUESTS_KEPT)
    )
    requests_by_route: Counter[str] = field(default_factory=Counter)
    """Requests to the routes besides chat, by route (e.g. "POST /v1/embeddings")."""
    http_requests: deque[HttpRecord] = field(
        default_factory=lambda: deque(maxlen=RECENT_REQUESTS_KEPT)
    )
    """Every /v1/ request, chat included, with its headers (not in `as_json`: they may
    carry an API key)."""

    @property
    def generation_requests(self) -> int:
        """Every generation request, whatever its API (chat_requests counts chat alone)."""
        return sum(self.requests_by_api.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "chat_requests": self.chat_requests,
            "requests_by_api": dict(self.requests_by_api),
            "requests_by_kind": {k: self.requests_by_kind[k] for k in REQUEST_KINDS},
            "requests_by_mode": {m: self.requests_by_mode[m] for m in MODES},
            "requests_by_style": dict(self.requests_by_style),
            "faults_injected": dict(self.faults_injected),
            "completed_streams": self.completed_streams,
            "completed_responses": self.completed_responses,
            "client_disconnects": self.client_disconnects,
            "disconnects": [
                {"request_id": d.request_id, "at": d.at, "chunks_sent": d.chunks_sent}
                for d in self.disconnects
            ],
            "active_streams": self.active_streams,
            "recent_requests": [r.as_json() for r in self.recent_requests],
            "requests_by_route": dict(self.requests_by_route),
        }


# --- OpenAI-shaped errors ---------------------------------------------------------------------


class ApiError(Exception):
    """An error response in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {
            "error": {"message": message, "type": error_type, "param": param, "code": code}
        }
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return _json_response(self.body, status=self.status, headers=self.headers)


SERVER_ERROR_MESSAGE = "The server had an error while processing your request."


def _server_error() -> ApiError:
    return ApiError(500, SERVER_ERROR_MESSAGE + " Sorry about that!", error_type="server_error")


def _overloaded() -> ApiError:
    return ApiError(
        503,
        "The engine is currently overloaded, please try again later.",
        error_type="server_error",
    )


def _rate_limited(retry_after: float) -> ApiError:
    """A 429; with ``retry_after`` 0 it names no wait (no Retry-After), as many do."""
    if retry_after <= 0:
        return ApiError(
            429,
            "Rate limit reached for requests.",
            error_type="requests",
            code="rate_limit_exceeded",
        )
    return ApiError(
        429,
        f"Rate limit reached for requests. Please try again in {retry_after:g}s.",
        error_type="requests",
        code="rate_limit_exceeded",
        headers={
            "Retry-After": str(math.ceil(retry_after)),
            "retry-after-ms": str(round(retry_after * 1000)),
        },
    )


def _overloaded_529() -> ApiError:
    """A scripted http_529 on an OpenAI-shaped endpoint: Anthropic's overloaded status."""
    return ApiError(
        529, "The server is overloaded, please try again later.", error_type="server_error"
    )


def _prefill_rejected() -> ApiError:
    return ApiError(
        400,
        "This model does not support assistant message prefill.",
        param="messages",
        code="invalid_request",
    )


def _context_length_exceeded() -> ApiError:
    """OpenAI's answer to a prompt longer than the model's context window."""
    return ApiError(
        400,
        "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9120 tokens. Please reduce the length of the messages.",
        param="messages",
        code="context_length_exceeded",
    )


def _json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


@dataclass(frozen=True, kw_only=True)
class Dialect:
    """How one API family answers the faults that replace a response (its statuses and
    error bodies), and which header carries the request id."""

    api: str
    rate_limited: Callable[[float], ApiError]
    server_error: Callable[[], ApiError]
    overloaded: Callable[[], ApiError]
    """http_503, and every request in "down" mode."""
    overloaded_529: Callable[[], ApiError]
    prefill_rejected: Callable[[], ApiError]
    """http_400."""
    context_length: Callable[[], ApiError]
    in_band_failure: Callable[[], ApiError]
    """What error_event becomes for a client of a non-streaming request."""
    request_id_header: str = "x-request-id"


OPENAI_DIALECT = Dialect(
    api="chat",
    rate_limited=_rate_limited,
    server_error=_server_error,
    overloaded=_overloaded,
    overloaded_529=_overloaded_529,
    prefill_rejected=_prefill_rejected,
    context_length=_context_length_exceeded,
    in_band_failure=_server_error,
)


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completions request, with its continuation convention recognised.

    `conversation` is what the answer is keyed on: the messages without a trailing
    assistant prefill (or "continue" instruction pair); `partial` is the prefill text and
    `partial_reasoning` the prefill's reasoning (`reasoning_content` or `reasoning`).
    """

    body: Mapping[str, Any]
    model: str
    messages: list[Message]
    kind: RequestKind
    conversation: list[Message]
    partial: str | None
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int | None
    tools: list[Any] | None
    tool_choice: Any
    parallel_tool_calls: bool
    variant: Variant = PROSE
    partial_reasoning: str = ""
    logprobs: bool = False
    top_logprobs: int = 0


_CONTINUE_WORD = re.compile(r"\bcontinue\b", re.IGNORECASE)


def recognise_continuation(
    body: Mapping[str, Any], messages: list[Message]
) -> tuple[RequestKind, list[Message], str | None]:
    """Which continuation convention (if any) a request uses: kind, conversation, prefill."""
    last = messages[-1]
    if body.get("continue_final_message") is True:
        if body.get("add_generation_prompt") is True:
            raise ApiError(
                400,
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            )
        if last.get("role") != "assistant":
            raise ApiError(
                400,
                "`continue_final_message` needs the final message to be from the assistant.",
                param="messages",
            )
        return "prefill", messages[:-1], content_text(last)
    if last.get("role") == "assistant" and last.get("prefix") is True:
        return "prefix", messages[:-1], content_text(last)
    if (
        len(messages) >= 2
        and last.get("role") == "user"
        and _CONTINUE_WORD.search(content_text(last))
        and messages[-2].get("role") == "assistant"
        and not messages[-2].get("tool_calls")
    ):
        return "instruct", messages[:-2], content_text(messages[-2])
    return "normal", messages, None


def partial_reasoning(kind: RequestKind, messages: list[Message]) -> str:
    """The reasoning of a continuation's assistant message ("" if none or not a resume)."""
    if kind == "normal":
        return ""
    message = messages[-2] if kind == "instruct" else messages[-1]
    for key in REASONING_FIELDS:
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _logprobs_options(body: Mapping[str, Any]) -> tuple[bool, int]:
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise ApiError(400, "Invalid type for 'logprobs': expected a boolean.", param="logprobs")
    top = body.get("top_logprobs")
    if top is None:
        return logprobs is True, 0
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(
            400,
            f"Invalid 'top_logprobs': expected an integer from 0 to {MAX_TOP_LOGPROBS}.",
            param="top_logprobs",
        )
    if logprobs is not True:
        raise ApiError(
            400,
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true.",
            param="top_logprobs",
        )
    return True, top


def _variant(body: Mapping[str, Any], model: str, default_style: str) -> Variant:
    try:
        return request_variant(model, body.get("response_format"), default_style=default_style)
    except ValueError as error:
        raise ApiError(404, str(error), param="model", code="model_not_found") from None


def _optional_positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"Invalid type for '{name}': expected an integer.", param=name)
    if value < 1:
        raise ApiError(
            400,
            f"Invalid '{name}': integer below minimum value. "
            f"Expected a value >= 1, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    return value


def parse_chat_request(raw: bytes, *, default_style: str = "prose") -> ChatRequest:
    """Validate a request body the way OpenAI would (leniently about optional fields)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        ) from None
    return chat_request(body, default_style=default_style)


def chat_request(body: Any, *, default_style: str = "prose") -> ChatRequest:
    """Validate a parsed request body (see `parse_chat_request`)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    messages = body.get("messages")
    if messages is None:
        raise ApiError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list):
        raise ApiError(400, "Invalid type for 'messages': expected an array.", param="messages")
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(
                400, f"Invalid 'messages[{i}]': expected an object with a 'role'.", param="messages"
            )
    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    if stream_options is not None and not stream:
        raise ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    n = body.get("n")
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
        raise ApiError(400, f"Invalid 'n': expected an integer from 1 to {MAX_CHOICES}.", param="n")
    max_tokens = _optional_positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_positive_int(body, "max_tokens")
    tools = body.get("tools")
    kind, conversation, partial = recognise_continuation(body, messages)
    model = str(body.get("model") or "sim-1")
    logprobs, top_logprobs = _logprobs_options(body)
    return ChatRequest(
        body=body,
        model=model,
        messages=messages,
        kind=kind,
        conversation=conversation,
        partial=partial,
        stream=stream,
        include_usage=isinstance(stream_options, dict)
        and stream_options.get("include_usage") is True,
        n=n,
        max_tokens=max_tokens,
        tools=tools if isinstance(tools, list) and tools else None,
        tool_choice=body.get("tool_choice"),
        parallel_tool_calls=body.get("parallel_tool_calls") is not False,
        variant=_variant(body, model, default_style),
        partial_reasoning=partial_reasoning(kind, messages),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


# --- wire format ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamEvent:
    """One SSE event of a stream and the pacing step at which it is due."""

    data: bytes
    step: int
    is_finish: bool


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def named_sse(payload: Mapping[str, Any]) -> bytes:
    """An event named by its payload's "type", as Anthropic and the Responses API send
    them: `event: <type>` then `data: <json>`."""
    return (
        b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
    )


DONE_EVENT = b"data: [DONE]\n\n"
ERROR_EVENT_BYTES = _sse(
    {
        "error": {
            "message": SERVER_ERROR_MESSAGE,
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
)


def completion_token_count(completion: Completion) -> int:
    reasoning = len(completion.reasoning)
    if completion.tool_calls:
        return reasoning + sum(len(call.arguments) // 4 + 3 for call in completion.tool_calls)
    return reasoning + len(completion.tokens)


@dataclass(frozen=True, kw_only=True)
class WireFormat:
    """How a response is laid out on the wire, beyond what the model says."""

    reasoning_field: str = "reasoning_content"
    max_tokens_per_chunk: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    previous_token: str = ""
    """The token before the first one emitted (the partial's last), for logprobs."""


def chunked(tokens: Sequence[str], most: int, seed: str) -> list[list[str]]:
    """Tokens grouped into chunks of 1..`most` (sizes fixed by `seed`, so reproducible)."""
    if most <= 1:
        return [[token] for token in tokens]
    sizes = random.Random(seed)
    groups, i = [], 0
    while i < len(tokens):
        size = sizes.randint(1, most)
        groups.append(list(tokens[i : i + size]))
        i += size
    return groups


def _choice_deltas(
    completion: Completion, wire: WireFormat
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """The (delta, logprobs) of one choice's chunks, role chunk first, finish chunk excluded."""
    deltas: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    if completion.tool_calls:
        deltas.append(({"role": "assistant", "content": None, "refusal": None}, None))
    elif completion.refusal:
        deltas.append(({"role": "assistant", "content": None, "refusal": ""}, None))
    else:
        deltas.append(({"role": "assistant", "content": "", "refusal": None}, None))
    previous = wire.previous_token
    channels = [(wire.reasoning_field, completion.reasoning)]
    if not completion.tool_calls:
        channels.append(("refusal" if completion.refusal else "content", completion.tokens))
    for key, tokens in channels:
        seed = key + "\x00" + "".join(tokens)
        for group in chunked(tokens, wire.max_tokens_per_chunk, seed):
            logprobs = None
            if wire.logprobs:
                entries = logprobs_for(group, previous, wire.top_logprobs)
                logprobs = (
                    {"content": None, "refusal": entries}
                    if key == "refusal"
                    else {"content": entries, "refusal": None}
                )
            deltas.append(({key: "".join(group)}, logprobs))
            previous = group[-1]
    for index, call in enumerate(completion.tool_calls):
        opening = {"index": index, "id": call.id, "type": "function"}
        deltas.append(
            ({"tool_calls": [{**opening, "function": {"name": call.name, "arguments": ""}}]}, None)
        )
        fragments = random.Random(call.id)  # fragment sizes are deterministic too
        arguments, offset = call.arguments, 0
        while offset < len(arguments):
            size = fragments.randint(3, 12)
            piece = arguments[offset : offset + size]
            offset += size
            deltas.append(
                ({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, None)
            )
    return deltas


@dataclass(frozen=True)
class StreamPlan:
    """Every event of one streamed response, in send order, before faults and pacing."""

    events: list[StreamEvent]
    trailer: bytes
    """The usage chunk (if asked for) and [DONE], sent right after the last event."""

    @property
    def content_chunks(self) -> int:
        return sum(1 for event in self.events if not event.is_finish)

    def cut_before(self, chunks: int) -> int:
        """Index of the event a fault after `chunks` content chunks replaces."""
        seen = 0
        for index, event in enumerate(self.events):
            if not event.is_finish:
                if seen == chunks:
                    return index
                seen += 1
        last_content = max(
            (i for i, event in enumerate(self.events) if not event.is_finish), default=-1
        )
        return last_content + 1


def plan_stream(
    request: ChatRequest,
    completions: Sequence[Completion],
    *,
    chunk_id: str,
    created: int,
    wire: WireFormat = WireFormat(),
) -> StreamPlan:
    """Lay out the chunks of all choices, interleaved step by step like a batched server."""

    def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": request.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if request.include_usage:
            payload["usage"] = None
        return payload

    keyed: list[tuple[int, int, int, StreamEvent]] = []
    for index, completion in enumerate(completions):
        deltas = _choice_deltas(completion, wire)
        for seq, (delta, logprobs) in enumerate(deltas):
            step = max(0, seq - 1)  # the role chunk rides with the first token
            data = _sse(
                chunk(
                    [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}]
                )
            )
            keyed.append((step, index, seq, StreamEvent(data, step, is_finish=False)))
        last_step = max(0, len(deltas) - 2)
        finish = _sse(
            chunk(
                [
                    {
                        "index": index,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": completion.finish_reason,
                    }
                ]
            )
        )
        keyed.append((last_step, index, len(deltas), StreamEvent(finish, last_step, True)))
    keyed.sort(key=lambda item: item[:3])

    trailer = b""
    if request.include_usage:
        usage = _usage(request, completions)
        trailer += _sse({**chunk([]), "usage": usage})
    return StreamPlan(events=[item[3] for item in keyed], trailer=trailer + DONE_EVENT)


def _usage(request: ChatRequest, completions: Sequence[Completion]) -> dict[str, Any]:
    continues_final = request.kind in ("prefill", "prefix")
    prompt = prompt_tokens(request.messages, continues_final=continues_final)
    completion_tokens = sum(completion_token_count(c) for c in completions)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
    if request.variant.reasoning:
        reasoning = sum(len(c.reasoning) for c in completions)
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def completion_body(
    request: ChatRequest,
    completions: Sequence[Completion],
    *,
    completion_id: str,
    created: int,
    wire: WireFormat = WireFormat(),
) -> dict[str, Any]:
    """The non-streaming `chat.completion` object."""
    choices = []
    for index, completion in enumerate(completions):
        text = None if completion.tool_calls or completion.refusal else completion.text
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text,
            "refusal": completion.text if completion.refusal else None,
        }
        if completion.reasoning:
            message[wire.reasoning_field] = completion.reasoning_text
        if completion.tool_calls:
            message["tool_calls"] = [call.as_dict() for call in completion.tool_calls]
        logprobs = None
        if wire.logprobs:
            tokens = (*completion.reasoning, *completion.tokens)
            entries = logprobs_for(tokens, wire.previous_token, wire.top_logprobs)
            logprobs = (
                {"content": None, "refusal": entries}
                if completion.refusal
                else {"content": entries, "refusal": None}
            )
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": completion.finish_reason,
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
        "usage": _usage(request, completions),
    }


# --- pacing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pacing:
    """When each step of a response is due, relative to the request's arrival."""

    ttft: float
    tok_per_s: float

    def due(self, step: int) -> float:
        if self.tok_per_s <= 0:
            return self.ttft
        return self.ttft + step / self.tok_per_s


# --- the server -------------------------------------------------------------------------------


class _ClientGone(Exception):
    """The client closed the connection while we were writing to it."""


class SimulatedUpstream:
    """An OpenAI-compatible fake LLM server on a loopback port, with admin controls."""

    def __init__(self, settings: SimulatorSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        self.stats = SimulatorStats()
        self._rng = random.Random(settings.seed)
        self._faults = FaultInjector(
            fault_rate=settings.fault_rate,
            continuation_fault_rate=settings.continuation_fault_rate,
            kinds=settings.kinds,
            rng=self._rng,
        )
        self._quirks = ContinuationQuirks(
            repeat_prob=settings.repeat_prob,
            whitespace_variation_prob=settings.whitespace_variation_prob,
            restart_prob=settings.restart_prob,
            paraphrase_prob=settings.paraphrase_prob,
            prefill_echo_prob=settings.prefill_echo_prob,
            max_repeat_words=settings.max_repeat_words,
        )
        self._mode = "normal"
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._host = "127.0.0.1"
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._stopping = False
        # Imported here: both modules build on this one's wire machinery.
        from intact.simulator.anthropic_api import MessagesEndpoint
        from intact.simulator.responses_api import ResponsesEndpoint

        self.messages_api = MessagesEndpoint(self)
        """`POST /v1/messages` (Anthropic); `messages_api.expected(body)` is its answer."""
        self.responses_api = ResponsesEndpoint(self)
        """`/v1/responses` (OpenAI), with its store of background responses."""

    # lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 picks a free port); returns once connections are accepted."""
        if self._runner is not None:
            raise RuntimeError("the simulated upstream is already running")
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._keep_record])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/completions", self._completions_route)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_get("/v1/models/{model}", self._model)
        self.messages_api.add_routes(app.router)
        self.responses_api.add_routes(app.router)
        app.router.add_route("*", "/v1/{route:.*}", self._unknown_route)
        app.router.add_post("/admin/mode", self._admin_mode)
        app.router.add_post("/admin/faults", self._admin_schedule)
        app.router.add_delete("/admin/faults", self._admin_clear)
        app.router.add_get("/admin/stats", self._admin_stats)
        app.router.add_post("/admin/expected", self._admin_expected)
        app.router.add_post("/admin/reset-stats", self._admin_reset_stats)
        # handler_cancellation: a client that goes away cancels its handler at once, which is
        # how the server notices disconnects promptly (and stops generating for nobody).
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])
        self._stopping = False

    async def stop(self) -> None:
        """Stop at once: in-flight responses (stalled ones included) are cut, not drained."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        tasks = [*self._in_flight, *self.responses_api.tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self.responses_api.clear()
        await runner.cleanup()

    async def __aenter__(self) -> SimulatedUpstream:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulated upstream has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        """Where clients point an OpenAI SDK; a wildcard bind is reached over loopback."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._host, self._host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    # controls

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch between "normal", "down" (every chat request gets 503) and "slow"."""
        if mode not in MODES:
            raise ValueError(f"unknown simulator mode {mode!r}; allowed: {', '.join(MODES)}")
        self._mode = mode

    def schedule_faults(self, specs: Sequence[str]) -> None:
        """Append scripted faults (e.g. "reset@3", "http_429", "none"); all or nothing."""
        self._faults.schedule([parse_fault_spec(spec) for spec in specs])

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> tuple[FaultSpec, ...]:
        return self._faults.pending

    def reset_stats(self) -> None:
        active = self.stats.active_streams
        self.stats = SimulatorStats(active_streams=active)

    # chat completions

    def _check_api_key(self, request: web.Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), key):
            shown = given[:3] + "*" * max(0, len(given) - 7) + given[-4:] if given else ""
            raise ApiError(401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")

    def _pacing(self, mode: str) -> Pacing:
        if mode == "slow":
            return Pacing(
                ttft=self.settings.ttft * self.settings.slow_factor,
                tok_per_s=self.settings.tok_per_s / self.settings.slow_factor,
            )
        return Pacing(ttft=self.settings.ttft, tok_per_s=self.settings.tok_per_s)

    def expected_answer(self, body: Mapping[str, Any]) -> ExpectedAnswer:
        """What an uninterrupted, non-streaming request with `body` gets from this server
        (choice 0; a continuation body is answered as its conversation)."""
        return expected_for_request(body, default_style=self.settings.style)

    def _wire(self, chat: ChatRequest) -> WireFormat:
        return WireFormat(
            reasoning_field=self.settings.reasoning_field,
            max_tokens_per_chunk=self.settings.max_tokens_per_chunk,
            logprobs=chat.logprobs,
            top_logprobs=chat.top_logprobs,
            previous_token=_last_token(chat.partial or chat.partial_reasoning),
        )

    def _completions(self, chat: ChatRequest, rng: random.Random) -> list[Completion]:
        completions = []
        for choice in range(chat.n):
            answer = answer_for(
                chat.conversation,
                tools=chat.tools,
                tool_choice=chat.tool_choice,
                parallel_tool_calls=chat.parallel_tool_calls,
                choice=choice,
                variant=chat.variant,
            )
            if chat.kind == "normal":
                completions.append(complete(answer, chat.max_tokens))
            else:
                completions.append(
                    continue_answer(
                        answer,
                        chat.partial or "",
                        kind=chat.kind,
                        max_tokens=chat.max_tokens,
                        quirks=self._quirks,
                        rng=rng,
                        partial_reasoning=chat.partial_reasoning,
                    )
                )
        return completions

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            return await self._answer_chat(request)
        except ApiError as error:
            return error.response()
        finally:
            self._in_flight.discard(task)

    async def _answer_chat(self, request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        # Every POST counts as a request the upstream saw, refused ones included.
        self.stats.chat_requests += 1
        self.stats.requests_by_api["chat"] += 1
        self._check_api_key(request)
        chat = parse_chat_request(await request.read(), default_style=self.settings.style)
        # Everything from here to the first await is synchronous, so the seeded draws happen
        # in request-arrival order.
        mode = self._mode
        request_id = "req_" + secrets.token_hex(16)
        stats = self.stats
        stats.requests_by_kind[chat.kind] += 1
        stats.requests_by_mode[mode] += 1
        stats.requests_by_style[style_label(chat)] += 1
        if mode == "down":
            self._record(request_id, chat, mode, None)
            raise _overloaded()
        completions = self._completions(chat, random.Random(self._rng.getrandbits(64)))
        chunk_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        wire = self._wire(chat)
        plan = plan_stream(chat, completions, chunk_id=chunk_id, created=created, wire=wire)
        fault = self._faults.next_fault(
            continuation=chat.kind != "normal", total_chunks=plan.content_chunks
        )
        self._record(request_id, chat, mode, fault)
        dropped = self._before_response(request, fault)
        if dropped is not None:
            return dropped

        pacing = self._pacing(mode)
        if chat.stream:
            return await self._stream(request, request_id, plan, fault, pacing, arrived)
        body = completion_body(
            chat, completions, completion_id=chunk_id, created=created, wire=wire
        )
        return await self._respond_whole(request, request_id, body, plan, fault, pacing, arrived)

    def _before_response(
        self,
        request: web.Request,
        fault: InjectedFault | None,
        dialect: Dialect = OPENAI_DIALECT,
    ) -> web.StreamResponse | None:
        """Count ``fault``; one that replaces the whole response raises its HTTP error (in
        ``dialect``'s shape) or drops the connection (returned); a mid-stream one is left to
        the caller."""
        if fault is None:
            return None
        self.stats.faults_injected[fault.kind] += 1
        if fault.kind == HTTP_429:
            raise dialect.rate_limited(self.settings.retry_after)
        if fault.kind == HTTP_400:
            raise dialect.prefill_rejected()
        if fault.kind == CONTEXT_LENGTH:
            raise dialect.context_length()
        if fault.kind == HTTP_500:
            raise dialect.server_error()
        if fault.kind == HTTP_503:
            raise dialect.overloaded()
        if fault.kind == HTTP_529:
            raise dialect.overloaded_529()
        if fault.kind == CONNECT_DROP:
            return self._drop_connection(request, reset=False)
        return None

    def _record(
        self,
        request_id: str,
        chat: ChatRequest,
        mode: str,
        fault: InjectedFault | None,
        api: str = "chat",
    ) -> None:
        self.stats.recent_requests.append(
            RequestRecord(
                request_id=request_id,
                at=time.monotonic(),
                kind=chat.kind,
                mode=mode,
                stream=chat.stream,
                fault=None if fault is None else str(fault),
                body=chat.body,
                api=api,
            )
        )

    def _drop_connection(self, request: web.Request, *, reset: bool) -> web.StreamResponse:
        """Close the connection under the handler: FIN for connect_drop, RST for reset."""
        transport = request.transport
        if transport is not None:
            if reset:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                transport.abort()
            else:
                transport.close()
        # aiohttp's attempt to send this is refused quietly: the transport is closing.
        return web.Response(status=500)

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        """Hold the connection silently until the client leaves, stop() or stall_max."""
        await asyncio.sleep(self.settings.stall_max)
        return self._drop_connection(request, reset=False)

    def _client_gone(self, request_id: str, chunks_sent: int) -> None:
        self.stats.client_disconnects += 1
        self.stats.disconnects.append(ClientDisconnect(request_id, time.monotonic(), chunks_sent))

    async def _stream(
        self,
        request: web.Request,
        request_id: str,
        plan: StreamPlan,
        fault: InjectedFault | None,
        pacing: Pacing,
        arrived: float,
        *,
        error_event: Callable[[int], bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Send ``plan`` paced, cut by ``fault``. ``error_event(sent)`` is what error_event
        writes after ``sent`` events (chat's error chunk by default); ``headers`` replace
        chat's response headers."""
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(
            headers=dict(headers)
            if headers is not None
            else {
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-request-id": request_id,
            }
        )
        self.stats.active_streams += 1
        sent = 0
        try:
            await response.prepare(request)
            events = plan.events
            if fault is None or fault.chunks_before == AFTER_FINISH:
                end = len(events)
            else:
                end = plan.cut_before(fault.chunks_before)
            while sent < end:
                wait = arrived + pacing.due(events[sent].step) - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = loop.time() - arrived
                batch_end = sent + 1
                while batch_end < end and pacing.due(events[batch_end].step) <= now:
                    batch_end += 1
                await self._write(response, b"".join(e.data for e in events[sent:batch_end]))
                sent = batch_end
            if fault is None:
                await self._write(response, plan.trailer)
                await response.write_eof()
                self.stats.completed_streams += 1
                return response
            if end < len(events):
                # The fault strikes when the next chunk would have been due.
                wait = arrived + pacing.due(events[end].step) - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            error = ERROR_EVENT_BYTES if error_event is None else error_event(sent)
            return await self._strike(request, response, fault, error)
        except _ClientGone:
            self._client_gone(request_id, sent)
            return response
        except asyncio.CancelledError:
            if not self._stopping:
                self._client_gone(request_id, sent)
            raise
        finally:
            self.stats.active_streams -= 1

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        try:
            await response.write(data)
        except ConnectionError as error:
            raise _ClientGone from error

    async def _strike(
        self,
        request: web.Request,
        response: web.StreamResponse,
        fault: InjectedFault,
        error_event: bytes = ERROR_EVENT_BYTES,
    ) -> web.StreamResponse:
        """Inflict a mid-stream fault on a stream whose headers are out (error_event writes
        ``error_event``)."""
        if fault.kind == RESET:
            return self._drop_connection(request, reset=True)
        if fault.kind == STALL:
            return await self._stall(request)
        if fault.kind == ERROR_EVENT:
            await self._write(response, error_event)
        elif fault.kind != TRUNCATE:
            raise AssertionError(f"not a mid-stream fault: {fault.kind}")
        await response.write_eof()
        return response

    async def _respond_whole(
        self,
        request: web.Request,
        request_id: str,
        body: dict[str, Any],
        plan: StreamPlan,
        fault: InjectedFault | None,
        pacing: Pacing,
        arrived: float,
        dialect: Dialect = OPENAI_DIALECT,
    ) -> web.StreamResponse:
        """A non-streaming response, after the time generating it would take.

        Mid-stream faults map to what a client of a non-streaming request sees: reset and
        stall before any byte, error_event as HTTP 500, truncate as a short body.
        """
        last_step = max((event.step for event in plan.events), default=0)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, arrived + pacing.due(last_step) - loop.time()))
            return await self._whole(request, request_id, orjson.dumps(body), fault, dialect)
        except _ClientGone:
            self._client_gone(request_id, 0)
            return web.Response(status=499)
        except asyncio.CancelledError:
            if not self._stopping:
                self._client_gone(request_id, 0)
            raise

    async def _whole(
        self,
        request: web.Request,
        request_id: str,
        payload: bytes,
        fault: InjectedFault | None,
        dialect: Dialect = OPENAI_DIALECT,
    ) -> web.StreamResponse:
        """A whole JSON body, or what a mid-stream fault makes of it for a client that
        waits for the whole body: reset and stall before any byte, error_event as HTTP 500
        (`dialect.in_band_failure`), truncate as a short body."""
        id_header = {dialect.request_id_header: request_id}
        if fault is not None and fault.kind == RESET:
            return self._drop_connection(request, reset=True)
        if fault is not None and fault.kind == STALL:
            return await self._stall(request)
        if fault is not None and fault.kind == ERROR_EVENT:
            return dialect.in_band_failure().response()
        if fault is not None and fault.kind == TRUNCATE:
            response = web.StreamResponse(headers={"Content-Type": "application/json", **id_header})
            response.content_length = len(payload)
            await response.prepare(request)
            await self._write(response, payload[: len(payload) // 2])
            return self._drop_connection(request, reset=False)
        self.stats.completed_responses += 1
        return web.Response(body=payload, content_type="application/json", headers=id_header)

    # the routes besides chat

    @web.middleware
    async def _keep_record(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            self.stats.http_requests.append(
                HttpRecord(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                )
            )
        return await handler(request)

    async def _other_route(
        self,
        request: web.Request,
        answer: Callable[[web.Request, str], Awaitable[web.StreamResponse]],
        *,
        dialect: Dialect = OPENAI_DIALECT,
        authenticate: Callable[[web.Request], None] | None = None,
        request_id: str | None = None,
    ) -> web.StreamResponse:
        """A route besides chat: the API key check (``authenticate``, by default chat's
        Bearer check), the modes, then ``answer`` (which draws the request's fault)."""
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            self.stats.requests_by_route[f"{request.method} {request.path}"] += 1
            (authenticate or self._check_api_key)(request)
            if self._mode == "down":
                raise dialect.overloaded()
            return await answer(request, request_id or "req_" + secrets.token_hex(16))
        except ApiError as error:
            return error.response()
        except _ClientGone:
            return web.Response(status=499)
        finally:
            self._in_flight.discard(task)

    def _next_fault(self, chunks: int) -> InjectedFault | None:
        return self._faults.next_fault(continuation=False, total_chunks=chunks)

    async def _json_body(self, request: web.Request) -> Mapping[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._other_route(request, self._answer_embeddings)

    async def _answer_embeddings(self, request: web.Request, request_id: str) -> web.StreamResponse:
        try:
            payload = embeddings_response(await self._json_body(request))
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        fault = self._next_fault(1)
        dropped = self._before_response(request, fault)
        if dropped is not None:
            return dropped
        return await self._whole(request, request_id, orjson.dumps(payload), fault)

    async def _completions_route(self, request: web.Request) -> web.StreamResponse:
        return await self._other_route(request, self._answer_completion)

    async def _answer_completion(self, request: web.Request, request_id: str) -> web.StreamResponse:
        """A legacy text completion; streamed, it faults at chunk positions like chat."""
        arrived = asyncio.get_running_loop().time()
        try:
            model, prompt, max_tokens, stream = completion_request(await self._json_body(request))
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        tokens, finish = completion_tokens(prompt, max_tokens)
        completion_id = "cmpl-" + secrets.token_hex(12)
        created = int(time.time())
        fault = self._next_fault(len(tokens))
        dropped = self._before_response(request, fault)
        if dropped is not None:
            return dropped
        if not stream:
            choice = completion_choice("".join(tokens), finish)
            body = completion_object(completion_id, created, model, [choice])
            body["usage"] = {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": len(tokens),
                "total_tokens": len(prompt.split()) + len(tokens),
            }
            return await self._whole(request, request_id, orjson.dumps(body), fault)

        def event(text: str, finish_reason: str | None) -> bytes:
            choice = completion_choice(text, finish_reason)
            return _sse(completion_object(completion_id, created, model, [choice]))

        events = [StreamEvent(event(t, None), step, False) for step, t in enumerate(tokens)]
        events.append(StreamEvent(event("", finish), max(0, len(tokens) - 1), True))
        plan = StreamPlan(events=events, trailer=DONE_EVENT)
        pacing = self._pacing(self._mode)
        return await self._stream(request, request_id, plan, fault, pacing, arrived)

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._other_route(request, self._answer_transcription)

    async def _answer_transcription(
        self, request: web.Request, request_id: str
    ) -> web.StreamResponse:
        if request.content_type != "multipart/form-data":
            raise ApiError(400, "Expected a multipart/form-data body with a 'file' part.")
        audio: bytes | None = None
        filename = ""
        async for part in await request.multipart():
            if isinstance(part, BodyPartReader) and part.name == "file":
                audio = await part.read()
                filename = part.filename or ""
        if audio is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        fault = self._next_fault(1)
        dropped = self._before_response(request, fault)
        if dropped is not None:
            return dropped
        payload = orjson.dumps(transcription(audio, filename))
        return await self._whole(request, request_id, payload, fault)

    async def _model(self, request: web.Request) -> web.StreamResponse:
        return await self._other_route(request, self._answer_model)

    async def _answer_model(self, request: web.Request, request_id: str) -> web.StreamResponse:
        model = request.match_info["model"]
        if model not in self.settings.models:
            raise ApiError(
                404, f"The model '{model}' does not exist", param="model", code="model_not_found"
            )
        fault = self._next_fault(1)
        dropped = self._before_response(request, fault)
        if dropped is not None:
            return dropped
        body = {"id": model, "object": "model", "created": 0, "owned_by": "intact-sim"}
        return await self._whole(request, request_id, orjson.dumps(body), fault)

    async def _unknown_route(self, request: web.Request) -> web.Response:
        return ApiError(
            404, f"Invalid URL ({request.method} {request.path})", code="not_found"
        ).response()

    # models and admin

    async def _models(self, request: web.Request) -> web.Response:
        try:
            self._check_api_key(request)
        except ApiError as error:
            return error.response()
        return _json_response(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "intact-sim"}
                    for model in self.settings.models
                ],
            }
        )

    async def _admin_json(self, request: web.Request) -> Mapping[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ApiError(400, "admin request body must be JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "admin request body must be a JSON object")
        return body

    async def _admin_mode(self, request: web.Request) -> web.Response:
        try:
            body = await self._admin_json(request)
            self.set_mode(str(body.get("mode")))
        except ApiError as error:
            return error.response()
        except ValueError as error:
            return ApiError(400, str(error), param="mode").response()
        return _json_response({"mode": self._mode})

    async def _admin_schedule(self, request: web.Request) -> web.Response:
        try:
            body = await self._admin_json(request)
            schedule = body.get("schedule")
            if not isinstance(schedule, list) or not all(isinstance(s, str) for s in schedule):
                raise ApiError(400, "'schedule' must be a list of fault specs", param="schedule")
            self.schedule_faults(schedule)
        except ApiError as error:
            return error.response()
        except ValueError as error:
            return ApiError(400, str(error), param="schedule").response()
        return _json_response({"pending": [str(spec) for spec in self.pending_faults]})

    async def _admin_clear(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return _json_response({"pending": []})

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return _json_response(
            {
                **self.stats.as_json(),
                "mode": self._mode,
                "pending_faults": [str(spec) for spec in self.pending_faults],
            }
        )

    async def _admin_expected(self, request: web.Request) -> web.Response:
        """The uninterrupted answer to a request body, as JSON: chat's (`expected_answer`),
        or with ``?api=messages`` / ``?api=responses`` that of those endpoints."""
        api = request.query.get("api", "chat")
        try:
            body = await self._admin_json(request)
            if api == "messages":
                return _json_response(dataclasses.asdict(self.messages_api.expected(body)))
            if api == "responses":
                return _json_response(dataclasses.asdict(self.responses_api.expected(body)))
            if api != "chat":
                raise ApiError(400, "'api' must be chat, messages or responses", param="api")
            expected = self.expected_answer(body)
        except ApiError as error:
            return error.response()
        return _json_response(dataclasses.asdict(expected))

    async def _admin_reset_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return _json_response(self.stats.as_json())


def expected_for_request(
    body: Mapping[str, Any], *, default_style: str = "prose"
) -> ExpectedAnswer:
    """What an uninterrupted, non-streaming request with `body` gets (choice 0), from a
    simulator whose default style is `default_style`. Raises ApiError for a bad body."""
    chat = chat_request(body, default_style=default_style)
    return expected_answer(
        chat.conversation,
        tools=chat.tools,
        tool_choice=chat.tool_choice,
        max_tokens=chat.max_tokens if chat.kind == "normal" else None,
        variant=chat.variant,
    )


def style_label(chat: ChatRequest) -> str:
    """The style a request's answer is written in, for stats."""
    if chat.variant.refusal:
        return "refusal"
    return resolve_style(chat.variant.style, conversation_digest(chat.conversation))


def _last_token(text: str | None) -> str:
    tokens = tokenize(text) if text else []
    return tokens[-1] if tokens else ""


async def serve_forever(
    settings: SimulatorSettings,
    host: str,
    port: int,
    *,
    on_ready: Callable[[SimulatedUpstream], None] | None = None,
) -> None:
    """Run a simulated upstream until cancelled (`intact simulate-upstream`).

    `on_ready` is called once it listens, e.g. to print `base_url` when port was 0.
    """
    upstream = SimulatedUpstream(settings)
    await upstream.start(host, port)
    try:
        if on_ready is not None:
            on_ready(upstream)
        await asyncio.Event().wait()
    finally:
        await upstream.stop()
