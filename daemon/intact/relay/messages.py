"""Anthropic Messages (``POST /v1/messages``): relayed to ``kind = "anthropic"`` upstreams
with the same attempts, breakers and recovery as chat completions.

The app sees one message: one ``message_start``, content blocks whose indexes run 0, 1, 2...
without gaps, text deltas each character once, then one ``message_delta`` whose usage counts
what it received and one ``message_stop``. A continuation (Anthropic's current models reject
assistant prefill, so by default the partial is shown as the assistant turn and a user turn
asks to go on: ``instruct``) is folded into that message:

- its ``message_start`` and the ``content_block_start`` of the text block it continues are
  dropped, its text is spliced (``relay.text_answer``) and sent under the app's block index;
- a ``content_block_stop`` is held until the next block or the ``message_delta`` arrives, so
  a stream that breaks right after it is still open where the continuation goes on;
- thinking the app already has is not repeated: the continuation is asked without
  ``thinking`` and any thinking block it still sends is dropped;
- a stream broken inside a thinking block or after a ``tool_use`` block reached the app
  cannot be continued: it ends with ``event: error``, which the ``anthropic`` SDK raises.

A lost stream never ends with ``message_stop``. In-band ``event: error`` from the upstream
(``overloaded_error`` arrives on an HTTP 200) is classified like any error event: retried
before the first byte, resumed after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from intact.config import ANTHROPIC_VERSION, RecoveryConfig
from intact.errors import AppError, invalid_request
from intact.recovery.resume import json_not_resumable, structured_output
from intact.relay.event_sinks import NamedEventSink
from intact.relay.request import parse_relay_headers
from intact.relay.sinks import AppLimits, AppSink, CompletionSink, json_response
from intact.relay.text_answer import (
    SplicedText,
    TextAnswer,
    check_added_text,
)
from intact.resilience import classify
from intact.upstream.client import UpstreamCall

MESSAGES_PATH = "/messages"
# Every Messages call names the API version; an app's own anthropic-version is forwarded
# (server.forward_headers) and wins.
_VERSION = {"anthropic-version": ANTHROPIC_VERSION}
_THINKING = frozenset({"thinking", "redacted_thinking"})
# Sent before the model produces anything: held until the first content event, so that a
# failure right after them (an in-band overloaded_error) is retried as if nothing was sent.
_PREAMBLE = frozenset({"message_start", "ping"})
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(error: AppError) -> bytes:
    """``error`` as Anthropic shapes it; intact's own code rides along in ``error.code``."""
    kind = _ERROR_TYPES.get(error.status, "api_error")
    inner: dict[str, Any] = {"type": kind, "message": error.message}
    if error.code:
        inner["code"] = error.code
    return orjson.dumps({"type": "error", "error": inner})


def error_event(error: AppError) -> bytes:
    return b"event: error\ndata: " + error_body(error) + b"\n\n"


def error_response(error: AppError) -> web.Response:
    return json_response(error.status, error_body(error), error.headers)


# -- the request ---------------------------------------------------------------------------


@dataclass(slots=True)
class MessagesRequest:
    """A validated Messages request."""

    body: dict[str, Any]
    model: str
    stream: bool
    timeout: float | None
    resume: str | None
    api: str = "messages"
    hedgeable: bool = True

    @property
    def token_limit(self) -> int | None:
        limit = self.body.get("max_tokens")
        return limit if isinstance(limit, int) and not isinstance(limit, bool) else None

    def upstream_body(self) -> dict[str, Any]:
        """Always streamed upstream: a non-streaming request is collected and recovered the
        same way."""
        return {**self.body, "stream": True}

    def new_answer(self, sink: AppSink, recovery: RecoveryConfig) -> MessagesAnswer:
        return MessagesAnswer(sink, recovery, self.token_limit)


