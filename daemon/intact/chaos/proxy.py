"""The chaos proxy: the simulator's named faults in front of any OpenAI-compatible server.

`intact chaos-proxy --upstream URL --port N` forwards every request to URL byte for byte (any
path, headers including Authorization and x-api-key, streamed responses chunk by chunk as
they arrive) and breaks generation requests on purpose: before the response (http_429/500/
503, connect_drop) or mid-stream at a chosen event (reset, stall, error_event, truncate).
Point intact (or any client) at it to chaos-test against a real vLLM, llama.cpp or provider
sandbox. `/chaos/*` belongs to the proxy: stats, and a FIFO fault script like the simulator's.

Three APIs are faulted (any other request passes through untouched), each the way its own
servers fail:

- chat and text completions (`POST .../chat/completions`, `.../completions`): a position
  counts content chunks (`frames.EventRole`); error_event is `data: {"error": ...}`.
- Anthropic Messages (`POST .../messages`): a position counts the SSE events before
  message_delta (message_start, block starts, deltas and block stops); "last" strikes right
  before message_delta, "done" after it, before message_stop. error_event is Anthropic's
  in-band `event: error` with `{"type":"error","error":{"type":"overloaded_error",
  "message":"Overloaded"}}` on the 200; HTTP errors have Anthropic's body
  `{"type":"error","error":{"type","message"}}` (http_503 answers 529 overloaded_error, as
  Anthropic sends no 503, like the simulator).
- OpenAI Responses (`POST .../responses`): a position counts the SSE events before
  response.completed (response.created included); error_event is `event: error` with
  `{"type":"error","code":"server_error","message":...}` (its sequence_number follows the
  last one forwarded, when the upstream numbers its events). HTTP errors as chat's.

A non-streamed response meets a mid-stream fault the way its client would see one: reset
and stall before any byte, error_event as HTTP 500 (Messages: 529 overloaded_error),
truncate as a short body.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import signal
import socket
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import yarl
from aiohttp import web
from multidict import CIMultiDict

from intact.chaos.frames import Api, EventFramer, EventRole, api_of, event_role, sequence_number
from intact.chaos.plan import FAULT_HEADER, ChaosDecision, FaultOdds, FaultPlanner
from intact.errors import AppError
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
    RESET,
    STALL,
    TRUNCATE,
)
from intact.sse import SSEProtocolError

# Hop-by-hop headers (RFC 9110 §7.6.1) and framing the proxy redoes itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        FAULT_HEADER,
    }
)
SERVER_ERROR = AppError(
    500,
    "The server had an error while processing your request. Sorry about that!",
    "server_error",
)
OVERLOADED = AppError(
    503, "The engine is currently overloaded, please try again later.", "server_error"
)
OVERLOADED_529 = AppError(529, "The server is overloaded, please try again later.", "server_error")
PREFILL_REFUSED = AppError(
    400,
    "This model does not support assistant message prefill.",
    "invalid_request_error",
    code="invalid_request",
    param="messages",
)
CONTEXT_TOO_LONG = AppError(
    400,
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9120 tokens. Please reduce the length of the messages.",
    "invalid_request_error",
    code="context_length_exceeded",
    param="messages",
)
_OPENAI_REFUSALS = {
    HTTP_500: SERVER_ERROR,
    HTTP_503: OVERLOADED,
    HTTP_529: OVERLOADED_529,
    HTTP_400: PREFILL_REFUSED,
    CONTEXT_LENGTH: CONTEXT_TOO_LONG,
}

# Anthropic's errors (https://docs.anthropic.com/en/api/errors), as the simulator sends them.
ANTHROPIC_OVERLOADED = AppError(529, "Overloaded", "overloaded_error")
_ANTHROPIC_REFUSALS = {
    HTTP_500: AppError(500, "Internal server error", "api_error"),
    # Anthropic sends no 503: overloaded is 529.
    HTTP_503: ANTHROPIC_OVERLOADED,
    HTTP_529: ANTHROPIC_OVERLOADED,
    HTTP_400: AppError(
        400,
        "This model does not support assistant message prefill. "
        "The conversation must end with a user message.",
        "invalid_request_error",
    ),
    CONTEXT_LENGTH: AppError(
        400, "prompt is too long: 208439 tokens > 200000 maximum", "invalid_request_error"
    ),
}
_ANTHROPIC_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
    }
)
ANTHROPIC_ERROR_EVENT = (
    b"event: error\n"
    b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
)
"""error_event on a Messages stream: Anthropic's in-band error on the 200."""


