"""What the app has received so far, and how each attempt's chunks are added to it.

``Delivery`` is the single source of truth for the invariant: the text the app has is a
prefix of a correct answer, each character once. Every upstream attempt feeds its chunks
through an ``AttemptFilter``, which

- forwards the first attempt's chunks unchanged (the raw upstream bytes, parsed once);
- rewrites continuation chunks onto the first attempt's ``id``/``created``/``model`` and
  drops the second role delta;
- runs continuation text through the splicer so repeated text is dropped;
- holds tool-call deltas until each call is complete (``buffer_tool_calls``), so a call cut
  in half is regenerated instead of shown, and checks regenerated calls against the ones
  the app already has.

Tokens are counted as content chunks (OpenAI-style streams carry one token per chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from intact.config import RecoveryConfig
from intact.recovery.splice import ContinuationDiverged, ContinuationSplicer, SpliceLimits
from intact.relay.sinks import AppSink
from intact.resilience import classify

# Fields the model re-generates in a continuation that the app must not see twice.
_REASONING_KEYS = frozenset({"reasoning_content", "reasoning"})
_CHUNK_OBJECT = "chat.completion.chunk"


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

    __slots__ = ("args", "id", "index", "name", "size", "type")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id: str | None = None
        self.type = "function"
        self.name = ""
        self.args: list[str] = []
        self.size = 0

    def add(self, delta: dict[str, Any]) -> None:
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
        self._content: list[str] = []
        self.content_chars = 0
        self.tokens_delivered = 0
        self.tool_calls: list[ToolCall] = []
        # A tool call the app saw only partly (buffering off, or over the size bound).
        self.partial_tool_call_visible = False
        self.too_long_to_resume = False
        self.limits = SpliceLimits(
            min_overlap_chars=recovery.min_overlap_chars,
            max_overlap_chars=recovery.max_overlap_chars,
            divergence_chars=recovery.divergence_chars,
        )

    @property
    def resumable(self) -> bool:
        return self.n == 1

    @property
    def started(self) -> bool:
        """Something reached the app (or the collector): later attempts are continuations."""
        return self.meta is not None

    def content(self) -> str:
        """The exact text the app has received."""
        if len(self._content) > 1:
            self._content = ["".join(self._content)]
        return self._content[0] if self._content else ""

    def record_content(self, text: str) -> None:
        self._content.append(text)
        self.content_chars += len(text)
        if self.content_chars > self.recovery.max_partial_chars:
            self.too_long_to_resume = True

    def budget_spent(self) -> bool:
        """The app already has max_tokens tokens: resuming would only add extra ones."""
        limit = self.token_limit
        return limit is not None and self.tokens_delivered >= limit and not self.tool_calls

    def why_not_resumable(self, mode: str) -> str | None:
        """None if an interrupted stream can be continued from here, else the reason."""
        if not self.started:
            return None
        if not self.resumable:
            return "requests with n > 1 cannot be resumed once output has been sent"
        if self.partial_tool_call_visible:
            return "a tool call was already partly sent to the app"
        if self.too_long_to_resume:
            return "the partial answer exceeds recovery.max_partial_chars"
        if mode == "restart" and (self.content_chars or self.tool_calls):
            return "resume mode 'restart' cannot continue an answer the app already has"
        return None

    def attempt(self) -> AttemptFilter:
        return AttemptFilter(self)

    def chunk_envelope(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A rewritten chunk keeps the upstream's extra top-level fields but our identity."""
        chunk = dict(obj)
        chunk["object"] = _CHUNK_OBJECT
        if self.meta is not None:
            chunk.update(self.meta)
        return chunk


