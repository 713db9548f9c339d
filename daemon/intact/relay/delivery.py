"""What the app has received so far, and how each attempt's chunks are added to it.

``Delivery`` is the single source of truth for the invariant: what the app has is a prefix
of a correct answer, each character once. Every upstream attempt feeds its chunks through an
``AttemptFilter``, which forwards the first attempt's chunks unchanged (the raw upstream
bytes, parsed once) and rewrites continuation chunks onto the first attempt's
``id``/``created``/``model``, dropping the second role delta. Each field of a chunk either
survives a resume or makes the stream end with an explicit ``not_resumable`` error:

- ``content``: the partial text is what the continuation is asked to extend; continuation
  text runs through the splicer, which drops a repeated start.
- ``refusal``: handled like content, as its own text. A continuation of a refusal is
  spliced against the refusal and sent as ``refusal``, whichever field the upstream used.
- reasoning (``reasoning_content``, ``reasoning``, ``reasoning_details``): forwarded while
  the app has no answer yet. No resume mode can continue reasoning, so a stream broken
  during reasoning is not resumable. After the answer started, a continuation's reasoning
  is the model thinking again and is dropped. A continuation that only reasoned and then
  finished would end the answer where it broke, so it counts as diverged (retried, then
  an explicit error).
- ``logprobs``: forwarded with the text they describe. Entries whose token text lies
  wholly inside a repeat the splicer dropped are dropped with it (token text is matched by
  length, so this is approximate at a boundary that splits a token).
- ``tool_calls``: held until each call is complete (``buffer_tool_calls``), so a call cut
  in half is regenerated instead of shown; regenerated calls must match the ones sent.
- ``audio``: cannot be continued; a stream broken after audio reached the app is not
  resumable.
- ``usage``: see ``intact.relay.usage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from intact.config import RecoveryConfig
from intact.recovery.resume import json_not_resumable, resume_request, structured_output
from intact.recovery.splice import ContinuationDiverged, ContinuationSplicer
from intact.relay.sinks import AppSink
from intact.relay.text_answer import ReceivedText, check_added_text, splice_limits
from intact.relay.usage import AttemptTokens, recovered_usage
from intact.resilience import classify
from intact.upstream.client import UpstreamCall

CHAT_PATH = "/chat/completions"

# Fields that carry the model's reasoning rather than its answer.
_REASONING_KEYS = frozenset({"reasoning_content", "reasoning", "reasoning_details"})
_ANSWER_KEYS = frozenset({"content", "refusal"})
_CHUNK_OBJECT = "chat.completion.chunk"
# Modes whose continuation request carries the partial text (the splicer's modes).
_SPLICE_MODES = frozenset({"prefill", "prefix", "instruct"})


@dataclass(slots=True)
class ToolCall:
    """A complete tool call as the app received it."""

    index: int
    id: str | None
    type: str
    name: str
    arguments: str

    def same_call(self, other: ToolCall) -> bool:
        if self.name != other.name:
            return False
        if self.arguments == other.arguments:
            return True
        try:
            return bool(orjson.loads(self.arguments) == orjson.loads(other.arguments))
        except orjson.JSONDecodeError:
            return False

    def as_delta(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": self.arguments},
        }


class _PendingCall:
    """Tool-call deltas held back until the call is complete."""

    __slots__ = ("args", "deltas", "id", "index", "name", "size", "type")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id: str | None = None
        self.type = "function"
        self.name = ""
        self.args: list[str] = []
        self.size = 0
        self.deltas = 0  # upstream deltas (tokens) the call took

    def add(self, delta: dict[str, Any]) -> None:
        self.deltas += 1
        if delta.get("id"):
            self.id = delta["id"]
        if delta.get("type"):
            self.type = delta["type"]
        fn = delta.get("function") or {}
        if fn.get("name"):
            self.name += fn["name"]
        args = fn.get("arguments")
        if args:
            self.args.append(args)
            self.size += len(args)

    def complete(self) -> ToolCall:
        return ToolCall(self.index, self.id, self.type, self.name, "".join(self.args))


class Delivery:
    """The app-visible state of one request; single-choice requests are resumable."""

    def __init__(
        self,
        sink: AppSink,
        recovery: RecoveryConfig,
        *,
        app_wants_usage: bool,
        n: int = 1,
        token_limit: int | None = None,
    ) -> None:
        self.sink = sink
        self.token_limit = token_limit
        self.recovery = recovery
        self.app_wants_usage = app_wants_usage
        self.n = n
        self.meta: dict[str, Any] | None = None  # id/created/model of the first chunk sent
        self.role_sent = False
        self._content = ReceivedText()
        self._refusal = ReceivedText()
        self.reasoning_chars = 0  # reasoning text sent (a reasoning_details piece counts 1)
        self.audio_sent = False
        self.tokens_delivered = 0  # chunks of every kind the app got (one token each)
        self.answer_tokens = 0  # of which content/refusal: what a resume prompt carries
        self.tool_calls: list[ToolCall] = []
        self.token_parts: list[AttemptTokens] = []  # one per attempt, for usage
        # A tool call the app saw only partly (buffering off, or over the size bound).
        self.partial_tool_call_visible = False
        self.too_long_to_resume = False
        self.limits = splice_limits(recovery)

    @property
    def resumable(self) -> bool:
        return self.n == 1

    @property
    def started(self) -> bool:
        """Something reached the app (or the collector): later attempts are continuations."""
        return self.meta is not None

    @property
    def content_chars(self) -> int:
        return self._content.chars

    @property
    def refusal_chars(self) -> int:
        return self._refusal.chars

    @property
    def answer_chars(self) -> int:
        """Length of the partial answer a continuation extends (content or refusal)."""
        return self._content.chars + self._refusal.chars

    @property
    def answer_started(self) -> bool:
        """The app has part of the answer itself (text, a refusal or a tool call)."""
        return bool(self._content.chars or self._refusal.chars or self.tool_calls)

    @property
    def answer_channel(self) -> str:
        """The field the answer's text is in: "refusal" for a refusal, else "content"."""
        return "refusal" if self._refusal.chars and not self._content.chars else "content"

    def content(self) -> str:
        """The exact text the app has received."""
        return self._content.value()

    def refusal(self) -> str:
        """The exact refusal text the app has received."""
        return self._refusal.value()

    def answer_text(self) -> str:
        """The partial answer a continuation extends (content, or a refusal)."""
        return self.refusal() if self.answer_channel == "refusal" else self.content()

    def record_content(self, text: str) -> None:
        self._content.add(text)
        self._check_size()

    def record_refusal(self, text: str) -> None:
        self._refusal.add(text)
        self._check_size()

    def _check_size(self) -> None:
        if self.answer_chars > self.recovery.max_partial_chars:
            self.too_long_to_resume = True

    def budget_spent(self) -> bool:
        """The app already has max_tokens tokens: resuming would only add extra ones."""
        limit = self.token_limit
        return limit is not None and self.tokens_delivered >= limit and not self.tool_calls

    def why_not_resumable(
        self, mode: str, body: Mapping[str, Any] | None = None, upstream: str | None = None
    ) -> str | None:
        """None if an interrupted stream can be continued in ``mode`` (the effective mode of
        the upstream chosen next) from here, else the reason. ``body`` is the request."""
        if not self.started:
            return None
        if not self.resumable:
            return "requests with n > 1 cannot be resumed once output has been sent"
        if mode == "off":
            return (
                "resuming is off for this request (intact-resume: off, or a resume mode "
                "its upstream does not support)"
            )
        if self.partial_tool_call_visible:
            return "a tool call was already partly sent to the app"
        if self.too_long_to_resume:
            return "the partial answer exceeds recovery.max_partial_chars"
        if self.audio_sent:
            return "an audio answer cannot be continued"
        if self._content.chars and self._refusal.chars:
            return "the answer has both content and a refusal, which cannot be continued as one"
        if self.reasoning_chars and not self.answer_started:
            return "it broke during the model's reasoning, which no resume mode can continue"
        if mode == "restart" and self.answer_started:
            return "resume mode 'restart' cannot continue an answer the app already has"
        output = structured_output(body) if body is not None else None
        if output and (self._content.chars or self._refusal.chars):
            if mode == "instruct":
                return "a JSON answer cannot be continued by instruction"
            return json_not_resumable(output)
        return None

    def resume_body(
        self, base_body: dict[str, Any], mode: str, instruct_prompt: str
    ) -> dict[str, Any]:
        """The request of the next attempt: ``base_body`` itself while nothing reached the
        app, else a continuation of the partial answer in ``mode``."""
        if not self.started:
            return base_body
        partial = self.answer_text()
        generated = self.tokens_delivered
        if partial and mode in _SPLICE_MODES:
            # The splicer owns the rule for what is sent (prefill/prefix: no trailing
            # whitespace) because it must then recognise that whitespace regenerated.
            sent = ContinuationSplicer(partial, self.limits, mode=mode).prompt_text
            if len(sent) < len(partial):
                # The model spends tokens generating the stripped whitespace again.
                text = self._refusal if self.answer_channel == "refusal" else self._content
                generated = max(0, generated - text.ws_tail)
            partial = sent
        return resume_request(
            base_body,
            partial,
            mode=mode,
            generated_tokens=generated,
            instruct_prompt=instruct_prompt,
        )

    def next_call(
        self,
        base_body: dict[str, Any],
        mode: str,
        instruct_prompt: str,
        *,
        model: str,
        upstream: str,
    ) -> UpstreamCall:
        """The next attempt's POST /chat/completions, for ``model``."""
        body = self.resume_body(base_body, mode, instruct_prompt)
        if body.get("model") != model:
            body = {**body, "model": model}
        return UpstreamCall(CHAT_PATH, orjson.dumps(body))

    def attempt(self, mode: str = "instruct") -> AttemptFilter:
        """The filter of the next attempt; ``mode`` is its effective resume mode."""
        return AttemptFilter(self, mode)

    def chunk_envelope(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A rewritten chunk keeps the upstream's extra top-level fields but our identity."""
        chunk = dict(obj)
        chunk["object"] = _CHUNK_OBJECT
        if self.meta is not None:
            chunk.update(self.meta)
        return chunk

    def usage(self) -> dict[str, Any]:
        """The usage of the answer as delivered, from every attempt's facts."""
        return recovered_usage(self.token_parts)


class AttemptFilter:
    """Feeds one attempt's chunks into the Delivery (see the module docstring)."""

    def __init__(self, delivery: Delivery, mode: str = "instruct") -> None:
        d = delivery
        self.d = d
        self.mode = mode
        self.continuation = d.started
        self.passthrough = not d.resumable
        self.buffer_tools = d.recovery.buffer_tool_calls and not self.passthrough
        # Reasoning reaches the app only before any answer or reasoning did.
        self.forward_reasoning = not self.continuation or not (
            d.answer_started or d.reasoning_chars
        )
        self.channel: str | None = None  # the field continuation text is sent as
        self.splicer: ContinuationSplicer | None = None
        sent = d.answer_text() if self.continuation and not self.passthrough else ""
        if sent:
            self.channel = d.answer_channel
            splice_mode = mode if mode in _SPLICE_MODES else "instruct"
            self.splicer = ContinuationSplicer(sent, d.limits, mode=splice_mode)
        # Chunks the splicer holds: (chars of answer text, logprob entries).
        self._held: list[tuple[int, list[Any]]] = []
        self._logprobs_seen = False
        self._pending: dict[int, _PendingCall] = {}
        self._finished_choices: set[int] = set()
        self.answer_generated = False  # this attempt produced answer text or a tool call
        self.part = AttemptTokens(
            original_prompt=not sent,
            partial_tokens=d.answer_tokens if self.continuation else 0,
            reasoning_forwarded=self.forward_reasoning,
        )
        d.token_parts.append(self.part)
        # Facts about this attempt (spans, usage accounting).
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.first_chunk_seen = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self._usage_chunk: tuple[dict[str, Any], bytes] | None = None
        self.tokens_delivered = 0

    def preamble(self, obj: Mapping[str, Any]) -> bool:
        """Chat completions have none: the first chunk comes with the first token."""
        return False

    @property
    def finished(self) -> bool:
        if self.passthrough:
            return len(self._finished_choices) >= self.d.n
        return self.finish_reason is not None

    async def on_chunk(self, obj: dict[str, Any], raw: bytes) -> None:
        """Process one upstream chunk; raises UpstreamFailure for error events/divergence."""
        if not self.first_chunk_seen:
            self.first_chunk_seen = True
            self.response_id = obj.get("id")
            self.response_model = obj.get("model")
        choices = obj.get("choices")
        if not choices:
            await self._choiceless(obj, raw)
            return
        usage = obj.get("usage")
        if usage:
            self._note_usage(usage)  # e.g. vLLM's continuous_usage_stats
        if self.passthrough:
            await self._passthrough(obj, choices, raw)
            return
        choice = choices[0]
        delta = choice.get("delta") or {}
        finish = choice.get("finish_reason")
        d = self.d
        if (
            not self.continuation
            and finish is None
            and not self._pending
            and "tool_calls" not in delta
        ):
            # Hot path: the first attempt's chunks go out byte-for-byte.
            if d.meta is None:
                d.meta = _meta(obj)
            if delta.get("role"):
                d.role_sent = True
            self._record(delta, tokens=1)
            await d.sink.send_chunk(obj, raw)
            return
        await self._slow_chunk(obj, raw, choice, delta, finish)

    def _note_usage(self, usage: dict[str, Any]) -> None:
        self.usage = usage
        self.part.reported = usage

    async def _choiceless(self, obj: dict[str, Any], raw: bytes) -> None:
        if "error" in obj:
            raise classify.from_error_event(obj)
        usage = obj.get("usage")
        if usage:
            # Held back: the final usage is decided when the whole request ends.
            self._note_usage(usage)
            self._usage_chunk = (obj, raw)
        elif not self.continuation:
            await self.d.sink.send_chunk(obj, raw)  # e.g. Azure's prompt_filter_results

    def _record(self, delta: Mapping[str, Any], *, tokens: int) -> None:
        """Note what a forwarded delta gave the app; ``tokens`` it carried if it has text."""
        d = self.d
        answer = False
        content = delta.get("content")
        if content and isinstance(content, str):
            d.record_content(content)
            answer = True
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            d.record_refusal(refusal)
            answer = True
        generated = answer
        reasoning = (
            delta.get("reasoning_content")
            or delta.get("reasoning")
            or delta.get("reasoning_details")  # OpenRouter's structured reasoning
        )
        if reasoning:
            d.reasoning_chars += len(reasoning) if isinstance(reasoning, str) else 1
            self.part.delivered_reasoning += tokens
            generated = True
        if delta.get("audio"):
            d.audio_sent = True
            generated = True
        if generated:
            self._count_tokens(tokens, answer=answer)

    def _count_tokens(self, n: int, *, answer: bool) -> None:
        self.d.tokens_delivered += n
        self.tokens_delivered += n
        self.part.delivered += n
        if answer:
            self.d.answer_tokens += n

    async def _slow_chunk(
        self,
        obj: dict[str, Any],
        raw: bytes,
        choice: dict[str, Any],
        delta: dict[str, Any],
        finish: str | None,
    ) -> None:
        d = self.d
        out: dict[str, Any] = {}
        logprobs = choice.get("logprobs")
        entries = _logprob_entries(logprobs)
        if logprobs is not None:
            self._logprobs_seen = True
        spliced: int | None = None  # tokens released by the splicer, when it was used
        reasoning_dropped = False
        for key, value in delta.items():
            if key == "role":
                if not d.role_sent:
                    out["role"] = value
            elif key in _ANSWER_KEYS:
                if value:
                    self.answer_generated = True
                    if self.splicer is not None and (key == "content" or self.channel == key):
                        text, tokens, entries = self._splice(value, entries)
                        spliced = (spliced or 0) + tokens
                        if text:
                            channel = self.channel or key
                            out[channel] = out.get(channel, "") + text
                    else:
                        out[key] = value
                elif (key == "content" and not d.role_sent) or not self.continuation:
                    out[key] = value  # the role chunk's "", or a first attempt's nulls
            elif key in _REASONING_KEYS:
                if not self.forward_reasoning:
                    reasoning_dropped = reasoning_dropped or bool(value)
                elif value is not None or not self.continuation:
                    out[key] = value
            elif key == "tool_calls":
                if value:
                    self.answer_generated = True
                    await self._tool_deltas(obj, value)
            elif self.continuation and value is None:
                continue  # nulls carry nothing
            else:
                out[key] = value
        if reasoning_dropped:
            self.part.dropped_reasoning += 1
        if finish is not None:
            if self.continuation and self.part.dropped_reasoning and not self.answer_generated:
                # Ending here would close the answer where it broke, as if it were whole.
                raise classify.diverged("the continuation only reasoned and gave no answer text")
            if self.splicer is not None and not self.splicer.decided:
                tail, tokens, kept = self._splice_finish()
                spliced = (spliced or 0) + tokens
                entries = kept + entries
                if tail:
                    channel = self.channel or "content"
                    out[channel] = out.get(channel, "") + tail
            await self._release_tools(obj, upto=None)
        if not out and finish is None:
            return
        self._record(out, tokens=spliced if spliced is not None else 1)
        if finish is not None and self.splicer is not None and not d.tool_calls:
            check_added_text(
                self.mode,
                self.tokens_delivered,
                d.answer_text(),
                length_stop=finish == "length",
                budget_left=not d.budget_spent(),
            )
        if "role" in out:
            d.role_sent = True
        unchanged = not self.continuation and out == delta and "tool_calls" not in delta
        if self.splicer is not None and (entries or logprobs is not None):
            logprobs = self._logprobs(entries)
        await self._emit(
            obj, choice, out, finish, raw=raw if unchanged else None, logprobs=logprobs
        )
        if finish is not None:
            self.finish_reason = finish
            self.part.finished = True

    def _logprobs(self, entries: list[Any]) -> dict[str, Any] | None:
        """Logprobs of spliced continuation text, under the field the text is sent as."""
        if not self._logprobs_seen:
            return None
        if self.channel == "refusal":
            return {"content": None, "refusal": entries}
        return {"content": entries, "refusal": None}

    def _splice(self, text: str, entries: list[Any]) -> tuple[str, int, list[Any]]:
        """Run continuation text through the splicer: (text to send, tokens in it, the
        logprob entries that go with it)."""
        splicer = self.splicer
        assert splicer is not None
        if splicer.decided:
            return text, 1, entries
        self._held.append((len(text), entries))
        try:
            released = splicer.feed(text)
        except ContinuationDiverged as exc:
            raise classify.diverged(str(exc)) from None
        if released is None:
            return "", 0, []
        tokens, kept = self._release_held(splicer.dropped_chars)
        return released, tokens, kept

    def _splice_finish(self) -> tuple[str, int, list[Any]]:
        splicer = self.splicer
        assert splicer is not None
        try:
            tail = splicer.finish()
        except ContinuationDiverged as exc:
            raise classify.diverged(str(exc)) from None
        tokens, kept = self._release_held(splicer.dropped_chars)
        return tail, tokens, kept

    def _release_held(self, dropped_chars: int) -> tuple[int, list[Any]]:
        """The splicer decided: tokens left in the held chunks once ``dropped_chars`` are
        dropped (a chunk wholly inside the drop delivered none), and their logprobs."""
        end = 0
        tokens = 0
        entries: list[Any] = []
        for length, chunk_entries in self._held:
            end += length
            if end > dropped_chars:
                tokens += 1
            else:
                self.part.dropped_overlap += 1
            entries.extend(chunk_entries)
        self._held = []
        return tokens, trim_logprobs(entries, dropped_chars)

    async def _emit(
        self,
        obj: dict[str, Any],
        choice: dict[str, Any],
        delta: dict[str, Any],
        finish: str | None,
        *,
        raw: bytes | None,
        logprobs: Any = None,
    ) -> None:
        d = self.d
        if d.meta is None:
            d.meta = _meta(obj)
        if raw is not None:
            await d.sink.send_chunk(obj, raw)
            return
        out_choice = dict(choice)
        out_choice["delta"] = delta
        out_choice["finish_reason"] = finish
        out_choice["logprobs"] = logprobs
        chunk = d.chunk_envelope(obj)
        if self.continuation and chunk.get("usage"):
            chunk["usage"] = None  # a continuation's running usage counts its own prompt
        chunk["choices"] = [out_choice]
        await d.sink.send_chunk(chunk, None)

    async def _tool_deltas(self, obj: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        d = self.d
        if not self.buffer_tools:
            d.partial_tool_call_visible = True
            self._count_tokens(1, answer=False)
            await self._emit_tools(obj, deltas)
            return
        for delta in deltas:
            index = delta.get("index", 0)
            pending = self._pending.get(index)
            if pending is None:
                # A new call starts: every lower-indexed call is complete.
                await self._release_tools(obj, upto=index)
                pending = _PendingCall(index)
                self._pending[index] = pending
            pending.add(delta)
            if pending.size > d.recovery.max_tool_call_bytes:
                # Too big to hold: show it now; an interruption inside it is then fatal.
                del self._pending[index]
                d.partial_tool_call_visible = True
                self._count_tokens(pending.deltas, answer=False)
                await self._emit_tools(obj, [pending.complete().as_delta()])

    async def _emit_tools(self, obj: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        choice = {"index": 0}
        await self._emit(obj, choice, {"tool_calls": deltas}, None, raw=None)

    async def _release_tools(self, obj: dict[str, Any], upto: int | None) -> None:
        """Emit buffered tool calls with index < upto (all when upto is None)."""
        d = self.d
        for index in sorted(self._pending):
            if upto is not None and index >= upto:
                break
            pending = self._pending.pop(index)
            call = pending.complete()
            known = next((c for c in d.tool_calls if c.index == call.index), None)
            if known is not None:
                # The continuation regenerated a call the app already has: it must match.
                if not known.same_call(call):
                    raise classify.diverged(f"tool call {index} differs from the one sent")
                self.part.dropped_overlap += pending.deltas
                continue
            d.tool_calls.append(call)
            self._count_tokens(pending.deltas, answer=False)
            await self._emit_tools(obj, [call.as_delta()])

    async def _passthrough(
        self, obj: dict[str, Any], choices: list[dict[str, Any]], raw: bytes
    ) -> None:
        """n > 1: forward as-is; only a first attempt ever reaches the app."""
        d = self.d
        if d.meta is None:
            d.meta = _meta(obj)
        for choice in choices:
            if choice.get("finish_reason") is not None:
                self._finished_choices.add(choice.get("index", 0))
                self.finish_reason = choice["finish_reason"]
        if self.finished:
            self.part.finished = True
        await d.sink.send_chunk(obj, raw)

    async def synthesize_finish(self, reason: str) -> None:
        """End the answer with a finish_reason the upstream would have sent (e.g. "length"
        when the stream broke right after the max_tokens-th token)."""
        choice = {"index": 0}
        await self._emit({}, choice, {}, reason, raw=None)
        self.finish_reason = reason

    async def on_stream_end(self) -> None:
        """The attempt ended after its finish_reason: flush anything still held."""
        await self._release_tools({}, upto=None)

    async def send_trailer(self) -> None:
        """The answer is complete: the usage chunk, if the app asked for one."""
        usage = self.usage_chunk()
        if usage is not None:
            await self.d.sink.send_chunk(usage[0], usage[1])

    def token_counts(self) -> tuple[int | None, int | None]:
        usage = self.usage or {}
        return usage.get("prompt_tokens"), usage.get("completion_tokens")

    def usage_chunk(self) -> tuple[dict[str, Any], bytes | None] | None:
        """The usage chunk to send the app, if it asked for one."""
        d = self.d
        if not d.app_wants_usage:
            return None
        if not self.continuation and self._usage_chunk is not None:
            return self._usage_chunk  # one attempt made the whole answer: its own report
        chunk = d.chunk_envelope({"choices": [], "usage": d.usage()})
        return chunk, None


def _logprob_entries(logprobs: Any) -> list[Any]:
    """The token entries of a choice's logprobs (content first, then refusal)."""
    if not isinstance(logprobs, Mapping):
        return []
    entries: list[Any] = []
    for key in ("content", "refusal"):
        part = logprobs.get(key)
        if isinstance(part, list):
            entries.extend(part)
    return entries


def trim_logprobs(entries: list[Any], dropped_chars: int) -> list[Any]:
    """Drop the logprob entries whose token text lies wholly inside the first
    ``dropped_chars`` characters (the repeat the splicer dropped). Tokens are measured by
    their text's length, so a token straddling the cut is kept."""
    if dropped_chars <= 0:
        return entries
    kept: list[Any] = []
    end = 0
    for entry in entries:
        token = entry.get("token") if isinstance(entry, Mapping) else None
        size = len(token) if isinstance(token, str) else 0
        end += size
        if size and end <= dropped_chars:
            continue
        kept.append(entry)
    return kept


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {"id": obj.get("id"), "created": obj.get("created"), "model": obj.get("model")}
    if "system_fingerprint" in obj:
        meta["system_fingerprint"] = obj["system_fingerprint"]
    return meta