@dataclass(frozen=True, kw_only=True)
class ChaosSettings:
    """Where the proxy forwards to, how it fails, and its bounds. Validated on construction."""

    upstream: str
    """Origin (and optional path prefix) requests are forwarded to: /v1/x goes to upstream/v1/x."""
    odds: FaultOdds = field(default_factory=FaultOdds)
    seed: int | None = None
    """Seed of every random decision; None draws one (printed, so a run can be replayed)."""
    retry_after: float = 1.0
    """Seconds advertised by http_429 (Retry-After, rounded up, and retry-after-ms)."""
    stall_max: float = 300.0
    """Longest a stall holds the client's connection open before closing it."""
    fault_log: str | None = None
    """File the decisions are appended to as JSON lines; None keeps no log."""
    connect_timeout: float = 10.0
    max_connections: int = 256
    """Upstream connections at once; more requests wait for one."""
    max_body_bytes: int = 64 * 1024 * 1024
    """Largest request body, and largest non-streamed response a mid-stream fault holds."""
    max_event_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        url = yarl.URL(self.upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"upstream {self.upstream!r} must be an http:// or https:// URL with a host"
            )
        for name in ("retry_after", "stall_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("connect_timeout", "max_connections", "max_body_bytes", "max_event_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


_COUNTED_KINDS = (*ALL_FAULT_KINDS, HTTP_529, HTTP_400, CONTEXT_LENGTH)


@dataclass
class ChaosStats:
    """Counts since start: requests forwarded, decisions made, faults that struck."""

    requests: int = 0
    decisions: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    not_applied: int = 0
    """Faults that never struck: the upstream answered non-200 or broke first, or the client
    left first (the response passed through unharmed)."""
    upstream_errors: int = 0
    client_disconnects: int = 0
    active: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "decisions": self.decisions,
            "faults": {kind: self.faults[kind] for kind in _COUNTED_KINDS},
            "faults_total": sum(self.faults.values()),
            "not_applied": self.not_applied,
            "upstream_errors": self.upstream_errors,
            "client_disconnects": self.client_disconnects,
            "active": self.active,
        }


