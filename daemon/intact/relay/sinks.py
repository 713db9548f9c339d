"""Where the relay's output goes: an SSE stream to the app, or one JSON completion.

The relay emits chunks; a sink decides the framing. The SSE sink commits (sends HTTP 200 and
headers) only when the first chunk is written, so everything that fails before that can still
be an honest HTTP error. The completion sink never commits before the answer is whole:
non-streaming requests are streamed upstream internally and recover the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson
from aiohttp import web

from intact.errors import AppError, UpstreamResponseError
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
        """One chat.completion.chunk; ``raw`` is its unchanged upstream JSON when available."""

    async def send_comment(self, text: str) -> None: ...

    async def finish(self, headers: Mapping[str, str]) -> None:
        """The answer is complete (stream: [DONE]; non-stream: the JSON completion)."""

    async def fail(self, error: AppError) -> None:
        """Explicit error: HTTP error if not committed, else an SSE error event."""

    async def pass_through(self, error: UpstreamResponseError) -> None:
        """A final upstream error, before commit, returned as the upstream sent it."""


class SSESink:
    """Streams chunks to the app as server-sent events over an aiohttp StreamResponse."""

    __slots__ = ("_request", "_response", "result")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response: web.StreamResponse | None = None
        self.result: web.StreamResponse | None = None

    @property
    def committed(self) -> bool:
        return self._response is not None

    async def _write(self, data: bytes) -> None:
        resp = self._response
        if resp is None:
            resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
            await resp.prepare(self._request)
            self._response = resp
            self.result = resp
        await resp.write(data)

    async def send_chunk(self, chunk: Mapping[str, Any], raw: bytes | None) -> None:
        await self._write(encode_data(raw if raw is not None else orjson.dumps(chunk)))

    async def send_comment(self, text: str) -> None:
        if self._response is not None:
            await self._write(encode_comment(text))

    async def finish(self, headers: Mapping[str, str]) -> None:
        await self._write(DONE_EVENT)
        assert self._response is not None
        await self._response.write_eof()

    async def fail(self, error: AppError) -> None:
        if self._response is None:
            self.result = json_response(error.status, error.body(), error.headers)
            return
        await self._response.write(error.sse_event())
        await self._response.write_eof()

    async def pass_through(self, error: UpstreamResponseError) -> None:
        self.result = json_response(error.status, error.body, error.headers)


class CompletionSink:
    """Collects streamed chunks into one ``chat.completion`` object for non-stream requests."""

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
                    prior = state["extra"].get(key)
                    state["extra"][key] = (
                        prior + value
                        if isinstance(prior, str) and isinstance(value, str)
                        else value
                    )
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    async def send_comment(self, text: str) -> None:
        return None

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            has_tools = bool(state["tool_calls"])
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(state["content"]) if state["content"] or not has_tools else None,
                "refusal": "".join(state["refusal"]) if state["refusal"] else None,
            }
            message.update(state["extra"])
            if has_tools:
                message["tool_calls"] = [
                    state["tool_calls"][i] for i in sorted(state["tool_calls"])
                ]
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
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
