"""Daemon lifecycle: build the upstreams and the relay, open the listeners, drain on exit.

Everything with a lifetime is owned here: the upstream sessions (created once, closed
once), the Unix socket file (removed at exit if still ours), the admin listener, and the
in-flight streams, which get ``server.drain_timeout`` seconds after SIGTERM before they are
cancelled (and thereby told, in-band, that the stream ended early).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from intact.access import AppAccess
from intact.admin import build_admin_app
from intact.clock import SYSTEM_CLOCK, Clock
from intact.config import Config, ConfigError
from intact.connections import ConnectionGate
from intact.listener import build_app, read_timeout_reporter
from intact.relay.engine import Relay, UpstreamRuntime
from intact.telemetry.api import AppTelemetry, NoTelemetry, Telemetry
from intact.telemetry.runtime import MetricsHandler
from intact.unix_socket import (
    bind_unix_socket,
    prepare_default_socket_dir,
    remove_socket_file,
    socket_inode,
    world_writable_dir,
)

log = structlog.get_logger("intact.daemon")

# Seconds between looks at whether replaced upstreams are still used by requests in flight.
RETIRE_POLL = 1.0

# Pending connections the app socket queues before refusing; a burst of apps connecting at
# once must not see resets (the kernel caps it at net.core.somaxconn).
LISTEN_BACKLOG = 4096


# Settings a reload cannot change in a running daemon: they shape listeners already open.
RESTART_ONLY = (
    ("server", "socket"),
    ("server", "socket_mode"),
    ("server", "metrics_addr"),
    ("server", "max_connections_per_peer"),
    ("server", "request_read_timeout"),
    ("server", "idle_timeout"),
    ("telemetry",),
)

ConfigLoader = Callable[[], Config]


@dataclass
class RunningDaemon:
    """Handles to a started daemon (used by `intact run`, the demo and the tests)."""

    config: Config
    relay: Relay
    socket_path: str
    admin_url: str | None
    runners: list[web.AppRunner] = field(default_factory=list)
    access: AppAccess | None = None
    connections: ConnectionGate | None = None
    telemetry: Telemetry | None = None
    clock: Clock = SYSTEM_CLOCK
    environ: dict[str, str] | None = None
    retiring: set[asyncio.Task[None]] = field(default_factory=set)
    built: list[UpstreamRuntime] = field(default_factory=list)  # by reloads

    async def reload(self, load: ConfigLoader) -> bool:
        """Re-read the config and the API keys. New requests use the new config; streams in
        flight finish on the upstreams they started with. An invalid config is rejected and
        logged, and the old one kept. An upstream whose settings did not change keeps its
        breaker, budget and connection pool."""
        try:
            new = load()
        except ConfigError as exc:
            log.error("reload_rejected", error=str(exc))
            return False
        except (OSError, UnicodeDecodeError) as exc:  # unreadable file: same answer
            log.error("reload_rejected", error=f"{type(exc).__name__}: {exc}")
            return False
        old = self.config
        for path in RESTART_ONLY:
            if _get(old, path) != _get(new, path):
                log.warning("reload_needs_restart", setting=".".join(path))
        telemetry = self.telemetry or NoTelemetry()
        current = {u.name: u for u in self.relay.upstreams}
        upstreams: list[UpstreamRuntime] = []
        started: list[UpstreamRuntime] = []
        for cfg in new.upstreams:
            kept = current.get(cfg.name)
            if kept is not None and kept.config == cfg:
                kept.client.load_api_key()  # a rotated key (api_key_file) applies now
                upstreams.append(kept)
                continue
            runtime = UpstreamRuntime.build(cfg, telemetry, clock=self.clock, environ=self.environ)
            self.built.append(runtime)  # closed at exit whatever happens to it
            await runtime.client.start()
            started.append(runtime)
            upstreams.append(runtime)
        self.relay.reconfigure(new, upstreams)
        if self.access is not None:
            self.access.reconfigure(new.server, new.apps)
        self.config = new
        replaced = [u for u in current.values() if u not in upstreams]
        if replaced:
            task = asyncio.get_running_loop().create_task(self._retire(replaced))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)
        log.info(
            "reloaded",
            upstreams=[u.name for u in upstreams],
            new=[u.name for u in started],
            retired=[u.name for u in replaced],
        )
        return True

    async def _retire(self, old: list[UpstreamRuntime]) -> None:
        """Close replaced upstreams' sessions once no request in flight holds them (the
        daemon's exit closes them in any case)."""
        # No event says "the last request holding these ended": look now and then.
        for _ in itertools.count():
            if not any(id(u) in self.relay.upstreams_in_use() for u in old):
                break
            await asyncio.sleep(RETIRE_POLL)
        for u in old:
            await u.client.close()


def _get(config: Config, path: tuple[str, ...]) -> Any:
    value: Any = config
    for name in path:
        value = getattr(value, name)
    return value


def split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