class FaultLog:
    """JSON lines, one per decision, flushed as written (small synchronous writes)."""

    def __init__(self, path: str | None) -> None:
        self._file: IO[bytes] | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "ab")  # noqa: SIM115 - closed in close()

    def write(self, entry: Mapping[str, Any]) -> None:
        if self._file is not None:
            self._file.write(orjson.dumps(entry) + b"\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class _Outcome:
    """How a decision played out, for the log: whether and where it struck, or why not."""

    struck: bool = False
    position: int | None = None
    note: str | None = None


class _ClientGone(Exception):
    """The client closed its connection while the proxy was writing to it."""


class ChaosProxy:
    """An aiohttp reverse proxy that injects named faults; one upstream session for its life."""

    def __init__(self, settings: ChaosSettings) -> None:
        self.settings = settings
        self.seed = settings.seed if settings.seed is not None else secrets.randbits(32)
        self.stats = ChaosStats()
        self._planner = FaultPlanner(settings.odds, seed=self.seed)
        upstream = yarl.URL(settings.upstream)
        # Requests keep their raw path (and query): /v1/x goes to <upstream prefix>/v1/x.
        self._base = str(upstream.origin()) + upstream.raw_path.rstrip("/")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._log: FaultLog | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._port: int | None = None
        self._host = "127.0.0.1"
        self._request_number = 0

    # lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 picks a free port); returns once connections are accepted."""
        if self._runner is not None:
            raise RuntimeError("the chaos proxy is already running")
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_get("/chaos/stats", self._chaos_stats)
        app.router.add_post("/chaos/faults", self._chaos_schedule)
        app.router.add_delete("/chaos/faults", self._chaos_clear)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        # force_close, one upstream connection per request: a pooled connection that the
        # server closes as it is reused (llama-server drops idle ones after 5 s) would fail
        # with a fault of the proxy's own making. A handshake per request is the price.
        connector = aiohttp.TCPConnector(limit=self.settings.max_connections, force_close=True)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout,
            sock_connect=self.settings.connect_timeout,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            # Bytes pass through as sent: no decompression, no headers of the proxy's own.
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        # A client that goes away cancels its handler, which closes the upstream request.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1)
        try:
            self._log = FaultLog(self.settings.fault_log)
            await runner.setup()
            await web.TCPSite(runner, host, port, backlog=1024).start()
        except BaseException:
            await runner.cleanup()
            await session.close()
            if self._log is not None:
                self._log.close()
                self._log = None
            raise
        self._session = session
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop at once: in-flight requests (stalled ones included) are cut, not drained."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        await runner.cleanup()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> ChaosProxy:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the chaos proxy has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The proxy's origin; clients use it with the upstream's paths (e.g. url + "/v1")."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._host, self._host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # controls

    def schedule_faults(self, specs: list[str]) -> None:
        """Script the next requests' faults ("reset@3", "stall@last", "http_429", "none")."""
        self._planner.schedule(specs)

    def clear_faults(self) -> None:
        self._planner.clear()

    @property
    def pending_faults(self) -> tuple[str, ...]:
        return self._planner.pending

    # admin

    async def _chaos_stats(self, request: web.Request) -> web.Response:
        body = {**self.stats.as_json(), "seed": self.seed, "pending": list(self.pending_faults)}
        return web.json_response(body)

    async def _chaos_schedule(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error_response(_bad_request("body must be JSON"))
        schedule = body.get("schedule") if isinstance(body, dict) else None
        if not isinstance(schedule, list) or not all(isinstance(s, str) for s in schedule):
            return _error_response(_bad_request("'schedule' must be a list of fault specs"))
        try:
            self.schedule_faults(schedule)
        except ValueError as error:
            return _error_response(_bad_request(str(error)))
        return web.json_response({"pending": list(self.pending_faults)})

    async def _chaos_clear(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"pending": []})

    # forwarding

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        self.stats.requests += 1
        self.stats.active += 1
        try:
            return await self._handle(request)
        finally:
            self.stats.active -= 1
            self._in_flight.discard(task)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        api = api_of(request.path) if request.method == "POST" else None
        if api is None:
            return await self._relay(request, body, None, _Outcome(), None)
        self._request_number += 1
        number = self._request_number
        try:
            decision = self._planner.decide(
                path=request.path, body=body, header=request.headers.get(FAULT_HEADER)
            )
        except ValueError as error:
            return _error_response(_bad_request(f"{FAULT_HEADER}: {error}"), api)
        self.stats.decisions += 1
        outcome = _Outcome()
        try:
            if decision.is_fault and not decision.mid_stream:
                self._struck(decision, outcome, None)
                return self._refuse(request, decision.kind, api)
            return await self._relay(request, body, decision, outcome, api)
        except asyncio.CancelledError:
            if self._runner is not None:  # not stopping: the client went away
                self.stats.client_disconnects += 1
                if not outcome.struck:
                    outcome.note = "the client went away first"
            raise
        finally:
            if decision.is_fault and not outcome.struck:
                self.stats.not_applied += 1
            self._write_log(number, request, decision, outcome)

    def _struck(self, decision: ChaosDecision, outcome: _Outcome, position: int | None) -> None:
        """Count a fault the moment it strikes (a stall may last minutes)."""
        outcome.struck, outcome.position = True, position
        self.stats.faults[decision.kind] += 1

    def _write_log(
        self, number: int, request: web.Request, decision: ChaosDecision, outcome: _Outcome
    ) -> None:
        if self._log is None:
            return
        self._log.write(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request": number,
                "method": request.method,
                "path": request.path,
                "kind": decision.kind,
                "position": outcome.position if decision.mid_stream else None,
                "planned": decision.planned,
                "source": decision.source,
                "applied": outcome.struck if decision.is_fault else None,
                "note": outcome.note,
            }
        )

    def _refuse(self, request: web.Request, kind: str, api: Api) -> web.StreamResponse:
        """A fault that replaces the whole response; the upstream never sees the request."""
        if kind == CONNECT_DROP:
            return _drop_connection(request, reset=False)
        wait = self.settings.retry_after
        if kind == HTTP_429 and api == "messages":
            limited = AppError(
                429,
                "This request would exceed the rate limit for your organization of 50 "
                "requests per minute. Please reduce the request rate, or try again later.",
                "rate_limit_error",
                headers={"retry-after": str(math.ceil(wait))},
            )
            return _error_response(limited, api)
        if kind == HTTP_429:
            limited = AppError(
                429,
                f"Rate limit reached for requests. Please try again in {wait:g}s.",
                "requests",
                code="rate_limit_exceeded",
                headers={
                    "Retry-After": str(math.ceil(wait)),
                    "retry-after-ms": str(round(wait * 1000)),
                },
            )
            return _error_response(limited, api)
        errors = _ANTHROPIC_REFUSALS if api == "messages" else _OPENAI_REFUSALS
        return _error_response(errors[kind], api)

    async def _relay(
        self,
        request: web.Request,
        body: bytes,
        decision: ChaosDecision | None,
        outcome: _Outcome,
        api: Api | None,
    ) -> web.StreamResponse:
        """Forward one request and its response, inflicting a mid-stream decision if any.

        `outcome` is filled in as the fault plays out, so it is right even when the handler
        is cancelled mid-stall.
        """
        assert self._session is not None
        faulted = decision is not None and decision.is_fault
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        if faulted:
            # The proxy must see the events to count them: no compressed stream.
            headers["Accept-Encoding"] = "identity"
        try:
            upstream = await self._session.request(
                request.method,
                yarl.URL(self._base + request.raw_path, encoded=True),
                data=body if request.body_exists else None,
                headers=headers,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            self.stats.upstream_errors += 1
            message = f"chaos proxy could not reach the upstream: {type(error).__name__}"
            outcome.note = message
            return _error_response(AppError(502, message, "upstream_error"), api)
        try:
            if decision is None or not faulted:
                return await self._pass_through(request, upstream)
            if upstream.status != 200:
                outcome.note = f"upstream answered {upstream.status}"
                return await self._pass_through(request, upstream)
            assert api is not None  # a decision is only made for an API's request
            if "text/event-stream" in upstream.headers.get("Content-Type", ""):
                return await self._stream_with_fault(request, upstream, decision, outcome, api)
            return await self._whole_with_fault(request, upstream, decision, outcome, api)
        except _ClientGone:
            self.stats.client_disconnects += 1
            if not outcome.struck:
                outcome.note = "the client went away first"
            return web.Response(status=499)
        finally:
            upstream.close()

    def _response_for(self, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        return web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)

    async def _pass_through(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """The response as the upstream sends it; an upstream that breaks is broken onwards."""
        response = self._response_for(upstream)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await _prepare(response, request)
        try:
            async for chunk in upstream.content.iter_any():
                await _write(response, chunk)
        except (aiohttp.ClientError, TimeoutError):
            # Never turn the upstream's broken response into a clean end.
            return _drop_connection(request, reset=True)
        await _write_eof(response)
        return response

    async def _stream_with_fault(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        decision: ChaosDecision,
        outcome: _Outcome,
        api: Api,
    ) -> web.StreamResponse:
        """Forward events until the decision's position, then strike."""
        assert decision.position is not None
        response = self._response_for(upstream)
        await _prepare(response, request)
        framer = EventFramer(self.settings.max_event_bytes)
        counted = 0
        finished = False
        last_seq: int | None = None  # a Responses stream's last sequence_number forwarded
        try:
            async for chunk in upstream.content.iter_any():
                ready: list[bytes] = []
                for event in framer.feed(chunk):
                    role = event_role(event, api)
                    if _strikes_before(decision.position, role, counted, finished):
                        await _write(response, b"".join(ready))
                        upstream.close()  # the upstream stops generating for nobody
                        self._struck(decision, outcome, counted)
                        error = _error_event(api, last_seq)
                        return await self._strike(request, response, decision.kind, error)
                    ready.append(event)
                    counted += role is EventRole.CONTENT
                    finished = finished or role is EventRole.FINISH
                    seq = sequence_number(event) if api == "responses" else None
                    last_seq = last_seq if seq is None else seq
                await _write(response, b"".join(ready))
        except (aiohttp.ClientError, TimeoutError, SSEProtocolError):
            outcome.note = "the upstream stream broke first"
            return _drop_connection(request, reset=True)
        # The upstream ended before the fault's position: strike at the end.
        await _write(response, framer.rest())
        self._struck(decision, outcome, counted)
        error = _error_event(api, last_seq)
        return await self._strike(request, response, decision.kind, error)

    async def _strike(
        self, request: web.Request, response: web.StreamResponse, kind: str, error_event: bytes
    ) -> web.StreamResponse:
        if kind == RESET:
            return _drop_connection(request, reset=True)
        if kind == STALL:
            await asyncio.sleep(self.settings.stall_max)
            return _drop_connection(request, reset=False)
        if kind == ERROR_EVENT:
            await _write(response, error_event)
        elif kind != TRUNCATE:
            raise AssertionError(f"not a mid-stream fault: {kind}")
        await _write_eof(response)
        return response

    async def _whole_with_fault(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        decision: ChaosDecision,
        outcome: _Outcome,
        api: Api,
    ) -> web.StreamResponse:
        """A non-streamed response meets a mid-stream fault the way its client would see one:
        reset and stall before any byte, error_event as HTTP 500 (Messages: 529
        overloaded_error), truncate as a short body."""
        try:
            payload = await _read_bounded(upstream, self.settings.max_body_bytes)
        except (aiohttp.ClientError, TimeoutError):
            outcome.note = "the upstream response broke first"
            return _drop_connection(request, reset=True)
        upstream.close()
        self._struck(decision, outcome, None)
        outcome.note = "not a stream"
        if decision.kind == RESET:
            return _drop_connection(request, reset=True)
        if decision.kind == STALL:
            await asyncio.sleep(self.settings.stall_max)
            return _drop_connection(request, reset=False)
        if decision.kind == ERROR_EVENT:
            return _error_response(ANTHROPIC_OVERLOADED if api == "messages" else SERVER_ERROR, api)
        response = self._response_for(upstream)
        response.content_length = len(payload)
        await _prepare(response, request)
        await _write(response, payload[: len(payload) // 2])
        return _drop_connection(request, reset=False)


def _strikes_before(position: int, role: EventRole, counted: int, finished: bool) -> bool:
    """Whether a fault at `position` strikes before forwarding an event of this role."""
    if position == AFTER_FINISH:
        return finished and role is not EventRole.CONTENT and role is not EventRole.FINISH
    if role is EventRole.CONTENT:
        return counted >= position
    # Past the last content chunk: a position beyond the stream's end is clamped to "last".
    return role in (EventRole.FINISH, EventRole.USAGE, EventRole.DONE) and not finished


def _forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    forwarded: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() in _HOP_BY_HOP:
            continue
        # Repeated headers are joined, as RFC 9110 §5.3 allows for list-valued fields.
        forwarded[name] = f"{forwarded[name]}, {value}" if name in forwarded else value
    return forwarded


def _bad_request(message: str) -> AppError:
    return AppError(400, message, "invalid_request_error", code="chaos_proxy")


def _error_response(error: AppError, api: Api | None = None) -> web.Response:
    """`error` in its API's shape: OpenAI's {"error": {...}}, or for Messages Anthropic's
    {"type": "error", "error": {"type", "message"}}."""
    body = error.body()
    if api == "messages":
        kind = error.type if error.type in _ANTHROPIC_TYPES else "api_error"
        body = orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})
    return web.Response(
        body=body,
        status=error.status,
        headers=dict(error.headers),
        content_type="application/json",
    )


def _error_event(api: Api, last_seq: int | None) -> bytes:
    """What error_event writes on a stream of `api`."""
    if api == "messages":
        return ANTHROPIC_ERROR_EVENT
    if api == "chat":
        return SERVER_ERROR.sse_event()
    event: dict[str, Any] = {
        "type": "error",
        "code": SERVER_ERROR.type,
        "message": SERVER_ERROR.message,
        "param": None,
    }
    if last_seq is not None:
        event["sequence_number"] = last_seq + 1
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


def _drop_connection(request: web.Request, *, reset: bool) -> web.StreamResponse:
    """Close the client's connection under the handler: RST for reset, FIN otherwise."""
    transport = request.transport
    if transport is not None:
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    # aiohttp's attempt to send this is refused quietly: the transport is closing.
    return web.Response(status=500)


async def _prepare(response: web.StreamResponse, request: web.Request) -> None:
    try:
        await response.prepare(request)
    except ConnectionError as error:
        raise _ClientGone from error


async def _write(response: web.StreamResponse, data: bytes) -> None:
    if not data:
        return
    try:
        await response.write(data)
    except ConnectionError as error:
        raise _ClientGone from error


async def _write_eof(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except ConnectionError as error:
        raise _ClientGone from error


async def _read_bounded(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in upstream.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise aiohttp.ClientPayloadError(f"response larger than {limit} bytes")
    return b"".join(chunks)


async def serve_until_signalled(
    settings: ChaosSettings,
    host: str,
    port: int,
    *,
    on_ready: Callable[[ChaosProxy], None] | None = None,
) -> None:
    """`intact chaos-proxy`: serve until SIGINT or SIGTERM, then stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    proxy = ChaosProxy(settings)
    try:
        await proxy.start(host, port)
        try:
            if on_ready is not None:
                on_ready(proxy)
            await stop.wait()
        finally:
            await proxy.stop()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def describe(proxy: ChaosProxy) -> str:
    """The start-up line: where it listens, where it forwards, and the seed to replay it."""
    odds = proxy.settings.odds
    return (
        f"intact chaos proxy listening on {proxy.url} -> {proxy.settings.upstream} "
        f"(fault rate {odds.fault_rate:g}, kinds {','.join(odds.kinds)}, seed {proxy.seed}, "
        f"pid {os.getpid()})"
    )
