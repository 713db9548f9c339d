"""Where the relay's output goes: an SSE stream to the app, or one JSON completion.

The relay emits chunks; a sink decides the framing. The SSE sink commits (sends HTTP 200 and
headers) only when the first chunk is written, so everything that fails before that can still
be an honest HTTP error. The completion sink never commits before the answer is whole:
non-streaming requests are streamed upstream internally and recover the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from intact.config import ServerConfig
from intact.errors import AppError, UpstreamResponseError
from intact.relay.app_writer import AppGone, AppWriter
from intact.sse import DONE_EVENT, encode_comment, encode_data

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class AppSink(Protocol):
    @property
    def committed(self) -> bool:
        """True once bytes of a 200 response have gone to the app."""

    async def send_chunk(self, chunk: Mapping[str, Any], raw: bytes | None) -> None:
        """One chat.completion.chunk; ``raw`` is its unchanged upstream JSON when available.
        Never waits for the app (see ``flow``)."""

    async def send_comment(self, text: str) -> None: ...

    async def flow(self) -> None:
        """Backpressure, once per upstream read: wait while the app is behind. Raises
        AppTooSlow or AppGone (never an upstream failure)."""

    def reset(self) -> bool:
        """Forget everything sent so far, if the app has seen none of it (a collected
        non-streaming answer); False when it cannot be taken back."""

    async def finish(self, headers: Mapping[str, str]) -> None:
        """The answer is complete (stream: [DONE]; non-stream: the JSON completion)."""

    async def fail(self, error: AppError) -> None:
        """Explicit error: HTTP error if not committed, else an SSE error event."""

    async def too_slow(self, error: AppError) -> None:
        """The app stopped reading: end with ``error`` as best it can still be delivered."""

    async def gone(self) -> None:
        """The app left: release what the sink holds, write nothing."""

    async def abort(self, error: AppError, linger: float) -> None:
        """End now, ``error`` best effort within ``linger`` seconds."""

    async def pass_through(self, error: UpstreamResponseError) -> None:
        """A final upstream error, before commit, returned as the upstream sent it."""


@dataclass(frozen=True, slots=True)
class AppLimits:
    """The bounds on one app connection (``server.*`` settings)."""

    max_buffer_bytes: int
    write_timeout: float
    linger: float

    @classmethod
    def from_config(cls, server: ServerConfig) -> AppLimits:
        return cls(
            max_buffer_bytes=server.max_app_buffer_bytes,
            write_timeout=server.app_write_timeout,
            linger=server.slow_app_linger,
        )


class SSESink:
    """Streams chunks to the app as server-sent events through an AppWriter."""

    __slots__ = ("_limits", "_request", "_writer", "result")

    def __init__(self, request: web.Request, limits: AppLimits) -> None:
        self._request = request
        self._limits = limits
        self._writer: AppWriter | None = None
        self.result: web.StreamResponse | None = None

    @property
    def committed(self) -> bool:
        return self._writer is not None

    async def _put(self, frame: bytes) -> None:
        writer = self._writer
        if writer is None:
            resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
            try:
                await resp.prepare(self._request)
            except (ConnectionError, RuntimeError) as exc:
                raise AppGone() from exc
            limits = self._limits
            writer = AppWriter(
                self._request,
                resp,
                max_buffer_bytes=limits.max_buffer_bytes,
                write_timeout=limits.write_timeout,
                linger=limits.linger,
            )
            self._writer = writer
            self.result = resp
        writer.put(frame)

    async def send_chunk(self, chunk: Mapping[str, Any], raw: bytes | None) -> None:
        frame = encode_data(raw if raw is not None else orjson.dumps(chunk))
        writer = self._writer
        if writer is not None:
            writer.put(frame)  # committed: no coroutine needed (this is the hot path)
        else:
            await self._put(frame)

    async def send_comment(self, text: str) -> None:
        if self._writer is not None:
            self._writer.put(encode_comment(text))

    async def flow(self) -> None:
        writer = self._writer
        if writer is not None and writer.must_wait():
            await writer.room()

    def reset(self) -> bool:
        return self._writer is None

    async def finish(self, headers: Mapping[str, str]) -> None:
        if self._writer is None:
            await self._put(b"")
        assert self._writer is not None
        await self._writer.close(DONE_EVENT)

    async def fail(self, error: AppError) -> None:
        if self._writer is None:
            self.result = json_response(error.status, error.body(), error.headers)
            return
        await self._writer.close(error.sse_event())

    async def too_slow(self, error: AppError) -> None:
        if self._writer is not None:
            await self._writer.abandon(error.sse_event())

    async def gone(self) -> None:
        if self._writer is not None:
            await self._writer.cancel()

    async def abort(self, error: AppError, linger: float) -> None:
        """Could not end in time (the drain deadline): ``error`` behind what the app has
        already been sent, at most ``linger`` seconds for it, then the connection ends."""
        if self._writer is not None:
            await self._writer.abandon(error.sse_event(), linger=linger)

    async def pass_through(self, error: UpstreamResponseError) -> None:
        self.result = json_response(error.status, error.body, error.headers)


class CompletionSink:
    """Collects streamed chunks into one ``chat.completion`` object for non-stream requests.

    Every field of the deltas ends up in the message: text fields are joined, list fields
    (``reasoning_details``) concatenated, ``audio`` merged (its ``data`` and ``transcript``
    joined), and each choice's logprobs collected into one ``{"content", "refusal"}`` object
    (``null`` when the upstream sent none, i.e. the app did not ask for them).
    """

    def __init__(self) -> None:
        self.result: web.Response | None = None
        self._meta: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: Any = None

    @property
    def committed(self) -> bool:
        return False

    async def send_chunk(self, chunk: Mapping[str, Any], raw: bytes | None) -> None:
        if not self._meta:
            for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
                if key in chunk:
                    self._meta[key] = chunk[key]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            state = self._choices.get(index)
            if state is None:
                state = {
                    "content": [],
                    "tool_calls": {},
                    "refusal": [],
                    "finish_reason": None,
                    "extra": {},
                    "logprobs": None,
                }
                self._choices[index] = state
            delta = choice.get("delta") or {}
            for key, value in delta.items():
                if key == "content":
                    if value:
                        state["content"].append(value)
                elif key == "refusal":
                    if value:
                        state["refusal"].append(value)
                elif key == "tool_calls":
                    for call in value or ():
                        _merge_tool_call(state["tool_calls"], call)
                elif key != "role" and value is not None:
                    state["extra"][key] = _merge_field(key, state["extra"].get(key), value)
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, Mapping):
                state["logprobs"] = _merge_logprobs(state["logprobs"], logprobs)
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    async def send_comment(self, text: str) -> None:
        return None

    async def flow(self) -> None:
        return None

    def reset(self) -> bool:
        """Nothing reached the app: a re-run can start the collection over."""
        self._meta = {}
        self._choices = {}
        self._usage = None
        return True

    async def too_slow(self, error: AppError) -> None:
        await self.fail(error)

    async def gone(self) -> None:
        return None

    async def abort(self, error: AppError, linger: float) -> None:
        await self.fail(error)

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            has_tools = bool(state["tool_calls"])
            # Like OpenAI: content is null in a message that is a tool call, refusal or audio.
            no_text = has_tools or state["refusal"] or "audio" in state["extra"]
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(state["content"]) if state["content"] or not no_text else None,
                "refusal": "".join(state["refusal"]) if state["refusal"] else None,
            }
            message.update({key: _joined(value) for key, value in state["extra"].items()})
            if has_tools:
                message["tool_calls"] = [
                    state["tool_calls"][i] for i in sorted(state["tool_calls"])
                ]
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": state["logprobs"],
                    "finish_reason": state["finish_reason"],
                }
            )
        body: dict[str, Any] = {
            "id": self._meta.get("id"),
            "object": "chat.completion",
            "created": self._meta.get("created"),
            "model": self._meta.get("model"),
            "choices": choices,
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in self._meta:
                body[key] = self._meta[key]
        if self._usage is not None:
            body["usage"] = self._usage
        return body

    async def finish(self, headers: Mapping[str, str]) -> None:
        self.result = json_response(200, orjson.dumps(self.completion()), headers)

    async def fail(self, error: AppError) -> None:
        self.result = json_response(error.status, error.body(), error.headers)

    async def pass_through(self, error: UpstreamResponseError) -> None:
        self.result = json_response(error.status, error.body, error.headers)


# Parts of the audio delta that stream in pieces; its other keys (id, expires_at) repeat.
_AUDIO_PIECES = ("data", "transcript")


class _Pieces(list[str]):
    """The pieces of a streamed text field, joined once when the message is built."""


def _merge_field(key: str, prior: Any, value: Any) -> Any:
    """A delta field added to what earlier deltas gave (text and lists grow)."""
    if isinstance(value, str):
        if isinstance(prior, _Pieces):
            prior.append(value)
            return prior
        return _Pieces([value])
    if isinstance(value, list):
        if isinstance(prior, list) and not isinstance(prior, _Pieces):
            prior.extend(value)
            return prior
        return list(value)
    if key == "audio" and isinstance(value, Mapping):
        audio = dict(prior) if isinstance(prior, Mapping) else {}
        for part, piece in value.items():
            if part in _AUDIO_PIECES and isinstance(piece, str):
                audio[part] = _merge_field(part, audio.get(part), piece)
            elif piece is not None:
                audio[part] = piece
        return audio
    return value


def _joined(value: Any) -> Any:
    if isinstance(value, _Pieces):
        return "".join(value)
    if isinstance(value, dict):
        return {k: _joined(v) for k, v in value.items()}
    return value


def _merge_logprobs(prior: dict[str, Any] | None, logprobs: Mapping[str, Any]) -> dict[str, Any]:
    """One choice's logprobs so far plus a chunk's: the token lists are concatenated."""
    merged: dict[str, Any] = {"content": None, "refusal": None} if prior is None else prior
    for key, value in logprobs.items():
        if isinstance(value, list):
            entries = merged.get(key)
            if isinstance(entries, list):
                entries.extend(value)
            else:
                merged[key] = list(value)
        elif key not in merged:
            merged[key] = value
    return merged


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: Mapping[str, Any]) -> None:
    index = delta.get("index", 0)
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        call["function"]["name"] += fn["name"]
    if fn.get("arguments"):
        call["function"]["arguments"] += fn["arguments"]


def json_response(status: int, body: bytes, headers: Mapping[str, str]) -> web.Response:
    """A JSON body with our headers (any content type the upstream sent is replaced)."""
    out = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    return web.Response(status=status, body=body, headers=out, content_type="application/json")