def parse_messages_request(raw: bytes, headers: Mapping[str, str]) -> MessagesRequest | AppError:
    """Parse and validate what Anthropic would refuse for certain (so it costs no call)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return invalid_request(f"The request body is not valid JSON: {exc}", code="invalid_json")
    if not isinstance(body, dict):
        return invalid_request("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return invalid_request("model: Field required (a non-empty string).", param="model")
    limit = body.get("max_tokens")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return invalid_request(
            "max_tokens: Field required (a positive integer).", param="max_tokens"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return invalid_request("messages: Field required (a non-empty array).", param="messages")
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        content = msg.get("content") if isinstance(msg, dict) else None
        if role not in ("user", "assistant") or not isinstance(content, str | list):
            return invalid_request(
                f"messages.{i}: expected an object with role 'user' or 'assistant' and a "
                "string or array content.",
                param=f"messages.{i}",
            )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return invalid_request("stream: Input should be a valid boolean.", param="stream")
    relay_headers = parse_relay_headers(headers)
    if isinstance(relay_headers, AppError):
        return relay_headers
    timeout, resume = relay_headers
    return MessagesRequest(body, model, stream, timeout, resume)


# -- what the app has ------------------------------------------------------------------------


class MessagesAnswer(TextAnswer):
    """The message the app has received so far, across attempts."""

    def __init__(self, sink: AppSink, recovery: RecoveryConfig, token_limit: int | None) -> None:
        super().__init__(sink, recovery, token_limit)
        self.message: dict[str, Any] | None = None  # the first message_start's message
        self.blocks: list[str] = []  # the type of each block the app saw start, by index
        self.open_block: int | None = None  # the block the app has not seen stop
        self.unresumable_block: str | None = None  # a tool_use (or other) block was sent

    @property
    def started(self) -> bool:
        return self.message is not None

    @property
    def open_type(self) -> str | None:
        return None if self.open_block is None else self.blocks[self.open_block]

    def why_not_resumable(
        self, mode: str, body: Mapping[str, Any] | None = None, upstream: str | None = None
    ) -> str | None:
        if not self.started:
            return None
        why = self.common_refusal(mode, answer_started=bool(self.text.chars or self.blocks))
        if why is not None:
            return why
        if self.unresumable_block is not None:
            return f"a {self.unresumable_block} block was already sent to the app"
        if self.open_type in _THINKING:
            return "it broke during the model's thinking, which cannot be continued"
        output = structured_output(body or {})
        if self.text.chars and output:
            return json_not_resumable(output)
        return None

    def next_call(
        self,
        base_body: dict[str, Any],
        mode: str,
        instruct_prompt: str,
        *,
        model: str,
        upstream: str,
    ) -> UpstreamCall:
        body = {**base_body, "model": model}
        if self.text.chars and self.started:
            turns, limit = self.continuation(base_body, mode, instruct_prompt, "max_tokens")
            body["messages"] = [*base_body["messages"], *turns]
            body.pop("thinking", None)  # the app has its thinking; a prefill cannot think
            if limit is not None:
                body["max_tokens"] = limit
        return UpstreamCall(MESSAGES_PATH, orjson.dumps(body), headers=_VERSION)

    def attempt(self, mode: str = "instruct") -> MessagesFeed:
        return MessagesFeed(self, mode)

    def usage(self, last: Mapping[str, Any] | None) -> dict[str, Any]:
        """The final usage: the upstream's last report with output_tokens = what the app
        received (one token per delta), input_tokens from the app's own prompt."""
        usage = dict(last or {})
        usage["output_tokens"] = self.tokens_delivered
        first = (self.message or {}).get("usage")
        if isinstance(first, Mapping) and "input_tokens" in usage:
            usage["input_tokens"] = first.get("input_tokens", usage["input_tokens"])
        return usage


