"""Every app connection on the socket: its peer, the per-peer cap and the request-read clock.

aiohttp's request handler sits behind a thin protocol that sees each connection open and
close and each read. On open it records the peer's credentials (``SO_PEERCRED``) and counts
the connection against its peer (``server.max_connections_per_peer``; one over the cap is
marked, and its first request is answered 429). When the first byte of a request arrives,
a clock starts: if the request's head is not complete within ``server.request_read_timeout``
the connection is closed, so a client that trickles its headers cannot hold a connection.
Idle connections (nothing sent) are aiohttp's keep-alive timeout's (``server.idle_timeout``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from intact.peer import UNKNOWN_PEER_KEY, Peer, peer_credentials


class AppConnection:
    """One connection's peer and state, as the listener sees it."""

    __slots__ = ("_clock", "closing", "in_request", "key", "over_limit", "peer")

    def __init__(self, peer: Peer | None, over_limit: bool) -> None:
        self.peer = peer
        self.key = peer.key if peer is not None else UNKNOWN_PEER_KEY
        self.over_limit = over_limit  # opened past the peer's cap: refuse, then close
        self.in_request = False  # a request's head is complete and being handled
        self.closing = False  # refused: answered, and closed once the answer is out
        self._clock: asyncio.TimerHandle | None = None


OnReadTimeout = Callable[[AppConnection], None]


class ConnectionGate:
    """Tracks open app connections per peer and bounds how long a request may take to
    arrive; ``protocol_factory`` wraps aiohttp's handler for ``loop.create_server``."""

    def __init__(
        self,
        *,
        max_per_peer: int,
        read_timeout: float,
        on_read_timeout: OnReadTimeout | None = None,
    ) -> None:
        self.max_per_peer = max_per_peer
        self.read_timeout = read_timeout
        self._on_read_timeout = on_read_timeout
        self._open: dict[asyncio.BaseTransport, AppConnection] = {}
        self._per_peer: Counter[str] = Counter()
        self._over_limit = 0
        self._read_timeouts = 0

    def protocol_factory(
        self, make_handler: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        return lambda: _GatedProtocol(self, make_handler())

    def connection(self, transport: asyncio.BaseTransport | None) -> AppConnection | None:
        """The connection a request arrived on (None once it is gone)."""
        return self._open.get(transport) if transport is not None else None

    def request_started(self, conn: AppConnection) -> None:
        conn.in_request = True
        self._stop_clock(conn)

    def request_ended(self, conn: AppConnection) -> None:
        conn.in_request = False

    def refused(self, conn: AppConnection) -> None:
        """The connection was answered with an error and will be closed: what it still
        sends (the rest of a body aiohttp reads and drops) is bounded by the read clock
        but is not another slow request."""
        conn.closing = True

    def snapshot(self) -> dict[str, object]:
        """Plain data for /debug/state (counts only: no peer list, it is unbounded)."""
        return {
            "open": len(self._open),
            "peers": len(self._per_peer),
            "busiest_peer_connections": max(self._per_peer.values(), default=0),
            "max_connections_per_peer": self.max_per_peer,
            "refused_over_limit": self._over_limit,
            "read_timeouts": self._read_timeouts,
        }

    # --- called by _GatedProtocol ---------------------------------------------------------

    def _opened(self, transport: asyncio.BaseTransport) -> AppConnection:
        peer = peer_credentials(transport.get_extra_info("socket"))
        conn = AppConnection(peer, over_limit=False)
        if self._per_peer[conn.key] >= self.max_per_peer:
            conn.over_limit = True
            self._over_limit += 1
        else:
            self._per_peer[conn.key] += 1
        self._open[transport] = conn
        return conn

    def _closed(self, transport: asyncio.BaseTransport) -> None:
        conn = self._open.pop(transport, None)
        if conn is None:
            return
        self._stop_clock(conn)
        if not conn.over_limit:
            self._per_peer[conn.key] -= 1
            if self._per_peer[conn.key] <= 0:
                del self._per_peer[conn.key]

    def _bytes_arrived(self, conn: AppConnection, transport: asyncio.BaseTransport) -> None:
        if conn.in_request or conn._clock is not None:
            return  # the body of the request being handled, or the clock already runs
        loop = asyncio.get_running_loop()
        conn._clock = loop.call_later(self.read_timeout, self._read_timed_out, conn, transport)

    def _read_timed_out(self, conn: AppConnection, transport: asyncio.BaseTransport) -> None:
        conn._clock = None
        if conn.in_request or transport.is_closing():
            return
        if not conn.closing:
            self._read_timeouts += 1
            if self._on_read_timeout is not None:
                self._on_read_timeout(conn)
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()  # nothing to flush: the app has not sent a whole request
        else:
            transport.close()

    @staticmethod
    def _stop_clock(conn: AppConnection) -> None:
        if conn._clock is not None:
            conn._clock.cancel()
            conn._clock = None


class _GatedProtocol(asyncio.Protocol):
    """Forwards every protocol call to aiohttp's handler, telling the gate what it sees."""

    __slots__ = ("_conn", "_gate", "_inner", "_transport")

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self._gate = gate
        self._inner = inner
        self._conn: AppConnection | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._conn = self._gate._opened(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._gate._closed(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        conn, transport = self._conn, self._transport
        if data and conn is not None and transport is not None:
            self._gate._bytes_arrived(conn, transport)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


__all__ = ["AppConnection", "ConnectionGate", "OnReadTimeout"]
