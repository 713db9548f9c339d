"""App-side load through the official SDKs, every answer judged against the simulator's.

Each request is a conversation built deterministically from (seed, index), sent over one of
three APIs (`ConversationMix.api`): chat completions and OpenAI Responses with the `openai`
SDK (Responses optionally in background mode, which intact recovers by reattaching), or
Anthropic Messages with the `anthropic` SDK (a dev dependency, imported only for that API).
What the app saw (text, tool calls, finish reason / stop reason / status, or the exception
the SDK raised) is compared with the uninterrupted answer the simulator gives for the same
request body (`expected_answer`, `expected_message`, `expected_response`), and put in
exactly one class:

- exact: byte-exact text (or equal tool calls) and the same finish_reason;
- explicit_error: the SDK raised, and what arrived before is a prefix of the answer;
- silent_truncation: no error, but the answer stopped short (or lacks its finish_reason);
- garbled: text that is not a prefix of the answer (duplicated, corrupted), error or not.

Only counts, two bounded latency samples and the first few anomalies (with a diff) are kept,
so a demo can run for hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx
import openai
import orjson

from intact.simulator import (
    ExpectedAnswer,
    ExpectedMessage,
    ExpectedResponse,
    expected_answer,
    expected_message,
    expected_response,
)

if TYPE_CHECKING:
    import anthropic

LOADGEN_ID_HEADER = "x-intact-loadgen-id"
"""Header carrying the load generator's request id, so relay-side records can be joined."""

APP_BASE_URL = "http://intact/v1"
"""What apps put in `base_url`: the host is ignored, the Unix socket is the transport."""


TRANSPORT_ERRORS = frozenset({"connection_error", "sdk_timeout", "client_timeout"})
"""Error labels that mean the connection died or hung rather than intact saying what failed."""

APIS = ("chat", "messages", "responses")
"""The app-facing APIs the load generator speaks (`ConversationMix.api`)."""

MESSAGES_MAX_TOKENS = 4096
"""max_tokens of a Messages request that sets no cap of its own (Anthropic requires one)."""

RESPONSES_MIN_OUTPUT_TOKENS = 16
"""The smallest max_output_tokens OpenAI accepts."""


class Verdict(enum.StrEnum):
    """What the app got, compared with the uninterrupted answer."""

    EXACT = "exact"
    EXPLICIT_ERROR = "explicit_error"
    SILENT_TRUNCATION = "silent_truncation"
    GARBLED = "garbled"


def app_client(
    socket_path: str, *, timeout: float = 120.0, connections: int = 100
) -> openai.AsyncOpenAI:
    """An openai SDK client that reaches intact over its Unix socket, SDK retries off."""
    http = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(
            uds=socket_path,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        ),
        timeout=httpx.Timeout(timeout, connect=5.0),
    )
    # The SDK accepts an httpx client (newer releases annotate their own httpx2 type).
    return openai.AsyncOpenAI(
        base_url=APP_BASE_URL, api_key="unused", max_retries=0, http_client=cast(Any, http)
    )


def anthropic_client(
    socket_path: str, *, timeout: float = 120.0, connections: int = 100
) -> anthropic.AsyncAnthropic:
    """An anthropic SDK client that reaches intact over its Unix socket, SDK retries off
    (the SDK is built on httpx2; both come with the dev extra)."""
    import anthropic
    import httpx2

    http = httpx2.AsyncClient(
        transport=httpx2.AsyncHTTPTransport(
            uds=socket_path,
            limits=httpx2.Limits(
                max_connections=connections, max_keepalive_connections=connections
            ),
        ),
        timeout=httpx2.Timeout(timeout, connect=5.0),
    )
    return anthropic.AsyncAnthropic(
        base_url=APP_BASE_URL.removesuffix("/v1"),
        api_key="unused",
        max_retries=0,
        http_client=http,
    )


# --- conversations ----------------------------------------------------------------------------

_TOPICS = (
    "a lighthouse keeper", "distributed tracing", "sourdough bread", "a night train",
    "retry budgets", "tide pools", "an old map", "circuit breakers", "a city library",
    "mountain weather", "a jazz quartet", "garden soil", "the first telescope", "paper cranes",
    "a harbor at dawn", "migrating birds", "a clockmaker", "desert roads", "winter markets",
    "a lost letter",
)  # fmt: skip
_ASKS = (
    "Tell me a story about {topic}.",
    "Explain {topic} to a new colleague.",
    "Write a short note on {topic}.",
    "What should I know about {topic}?",
    "Describe {topic} in a few paragraphs.",
    "Give me your thoughts on {topic}.",
)
_SYSTEMS = (
    "You are a helpful assistant.",
    "You are concise and precise.",
    "You write in plain, friendly prose.",
)
TOOLS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the internal documentation.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        },
    },
)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ConversationMix:
    """What share of requests is non-streaming, asks for usage, offers tools, caps tokens."""

    non_stream_fraction: float = 0.1
    usage_fraction: float = 0.5
    """Share of streaming requests with stream_options.include_usage."""
    tools_fraction: float = 0.0
    max_tokens_fraction: float = 0.1
    """Share of text requests with max_tokens / max_completion_tokens (finish "length")."""
    multi_turn_fraction: float = 0.2
    models: tuple[str, ...] = ("sim-1", "sim-2")
    api: str = "chat"
    """The API every request goes through: chat, messages (Anthropic) or responses."""
    background_fraction: float = 0.0
    """Share of streaming Responses requests sent with background: true (a broken stream is
    then reattached, not continued). Non-streaming background requests are not relayed with
    recovery (intact passes them through and the app polls), so they are not sent."""

    def __post_init__(self) -> None:
        for name in (
            "non_stream_fraction",
            "usage_fraction",
            "tools_fraction",
            "max_tokens_fraction",
            "multi_turn_fraction",
            "background_fraction",
        ):
            _check_fraction(name, getattr(self, name))
        if not self.models:
            raise ValueError("models must name at least one model")
        if self.api not in APIS:
            raise ValueError(f"api must be one of {', '.join(APIS)}, got {self.api!r}")


