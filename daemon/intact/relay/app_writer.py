"""The app side of a stream: a bounded buffer and the one task that writes it to the socket.

The relay never blocks on the app's socket. It appends frames to this buffer and, once per
upstream read, waits only while the buffer is over ``server.max_app_buffer_bytes``; a writer
task owned by this object drains the buffer into the socket, one write per batch. So:

- a slow app pauses the upstream read (TCP backpressure) instead of looking like upstream
  silence: the upstream's clocks only run while intact waits for the upstream;
- an app that makes no progress for ``server.app_write_timeout`` while the buffer is full
  (or while its end is pending) is ended with an explicit ``client_too_slow`` error event;
  the connection then lingers for ``server.slow_app_linger`` so the app can still read it;
- a write that fails because the app went away raises ``AppGone``, which is never an
  upstream failure.

Only the writer task awaits aiohttp's drain, and nothing cancels it while it does (a cancelled
drain leaves aiohttp's shared drain waiter cancelled, and every later write on the connection
raises CancelledError): a stuck write is abandoned, and aborting the transport when the linger
ends releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from aiohttp import web

_BATCH_BYTES = 64 * 1024  # frames joined into one socket write, at most about this much
_FLUSH_POLL = 0.05  # seconds between looks at a lingering connection's send buffer


class AppGone(Exception):
    """The app closed its connection: the request ends as cancelled, nobody's failure."""


class AppTooSlow(Exception):
    """The app stopped reading for longer than server.app_write_timeout."""


