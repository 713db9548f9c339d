"""OpenAI Responses (``POST /v1/responses``): relayed with the same attempts, breakers and
recovery as chat completions.

The app sees one response: one ``response.created``, output items and content parts whose
indexes and ids do not change, ``sequence_number`` rising by one, text deltas each
character once, then one ``response.completed`` (or ``response.incomplete``) whose output
holds the whole text and whose usage counts what the app received. A stream that breaks
after text reached the app is recovered one of two ways:

- **reattach** (lossless, nothing generated again): a request in background mode keeps
  running upstream when its stream breaks, so the next attempt is
  ``GET /responses/{id}?stream=true&starting_after=N`` on the same upstream, N being the
  last ``sequence_number`` the app received; the events after it are forwarded unchanged.
- **continuation** (``instruct`` / ``prefill``): the partial text as an assistant turn (then a
  user turn asking to go on), spliced as in chat completions; its events are renumbered and
  rewritten onto the app's response, item and part.

The ``.done`` events of the text (``output_text.done``, ``content_part.done``,
``output_item.done``) are held until the answer is complete, so a stream that breaks right
after them is still open where the continuation goes on. A stream broken inside reasoning
or after a function call reached the app cannot be continued. A lost stream ends with
``response.failed`` and an ``error`` event (which the ``openai`` SDK raises), never with
``response.completed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from intact.config import RecoveryConfig
from intact.errors import AppError, invalid_request
from intact.recovery.resume import json_not_resumable, structured_output
from intact.relay.event_sinks import NamedEventSink, encode_named
from intact.relay.request import parse_json_object, parse_relay_headers
from intact.relay.sinks import AppLimits, AppSink, CompletionSink, json_response
from intact.relay.text_answer import (
    SplicedText,
    TextAnswer,
    check_added_text,
)
from intact.resilience import classify
from intact.upstream.client import UpstreamCall

RESPONSES_PATH = "/responses"
_TEXT_DONE = frozenset(
    {"response.output_text.done", "response.content_part.done", "response.output_item.done"}
)
_ENDINGS = frozenset({"response.completed", "response.incomplete"})
_STARTS = frozenset({"response.created", "response.in_progress", "response.queued"})


# -- the request ---------------------------------------------------------------------------


@dataclass(slots=True)
class ResponsesRequest:
    """A validated Responses request."""

    body: dict[str, Any]
    model: str
    stream: bool
    timeout: float | None
    resume: str | None
    api: str = "responses"

    @property
    def background(self) -> bool:
        return self.body.get("background") is True

    @property
    def hedgeable(self) -> bool:
        # A background response runs on upstream after a losing hedge is hung up on.
        return not self.background

    @property
    def token_limit(self) -> int | None:
        limit = self.body.get("max_output_tokens")
        return limit if isinstance(limit, int) and not isinstance(limit, bool) else None

    def upstream_body(self) -> dict[str, Any]:
        return {**self.body, "stream": True}

    def new_answer(self, sink: AppSink, recovery: RecoveryConfig) -> ResponsesAnswer:
        answer = ResponsesAnswer(sink, recovery, self.token_limit, background=self.background)
        if isinstance(sink, ResponsesSSESink):
            sink.answer = answer  # its error events continue the app's sequence numbers
        return answer


def parse_responses_request(raw: bytes, headers: Mapping[str, str]) -> ResponsesRequest | AppError:
    body = parse_json_object(raw)
    if isinstance(body, AppError):
        return body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return invalid_request(
            "'model' is required and must be a non-empty string.",
            code="missing_model",
            param="model",
        )
    if "input" in body and not isinstance(body["input"], str | list):
        return invalid_request(
            "'input' must be a string or an array of input items.",
            code="invalid_type",
            param="input",
        )
    for name in ("stream", "background"):
        if name in body and body[name] is not None and not isinstance(body[name], bool):
            return invalid_request(f"'{name}' must be a boolean.", code="invalid_type", param=name)
    relay_headers = parse_relay_headers(headers)
    if isinstance(relay_headers, AppError):
        return relay_headers
    timeout, resume = relay_headers
    return ResponsesRequest(body, model, body.get("stream") is True, timeout, resume)


def _message(role: str, text: str) -> dict[str, Any]:
    # "type" spelled out: OpenAI infers it, llama.cpp refuses an item without it.
    return {"type": "message", "role": role, "content": text}


def _input_items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [_message("user", value)]
    return list(value) if isinstance(value, list) else []


def _item_key(obj: Mapping[str, Any]) -> int | str | None:
    """Which output item an event is about: its output_index, or (servers that send none,
    like llama.cpp) its item id."""
    index = obj.get("output_index")
    if isinstance(index, int):
        return index
    item = obj.get("item")
    item_id = obj.get("item_id") or (item.get("id") if isinstance(item, Mapping) else None)
    return item_id if isinstance(item_id, str) else None


# -- what the app has ------------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    """An output item as the app saw it."""

    id: str | None
    type: str
    done: dict[str, Any] | None = None  # its output_item.done item, when it got one


class ResponsesAnswer(TextAnswer):
    """The response the app has received so far, across attempts."""

    def __init__(
        self,
        sink: AppSink,
        recovery: RecoveryConfig,
        token_limit: int | None,
        *,
        background: bool,
    ) -> None:
        super().__init__(sink, recovery, token_limit)
        self.background = background
        self.response: dict[str, Any] | None = None  # the app's response.created response
        self.upstream: str | None = None  # who holds it (a reattach must go there)
        self.seq = -1  # the last sequence_number the app received
        self.renumbered = False  # a continuation's events were renumbered: no reattach
        self.items: list[_Item] = []  # by output_index
        self.open_item: int | None = None  # the item whose output_item.done the app lacks
        self.text_item: int | None = None  # the message item the text is in
        self.text_part = 0  # its content_index
        self.unresumable_item: str | None = None
        self.refusal_sent = False
        self.text_start = 0  # where the current message item's text starts in self.text
        # Set by next_call for the attempt it prepares (attempt() is called after it).
        self.calling: str | None = None
        self.reattaching = False
        self.sent_limit: int | None = None  # the max_output_tokens of that call

    @property
    def started(self) -> bool:
        return self.response is not None

    @property
    def response_id(self) -> str | None:
        return None if self.response is None else self.response.get("id")

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def index_of(self, obj: Mapping[str, Any]) -> int | None:
        """The app's output_index of an item of the first attempt (or a reattached one)."""
        key = _item_key(obj)
        if isinstance(key, int) or key is None:
            return key
        return next((i for i, item in enumerate(self.items) if item.id == key), None)

    def can_reattach(self, upstream: str) -> bool:
        return (
            self.background
            and not self.renumbered
            and self.response_id is not None
            and self.upstream == upstream
        )

    def why_not_resumable(
        self, mode: str, body: Mapping[str, Any] | None = None, upstream: str | None = None
    ) -> str | None:
        if not self.started:
            return None
        if mode == "off":
            return self.common_refusal(mode, answer_started=True)
        if upstream is not None and self.can_reattach(upstream):
            return None  # reattach: the same response goes on upstream
        why = self.common_refusal(mode, answer_started=bool(self.text.chars or self.items))
        if why is not None:
            return why
        if self.unresumable_item is not None:
            return f"a {self.unresumable_item} output item was already sent to the app"
        if self.refusal_sent:
            return "a refusal was already sent to the app, which cannot be continued"
        output = structured_output(body or {})
        if self.text.chars and output:
            return json_not_resumable(output)
        if self.open_item is not None and self.items[self.open_item].type == "reasoning":
            return "it broke during the model's reasoning, which no resume mode can continue"
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
        self.calling = upstream
        self.reattaching = self.started and self.can_reattach(upstream)
        if self.reattaching:
            rid = quote(str(self.response_id), safe="")
            query = f"stream=true&starting_after={self.seq}"
            return UpstreamCall(f"{RESPONSES_PATH}/{rid}", None, method="GET", query=query)
        body = {**base_body, "model": model}
        limit = base_body.get("max_output_tokens")
        self.sent_limit = limit if isinstance(limit, int) else None
        if self.started and self.text.chars:
            turns, limit = self.continuation(base_body, mode, instruct_prompt, "max_output_tokens")
            items = [_message(turn["role"], turn["content"]) for turn in turns]
            body["input"] = [*_input_items(base_body.get("input")), *items]
            # Streamed and thrown away once spliced: never kept, never in the background.
            body["background"] = False
            body["store"] = False
            if limit is not None:
                body["max_output_tokens"] = self.sent_limit = limit
        return UpstreamCall(RESPONSES_PATH, orjson.dumps(body))

    def attempt(self, mode: str = "instruct") -> ResponsesFeed:
        return ResponsesFeed(self, mode)

    def final_response(self, upstream: Mapping[str, Any], status: str) -> dict[str, Any]:
        """The response.completed object after a continuation: the app's identity, its
        items, the whole text, and usage counting what it received."""
        response = {**upstream, **(self.response or {})}
        response["status"] = status
        for key in ("incomplete_details", "error"):
            if key in upstream:
                response[key] = upstream[key]
        output = []
        for index, item in enumerate(self.items):
            if index == self.text_item:
                output.append(self.text_item_object("completed"))
            elif item.done is not None:
                output.append(item.done)
        response["output"] = output
        usage = dict(upstream.get("usage") or {})
        prompt = max(0, int(usage.get("input_tokens") or 0) - self.answer_tokens)
        usage["input_tokens"] = prompt
        usage["output_tokens"] = self.tokens_delivered
        usage["total_tokens"] = prompt + self.tokens_delivered
        response["usage"] = usage
        return response

    def text_item_object(self, status: str) -> dict[str, Any]:
        item = self.items[self.text_item or 0]
        text = self.content()[self.text_start :]
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {
            "id": item.id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part],
        }

    def failed_events(self, error: AppError) -> bytes:
        """``response.failed`` then an ``error`` event (the openai SDK raises on its
        ``error`` member): how a lost Responses stream ends."""
        failed: dict[str, Any] = {
            **(self.response or {}),
            "status": "failed",
            "error": {"code": error.code or error.type, "message": error.message},
        }
        first = {"type": "response.failed", "sequence_number": self.next_seq(), "response": failed}
        second = {
            "type": "error",
            "code": error.code or error.type,
            "message": error.message,
            "param": error.param,
            "sequence_number": self.next_seq(),
            "error": {
                "message": error.message,
                "type": error.type,
                "param": error.param,
                "code": error.code,
            },
        }
        return encode_named(first, None) + encode_named(second, None)