@dataclass(frozen=True)
class Conversation:
    """One app request: the messages and options, and the id that tags it end to end.

    `messages` (and `tools`) are chat-shaped whatever the API; `body()` is the request in
    the shape of `api`."""

    request_id: str
    model: str
    messages: tuple[dict[str, Any], ...]
    stream: bool
    include_usage: bool = False
    tools: tuple[dict[str, Any], ...] = ()
    max_tokens: int | None = None
    max_tokens_key: str = "max_tokens"
    api: str = "chat"
    background: bool = False
    """Responses only: background mode (the response is stored upstream, reattachable)."""

    def expected(self) -> ExpectedAnswer:
        """The uninterrupted answer from a simulator answering in prose by default."""
        if self.api == "messages":
            return answer_of_message(expected_message(self.body()))
        if self.api == "responses":
            return answer_of_response(expected_response(self.body()))
        return expected_answer(
            list(self.messages), tools=list(self.tools) or None, max_tokens=self.max_tokens
        )

    def body(self) -> dict[str, Any]:
        """The request body the app sends, in the shape of its API."""
        if self.api == "messages":
            return self._messages_body()
        if self.api == "responses":
            return self._responses_body()
        return {
            "model": self.model,
            "messages": list(self.messages),
            "stream": self.stream,
            **self.options(),
        }

    def sdk_params(self) -> dict[str, Any]:
        """`body()` without `stream`: the keyword arguments of the SDK call."""
        params = self.body()
        params.pop("stream", None)
        return params

    def _system(self) -> str | None:
        parts = [str(m.get("content") or "") for m in self.messages if m.get("role") == "system"]
        return "\n\n".join(parts) if parts else None

    def _messages_body(self) -> dict[str, Any]:
        turns: list[dict[str, Any]] = []
        for message in self.messages:
            role = message.get("role")
            content = str(message.get("content") or "")
            if role == "system":
                continue
            if role == "tool":
                block = {
                    "type": "tool_result",
                    "tool_use_id": anthropic_tool_id(str(message.get("tool_call_id"))),
                    "content": content,
                }
                last = turns[-1] if turns else None
                if (
                    last is not None
                    and last["role"] == "user"
                    and isinstance(last["content"], list)
                ):
                    last["content"].append(block)
                else:
                    turns.append({"role": "user", "content": [block]})
            elif role == "assistant" and message.get("tool_calls"):
                blocks: list[dict[str, Any]] = (
                    [{"type": "text", "text": content}] if content else []
                )
                for call in message["tool_calls"]:
                    function = call["function"]
                    blocks.append(
                        {
                            "type": "tool_use",
                            "id": anthropic_tool_id(call["id"]),
                            "name": function["name"],
                            "input": orjson.loads(function["arguments"]),
                        }
                    )
                turns.append({"role": "assistant", "content": blocks})
            else:
                turns.append({"role": role, "content": content})
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens or MESSAGES_MAX_TOKENS,
            "messages": turns,
            "stream": self.stream,
        }
        system = self._system()
        if system is not None:
            body["system"] = system
        if self.tools:
            body["tools"] = [
                {
                    "name": tool["function"]["name"],
                    "description": tool["function"].get("description", ""),
                    "input_schema": tool["function"].get("parameters", {}),
                }
                for tool in self.tools
            ]
        return body

    def _responses_body(self) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        for message in self.messages:
            role = message.get("role")
            content = str(message.get("content") or "")
            if role == "system":
                continue
            if role == "tool":
                items.append(
                    {
                        "type": "function_call_output",
                        "call_id": str(message.get("tool_call_id")),
                        "output": content,
                    }
                )
            elif role == "assistant" and message.get("tool_calls"):
                if content:
                    items.append({"role": "assistant", "content": content})
                for call in message["tool_calls"]:
                    items.append(
                        {
                            "type": "function_call",
                            "call_id": call["id"],
                            "name": call["function"]["name"],
                            "arguments": call["function"]["arguments"],
                        }
                    )
            else:
                items.append({"role": role, "content": content})
        # A lone user turn goes as a plain string, as apps often send it.
        single = len(items) == 1 and items[0].get("role") == "user"
        body: dict[str, Any] = {
            "model": self.model,
            "input": items[0]["content"] if single else items,
            "stream": self.stream,
        }
        system = self._system()
        if system is not None:
            body["instructions"] = system
        if self.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "name": tool["function"]["name"],
                    "description": tool["function"].get("description", ""),
                    "parameters": tool["function"].get("parameters", {}),
                }
                for tool in self.tools
            ]
        if self.max_tokens is not None:
            body["max_output_tokens"] = max(RESPONSES_MIN_OUTPUT_TOKENS, self.max_tokens)
        if self.background:
            body["background"] = True
        return body

    def options(self) -> dict[str, Any]:
        """Body fields besides model, messages and stream."""
        extra: dict[str, Any] = {}
        if self.stream and self.include_usage:
            extra["stream_options"] = {"include_usage": True}
        if self.tools:
            extra["tools"] = list(self.tools)
        if self.max_tokens is not None:
            extra[self.max_tokens_key] = self.max_tokens
        return extra

    def describe(self) -> str:
        parts = [self.request_id, self.model, "stream" if self.stream else "non-stream"]
        if self.api != "chat":
            parts.insert(1, self.api)
        if self.background:
            parts.append("background")
        if self.include_usage:
            parts.append("include_usage")
        if self.tools:
            parts.append("tools")
        if self.max_tokens is not None:
            key = {"messages": "max_tokens", "responses": "max_output_tokens"}.get(
                self.api, self.max_tokens_key
            )
            limit = self.max_tokens
            if self.api == "responses":
                limit = max(RESPONSES_MIN_OUTPUT_TOKENS, limit)
            parts.append(f"{key}={limit}")
        parts.append(f"{len(self.messages)} messages")
        return " ".join(parts)

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""