class AppWriter:
    """Owns the app connection's writes: a bounded queue and its writer task."""

    __slots__ = (
        "_abandoned",
        "_eof",
        "_eof_started",
        "_failure",
        "_frames",
        "_idle",
        "_limit",
        "_linger",
        "_loop",
        "_progress",
        "_progressed",
        "_queued",
        "_ready",
        "_request",
        "_response",
        "_seen_buffer",
        "_task",
        "_timeout",
    )

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        *,
        max_buffer_bytes: int,
        write_timeout: float,
        linger: float,
    ) -> None:
        self._request = request
        self._response = response
        self._limit = max_buffer_bytes
        self._timeout = write_timeout
        self._linger = linger
        self._loop = asyncio.get_running_loop()
        self._frames: deque[bytes] = deque()
        self._queued = 0  # bytes in _frames plus the batch being written
        self._ready = asyncio.Event()  # frames (or the end) are waiting for the writer
        self._progressed = asyncio.Event()  # the writer finished a write (set, then cleared)
        self._idle = asyncio.Event()  # nothing queued or in flight
        self._idle.set()
        self._progress = self._loop.time()
        self._seen_buffer = 0  # the transport's send-buffer size at the last look
        self._failure: BaseException | None = None
        self._eof = False  # the end of the response is requested
        self._eof_started = False  # the writer is writing the end: nothing may follow
        self._abandoned = False
        self._task = self._loop.create_task(self._run(), name="intact-app-writer")

    @property
    def buffered_bytes(self) -> int:
        return self._queued

    def put(self, frame: bytes) -> None:
        """Queue a frame; never blocks (call ``room`` once per upstream read)."""
        if self._failure is not None:
            raise AppGone() from self._failure
        if self._eof or self._abandoned:
            return
        self._wake()
        self._frames.append(frame)
        self._queued += len(frame)
        self._ready.set()

    def _wake(self) -> None:
        """Bytes are about to wait for the app: its clock starts now if it had nothing
        pending (time without anything to write is not the app's slowness)."""
        if self._idle.is_set():
            self._progress = self._loop.time()
            self._seen_buffer = self._buffer_size()
            self._idle.clear()

    async def room(self) -> None:
        """Wait while the buffer is over its bound; AppTooSlow if the app makes no progress
        for app_write_timeout, AppGone if it left."""
        while self._queued > self._limit:
            await self._await_progress(self._progressed)

    async def close(self, final: bytes = b"") -> None:
        """Send ``final`` after what is queued and end the response, within the bounds."""
        if self._eof or self._abandoned:
            return
        if final:
            self.put(final)
        self._wake()
        self._eof = True
        self._ready.set()
        while not self._idle.is_set():
            await self._await_progress(self._idle)

    async def _await_progress(self, event: asyncio.Event) -> None:
        if self._failure is not None:
            raise AppGone() from self._failure
        remaining = self._progress + self._timeout - self._loop.time()
        if remaining <= 0:
            if not self._app_read_meanwhile():
                raise AppTooSlow()
            remaining = self._timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), remaining)
        if self._failure is not None:
            raise AppGone() from self._failure

    def _buffer_size(self) -> int:
        transport = self._request.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def _app_read_meanwhile(self) -> bool:
        """Whether the app took bytes since the last look, although no write completed (a
        write completes only once the send buffer is nearly empty: a slow but steady app
        must not look stuck). Bytes leaving the transport's buffer are the app's reads."""
        size = self._buffer_size()
        moved = size != self._seen_buffer
        self._seen_buffer = size
        if moved:
            self._progress = self._loop.time()
        return moved

    def _next_batch(self) -> bytes:
        """Queued frames joined into one write, up to about _BATCH_BYTES."""
        frames = self._frames
        if len(frames) == 1:
            return frames.popleft()
        take: list[bytes] = []
        size = 0
        while frames and size < _BATCH_BYTES:
            frame = frames.popleft()
            take.append(frame)
            size += len(frame)
        return b"".join(take)

    def _given_up(self) -> bool:
        return self._abandoned

    async def _run(self) -> None:
        resp = self._response
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                if self._abandoned:
                    return
                if self._frames:
                    batch = self._next_batch()
                    await resp.write(batch)
                    if self._given_up():
                        return  # abandoned while this write waited for the app
                    self._queued -= len(batch)
                    self._progress = self._loop.time()
                    self._seen_buffer = self._buffer_size()
                    self._progressed.set()
                    self._progressed.clear()
                    if self._frames:
                        self._ready.set()
                        continue
                if self._eof:
                    self._eof_started = True
                    await resp.write_eof()
                    self._idle.set()
                    return
                self._idle.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # ConnectionResetError, ClientConnectionResetError, ...
            self._failure = exc
            self._idle.set()
            self._progressed.set()

    async def abandon(self, final: bytes, *, linger: float | None = None) -> None:
        """The app is too slow: drop what it has not taken, append ``final`` (an error
        event) behind what the transport already holds, and give the app
        server.slow_app_linger (or ``linger``) to read it before the connection is
        aborted."""
        if self._abandoned:
            return
        self._abandoned = True
        self._frames.clear()
        writer = self._task
        if not writer.done() and self._idle.is_set():
            writer.cancel()  # waiting for frames, not in a drain: safe to cancel
        self._ready.set()
        transport = self._request.transport
        if transport is None or transport.is_closing():
            return
        # The final frame is small: it joins the transport's buffer without a drain, after
        # the bytes already there, and the chunked body's end marker follows it. If the
        # writer already wrote the end, the app has a whole answer waiting: only linger.
        ending = self._loop.create_task(
            self._end(b"" if self._eof_started else final), name="intact-app-ending"
        )
        done, _ = await asyncio.wait({ending}, timeout=self._linger if linger is None else linger)
        if not done:
            transport.abort()  # wakes the blocked drains with a connection error
        await asyncio.gather(ending, writer, return_exceptions=True)

    async def _end(self, final: bytes) -> None:
        if final:
            await self._response.write(final)
            await self._response.write_eof()
            return
        # No event exists for "transport flushed": poll, within the linger.
        for _ in range(int(self._linger / _FLUSH_POLL) + 1):
            transport = self._request.transport
            if transport is None or not transport.get_write_buffer_size():
                return
            await asyncio.sleep(_FLUSH_POLL)

    async def cancel(self) -> None:
        """The request is over without an orderly end (the app left): stop the writer."""
        self._abandoned = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