class MessagesFeed:
    """One attempt's Messages events into the app's message (see the module docstring)."""

    def __init__(self, answer: MessagesAnswer, mode: str) -> None:
        self.a = answer
        self.continuation = answer.started
        self.spliced = (
            SplicedText(answer, mode) if self.continuation and answer.text.chars else None
        )
        self._index: dict[int, int | None] = {}  # upstream block index -> the app's (None: drop)
        self._held_stop: int | None = None  # the app's block whose stop is held
        self._trailer: tuple[dict[str, Any], bytes] | None = None  # the message_delta
        self._dropped_thinking = False
        self.answer_generated = False
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reason: str | None = None
        self.tokens_delivered = 0
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._capped = False  # the app's max_tokens reached inside a continuation
        self._preamble: list[tuple[dict[str, Any], bytes]] = []  # held until content
        # A tool_use block is held until its content_block_stop (with whatever arrives
        # meanwhile), so a stream broken inside it leaves nothing of it at the app and can
        # be resumed; chat completions buffers tool calls the same way.
        self._holding: int | None = None  # the upstream index of the held tool_use block
        self._held: list[tuple[dict[str, Any], bytes]] = []

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def preamble(self, obj: Mapping[str, Any]) -> bool:
        return obj.get("type") in _PREAMBLE

    async def on_chunk(self, obj: dict[str, Any], raw: bytes) -> None:
        kind = obj.get("type")
        if kind == "error":
            raise classify.from_error_event(obj)
        if kind in _PREAMBLE and not self.a.started:
            if kind == "message_start":
                self._note_message(obj)
            self._preamble.append((obj, raw))
            return
        if self._holding is not None:
            self._held.append((obj, raw))
            if kind == "content_block_stop" and obj.get("index", 0) == self._holding:
                held, self._held, self._holding = self._held, [], None
                for event, event_raw in held:
                    await self._dispatch(event, event_raw)
            return
        block = obj.get("content_block") if kind == "content_block_start" else None
        if isinstance(block, Mapping) and block.get("type") == "tool_use":
            self._holding = obj.get("index", 0)
            self._held = [(obj, raw)]
            return
        await self._dispatch(obj, raw)

    async def _dispatch(self, obj: dict[str, Any], raw: bytes) -> None:
        kind = obj.get("type")
        if self._preamble:
            await self._flush_preamble()
        if kind == "content_block_delta":
            await self._delta(obj, raw)
        elif kind == "content_block_start":
            await self._block_start(obj, raw)
        elif kind == "content_block_stop":
            await self._block_stop(obj)
        elif kind == "message_start":
            await self._message_start(obj, raw)
        elif kind == "message_delta":
            await self._message_delta(obj, raw)
        elif kind == "error":
            raise classify.from_error_event(obj)
        elif kind == "message_stop":
            return  # the sink ends the message once the whole answer is in
        elif self.a.started and (kind == "ping" or not self.continuation):
            await self._send(obj, raw)

    async def _send(self, obj: Mapping[str, Any], raw: bytes | None) -> None:
        await self.a.sink.send_chunk(obj, raw)

    def _note_message(self, obj: Mapping[str, Any]) -> None:
        message = obj.get("message") or {}
        self.response_id = message.get("id")
        self.response_model = message.get("model")
        usage = message.get("usage") or {}
        self._input_tokens = usage.get("input_tokens")

    async def _message_start(self, obj: dict[str, Any], raw: bytes) -> None:
        self._note_message(obj)  # a continuation's: the app has its message already

    async def _flush_preamble(self) -> None:
        """The first content event: the message the app gets starts now."""
        held, self._preamble = self._preamble, []
        for obj, raw in held:
            if obj.get("type") == "message_start":
                if self.a.message is not None:
                    continue
                self.a.message = obj.get("message") or {}
            elif self.a.message is None:
                continue  # a ping before message_start
            await self._send(obj, raw)

    async def _flush_stop(self) -> None:
        index = self._held_stop
        if index is None:
            return
        self._held_stop = None
        if self.a.open_block == index:
            self.a.open_block = None
        await self._send({"type": "content_block_stop", "index": index}, None)

    async def _close_open_block(self) -> None:
        """Before a block the app has not seen: end the one it has open."""
        await self._flush_stop()
        a = self.a
        if a.open_block is not None:
            index, a.open_block = a.open_block, None
            await self._send({"type": "content_block_stop", "index": index}, None)

    async def _block_start(self, obj: dict[str, Any], raw: bytes) -> None:
        a = self.a
        upstream_index = obj.get("index", 0)
        block = obj.get("content_block") or {}
        kind = str(block.get("type", "text"))
        if self.continuation:
            joins = kind == "text" and a.open_type == "text" and upstream_index not in self._index
            if joins and a.open_block not in self._index.values():
                self._index[upstream_index] = a.open_block  # goes on in the app's block
                return
            if kind in _THINKING and (a.reasoning_sent or a.text.chars):
                self._index[upstream_index] = None  # thinking again: the app has its own
                self._dropped_thinking = True
                return
        await self._close_open_block()
        index = len(a.blocks)
        a.blocks.append(kind)
        a.open_block = index
        self._index[upstream_index] = index
        if kind in _THINKING:
            a.reasoning_sent = True
        elif kind != "text":
            a.unresumable_block = kind
            self.answer_generated = True
        if index == upstream_index:
            await self._send(obj, raw)
        else:
            await self._send({**obj, "index": index}, None)

    async def _delta(self, obj: dict[str, Any], raw: bytes) -> None:
        upstream_index = obj.get("index", 0)
        index = self._index.get(upstream_index, upstream_index)
        if index is None:
            return  # inside a dropped block
        delta = obj.get("delta") or {}
        a = self.a
        text = delta.get("text") if delta.get("type") == "text_delta" else None
        if text is not None:
            self.answer_generated = True
            if self.spliced is not None and index == a.open_block and a.open_type == "text":
                released, tokens = self.spliced.feed(text)
                await self._send_text(index, released, tokens)
                return
            a.record_text(text)
            self.tokens_delivered += 1
        else:
            a.tokens_delivered += 1  # thinking, signature, tool input: one event, one token
            self.tokens_delivered += 1
        if not self.continuation and index == upstream_index:
            await self._send(obj, raw)
        else:
            await self._send({**obj, "index": index}, None)

    async def _send_text(self, index: int, text: str, tokens: int) -> None:
        limit = self.a.token_limit
        if limit is not None and self.spliced is not None:
            room = limit - self.a.tokens_delivered
            if room <= 0:
                self._capped = self._capped or bool(text)  # past the app's limit: not sent
                return
            if tokens > room:
                text, tokens = self.spliced.first_tokens(text, tokens, room)
                self._capped = True
        if not text:
            return
        self.a.record_text(text, tokens)
        self.tokens_delivered += tokens
        delta = {"type": "text_delta", "text": text}
        await self._send({"type": "content_block_delta", "index": index, "delta": delta}, None)

    async def _finish_splice(self) -> None:
        if self.spliced is not None and not self.spliced.decided:
            tail, tokens = self.spliced.finish()
            index = self.a.open_block
            if index is not None:
                await self._send_text(index, tail, tokens)

    async def _block_stop(self, obj: dict[str, Any]) -> None:
        index = self._index.get(obj.get("index", 0), obj.get("index", 0))
        if index is None:
            return
        a = self.a
        if self.spliced is not None and index == a.open_block:
            await self._finish_splice()
        await self._flush_stop()
        if a.blocks[index] != "text":
            if a.open_block == index:
                a.open_block = None
            await self._send({"type": "content_block_stop", "index": index}, None)
            return
        self._held_stop = index  # a text block may go on: sent with what comes next

    async def _message_delta(self, obj: dict[str, Any], raw: bytes) -> None:
        delta = obj.get("delta") or {}
        usage = obj.get("usage") or {}
        self._output_tokens = usage.get("output_tokens")
        if self.continuation and self._dropped_thinking and not self.answer_generated:
            # Ending here would close the answer where it broke, as if it were whole.
            raise classify.diverged("the continuation only thought and gave no answer text")
        await self._finish_splice()
        stop = str(delta.get("stop_reason") or "end_turn")
        if self._capped:
            stop = "max_tokens"  # cut at the app\'s limit
            obj, raw = {**obj, "delta": {**delta, "stop_reason": stop}}, b""
        if self.spliced is not None:
            check_added_text(
                self.spliced.mode,
                self.tokens_delivered,
                self.a.content(),
                length_stop=stop == "max_tokens",
                budget_left=not self.a.budget_spent(),
            )
        self._trailer = (obj, raw)
        self.finish_reason = stop

    async def on_stream_end(self) -> None:
        return None

    async def synthesize_finish(self, reason: str) -> None:
        stop = "max_tokens" if reason == "length" else reason
        self._trailer = ({"type": "message_delta", "delta": {"stop_reason": stop}}, b"")
        self.finish_reason = stop

    async def send_trailer(self) -> None:
        """Close the open block, then the message_delta with the usage the app received
        (the upstream's own bytes when one attempt made the whole message)."""
        await self._close_open_block()
        trailer = self._trailer
        if trailer is None:
            return
        obj, raw = trailer
        a = self.a
        if not self.continuation and raw:
            await self._send(obj, raw)
            return
        delta = {"stop_reason": self.finish_reason, "stop_sequence": None}
        delta.update(obj.get("delta") or {})
        out = {"type": "message_delta", "delta": delta, "usage": a.usage(obj.get("usage"))}
        await self._send(out, None)

    def token_counts(self) -> tuple[int | None, int | None]:
        return self._input_tokens, self._output_tokens


