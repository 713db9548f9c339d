"""One attempt's event stream from an upstream: parsed events in, classified failures out.

The reader owns the HTTP response, the SSE decoder and the upstream's clocks (first token,
stall, deadline). Everything aiohttp can raise while reading is turned into an
``UpstreamFailure`` here and nowhere else, so a failure on the app's side of the relay can
never be mistaken for the upstream's. The clocks run only inside ``next_batch``: while the
relay waits for a slow app, the upstream is not read (TCP backpressure) and not judged.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from intact.resilience import classify
from intact.sse import DONE_DATA, SSEDecoder, SSEProtocolError
from intact.upstream.client import UpstreamCall, UpstreamClient
from intact.upstream.watchdog import Watchdog

# One parsed event: the JSON object and its raw bytes (forwarded unchanged when possible).
Event = tuple[dict[str, Any], bytes]

_READ_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError)


class UpstreamStream:
    """``async with`` opens the stream; ``next_batch`` yields the events of one read."""

    __slots__ = (
        "_batch",
        "_call",
        "_client",
        "_decoder",
        "_headers",
        "_resp",
        "_watchdog",
        "done",
        "got_first",
    )

    def __init__(
        self,
        client: UpstreamClient,
        call: UpstreamCall,
        *,
        headers: dict[str, str],
        first_token_timeout: float,
        stall_timeout: float,
        deadline: float,
        first_deadline: float | None = None,
    ) -> None:
        self._client = client
        self._call = call
        self._headers = headers
        self._watchdog = Watchdog(
            first_token=first_token_timeout,
            stall=stall_timeout,
            deadline=deadline,
            first_deadline=first_deadline,
        )
        self._decoder = SSEDecoder()
        self._resp: aiohttp.ClientResponse | None = None
        self._batch: list[Event] = []  # what next_batch returns, refilled by each call
        self.got_first = False  # an event arrived (the upstream is serving)
        self.done = False  # [DONE] arrived: the upstream ended the stream on purpose

    async def __aenter__(self) -> UpstreamStream:
        wd = self._watchdog
        wd.arm()
        try:
            call = self._call
            self._resp = await self._client.open_stream(
                call.body,
                path=call.path,
                method=call.method,
                query=call.query,
                headers=self._headers,
                api_headers=call.headers,
            )
        except asyncio.CancelledError:
            failure = wd.failure()
            if failure is None:
                wd.close()
                raise
            wd.close()
            raise failure from None
        except BaseException:
            wd.close()
            raise
        finally:
            wd.disarm()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._watchdog.close()
        resp = self._resp
        if resp is None:
            return
        if self.done and exc_type is None:
            resp.release()  # read to the end: the connection can be reused
        else:
            resp.close()  # the upstream sees its connection closed at once

    async def next_batch(self) -> list[Event] | None:
        """The events of the next read (possibly none: comments, keep-alives, a partial
        event); None when the stream ended ([DONE] or end of body: see ``done``).

        The list is this reader's and valid until the next call, which empties it first:
        the previous read's parsed chunks are not kept alive while the stream waits for
        its upstream (an idle stream would hold its last chunk, ~1 KB, for nothing)."""
        batch = self._batch
        batch.clear()
        if self.done:
            return None
        resp = self._resp
        assert resp is not None
        wd = self._watchdog
        wd.arm()
        try:
            data = await resp.content.readany()
        except asyncio.CancelledError:
            failure = wd.failure()
            if failure is None:
                raise
            raise failure from None
        except _READ_ERRORS as exc:
            raise classify.from_exception(exc, before_response=False) from None
        finally:
            wd.disarm()
        if not data:
            return None
        try:
            payloads = self._decoder.feed_data(data)
        except SSEProtocolError as exc:
            raise classify.protocol_error(str(exc)) from None
        loads = orjson.loads
        for raw in payloads:
            if raw == DONE_DATA:
                self.done = True
                break
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:
                raise classify.protocol_error("event data is not JSON") from None
            if type(obj) is not dict:
                raise classify.protocol_error("event data is not a JSON object")
            batch.append((obj, raw))
        if batch:
            if self.got_first:
                wd.progress()
            else:
                self.got_first = True
                wd.first_event()
        return batch
