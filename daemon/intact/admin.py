"""The admin listener (loopback HTTP): /metrics, /healthz, /readyz and /debug/state.

Kept off the app socket so scraping and probing never compete with app traffic and can be
firewalled separately.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from aiohttp import web

from intact import __version__
from intact.access import AppAccess
from intact.connections import ConnectionGate
from intact.relay.engine import Relay
from intact.resilience.breaker import BreakerState
from intact.telemetry.runtime import MetricsHandler

ADMIN_RELAY: web.AppKey[Relay] = web.AppKey("admin_relay", Relay)
ADMIN_ACCESS: web.AppKey[AppAccess] = web.AppKey("admin_access", AppAccess)
ADMIN_CONNECTIONS: web.AppKey[ConnectionGate] = web.AppKey("admin_connections", ConnectionGate)
Reload = Callable[[], Awaitable[bool]]
ADMIN_RELOAD: web.AppKey[Reload] = web.AppKey("admin_reload")


def public_url(url: str) -> str:
    """``url`` without what may be a credential: user info, and query parameter values."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, "redacted") for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def debug_state(
    relay: Relay,
    access: AppAccess | None = None,
    connections: ConnectionGate | None = None,
) -> dict[str, Any]:
    """Breakers, budgets and stream slots per upstream, streams per app, app connections;
    no secrets, no request content."""
    state: dict[str, Any] = {
        "version": __version__,
        "active_requests": relay.active,
        "upstreams": [
            {
                "name": up.name,
                "base_url": public_url(up.config.base_url),
                "provider": up.config.provider,
                "models": list(up.config.models),
                "resume": up.config.resume,
                "api_key_configured": up.client.has_api_key,
                "breaker": up.breaker.snapshot(),
                "retry_budget": up.budget.snapshot(),
                "streams": up.bulkhead.snapshot(),
            }
            for up in relay.upstreams
        ],
    }
    if access is not None:
        state["apps"] = access.snapshot()
    if connections is not None:
        state["connections"] = connections.snapshot()
    return state


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    relay = request.app[ADMIN_RELAY]
    usable = [u.name for u in relay.upstreams if u.breaker.state is not BreakerState.OPEN]
    status = 200 if usable else 503
    return web.json_response({"ready": bool(usable), "usable_upstreams": usable}, status=status)


async def _debug_state(request: web.Request) -> web.Response:
    state = debug_state(
        request.app[ADMIN_RELAY],
        request.app.get(ADMIN_ACCESS),
        request.app.get(ADMIN_CONNECTIONS),
    )
    body = orjson.dumps(state, option=orjson.OPT_INDENT_2)
    return web.Response(body=body, content_type="application/json")


def build_admin_app(
    relay: Relay,
    metrics: MetricsHandler | None,
    *,
    access: AppAccess | None = None,
    connections: ConnectionGate | None = None,
    reload: Reload | None = None,
) -> web.Application:
    app = web.Application()
    app[ADMIN_RELAY] = relay
    if access is not None:
        app[ADMIN_ACCESS] = access
    if connections is not None:
        app[ADMIN_CONNECTIONS] = connections
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/debug/state", _debug_state)
    if metrics is not None:
        app.router.add_get("/metrics", metrics)
    if reload is not None:
        app[ADMIN_RELOAD] = reload
        app.router.add_post("/admin/reload", _reload)
    return app


async def _reload(request: web.Request) -> web.Response:
    """Same as SIGHUP; 200 when the new config was applied, 400 when it was rejected."""
    ok = await request.app[ADMIN_RELOAD]()
    body = {"reloaded": ok} if ok else {"reloaded": False, "error": "see the daemon's log"}
    return web.json_response(body, status=200 if ok else 400)