class AttemptFilter:
    """Feeds one attempt's chunks into the Delivery (see the module docstring)."""

    def __init__(self, delivery: Delivery) -> None:
        self.d = delivery
        self.continuation = delivery.started
        self.passthrough = not delivery.resumable
        self.buffer_tools = delivery.recovery.buffer_tool_calls and not self.passthrough
        self.splicer: ContinuationSplicer | None = None
        if self.continuation and delivery.content_chars and not self.passthrough:
            self.splicer = ContinuationSplicer(delivery.content(), delivery.limits)
        self._held_chunk_lens: list[int] = []
        self._pending: dict[int, _PendingCall] = {}
        self._finished_choices: set[int] = set()
        # Facts about this attempt (spans, usage accounting).
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.first_chunk_seen = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self._usage_chunk: tuple[dict[str, Any], bytes] | None = None
        self.tokens_delivered = 0

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
            # Hot path: the first attempt's text chunks go out byte-for-byte.
            if d.meta is None:
                d.meta = _meta(obj)
            if delta.get("role"):
                d.role_sent = True
            content = delta.get("content")
            if content:
                d.record_content(content)
                self._count_tokens(1)
            await d.sink.send_chunk(obj, raw)
            return
        await self._slow_chunk(obj, raw, choice, delta, finish)

    async def _choiceless(self, obj: dict[str, Any], raw: bytes) -> None:
        if "error" in obj:
            raise classify.from_error_event(obj)
        usage = obj.get("usage")
        if usage:
            # Held back: the final usage is decided when the whole request ends.
            self.usage = usage
            self._usage_chunk = (obj, raw)
        elif not self.continuation:
            await self.d.sink.send_chunk(obj, raw)  # e.g. Azure's prompt_filter_results

    def _count_tokens(self, n: int) -> None:
        self.d.tokens_delivered += n
        self.tokens_delivered += n

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
        tokens = 0
        for key, value in delta.items():
            if key == "role":
                if not d.role_sent:
                    out["role"] = value
            elif key == "content":
                if value:
                    text, tokens = self._splice(value)
                    if text:
                        out["content"] = text
                elif not d.role_sent:
                    out["content"] = value
            elif key == "tool_calls":
                if value:
                    await self._tool_deltas(obj, value)
            elif self.continuation and (key in _REASONING_KEYS or value is None):
                continue  # the app already had the reasoning, and nulls carry nothing
            else:
                out[key] = value
        if finish is not None:
            if self.splicer is not None and not self.splicer.decided:
                tail = self._splice_finish()
                if tail:
                    out["content"] = out.get("content", "") + tail
                    tokens += max(1, len(self._held_chunk_lens))
            await self._release_tools(obj, upto=None)
        if not out and finish is None:
            return
        if out.get("content"):
            d.record_content(out["content"])
            self._count_tokens(tokens)
        if "role" in out:
            d.role_sent = True
        unchanged = not self.continuation and out == delta and "tool_calls" not in delta
        await self._emit(obj, choice, out, finish, raw=raw if unchanged else None)
        if finish is not None:
            self.finish_reason = finish

    def _splice(self, content: str) -> tuple[str, int]:
        """Run continuation text through the splicer; return (text to send, tokens in it)."""
        splicer = self.splicer
        if splicer is None or splicer.decided:
            return content, 1
        self._held_chunk_lens.append(len(content))
        try:
            text = splicer.feed(content)
        except ContinuationDiverged as exc:
            raise classify.diverged(str(exc)) from None
        if text is None:
            return "", 0
        # Chunks wholly inside the dropped overlap delivered no token.
        end = 0
        tokens = 0
        for length in self._held_chunk_lens:
            end += length
            if end > splicer.dropped_chars:
                tokens += 1
        self._held_chunk_lens = []
        return text, tokens

    def _splice_finish(self) -> str:
        assert self.splicer is not None
        try:
            return self.splicer.finish()
        except ContinuationDiverged as exc:
            raise classify.diverged(str(exc)) from None

    async def _emit(
        self,
        obj: dict[str, Any],
        choice: dict[str, Any],
        delta: dict[str, Any],
        finish: str | None,
        *,
        raw: bytes | None,
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
        if self.splicer is not None:
            # Logprobs describe the upstream's tokens, not the spliced text.
            out_choice["logprobs"] = None
        chunk = d.chunk_envelope(obj)
        chunk["choices"] = [out_choice]
        await d.sink.send_chunk(chunk, None)

    async def _tool_deltas(self, obj: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        d = self.d
        if not self.buffer_tools:
            d.partial_tool_call_visible = True
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
                await self._emit_tools(obj, [pending.complete().as_delta()])

    async def _emit_tools(self, obj: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        choice = {"index": 0, "logprobs": None}
        await self._emit(obj, choice, {"tool_calls": deltas}, None, raw=None)

    async def _release_tools(self, obj: dict[str, Any], upto: int | None) -> None:
        """Emit buffered tool calls with index < upto (all when upto is None)."""
        d = self.d
        for index in sorted(self._pending):
            if upto is not None and index >= upto:
                break
            call = self._pending.pop(index).complete()
            known = next((c for c in d.tool_calls if c.index == call.index), None)
            if known is not None:
                # The continuation regenerated a call the app already has: it must match.
                if not known.same_call(call):
                    raise classify.diverged(f"tool call {index} differs from the one sent")
                continue
            d.tool_calls.append(call)
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
        await d.sink.send_chunk(obj, raw)

    async def synthesize_finish(self, reason: str) -> None:
        """End the answer with a finish_reason the upstream would have sent (e.g. "length"
        when the stream broke right after the max_tokens-th token)."""
        choice = {"index": 0, "logprobs": None}
        await self._emit({}, choice, {}, reason, raw=None)
        self.finish_reason = reason

    async def on_stream_end(self) -> None:
        """The attempt ended after its finish_reason: flush anything still held."""
        await self._release_tools({}, upto=None)

    def usage_chunk(self) -> tuple[dict[str, Any], bytes | None] | None:
        """The usage chunk to send the app, if it asked for one."""
        d = self.d
        if not d.app_wants_usage:
            return None
        if not self.continuation and self._usage_chunk is not None:
            return self._usage_chunk
        usage = dict(self.usage) if self.usage else {}
        prompt = int(usage.get("prompt_tokens") or 0)
        if self.continuation:
            # The continuation's prompt contained the partial answer; report the original.
            prompt = max(0, prompt - (d.tokens_delivered - self.tokens_delivered))
            usage.pop("completion_tokens_details", None)
        usage.update(
            prompt_tokens=prompt,
            completion_tokens=d.tokens_delivered,
            total_tokens=prompt + d.tokens_delivered,
        )
        chunk = d.chunk_envelope({"choices": [], "usage": usage})
        return chunk, None


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {"id": obj.get("id"), "created": obj.get("created"), "model": obj.get("model")}
    if "system_fingerprint" in obj:
        meta["system_fingerprint"] = obj["system_fingerprint"]
    return meta