# -- sinks -------------------------------------------------------------------------------------


class MessagesSSESink(NamedEventSink):
    """Anthropic's event stream: ``message_stop`` at the end, errors as ``event: error``
    (the ``anthropic`` SDK raises it)."""

    closing = _MESSAGE_STOP

    def ending(self, error: AppError) -> bytes:
        return error_event(error)

    def error_response(self, error: AppError) -> web.Response:
        return error_response(error)


class MessageCollector(CompletionSink):
    """Collects the events into one Message object for a non-streaming request."""

    def __init__(self) -> None:
        super().__init__()
        self._message: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._pieces: dict[int, list[str]] = {}

    async def send_chunk(self, chunk: Mapping[str, Any], raw: bytes | None) -> None:
        kind = chunk.get("type")
        if kind == "content_block_delta":
            index = chunk.get("index", 0)
            delta = chunk.get("delta") or {}
            block = self._blocks.setdefault(index, {"type": "text", "text": ""})
            piece_kind = delta.get("type")
            if piece_kind == "text_delta":
                self._pieces.setdefault(index, []).append(delta.get("text") or "")
            elif piece_kind == "thinking_delta":
                self._pieces.setdefault(index, []).append(delta.get("thinking") or "")
            elif piece_kind == "input_json_delta":
                self._pieces.setdefault(index, []).append(delta.get("partial_json") or "")
            elif piece_kind == "signature_delta":
                block["signature"] = delta.get("signature")
            elif piece_kind == "citations_delta":
                block.setdefault("citations", []).append(delta.get("citation"))
        elif kind == "content_block_start":
            self._blocks[chunk.get("index", 0)] = dict(chunk.get("content_block") or {})
        elif kind == "message_start":
            self._message = dict(chunk.get("message") or {})
        elif kind == "message_delta":
            self._message.update(chunk.get("delta") or {})
            usage = dict(self._message.get("usage") or {})
            usage.update(chunk.get("usage") or {})
            self._message["usage"] = usage

    def message(self) -> dict[str, Any]:
        content = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            joined = "".join(self._pieces.get(index, ()))
            kind = block.get("type")
            if kind == "text":
                block["text"] = block.get("text", "") + joined
            elif kind == "thinking":
                block["thinking"] = block.get("thinking", "") + joined
            elif joined:  # tool_use: the input arrives as JSON text
                try:
                    block["input"] = orjson.loads(joined)
                except orjson.JSONDecodeError:
                    block["input"] = joined
            content.append(block)
        return {**self._message, "content": content}

    def reset(self) -> bool:
        self._message = {}
        self._blocks = {}
        self._pieces = {}
        return True

    async def finish(self, headers: Mapping[str, str]) -> None:
        self.result = json_response(200, orjson.dumps(self.message()), headers)

    async def fail(self, error: AppError) -> None:
        self.result = error_response(error)


def messages_sink(
    request: web.Request, stream: bool, limits: AppLimits
) -> MessagesSSESink | MessageCollector:
    return MessagesSSESink(request, limits) if stream else MessageCollector()
