"""The app side: the OpenAI-compatible HTTP API that apps reach over the Unix socket.

Routes: ``POST /v1/chat/completions``, Anthropic's ``POST /v1/messages`` and OpenAI's
``POST /v1/responses`` (stream and non-stream, recovered: ``relay.engine``),
``GET /v1/models``, and every other ``/v1/`` route, relayed unchanged
(``relay.passthrough``). Bad input is refused here, before it can cost an upstream call,
with the error shape each SDK understands; so are
routes outside ``/v1/`` (404), wrong methods on intact's own routes (405) and oversized
bodies (413).
So are peers the access list does not allow (403), a connection over its peer's cap and an
app over its stream limit (429 + Retry-After), and a body slower than
``server.request_read_timeout`` (408).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import structlog
from aiohttp import web

from intact.access import AppAccess
from intact.connections import AppConnection, ConnectionGate
from intact.errors import AppError, invalid_request, not_found
from intact.peer import Peer
from intact.relay.engine import Relay
from intact.relay.messages import error_response as messages_error_response
from intact.relay.messages import (
    messages_sink,
    parse_messages_request,
)
from intact.relay.passthrough import OWN_ROUTES, RelayedRequest, relay_passthrough
from intact.relay.protocol import AppRequest
from intact.relay.request import parse_chat_request
from intact.relay.responses import ResponsesRequest, parse_responses_request, responses_sink
from intact.relay.sinks import AppLimits, CompletionSink, SSESink, json_response
from intact.resilience.classify import UpstreamFailure
from intact.telemetry.api import REQUEST_APP, RefusalReason
from intact.upstream.headers import APP_HEADERS, AppHeaders

log = structlog.get_logger("intact.listener")

RELAY_KEY: web.AppKey[Relay] = web.AppKey("relay", Relay)
ACCESS_KEY: web.AppKey[AppAccess] = web.AppKey("access", AppAccess)
GATE_KEY: web.AppKey[ConnectionGate] = web.AppKey("gate", ConnectionGate)

# Seconds an app is asked to wait after a 429 from a per-app or per-peer limit.
LIMIT_RETRY_AFTER = "1"


def error_response(error: AppError) -> web.Response:
    return json_response(error.status, error.body(), error.headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's own HTTP errors (404, 405, 413, ...) into OpenAI-shaped bodies."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            err = not_found(f"Unknown route {request.method} {request.path}.")
        elif exc.status == 405:
            err = invalid_request(
                f"Method {request.method} is not allowed on {request.path}.",
                code="method_not_allowed",
                status=405,
            )
        elif exc.status == 413:
            err = invalid_request(
                "The request body is larger than the configured limit (server.max_body_bytes).",
                code="request_too_large",
                status=413,
            )
        else:
            err = invalid_request(exc.reason or "Bad request.", status=exc.status)
        response = error_response(err)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def _peer_fields(peer: Peer | None) -> dict[str, int | None]:
    if peer is None:
        return {"uid": None, "gid": None, "pid": None}
    return {"uid": peer.uid, "gid": peer.gid, "pid": peer.pid}


def _refuse(
    request: web.Request,
    peer: Peer | None,
    app: str,
    reason: RefusalReason,
    error: AppError,
    *,
    close: bool,
) -> web.Response:
    """Answer with ``error``, log who was refused and why, and count it."""
    request.app[ACCESS_KEY].refuse(app, reason)
    log.warning(
        "app_refused",
        reason=reason.value,
        app=app,
        status=error.status,
        route=request.path,
        **_peer_fields(peer),
    )
    response = error_response(error)
    if close:
        response.force_close()
        conn = _connection(request)
        if conn is not None:
            request.app[GATE_KEY].refused(conn)
    return response


def _connection(request: web.Request) -> AppConnection | None:
    return request.app[GATE_KEY].connection(request.transport)


def _peer(request: web.Request) -> Peer | None:
    conn = _connection(request)
    return conn.peer if conn is not None else None


@web.middleware
async def peer_access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse peers the access list does not allow (403) and connections over their peer's
    cap (429); mark the connection busy so its read clock stops while it is served."""
    gate = request.app[GATE_KEY]
    conn = gate.connection(request.transport)
    peer = conn.peer if conn is not None else None
    access = request.app[ACCESS_KEY]
    if conn is not None:
        gate.request_started(conn)
    try:
        if not access.admits(peer):
            who = "unknown" if peer is None else f"uid {peer.uid}, gid {peer.gid}"
            error = AppError(
                status=403,
                message=f"This process ({who}) is not allowed to use intact "
                "(server.allowed_uids / server.allowed_gids).",
                type="permission_error",
                code="peer_not_allowed",
            )
            app = access.app_for(peer, {})
            return _refuse(request, peer, app, RefusalReason.FORBIDDEN, error, close=True)
        if conn is not None and conn.over_limit:
            error = AppError(
                status=429,
                message=f"This process already has {gate.max_per_peer} connections open to "
                "intact (server.max_connections_per_peer); reuse them or close some.",
                type="rate_limit_error",
                code="too_many_connections",
                headers={"Retry-After": LIMIT_RETRY_AFTER},
            )
            app = access.app_for(peer, request.headers)
            return _refuse(request, peer, app, RefusalReason.CONNECTION_LIMIT, error, close=True)
        return await handler(request)
    finally:
        if conn is not None:
            gate.request_ended(conn)