class ResponsesFeed:
    """One attempt's Responses events into the app's response (see the module docstring)."""

    def __init__(self, answer: ResponsesAnswer, mode: str) -> None:
        self.a = answer
        self.continuation = answer.started
        self.upstream = answer.calling
        # A reattached stream goes on from the app's sequence_number, forwarded unchanged.
        self.reattach = answer.reattaching
        if self.continuation and not self.reattach:
            answer.renumbered = True
        self.spliced = (
            SplicedText(answer, mode) if self.continuation and answer.text.chars else None
        )
        self._index: dict[int | str, int | None] = {}  # upstream item (_item_key) -> the app's
        self._held: list[tuple[dict[str, Any], bytes]] = []  # the text's .done events
        self._trailer: tuple[dict[str, Any], bytes] | None = None
        self._dropped_reasoning = False
        self._joined: int | None = None  # the app's message item this continuation goes on in
        self.answer_generated = False
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reason: str | None = None
        self.tokens_delivered = 0
        self._usage: Mapping[str, Any] = {}
        self._capped = False  # the app's max_output_tokens reached inside a continuation
        # A function_call item is held until its output_item.done (with whatever arrives
        # meanwhile), so a stream broken inside it leaves nothing of it at the app and can
        # be resumed (or reattached before it); chat completions buffers tool calls alike.
        self._holding: int | str | None = None  # the _item_key of the held item
        self._held_call: list[tuple[dict[str, Any], bytes]] = []
        self._limit = answer.sent_limit
        self._preamble: list[tuple[dict[str, Any], bytes]] = []  # held until content

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    async def on_chunk(self, obj: dict[str, Any], raw: bytes) -> None:
        kind = obj.get("type")
        if kind == "error":
            raise classify.from_error_event({"error": obj})
        if kind == "response.failed":
            response = obj.get("response") or {}
            raise classify.from_error_event({"error": response.get("error") or {}})
        if self._holding is not None:
            self._held_call.append((obj, raw))
            if kind == "response.output_item.done" and _item_key(obj) == self._holding:
                held, self._held_call, self._holding = self._held_call, [], None
                for event, event_raw in held:
                    await self._dispatch(event, event_raw)
            return
        item = obj.get("item") if kind == "response.output_item.added" else None
        if isinstance(item, Mapping) and item.get("type") == "function_call":
            seq = obj.get("sequence_number")
            if not (self.reattach and isinstance(seq, int) and seq <= self.a.seq):
                self._holding = _item_key(obj)
                self._held_call = [(obj, raw)]
                return
        await self._dispatch(obj, raw)

    async def _dispatch(self, obj: dict[str, Any], raw: bytes) -> None:
        kind = obj.get("type")
        a = self.a
        if self.reattach:
            seq = obj.get("sequence_number")
            if isinstance(seq, int) and seq <= a.seq:
                return  # already delivered
            await self._first_attempt(kind, obj, raw)
            return
        if not self.continuation:
            await self._first_attempt(kind, obj, raw)
            return
        await self._continuation(kind, obj)

    # -- the first attempt (and a reattached stream): forwarded as sent -------------------

    async def _first_attempt(self, kind: Any, obj: dict[str, Any], raw: bytes) -> None:
        a = self.a
        if kind == "response.output_text.delta":
            text = obj.get("delta") or ""
            self.answer_generated = True
            a.record_text(text)
            self.tokens_delivered += 1
            await self._forward(obj, raw)
            return
        if kind in _STARTS:
            response = obj.get("response") or {}
            self.response_id = response.get("id")
            self.response_model = response.get("model")
            if a.response is None and not a.background:
                # Sent before the model produces anything: held until the first content
                # event, so a failure right after it is retried as if nothing was sent. (A
                # background response runs on regardless: it is reattached to instead.)
                self._preamble.append((obj, raw))
                return
            if a.response is None:
                a.response = response
                a.upstream = self.upstream
            await self._forward(obj, raw)
            return
        if self._preamble:
            await self._flush_preamble()
        if kind in _ENDINGS:
            self._end(obj, raw)
            return
        if kind in _TEXT_DONE and a.text_item is not None and a.index_of(obj) == a.text_item:
            self._held.append((obj, raw))  # until the answer is whole
            return
        await self._flush_held()
        if kind == "response.output_item.added":
            self._item_added(obj)
        elif kind == "response.output_item.done":
            self._item_done(obj)
        elif isinstance(kind, str) and ".delta" in kind:
            a.tokens_delivered += 1  # reasoning, function arguments: one event, one token
            self.tokens_delivered += 1
            if kind == "response.refusal.delta":
                a.refusal_sent = True
        elif kind == "response.content_part.added":
            part = obj.get("part") or {}
            a.refusal_sent = a.refusal_sent or part.get("type") == "refusal"
            a.text_part = obj.get("content_index", 0)
        await self._forward(obj, raw)

    def preamble(self, obj: Mapping[str, Any]) -> bool:
        return obj.get("type") in _STARTS and not self.a.background

    async def _flush_preamble(self) -> None:
        """The first content event: the response the app gets starts now."""
        held, self._preamble = self._preamble, []
        a = self.a
        for obj, raw in held:
            if a.response is None:
                a.response = obj.get("response") or {}
                a.upstream = self.upstream
            await self._forward(obj, raw)

    async def _forward(self, obj: dict[str, Any], raw: bytes) -> None:
        seq = obj.get("sequence_number")
        if isinstance(seq, int):
            self.a.seq = seq
        await self.a.sink.send_chunk(obj, raw)

    def _item_added(self, obj: Mapping[str, Any]) -> None:
        a = self.a
        item = obj.get("item") or {}
        kind = str(item.get("type", "message"))
        index = obj.get("output_index")
        if not isinstance(index, int):
            index = len(a.items)
        while len(a.items) <= index:
            a.items.append(_Item(None, "message"))
        a.items[index] = _Item(item.get("id"), kind)
        a.open_item = index
        if kind == "message":
            a.text_item = index
            a.text_start = a.text.chars
        elif kind == "reasoning":
            a.reasoning_sent = True
        else:
            a.unresumable_item = kind
            self.answer_generated = True

    def _item_done(self, obj: Mapping[str, Any]) -> None:
        a = self.a
        index = a.index_of(obj)
        if index is not None and index < len(a.items):
            a.items[index].done = dict(obj.get("item") or {})
            if a.open_item == index:
                a.open_item = None

    async def _flush_held(self) -> None:
        held, self._held = self._held, []
        for obj, raw in held:
            if obj.get("type") == "response.output_item.done":
                self._item_done(obj)
            await self._forward(obj, raw)

    def _end(self, obj: dict[str, Any], raw: bytes) -> None:
        response = obj.get("response") or {}
        self.response_id = self.response_id or response.get("id")
        self._usage = response.get("usage") or {}
        self._trailer = (obj, raw)
        details = response.get("incomplete_details") or {}
        self.finish_reason = str(details.get("reason") or response.get("status") or "completed")

    # -- a continuation: rewritten onto the app's response -------------------------------

    async def _continuation(self, kind: Any, obj: dict[str, Any]) -> None:
        a = self.a
        if kind in _STARTS:
            response = obj.get("response") or {}
            self.response_id = response.get("id")
            self.response_model = response.get("model")
            return
        if kind in _ENDINGS:
            if self._dropped_reasoning and not self.answer_generated:
                raise classify.diverged("the continuation only reasoned and gave no answer text")
            await self._finish_splice()
            response = obj.get("response") or {}
            if self.spliced is not None:
                usage = response.get("usage") or {}
                details = response.get("incomplete_details") or {}
                check_added_text(
                    self.spliced.mode,
                    self.tokens_delivered,
                    a.content(),
                    length_stop=kind == "response.incomplete"
                    or details.get("reason") == "max_output_tokens"
                    or _at_limit(usage, self._limit),
                    budget_left=not a.budget_spent(),
                )
            if self._capped:
                details = {"reason": "max_output_tokens"}
                response = {**(obj.get("response") or {}), "incomplete_details": details}
                obj = {**obj, "type": "response.incomplete", "response": response}
            self._end(obj, b"")
            return
        if kind == "response.output_item.added":
            await self._continuation_item(obj)
            return
        key = _item_key(obj)
        index = self._index.get(key) if key is not None else None
        if index is None:
            return  # an item the app does not get (reasoning again)
        if index == a.text_item:
            if kind == "response.output_text.delta":
                self.answer_generated = True
                text = obj.get("delta") or ""
                if self.spliced is not None:
                    text, tokens = self.spliced.feed(text)
                else:
                    tokens = 1
                await self._send_text(text, tokens)
            elif kind in _TEXT_DONE:
                await self._finish_splice()  # the .done events are made again at the end
            elif index == self._joined:
                return  # content_part.added and the like: the app has its part
            else:
                # A message item new to the app (nothing of it had arrived): its part too.
                if kind == "response.content_part.added":
                    a.text_part = obj.get("content_index", 0)
                await self._rewritten({**obj, "output_index": index, "item_id": a.items[index].id})
            return
        if kind == "response.output_item.done":
            self._item_done({**obj, "output_index": index})
        elif isinstance(kind, str) and ".delta" in kind:
            a.tokens_delivered += 1
            self.tokens_delivered += 1
        out = {**obj, "output_index": index}
        if "item_id" in obj:
            out["item_id"] = a.items[index].id
        await self._rewritten(out)

    async def _continuation_item(self, obj: dict[str, Any]) -> None:
        a = self.a
        item = obj.get("item") or {}
        kind = str(item.get("type", "message"))
        key = _item_key(obj)
        upstream_index = key if key is not None else len(self._index)
        joins = kind == "message" and a.text_item is not None
        if joins and a.text_item not in self._index.values():
            self._index[upstream_index] = self._joined = a.text_item  # the app's message goes on
            return
        if kind == "reasoning" and (a.reasoning_sent or a.text.chars):
            self._index[upstream_index] = None
            self._dropped_reasoning = True
            return
        await self._close_text()
        index = len(a.items)
        self._index[upstream_index] = index
        self._item_added({**obj, "output_index": index})
        await self._rewritten({**obj, "output_index": index})

    async def _rewritten(self, obj: dict[str, Any]) -> None:
        obj["sequence_number"] = self.a.next_seq()
        await self.a.sink.send_chunk(obj, None)

    async def _send_text(self, text: str, tokens: int) -> None:
        a = self.a
        limit = a.token_limit
        if limit is not None and a.tokens_delivered >= limit:
            self._capped = self._capped or bool(text)  # past the app's limit: not sent
            return
        if limit is not None and self.spliced is not None and a.tokens_delivered + tokens > limit:
            # A release of held-back text is several tokens: only those within the limit.
            text, tokens = self.spliced.first_tokens(text, tokens, limit - a.tokens_delivered)
            self._capped = True
        if not text:
            return
        a.record_text(text, tokens)
        self.tokens_delivered += tokens
        item = a.items[a.text_item or 0]
        await self._rewritten(
            {
                "type": "response.output_text.delta",
                "item_id": item.id,
                "output_index": a.text_item,
                "content_index": a.text_part,
                "delta": text,
                "logprobs": [],
            }
        )

    async def _finish_splice(self) -> None:
        if self.spliced is not None and not self.spliced.decided:
            tail, tokens = self.spliced.finish()
            await self._send_text(tail, tokens)

    async def _close_text(self) -> None:
        """The app's message item is complete (something follows it): its .done events."""
        a = self.a
        index = a.text_item
        if index is None or a.items[index].done is not None:
            return
        item = a.text_item_object("completed")
        part = item["content"][0]
        base = {"item_id": item["id"], "output_index": index}
        await self._rewritten(
            {
                "type": "response.output_text.done",
                **base,
                "content_index": a.text_part,
                "text": part["text"],
                "logprobs": [],
            }
        )
        await self._rewritten(
            {
                "type": "response.content_part.done",
                **base,
                "content_index": a.text_part,
                "part": part,
            }
        )
        a.items[index].done = item
        if a.open_item == index:
            a.open_item = None
        await self._rewritten(
            {"type": "response.output_item.done", "output_index": index, "item": item}
        )

    # -- endings -------------------------------------------------------------------------

    async def on_stream_end(self) -> None:
        return None

    async def synthesize_finish(self, reason: str) -> None:
        upstream = {"incomplete_details": {"reason": "max_output_tokens"}}
        self._trailer = ({"type": "response.incomplete", "response": upstream}, b"")
        self.finish_reason = "max_output_tokens" if reason == "length" else reason

    async def send_trailer(self) -> None:
        trailer = self._trailer
        if trailer is None:
            return
        obj, raw = trailer
        a = self.a
        if raw and not a.renumbered:
            await self._flush_held()
            await self._forward(obj, raw)
            return
        self._held = []
        await self._close_text()
        response = obj.get("response") or {}
        kind = str(obj.get("type") or "response.completed")
        status = "incomplete" if kind == "response.incomplete" else "completed"
        await self._rewritten({"type": kind, "response": a.final_response(response, status)})

    def token_counts(self) -> tuple[int | None, int | None]:
        return self._usage.get("input_tokens"), self._usage.get("output_tokens")


