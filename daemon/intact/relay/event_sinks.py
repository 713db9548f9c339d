"""Server-sent events for the APIs whose events are named (Anthropic Messages, OpenAI
Responses): ``event: <type>`` before each ``data:`` line, no ``[DONE]``, and an API-specific
way for a whole stream to end and for a lost one to say so. The framing, buffering and
backpressure are the chat sink's (``relay.sinks.SSESink``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from intact.errors import AppError
from intact.relay.sinks import SSESink, json_response
from intact.sse import encode_data


def encode_named(obj: Mapping[str, Any], raw: bytes | None) -> bytes:
    """One named event; ``raw`` is the upstream's unchanged JSON when it can be forwarded."""
    data = raw if raw is not None else orjson.dumps(obj)
    return b"event: " + str(obj.get("type", "message")).encode() + b"\n" + encode_data(data)


class NamedEventSink(SSESink):
    """Named events to the app; subclasses say how the stream ends, whole or lost."""

    closing = b""  # written after the last event of a whole answer

    def ending(self, error: AppError) -> bytes:
        """The events that end a lost stream, in the API's own terms."""
        return error.sse_event()

    def error_response(self, error: AppError) -> web.Response:
        """``error`` before anything was sent, as an HTTP error in the API's shape."""
        return json_response(error.status, error.body(), error.headers)

    async def send_chunk(self, chunk: Mapping[str, Any], raw: bytes | None) -> None:
        await self._put(encode_named(chunk, raw))

    async def finish(self, headers: Mapping[str, str]) -> None:
        if self._writer is None:
            await self._put(b"")
        assert self._writer is not None
        await self._writer.close(self.closing)

    async def fail(self, error: AppError) -> None:
        if self._writer is None:
            self.result = self.error_response(error)
            return
        await self._writer.close(self.ending(error))

    async def too_slow(self, error: AppError) -> None:
        if self._writer is not None:
            await self._writer.abandon(self.ending(error))

    async def abort(self, error: AppError, linger: float) -> None:
        if self._writer is not None:
            await self._writer.abandon(self.ending(error), linger=linger)