def anthropic_tool_id(call_id: str) -> str:
    """The tool_use id Anthropic Messages gives the call chat completions names `call_id`
    (the simulator derives one from the other)."""
    return "toolu_01" + call_id.removeprefix("call_")[:22]


def answer_of_message(expected: ExpectedMessage) -> ExpectedAnswer:
    """A Messages answer in the shape `judge` compares: text, tool_use blocks as chat tool
    calls (their input as the JSON text the stream sends), stop_reason as finish_reason."""
    calls = [
        {
            "id": block["id"],
            "type": "function",
            "function": {
                "name": block["name"],
                "arguments": orjson.dumps(block["input"]).decode(),
            },
        }
        for block in expected.content
        if block.get("type") == "tool_use"
    ]
    return ExpectedAnswer(
        content=expected.text,
        tool_calls=calls,
        finish_reason=expected.stop_reason,
        reasoning=expected.thinking,
        style=expected.style,
    )


def answer_of_response(expected: ExpectedResponse) -> ExpectedAnswer:
    """A Responses answer in the shape `judge` compares: output text, function_call items as
    chat tool calls, the response status ("completed" / "incomplete") as finish_reason."""
    calls = [
        {
            "id": call["call_id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in expected.function_calls
    ]
    return ExpectedAnswer(
        content=expected.text,
        tool_calls=calls,
        finish_reason=expected.status,
        reasoning=expected.reasoning,
        refusal=expected.text if expected.refusal else None,
        style=expected.style,
    )


def make_conversation(seed: int, index: int, mix: ConversationMix) -> Conversation:
    """Request number `index` of a run seeded `seed` (the same in every process, and the
    same conversation whatever `mix.api`)."""
    return _for_api(_chat_conversation(seed, index, mix), seed, index, mix)


def _for_api(
    conversation: Conversation, seed: int, index: int, mix: ConversationMix
) -> Conversation:
    if mix.api == "chat":
        return conversation
    # Its own draws, so the conversation itself does not depend on the API.
    rng = random.Random(f"intact-loadgen:{seed}:{index}:{mix.api}")
    background = (
        mix.api == "responses" and conversation.stream and rng.random() < mix.background_fraction
    )
    return replace(conversation, api=mix.api, background=background, include_usage=False)


def _chat_conversation(seed: int, index: int, mix: ConversationMix) -> Conversation:
    rng = random.Random(f"intact-loadgen:{seed}:{index}")
    request_id = f"lg-{seed}-{index}"
    model = rng.choice(mix.models)
    stream = rng.random() >= mix.non_stream_fraction
    include_usage = stream and rng.random() < mix.usage_fraction
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": rng.choice(_SYSTEMS)})
    ask = rng.choice(_ASKS).format(topic=rng.choice(_TOPICS))
    if rng.random() < mix.multi_turn_fraction:
        first = {"role": "user", "content": f"{ask} (conversation {request_id}, part 1)"}
        answer = expected_answer([*messages, first]).content or ""
        messages += [first, {"role": "assistant", "content": answer}]
        ask = rng.choice(_ASKS).format(topic=rng.choice(_TOPICS))
    messages.append({"role": "user", "content": f"{ask} (conversation {request_id})"})
    if rng.random() < mix.tools_fraction:
        tools = TOOLS
        if rng.random() < 0.3:
            # The tool results are in: the model answers in text.
            calls = expected_answer(messages, tools=list(tools)).tool_calls
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
            messages += [
                {"role": "tool", "tool_call_id": call["id"], "content": '{"ok": true, "value": 21}'}
                for call in calls
            ]
        return Conversation(request_id, model, tuple(messages), stream, include_usage, tools=tools)
    max_tokens = None
    key = "max_tokens"
    if rng.random() < mix.max_tokens_fraction:
        max_tokens = rng.randint(5, 80)
        key = rng.choice(("max_tokens", "max_completion_tokens"))
    return Conversation(
        request_id,
        model,
        tuple(messages),
        stream,
        include_usage,
        max_tokens=max_tokens,
        max_tokens_key=key,
    )


# --- what the app saw, and the verdict ----------------------------------------------------------


@dataclass(frozen=True)
class ObservedError:
    """The exception the SDK raised to the app, reduced to what identifies it."""

    kind: str
    """Exception class name (APIError, APIStatusError subclass, ...) or "client_timeout"."""
    message: str
    status: int | None = None
    type: str | None = None
    code: str | None = None

    @property
    def label(self) -> str:
        """A short grouping key: "stream_interrupted:attempts_exhausted", "http_503:..."."""
        if self.kind == "client_timeout":
            return "client_timeout"
        if self.kind == "APITimeoutError":
            return "sdk_timeout"
        if self.kind == "APIConnectionError":
            return "connection_error"
        head = f"http_{self.status}" if self.status is not None else (self.type or self.kind)
        tail = self.code or (self.type if self.status is not None else None)
        return f"{head}:{tail}" if tail else head

    @classmethod
    def from_exception(cls, exc: BaseException) -> ObservedError:
        if isinstance(exc, TimeoutError):
            return cls("client_timeout", "no answer within the load generator's timeout")
        if type(exc).__module__.partition(".")[0] == "anthropic":
            return cls._from_anthropic(exc)
        if isinstance(exc, openai.APIStatusError):
            return cls(type(exc).__name__, exc.message, exc.status_code, exc.type, exc.code)
        if isinstance(exc, openai.APIError):
            return cls(type(exc).__name__, exc.message, None, exc.type, exc.code)
        return cls(type(exc).__name__, str(exc))

    @classmethod
    def _from_anthropic(cls, exc: BaseException) -> ObservedError:
        """An anthropic SDK error: an HTTP error's status, or (an `event: error` on the
        200 stream, which the SDK raises with the stream's status) none; the error's type
        and intact's code from the body {"type": "error", "error": {"type", "code", ...}}."""
        body = getattr(exc, "body", None)
        error = body.get("error") if isinstance(body, Mapping) else None
        error = error if isinstance(error, Mapping) else {}
        status = getattr(exc, "status_code", None)
        message = error.get("message") or getattr(exc, "message", None) or str(exc)
        return cls(
            type(exc).__name__,
            str(message),
            status if isinstance(status, int) and status != 200 else None,
            error.get("type"),
            error.get("code"),
        )


@dataclass
class Observation:
    """Everything the app received for one request."""

    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    error: ObservedError | None = None
    notes: list[str] = field(default_factory=list)
    """Protocol oddities that do not change the verdict (missing usage, changing ids)."""
    first_token_at: float | None = None
    """time.monotonic() of the first content or tool-call delta (streams only)."""
    response_id: str | None = None
    """The message / response id the app was given (a Responses reattach names it)."""
    events: list[Any] | None = None
    """Every event (chunk) the SDK yielded, in order, when `LoadSettings.record_events`."""


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    detail: str = ""
    """Why it is not exact (empty when it is)."""


Relation = Literal["equal", "prefix", "diverged"]
_RANK: dict[Relation, int] = {"equal": 0, "prefix": 1, "diverged": 2}


def first_difference(expected: str, got: str) -> int:
    """Index of the first character where the strings differ (len of the shorter if none)."""
    for i, (a, b) in enumerate(zip(expected, got, strict=False)):
        if a != b:
            return i
    return min(len(expected), len(got))


def excerpt(text: str, at: int, width: int = 40) -> str:
    """`text` around index `at`, repr-quoted, with ellipses where it was cut."""
    start, end = max(0, at - width), min(len(text), at + width)
    return ("…" if start else "") + repr(text[start:end]) + ("…" if end < len(text) else "")


def _text_relation(expected: str, got: str) -> Relation:
    if got == expected:
        return "equal"
    return "prefix" if expected.startswith(got) else "diverged"


def _tools_relation(expected: Sequence[dict[str, Any]], got: Sequence[dict[str, Any]]) -> Relation:
    if list(got) == list(expected):
        return "equal"
    if len(got) > len(expected):
        return "diverged"
    for i, call in enumerate(got):
        want = expected[i]
        if call == want:
            continue
        last = i == len(got) - 1
        fn, want_fn = call.get("function") or {}, want.get("function") or {}
        partial = (
            call.get("id") in (None, want.get("id"))
            and fn.get("name") in ("", None, want_fn.get("name"))
            and str(want_fn.get("arguments", "")).startswith(str(fn.get("arguments", "")))
        )
        if not (last and partial):
            return "diverged"
    return "prefix"


def judge(expected: ExpectedAnswer, seen: Observation) -> Judgement:
    """Classify what the app saw (see the module docstring)."""
    want_text = expected.content or ""
    text = _text_relation(want_text, seen.content)
    tools = _tools_relation(expected.tool_calls, seen.tool_calls)
    relation = max(text, tools, key=_RANK.__getitem__)
    detail = describe_difference(expected, seen, text, tools)
    if seen.error is not None:
        if relation == "diverged":
            return Judgement(Verdict.GARBLED, f"{detail}; then error {seen.error.label}")
        return Judgement(Verdict.EXPLICIT_ERROR, f"error {seen.error.label} after {detail}")
    if relation == "diverged":
        return Judgement(Verdict.GARBLED, detail)
    if relation == "prefix" or seen.finish_reason is None:
        return Judgement(Verdict.SILENT_TRUNCATION, detail)
    if seen.finish_reason != expected.finish_reason:
        return Judgement(Verdict.GARBLED, detail)
    return Judgement(Verdict.EXACT)


def describe_difference(
    expected: ExpectedAnswer, seen: Observation, text: Relation, tools: Relation
) -> str:
    want_text = expected.content or ""
    finish = f"finish_reason {seen.finish_reason!r} (expected {expected.finish_reason!r})"
    if text == "diverged":
        at = first_difference(want_text, seen.content)
        return (
            f"text differs at char {at} of {len(want_text)} (got {len(seen.content)}): "
            f"expected {excerpt(want_text, at)} got {excerpt(seen.content, at)}; {finish}"
        )
    if tools == "diverged":
        return f"tool calls differ: expected {expected.tool_calls!r} got {seen.tool_calls!r}"
    if expected.tool_calls:
        return f"{len(seen.tool_calls)} of {len(expected.tool_calls)} tool calls; {finish}"
    return f"{len(seen.content)} of {len(want_text)} chars; {finish}"


# --- bounded statistics -----------------------------------------------------------------------


class Reservoir:
    """A uniform sample of at most `capacity` values (Algorithm R), for percentiles."""

    def __init__(self, capacity: int = 10_000, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self._values: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self._values) < self.capacity:
            self._values.append(value)
            return
        slot = self._rng.randrange(self.count)
        if slot < self.capacity:
            self._values[slot] = value

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (0..100, nearest rank) of the sample; None when empty."""
        if not self._values:
            return None
        ordered = sorted(self._values)
        rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank]


@dataclass
class Anomaly:
    """A request the app saw broken (or oddly framed), kept for a human to debug."""

    conversation: Conversation
    verdict: Verdict
    detail: str
    error: ObservedError | None
    content: str
    finish_reason: str | None
    notes: list[str] = field(default_factory=list)
    """Context other parts add (the simulator's faults, the relay's attempts)."""

    def render(self) -> str:
        lines = [
            f"[{self.verdict}] {self.conversation.describe()}",
            f"  prompt: {self.conversation.last_user_text()!r}",
            f"  {self.detail}",
        ]
        if self.error is not None:
            lines.append(f"  error: {self.error.label}: {self.error.message}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class RequestResult:
    """One finished request, as handed to `LoadGenerator.on_result`."""

    conversation: Conversation
    observation: Observation
    judgement: Judgement
    started: float
    """time.monotonic() when the request was sent."""
    finished: float
    ttft: float | None
    anomaly: Anomaly | None
    """The kept anomaly record (add notes to it), if this request was one and was kept."""


class LoadStats:
    """Live counters of a load run; read them while it runs (one event loop, no locks)."""

    RATE_WINDOW = 5.0

    def __init__(self, *, max_anomalies: int = 20, seed: int = 0) -> None:
        self.max_anomalies = max_anomalies
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.issued = 0
        self.in_flight = 0
        self.cancelled = 0
        self.verdicts: Counter[Verdict] = Counter()
        self.error_codes: Counter[str] = Counter()
        self.protocol_issues = 0
        self.streaming = 0
        self.non_streaming = 0
        self.ttft = Reservoir(seed=seed)
        self.latency = Reservoir(seed=seed + 1)
        self.anomalies: list[Anomaly] = []
        self.anomalies_dropped = 0
        self._recent: deque[float] = deque()

    @property
    def done(self) -> int:
        return sum(self.verdicts.values())

    @property
    def exact(self) -> int:
        return self.verdicts[Verdict.EXACT]

    @property
    def explicit_errors(self) -> int:
        return self.verdicts[Verdict.EXPLICIT_ERROR]

    @property
    def silent(self) -> int:
        return self.verdicts[Verdict.SILENT_TRUNCATION]

    @property
    def garbled(self) -> int:
        return self.verdicts[Verdict.GARBLED]

    @property
    def broken(self) -> int:
        """Answers that reached the app wrong without it being told: must be 0."""
        return self.silent + self.garbled

    def elapsed(self, now: float | None = None) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else (now or time.monotonic())
        return max(0.0, end - self.started_at)

    def rate(self, now: float | None = None) -> float:
        """Requests finished per second over the last few seconds."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        window = min(self.RATE_WINDOW, self.elapsed(now))
        return len(self._recent) / window if window > 0 else 0.0

    def record(self, result: RequestResult) -> Anomaly | None:
        verdict = result.judgement.verdict
        self.verdicts[verdict] += 1
        if result.conversation.stream:
            self.streaming += 1
        else:
            self.non_streaming += 1
        error = result.observation.error
        if error is not None:
            self.error_codes[error.label] += 1
        if result.ttft is not None:
            self.ttft.add(result.ttft)
        self.latency.add(result.finished - result.started)
        self._recent.append(result.finished)
        self._trim(result.finished)
        notes = result.observation.notes
        if notes:
            self.protocol_issues += 1
        if verdict in (Verdict.EXACT, Verdict.EXPLICIT_ERROR) and not notes:
            return None
        if len(self.anomalies) >= self.max_anomalies:
            self.anomalies_dropped += 1
            return None
        seen = result.observation
        anomaly = Anomaly(
            result.conversation,
            verdict,
            result.judgement.detail or "protocol issue",
            error,
            seen.content,
            seen.finish_reason,
            notes=list(notes),
        )
        self.anomalies.append(anomaly)
        return anomaly

    def _trim(self, now: float) -> None:
        recent = self._recent
        while recent and recent[0] < now - self.RATE_WINDOW:
            recent.popleft()


# --- the generator ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LoadSettings:
    """How much load: `concurrency` clients until `requests` are done or `duration` passed."""

    concurrency: int = 16
    requests: int | None = None
    duration: float | None = None
    seed: int = 0
    mix: ConversationMix = field(default_factory=ConversationMix)
    request_timeout: float = 120.0
    """Longest one request may take before the app gives up (counted as client_timeout)."""
    error_pause: float = 0.0
    """Seconds a client waits after an error before its next request, as real apps do."""
    max_anomalies: int = 20
    record_events: bool = False
    """Keep every SDK event of a stream in its Observation (for showing one; costs memory
    only until the result hook returns)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency!r}")
        if self.requests is not None and self.requests < 0:
            raise ValueError(f"requests must be >= 0, got {self.requests!r}")
        if self.duration is not None and self.duration < 0:
            raise ValueError(f"duration must be >= 0, got {self.duration!r}")
        for name in ("request_timeout", "error_pause"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


ResultHook = Callable[[RequestResult], None]


class LoadGenerator:
    """Runs `settings.concurrency` app clients against intact's socket; see `run`."""

    def __init__(
        self, socket_path: str, settings: LoadSettings, *, on_result: ResultHook | None = None
    ) -> None:
        self.socket_path = socket_path
        self.settings = settings
        self.stats = LoadStats(max_anomalies=settings.max_anomalies, seed=settings.seed)
        self._on_result = on_result
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._deadline: float | None = None
        self._ran = False

    def stop(self) -> None:
        """Start no new requests; the ones in flight run to their end."""
        self._stopping.set()

    def cancel(self) -> None:
        """Stop now: in-flight requests are cancelled (and counted as cancelled)."""
        self._stopping.set()
        for task in self._workers:
            task.cancel()

    async def run(self) -> LoadStats:
        """Issue requests until the count, the duration or stop(); return the final stats."""
        if self._ran:
            raise RuntimeError("a LoadGenerator runs once; make a new one")
        self._ran = True
        s = self.settings
        stats = self.stats
        stats.started_at = time.monotonic()
        if s.duration is not None:
            self._deadline = stats.started_at + s.duration
        client: openai.AsyncOpenAI | anthropic.AsyncAnthropic
        if s.mix.api == "messages":
            client = anthropic_client(
                self.socket_path, timeout=s.request_timeout, connections=s.concurrency + 4
            )
        else:
            client = app_client(
                self.socket_path, timeout=s.request_timeout, connections=s.concurrency + 4
            )
        try:
            self._workers = [
                asyncio.create_task(self._client_loop(client), name=f"loadgen-{i}")
                for i in range(s.concurrency)
            ]
            outcomes = await asyncio.gather(*self._workers, return_exceptions=True)
            # Cancelled clients (cancel()) end the run; a client that crashed is a bug to show.
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
        finally:
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            stats.finished_at = time.monotonic()
            await client.close()
        return stats

    def _claim(self) -> int | None:
        """The index of the next request to send, or None when the run is over."""
        s = self.settings
        if self._stopping.is_set():
            return None
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return None
        if s.requests is not None and self.stats.issued >= s.requests:
            return None
        index = self.stats.issued
        self.stats.issued += 1
        return index

    async def _client_loop(self, client: openai.AsyncOpenAI | anthropic.AsyncAnthropic) -> None:
        s = self.settings
        while (index := self._claim()) is not None:
            conversation = make_conversation(s.seed, index, s.mix)
            self.stats.in_flight += 1
            try:
                result = await self._send(client, conversation)
            except asyncio.CancelledError:
                self.stats.cancelled += 1
                raise
            finally:
                self.stats.in_flight -= 1
            result.anomaly = self.stats.record(result)
            if self._on_result is not None:
                self._on_result(result)
            if result.observation.error is not None and s.error_pause > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(s.error_pause):
                        await self._stopping.wait()

    async def _send(
        self, client: openai.AsyncOpenAI | anthropic.AsyncAnthropic, conversation: Conversation
    ) -> RequestResult:
        seen = Observation(events=[] if self.settings.record_events else None)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                await _read(client, conversation, seen)
        except Exception as exc:  # whatever the SDK raised is what the app would see
            seen.error = ObservedError.from_exception(exc)
            if seen.error.label in TRANSPORT_ERRORS:
                seen.notes.append(f"the app got no error from intact, only {seen.error.label}")
        finished = time.monotonic()
        judgement = judge(conversation.expected(), seen)
        ttft = None if seen.first_token_at is None else seen.first_token_at - started
        return RequestResult(conversation, seen, judgement, started, finished, ttft, None)


async def _read(
    client: openai.AsyncOpenAI | anthropic.AsyncAnthropic,
    conversation: Conversation,
    seen: Observation,
) -> None:
    """Send one request through its API's SDK and record what the app got into `seen`."""
    if not isinstance(client, openai.AsyncOpenAI):
        if conversation.stream:
            await _read_message_stream(client, conversation, seen)
        else:
            await _read_message(client, conversation, seen)
    elif conversation.api == "responses":
        if conversation.stream:
            await _read_response_stream(client, conversation, seen)
        else:
            await _read_response(client, conversation, seen)
    elif conversation.stream:
        await _read_stream(client, conversation, seen)
    else:
        await _read_completion(client, conversation, seen)


async def _read_stream(
    client: openai.AsyncOpenAI, conversation: Conversation, seen: Observation
) -> None:
    """Consume one streamed answer into `seen`."""
    stream = await client.chat.completions.create(
        model=conversation.model,
        messages=cast(Any, list(conversation.messages)),
        stream=True,
        extra_headers={LOADGEN_ID_HEADER: conversation.request_id},
        extra_body=conversation.options(),
    )
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    ids: set[str] = set()
    usage_seen = False
    try:
        async with stream:
            async for chunk in stream:
                if seen.events is not None:
                    seen.events.append(chunk)
                ids.add(chunk.id)
                if chunk.usage is not None:
                    usage_seen = True
                for choice in chunk.choices:
                    delta = choice.delta
                    if seen.finish_reason is not None and (delta.content or delta.tool_calls):
                        seen.notes.append("content after finish_reason")
                    if seen.first_token_at is None and (delta.content or delta.tool_calls):
                        seen.first_token_at = time.monotonic()
                    if delta.content:
                        text.append(delta.content)
                    for call in delta.tool_calls or ():
                        _merge_call(
                            calls,
                            call.index,
                            call.id,
                            call.type,
                            call.function.name if call.function else None,
                            call.function.arguments if call.function else None,
                        )
                    if choice.finish_reason is not None:
                        seen.finish_reason = choice.finish_reason
    finally:
        seen.content = "".join(text)
        seen.tool_calls = [calls[i] for i in sorted(calls)]
    if len(ids) > 1:
        seen.notes.append(f"chunk ids changed within the stream: {sorted(ids)}")
    if conversation.include_usage and not usage_seen:
        seen.notes.append("stream_options.include_usage was set but no usage chunk arrived")


def _merge_call(
    calls: dict[int, dict[str, Any]],
    index: int,
    call_id: str | None,
    call_type: str | None,
    name: str | None,
    arguments: str | None,
) -> None:
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if call_id:
        call["id"] = call_id
    if call_type:
        call["type"] = call_type
    if name:
        call["function"]["name"] += name
    if arguments:
        call["function"]["arguments"] += arguments


async def _read_completion(
    client: openai.AsyncOpenAI, conversation: Conversation, seen: Observation
) -> None:
    completion = await client.chat.completions.create(
        model=conversation.model,
        messages=cast(Any, list(conversation.messages)),
        stream=False,
        extra_headers={LOADGEN_ID_HEADER: conversation.request_id},
        extra_body=conversation.options(),
    )
    if not completion.choices:
        seen.notes.append("completion without choices")
        return
    choice = completion.choices[0]
    seen.content = choice.message.content or ""
    for call in choice.message.tool_calls or ():
        dumped = call.model_dump()
        function = dumped.get("function") or {}
        seen.tool_calls.append(
            {
                "id": dumped.get("id"),
                "type": dumped.get("type"),
                "function": {"name": function.get("name"), "arguments": function.get("arguments")},
            }
        )
    seen.finish_reason = choice.finish_reason
    if completion.usage is None:
        seen.notes.append("non-streaming completion without usage")


# --- Anthropic Messages ---------------------------------------------------------------------

_RAW_MESSAGE_EVENTS = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    }
)
"""The wire events among what the SDK's MessageStream yields (it adds text, thinking,
input_json... events of its own)."""