def _at_limit(usage: Mapping[str, Any], limit: int | None) -> bool:
    """The upstream generated all it was allowed (llama.cpp says "completed" there)."""
    used = usage.get("output_tokens")
    return limit is not None and isinstance(used, int) and used >= limit


# -- sinks -------------------------------------------------------------------------------------


class ResponsesSSESink(NamedEventSink):
    """The Responses event stream: a lost stream ends with ``response.failed`` and an
    ``error`` event, numbered after what the app has."""

    answer: ResponsesAnswer | None = None

    def ending(self, error: AppError) -> bytes:
        if self.answer is None:
            return error.sse_event()
        return self.answer.failed_events(error)


class ResponseCollector(CompletionSink):
    """Keeps the final response object for a non-streaming request."""

    def __init__(self) -> None:
        super().__init__()
        self._response: dict[str, Any] | None = None

    async def send_chunk(self, chunk: Mapping[str, Any], raw: bytes | None) -> None:
        if chunk.get("type") in _ENDINGS:
            self._response = dict(chunk.get("response") or {})

    def reset(self) -> bool:
        self._response = None
        return True

    async def finish(self, headers: Mapping[str, str]) -> None:
        self.result = json_response(200, orjson.dumps(self._response or {}), headers)


def responses_sink(
    request: web.Request, stream: bool, limits: AppLimits
) -> ResponsesSSESink | ResponseCollector:
    return ResponsesSSESink(request, limits) if stream else ResponseCollector()