@contextlib.asynccontextmanager
async def running_daemon(
    config: Config,
    *,
    telemetry: Telemetry | None = None,
    metrics_handler: MetricsHandler | None = None,
    clock: Clock = SYSTEM_CLOCK,
    environ: dict[str, str] | None = None,
    load_config: ConfigLoader | None = None,
) -> AsyncIterator[RunningDaemon]:
    """Start the daemon inside the current event loop; stop and clean up on exit.
    ``load_config`` enables reloads through the admin listener (POST /admin/reload)."""
    telemetry = telemetry or NoTelemetry()
    upstreams = [
        UpstreamRuntime.build(u, telemetry, clock=clock, environ=environ) for u in config.upstreams
    ]
    relay = Relay(config, upstreams, telemetry, clock=clock)
    telemetry.observe_breakers(lambda: {u.name: u.breaker.state for u in relay.upstreams})
    server = config.server
    access = AppAccess(
        server,
        config.apps,
        on_refused=telemetry.app_refused if isinstance(telemetry, AppTelemetry) else None,
    )
    gate = ConnectionGate(
        max_per_peer=server.max_connections_per_peer,
        read_timeout=server.request_read_timeout,
        on_read_timeout=read_timeout_reporter(access),
    )
    path = config.socket_path()
    if not server.socket:
        prepare_default_socket_dir(os.path.dirname(path))
    elif world_writable_dir(path):
        log.warning("socket_dir_world_writable", socket=path)
    sock = bind_unix_socket(path, int(server.socket_mode, 8), backlog=LISTEN_BACKLOG)
    inode = socket_inode(path)
    runners: list[web.AppRunner] = []
    app_server: asyncio.Server | None = None
    running = RunningDaemon(
        config=config,
        relay=relay,
        socket_path=path,
        admin_url=None,
        runners=runners,
        access=access,
        connections=gate,
        telemetry=telemetry,
        clock=clock,
        environ=environ,
    )
    try:
        for up in upstreams:
            await up.client.start()
            if up.config.api_key_env and not up.client.has_api_key:
                log.warning("api_key_missing", upstream=up.name, env=up.config.api_key_env)
        app = build_app(relay, max_body_bytes=server.max_body_bytes, access=access, gate=gate)
        runner = web.AppRunner(
            app,
            shutdown_timeout=1.0,  # the relay drains first (server.drain_timeout)
            handler_cancellation=True,
            access_log=None,
            # Also closes a connection that sends nothing at all (aiohttp arms it at open).
            keepalive_timeout=server.idle_timeout,
        )
        await runner.setup()
        runners.append(runner)
        assert runner.server is not None
        # Our own server rather than a SockSite: the gate sees each connection's peer.
        app_server = await asyncio.get_running_loop().create_server(
            gate.protocol_factory(runner.server), sock=sock, backlog=LISTEN_BACKLOG
        )
        admin_url = None
        if config.server.metrics_addr != "off":
            host, port = split_host_port(config.server.metrics_addr)
            admin = web.AppRunner(
                build_admin_app(
                    relay,
                    metrics_handler,
                    access=access,
                    connections=gate,
                    reload=(lambda: running.reload(load_config)) if load_config else None,
                ),
                access_log=None,
            )
            await admin.setup()
            runners.append(admin)
            site = web.TCPSite(admin, host, port)
            await site.start()
            bound = admin.addresses[0]
            admin_url = f"http://{host}:{bound[1]}"
        log.info(
            "intact_started", socket=path, admin=admin_url, upstreams=[u.name for u in upstreams]
        )
        running.admin_url = admin_url
        yield running
    finally:
        # Stop accepting, give in-flight streams drain_timeout, end the rest explicitly.
        if app_server is not None:
            app_server.close()
        await relay.drain(running.config.server.drain_timeout)
        for r in runners:
            await r.cleanup()
        for task in list(running.retiring):
            task.cancel()
        await asyncio.gather(*running.retiring, return_exceptions=True)
        for up in {id(u): u for u in [*upstreams, *running.built]}.values():
            await up.client.close()
        sock.close()
        remove_socket_file(path, inode)
        log.info("intact_stopped")


# Python's cyclic GC, tuned for a relay (measured in docs/benchmarks.md). With the default
# thresholds (700, 10, 10) it took about 30% of the daemon's CPU at 1,000 open streams and
# starved it at 10,000: every few seconds a full collection walked the ~200 objects of every
# open stream, finding almost nothing (the relay's hot path makes no reference cycles). A
# young generation of 50,000 objects is collected a few times a minute at 1,000 streams
# (a few ms each) and the middle one every 20 of those; a full collection still comes,
# every 10 middle ones and only once the old generation grew by a quarter (CPython's rule),
# so the rare cycles (a cancelled request's traceback) are freed, minutes later.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Once the daemon is up: everything built at start-up (modules, config, sessions) is
    moved out of the collector's sight for good, and the thresholds above apply."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve_until_signalled(
    config: Config,
    *,
    telemetry: Telemetry | None = None,
    metrics_handler: MetricsHandler | None = None,
    load_config: ConfigLoader | None = None,
) -> None:
    """`intact run`: serve until SIGTERM or SIGINT, then drain and exit; reload on SIGHUP
    (and on POST /admin/reload) when ``load_config`` is given."""
    stop = asyncio.Event()
    hup = asyncio.Event()  # SIGHUP arrived; handled once the daemon is up
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if load_config is not None:
        loop.add_signal_handler(signal.SIGHUP, hup.set)
    async with running_daemon(
        config, telemetry=telemetry, metrics_handler=metrics_handler, load_config=load_config
    ) as daemon:
        tune_gc()

        async def reload_on_hup() -> None:
            assert load_config is not None
            while True:
                await hup.wait()
                hup.clear()
                try:
                    await daemon.reload(load_config)
                except Exception:  # a bug must not end SIGHUP handling for good
                    log.exception("reload_failed")

        reloader = loop.create_task(reload_on_hup()) if load_config is not None else None
        try:
            await stop.wait()
        finally:
            if reloader is not None:
                reloader.cancel()
                await asyncio.gather(reloader, return_exceptions=True)
        log.info("intact_draining", drain_timeout=config.server.drain_timeout)