async def _read_message_stream(
    client: anthropic.AsyncAnthropic, conversation: Conversation, seen: Observation
) -> None:
    """Consume one streamed Message (the SDK's `messages.stream`) into `seen`. The answer
    counts as finished only at message_stop: a lost stream never ends with one."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    blocks: list[str] = []
    message_ids: list[str] = []
    stop_reason: str | None = None
    final_text: str | None = None
    manager = client.messages.stream(
        **conversation.sdk_params(),
        extra_headers={LOADGEN_ID_HEADER: conversation.request_id},
    )
    try:
        async with manager as stream:
            async for item in stream:
                event: Any = item
                kind = event.type
                if kind not in _RAW_MESSAGE_EVENTS:
                    continue
                if seen.events is not None:
                    seen.events.append(event)
                if seen.finish_reason is not None:
                    seen.notes.append(f"{kind} after message_stop")
                if kind == "message_start":
                    message_ids.append(event.message.id)
                    seen.response_id = seen.response_id or event.message.id
                elif kind == "content_block_start":
                    block = event.content_block
                    if event.index != len(blocks):
                        seen.notes.append(
                            f"content block {event.index} started after {len(blocks)} blocks"
                        )
                    blocks.append(block.type)
                    if block.type == "tool_use":
                        _merge_call(calls, event.index, block.id, "function", block.name, None)
                elif kind == "content_block_delta":
                    delta = event.delta
                    if stop_reason is not None:
                        seen.notes.append("content after message_delta")
                    if delta.type == "text_delta":
                        if seen.first_token_at is None and delta.text:
                            seen.first_token_at = time.monotonic()
                        text.append(delta.text)
                    elif delta.type == "input_json_delta":
                        if seen.first_token_at is None:
                            seen.first_token_at = time.monotonic()
                        _merge_call(calls, event.index, None, None, None, delta.partial_json)
                elif kind == "message_delta":
                    stop_reason = event.delta.stop_reason
                elif kind == "message_stop":
                    seen.finish_reason = stop_reason
            final = await stream.get_final_message()
            final_text = "".join(b.text for b in final.content if b.type == "text")
    finally:
        seen.content = "".join(text)
        seen.tool_calls = [calls[i] for i in sorted(calls)]
    if len(message_ids) != 1:
        seen.notes.append(f"{len(message_ids)} message_start events")
    if blocks.count("text") > 1:
        seen.notes.append(f"the text came in {blocks.count('text')} text blocks")
    if final_text is not None and final_text != seen.content:
        seen.notes.append("the SDK's final message differs from the streamed text")


async def _read_message(
    client: anthropic.AsyncAnthropic, conversation: Conversation, seen: Observation
) -> None:
    message: Any = await client.messages.create(
        **conversation.sdk_params(),
        stream=False,
        extra_headers={LOADGEN_ID_HEADER: conversation.request_id},
    )
    seen.response_id = message.id
    texts = [block.text for block in message.content if block.type == "text"]
    seen.content = "".join(texts)
    if len(texts) > 1:
        seen.notes.append(f"the text came in {len(texts)} text blocks")
    for block in message.content:
        if block.type == "tool_use":
            seen.tool_calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {
                        "name": block.name,
                        "arguments": orjson.dumps(block.input).decode(),
                    },
                }
            )
    seen.finish_reason = message.stop_reason
    if message.usage is None or message.usage.output_tokens is None:
        seen.notes.append("non-streaming message without usage")


# --- OpenAI Responses -------------------------------------------------------------------------

_RESPONSE_ENDINGS = frozenset({"response.completed", "response.incomplete"})


async def _read_response_stream(
    client: openai.AsyncOpenAI, conversation: Conversation, seen: Observation
) -> None:
    """Consume one streamed response (`responses.create(stream=True)`) into `seen`; its
    status at response.completed / .incomplete is the finish."""
    stream = await client.responses.create(
        **conversation.sdk_params(),
        stream=True,
        extra_headers={LOADGEN_ID_HEADER: conversation.request_id},
    )
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    response_ids: set[str] = set()
    text_items: set[str] = set()
    last_seq: int | None = None
    final_text: str | None = None
    try:
        async with stream:
            async for item in stream:
                event: Any = item
                kind = event.type
                if seen.events is not None:
                    seen.events.append(event)
                seq = getattr(event, "sequence_number", None)
                if last_seq is not None and seq != last_seq + 1:
                    seen.notes.append(f"sequence_number {seq} after {last_seq}")
                last_seq = seq if isinstance(seq, int) else last_seq
                if seen.finish_reason is not None:
                    seen.notes.append(f"{kind} after the response ended")
                if kind in ("response.created", "response.in_progress", "response.queued"):
                    response_ids.add(event.response.id)
                    seen.response_id = seen.response_id or event.response.id
                elif kind in ("response.output_text.delta", "response.refusal.delta"):
                    if seen.first_token_at is None and event.delta:
                        seen.first_token_at = time.monotonic()
                    text.append(event.delta)
                    text_items.add(event.item_id)
                elif kind == "response.output_item.added" and event.item.type == "function_call":
                    call = event.item
                    _merge_call(
                        calls, event.output_index, call.call_id, "function", call.name, None
                    )
                elif kind == "response.function_call_arguments.delta":
                    if seen.first_token_at is None:
                        seen.first_token_at = time.monotonic()
                    _merge_call(calls, event.output_index, None, None, None, event.delta)
                elif kind in _RESPONSE_ENDINGS:
                    response_ids.add(event.response.id)
                    seen.finish_reason = event.response.status
                    final_text = event.response.output_text
    finally:
        seen.content = "".join(text)
        seen.tool_calls = [calls[i] for i in sorted(calls)]
    if len(response_ids) > 1:
        seen.notes.append(f"response ids changed within the stream: {sorted(response_ids)}")
    if len(text_items) > 1:
        seen.notes.append(f"the text came in {len(text_items)} output items")
    refusal = any(getattr(e, "type", "") == "response.refusal.delta" for e in seen.events or ())
    if final_text is not None and final_text != seen.content and not refusal:
        seen.notes.append("the final response's output_text differs from the streamed text")


async def _read_response(
    client: openai.AsyncOpenAI, conversation: Conversation, seen: Observation
) -> None:
    response: Any = await client.responses.create(
        **conversation.sdk_params(),
        stream=False,
        extra_headers={LOADGEN_ID_HEADER: conversation.request_id},
    )
    seen.response_id = response.id
    texts: list[str] = []
    for item in response.output:
        if item.type == "message":
            for part in item.content:
                texts.append(part.text if part.type == "output_text" else part.refusal)
        elif item.type == "function_call":
            seen.tool_calls.append(
                {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
            )
    seen.content = "".join(texts)
    if response.status in ("completed", "incomplete"):
        seen.finish_reason = response.status
    else:
        seen.notes.append(f"non-streaming response with status {response.status!r}")
    if response.usage is None:
        seen.notes.append("non-streaming response without usage")


__all__ = [
    "APIS",
    "APP_BASE_URL",
    "LOADGEN_ID_HEADER",
    "MESSAGES_MAX_TOKENS",
    "TOOLS",
    "TRANSPORT_ERRORS",
    "Anomaly",
    "Conversation",
    "ConversationMix",
    "Judgement",
    "LoadGenerator",
    "LoadSettings",
    "LoadStats",
    "Observation",
    "ObservedError",
    "RequestResult",
    "Reservoir",
    "Verdict",
    "answer_of_message",
    "answer_of_response",
    "anthropic_client",
    "app_client",
    "excerpt",
    "first_difference",
    "judge",
    "make_conversation",
]