def read_timeout_reporter(access: AppAccess) -> Callable[[AppConnection], None]:
    """What happens when a request's head is too slow: a log line and a refusal count
    (the gate then closes the connection)."""

    def report(conn: AppConnection) -> None:
        app = access.app_for(conn.peer, {})
        reason = RefusalReason.READ_TIMEOUT
        access.refuse(app, reason)
        log.warning("app_refused", reason=reason.value, app=app, **_peer_fields(conn.peer))

    return report


SHUTTING_DOWN = AppError(
    status=503,
    message="intact is shutting down; retry on the restarted daemon.",
    type="upstream_unavailable",
    code="daemon_shutdown",
    headers={"Retry-After": "1"},
)


async def _read_body(request: web.Request, peer: Peer | None, app: str) -> bytes | web.Response:
    """The request body, or the 408 refusal of a body slower than request_read_timeout."""
    read_timeout = request.app[RELAY_KEY].config.server.request_read_timeout
    try:
        async with asyncio.timeout(read_timeout):
            return await request.read()
    except TimeoutError:
        error = invalid_request(
            f"The request body did not arrive within {read_timeout:g} s "
            "(server.request_read_timeout).",
            code="request_timeout",
            status=408,
        )
        return _refuse(request, peer, app, RefusalReason.READ_TIMEOUT, error, close=True)


def _refuse_over_stream_limit(request: web.Request, peer: Peer | None, app: str) -> web.Response:
    error = AppError(
        status=429,
        message=f"The app {app!r} already has its maximum of concurrent streams "
        "([[apps]] max_concurrent_streams); retry later.",
        type="rate_limit_error",
        code="too_many_streams",
        headers={"Retry-After": LIMIT_RETRY_AFTER},
    )
    return _refuse(request, peer, app, RefusalReason.STREAM_LIMIT, error, close=False)


@contextlib.contextmanager
def _serving(request: web.Request, app: str) -> Iterator[None]:
    """Around relaying one request: who it is served as (telemetry, log lines) and the app
    headers the upstream client may forward (server.forward_headers)."""
    allow = request.app[RELAY_KEY].config.server.forward_headers
    app_token = REQUEST_APP.set(app)
    headers_token = APP_HEADERS.set(AppHeaders.pick(request.headers, allow))
    try:
        with structlog.contextvars.bound_contextvars(app=app):
            yield
    finally:
        APP_HEADERS.reset(headers_token)
        REQUEST_APP.reset(app_token)


class _Api:
    """How one relayed API reads its requests, writes its answers and shapes its errors."""

    __slots__ = ("error", "parse", "sink")

    def __init__(
        self,
        parse: Callable[[bytes, Any], AppRequest | AppError],
        sink: Callable[[web.Request, bool, AppLimits], AnySink],
        error: Callable[[AppError], web.Response] = error_response,
    ) -> None:
        self.parse = parse
        self.sink = sink
        self.error = error


AnySink = SSESink | CompletionSink


def _chat_sink(request: web.Request, stream: bool, limits: AppLimits) -> AnySink:
    return SSESink(request, limits) if stream else CompletionSink()


CHAT = _Api(parse_chat_request, _chat_sink)
MESSAGES = _Api(parse_messages_request, messages_sink, messages_error_response)
RESPONSES = _Api(parse_responses_request, responses_sink)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _relayed(request, CHAT)


async def messages(request: web.Request) -> web.StreamResponse:
    """Anthropic Messages; errors in Anthropic's shape, which its SDK reads."""
    return await _relayed(request, MESSAGES)


