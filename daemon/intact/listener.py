"""The app side: the OpenAI-compatible HTTP API that apps reach over the Unix socket.

Routes: ``POST /v1/chat/completions`` (stream and non-stream) and ``GET /v1/models``. Bad
input is refused here, before it can cost an upstream call, with the OpenAI error shape the
SDKs understand; so are unknown routes (404), wrong methods (405) and oversized bodies (413).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from intact.errors import AppError, invalid_request, not_found
from intact.relay.engine import Relay
from intact.relay.request import parse_chat_request
from intact.relay.sinks import AppLimits, CompletionSink, SSESink, json_response
from intact.resilience.classify import UpstreamFailure

log = structlog.get_logger("intact.listener")

RELAY_KEY: web.AppKey[Relay] = web.AppKey("relay", Relay)


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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    relay = request.app[RELAY_KEY]
    if relay.draining:
        return error_response(
            AppError(
                status=503,
                message="intact is shutting down; retry on the restarted daemon.",
                type="upstream_unavailable",
                code="daemon_shutdown",
                headers={"Retry-After": "1"},
            )
        )
    raw = await request.read()
    parsed = parse_chat_request(raw, request.headers)
    if isinstance(parsed, AppError):
        return error_response(parsed)
    sink: SSESink | CompletionSink = (
        SSESink(request, AppLimits.from_config(relay.config.server))
        if parsed.stream
        else CompletionSink()
    )
    await relay.serve(parsed, sink, request.headers)
    if sink.result is None:  # defensive: the relay always ends the response
        return error_response(
            AppError(status=500, message="no response produced", type="server_error")
        )
    return sink.result


async def list_models(request: web.Request) -> web.Response:
    """Models from every upstream (in priority order), filtered by their `models` setting."""
    relay = request.app[RELAY_KEY]
    seen: dict[str, Any] = {}
    failures: list[str] = []
    results = await asyncio.gather(
        *(up.client.list_models(up.config.stream.models_timeout) for up in relay.upstreams),
        return_exceptions=True,
    )
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


def build_app(relay: Relay, *, max_body_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, middlewares=[openai_errors])
    app[RELAY_KEY] = relay
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    return app