async def responses(request: web.Request) -> web.StreamResponse:
    return await _relayed(request, RESPONSES)


async def _relayed(request: web.Request, api: _Api) -> web.StreamResponse:
    """One request of a recovered API, from the socket through the relay and back."""
    relay = request.app[RELAY_KEY]
    access = request.app[ACCESS_KEY]
    peer = _peer(request)
    app = access.app_for(peer, request.headers)
    if relay.draining:
        return api.error(SHUTTING_DOWN)
    raw = await _read_body(request, peer, app)
    if isinstance(raw, web.Response):
        return raw
    parsed = api.parse(raw, request.headers)
    if isinstance(parsed, AppError):
        return api.error(parsed)
    if isinstance(parsed, ResponsesRequest) and parsed.background and not parsed.stream:
        # Background without a stream answers at once with a queued response the app polls:
        # nothing to recover, so it is relayed as it is.
        return await passthrough(request, raw)
    if not access.open_stream(app):
        return _refuse_over_stream_limit(request, peer, app)
    sink = api.sink(request, parsed.stream, AppLimits.from_config(relay.config.server))
    try:
        with _serving(request, app):
            await relay.serve(parsed, sink, request.headers)
    finally:
        access.close_stream(app)
    if sink.result is None:  # defensive: the relay always ends the response
        return error_response(
            AppError(status=500, message="no response produced", type="server_error")
        )
    return sink.result


async def passthrough(request: web.Request, body: bytes | None = None) -> web.StreamResponse:
    """Any other /v1/ route: relayed unchanged to the upstream that serves it."""
    if body is None:
        allowed = OWN_ROUTES.get(request.path)
        if allowed is not None:  # intact's own route, asked with another method
            raise web.HTTPMethodNotAllowed(request.method, allowed)
    relay = request.app[RELAY_KEY]
    access = request.app[ACCESS_KEY]
    peer = _peer(request)
    app = access.app_for(peer, request.headers)
    if relay.draining:
        return error_response(SHUTTING_DOWN)
    raw = body if body is not None else await _read_body(request, peer, app)
    if isinstance(raw, web.Response):
        return raw
    if not access.open_stream(app):
        return _refuse_over_stream_limit(request, peer, app)
    try:
        with _serving(request, app):
            return await relay_passthrough(relay, request, RelayedRequest.from_app(request, raw))
    finally:
        access.close_stream(app)


async def list_models(request: web.Request) -> web.Response:
    """Models from every upstream (in priority order), filtered by their `models` setting."""
    relay = request.app[RELAY_KEY]
    seen: dict[str, Any] = {}
    failures: list[str] = []
    # The app's forwarded headers (OpenAI-Organization, ...) go with the upstreams' lists.
    token = APP_HEADERS.set(AppHeaders.pick(request.headers, relay.config.server.forward_headers))
    try:
        results = await asyncio.gather(
            *(up.client.list_models(up.config.stream.models_timeout) for up in relay.upstreams),
            return_exceptions=True,
        )
    finally:
        APP_HEADERS.reset(token)
    for up, result in zip(relay.upstreams, results, strict=True):
        if isinstance(result, UpstreamFailure):
            failures.append(f"{up.name}: {result.message}")
            continue
        if isinstance(result, BaseException):
            raise result
        for model in result.get("data") or ():
            if not isinstance(model, dict) or not isinstance(model.get("id"), str):
                continue
            if up.config.models and model["id"] not in up.config.models:
                continue
            seen.setdefault(model["id"], model)
    if not seen and failures:
        return error_response(
            AppError(
                status=502,
                message="; ".join(failures),
                type="upstream_error",
                code="models_unavailable",
            )
        )
    body = {"object": "list", "data": list(seen.values())}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def build_app(
    relay: Relay,
    *,
    max_body_bytes: int,
    access: AppAccess | None = None,
    gate: ConnectionGate | None = None,
) -> web.Application:
    """The app-side application; ``gate`` must be the one the socket's server was built
    with (without it no connection has a known peer)."""
    server = relay.config.server
    app = web.Application(client_max_size=max_body_bytes, middlewares=[peer_access, openai_errors])
    app[RELAY_KEY] = relay
    app[ACCESS_KEY] = access or AppAccess(server, relay.config.apps)
    app[GATE_KEY] = gate or ConnectionGate(
        max_per_peer=server.max_connections_per_peer, read_timeout=server.request_read_timeout
    )
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/models", list_models)
    app.router.add_route("*", "/v1/{route:.+}", passthrough)  # after intact's own routes
    return app
