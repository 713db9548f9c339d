"""The app side of a stream: a bounded buffer, written to the socket without blocking the relay.

The relay never blocks on the app's socket. It appends frames to this buffer and, once per
upstream read, waits only while the buffer is over ``server.max_app_buffer_bytes``. So:

- a slow app pauses the upstream read (TCP backpressure) instead of looking like upstream
  silence: the upstream's clocks only run while intact waits for the upstream;
- an app that makes no progress for ``server.app_write_timeout`` while the buffer is full
  (or while its end is pending) is ended with an explicit ``client_too_slow`` error event;
  the connection then lingers for ``server.slow_app_linger`` so the app can still read it;
- a write that fails because the app went away raises ``AppGone``, which is never an
  upstream failure.

How the buffer reaches the socket: one write per upstream read, the read's frames joined.
While the app keeps up, that write is made right away (by ``room``, which the relay calls
once per read; frames queued without a ``room`` after them are written a few ms later):
aiohttp's write does not wait for the app unless it drains, which it does once every 64 KiB
written, so a write that will not drain is handed to the transport at once, with no task
switch. A write that will drain, and the end of the response, are made by a writer task,
started when one is needed and gone when the buffer is empty (an open stream costs no task
while it waits for its upstream).

Only the writer task awaits aiohttp's drain, and nothing cancels it while it does (a cancelled
drain leaves aiohttp's shared drain waiter cancelled, and every later write on the connection
raises CancelledError): a stuck write is abandoned, and aborting the transport when the linger
ends releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

from aiohttp import web

_BATCH_BYTES = 64 * 1024  # frames joined into one socket write, at most about this much
_DRAIN_EVERY = 0x10000  # aiohttp's StreamWriter.write drains once this much was written
_CHUNK_FRAMING = 16  # what chunked transfer encoding adds to a write, at most
_FLUSH_POLL = 0.05  # seconds between looks at a lingering connection's send buffer
_KICK_DELAY = 0.005  # at most this late, frames queued without a ``room`` after them


class AppGone(Exception):
    """The app closed its connection: the request ends as cancelled, nobody's failure."""


class AppTooSlow(Exception):
    """The app stopped reading for longer than server.app_write_timeout."""


class _Kicks:
    """Writers with frames queued and maybe no ``room`` to write them: a timer writes what
    is still queued a few ms later. One timer per loop, armed at most once per delay (not a
    callback per write: one scheduled for the loop's next turn would make the loop spin
    once more, with another epoll call, for every upstream read)."""

    __slots__ = ("armed", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[AppWriter] = []
        self.armed = False

    def arm(self) -> None:
        self.armed = True
        self.loop.call_later(_KICK_DELAY, self.run)

    def run(self) -> None:
        self.armed = False
        pending, self.pending = self.pending, []
        for writer in pending:
            writer._kick()


_KICKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Kicks] = weakref.WeakKeyDictionary()


def _kicks(loop: asyncio.AbstractEventLoop) -> _Kicks:
    kicks = _KICKS.get(loop)
    if kicks is None:
        kicks = _KICKS[loop] = _Kicks(loop)
    return kicks


class AppWriter:
    """Owns the app connection's writes: a bounded queue, written without blocking."""

    __slots__ = (
        "_abandoned",
        "_clock_due",
        "_eof",
        "_eof_started",
        "_failure",
        "_frames",
        "_idle",
        "_kick_due",
        "_kicks",
        "_limit",
        "_linger",
        "_loop",
        "_payload",
        "_progress",
        "_queued",
        "_request",
        "_response",
        "_seen_buffer",
        "_task",
        "_timeout",
        "_transport",
        "_waiter",
        "_writing",
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
        self._transport = request.transport  # looked up once (a closed one holds no bytes)
        self._response = response
        # aiohttp's payload writer, for writes made at once (None: the writer task makes all).
        self._payload: Any = getattr(response, "_payload_writer", None)
        self._limit = max_buffer_bytes
        self._timeout = write_timeout
        self._linger = linger
        self._loop = asyncio.get_running_loop()
        self._kicks = _kicks(self._loop)
        # Plain lists and a future made only while someone waits: an open stream holds a
        # few hundred bytes here, not a deque and three Events (~3 KB).
        self._frames: list[bytes] = []
        self._queued = 0  # bytes in _frames plus the batch being written
        self._idle = True  # nothing queued or in flight
        self._clock_due = False  # bytes were queued while idle: the app's clock may start
        self._writing = False  # the writer task is in a write (or writing the end)
        self._kick_due = False  # in _Kicks' list: its timer writes what no room() wrote
        self._waiter: asyncio.Future[None] | None = None  # resolved by any progress
        self._task: asyncio.Task[None] | None = None  # the writer task, while one is needed
        self._progress = self._loop.time()
        self._seen_buffer = 0  # the transport's send-buffer size at the last look
        self._failure: BaseException | None = None
        self._eof = False  # the end of the response is requested
        self._eof_started = False  # the writer is writing the end: nothing may follow
        self._abandoned = False

    @property
    def buffered_bytes(self) -> int:
        return self._queued

    def put(self, frame: bytes) -> None:
        """Queue a frame; never blocks (call ``room`` once per upstream read)."""
        if self._failure is not None:
            raise AppGone() from self._failure
        if self._eof or self._abandoned:
            return
        if self._idle:
            self._idle = False
            self._clock_due = True
        self._frames.append(frame)
        self._queued += len(frame)
        if not self._kick_due:
            # Written by the ``room`` that follows (the relay's, once per read), else by
            # _kick a few ms later (a frame queued outside the relay's read loop).
            self._kick_due = True
            kicks = self._kicks
            kicks.pending.append(self)
            if not kicks.armed:
                kicks.arm()

    def _wake(self) -> None:
        """Bytes are about to wait for the app: see _start_clock."""
        if self._idle:
            self._idle = False
            self._clock_due = True
        self._start_clock()

    def _start_clock(self) -> None:
        """The app's clock starts when bytes it had not pending begin to wait for it (time
        without anything to write is not the app's slowness). Bytes written at once never
        wait, so this runs only before the writer task or a wait for progress."""
        if self._clock_due:
            self._clock_due = False
            self._progress = self._loop.time()
            self._seen_buffer = self._buffer_size()

    def _kick(self) -> None:
        self._kick_due = False
        if self._frames:
            self._flush()

    def _start_writer(self) -> None:
        if self._task is None:  # (a running writer takes what is queued meanwhile)
            self._start_clock()
            self._task = self._loop.create_task(self._run(), name="intact-app-writer")

    def _flush(self) -> None:
        """Write what is queued now if the write cannot wait for the app (see the module
        docstring); else leave it to the writer task."""
        frames = self._frames
        if (
            not frames
            or self._eof
            or self._abandoned
            or self._failure is not None
            or self._task is not None  # it takes what is queued when its write returns
        ):
            return
        payload = self._payload
        if len(frames) == 1:
            batch = frames[0]
            self._frames = []
        else:
            batch = self._next_batch()
        if payload is None or payload.buffer_size + len(batch) + _CHUNK_FRAMING > _DRAIN_EVERY:
            self._frames.insert(0, batch)  # this write drains: the writer task's job
            self._start_writer()
            return
        coro = payload.write(batch, drain=False)
        try:
            coro.send(None)
        except StopIteration:
            pass  # written: without a drain, aiohttp's write never waits
        except Exception as exc:  # ConnectionResetError, ClientConnectionResetError, ...
            self._failure = exc
            self._set_idle()
            return
        else:  # cannot happen without compression, which these responses do not use
            coro.close()
            self._payload = None
            self._frames.insert(0, batch)
            self._start_writer()
            return
        self._queued -= len(batch)
        self._progress = self._loop.time()
        self._seen_buffer = self._buffer_size()
        self._clock_due = False
        if self._frames:
            self._start_writer()  # more than a batch was queued: the task writes the rest
        else:
            self._idle = True
            if self._waiter is not None:
                self._notify()

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _set_idle(self) -> None:
        self._idle = True
        self._notify()

    async def room(self) -> None:
        """Wait while the buffer is over its bound; AppTooSlow if the app makes no progress
        for app_write_timeout, AppGone if it left."""
        if self.must_wait():
            while self._queued > self._limit:
                await self._await_progress()

    def must_wait(self) -> bool:
        """``room`` without a coroutine while nothing needs waiting for: writes what is
        queued if it can, raises AppGone if the app left, and says whether the caller must
        still await ``room`` (the buffer is over its bound)."""
        if self._frames:
            self._flush()
        if self._failure is not None:
            raise AppGone() from self._failure
        return self._queued > self._limit

    async def close(self, final: bytes = b"") -> None:
        """Send ``final`` after what is queued and end the response, within the bounds."""
        if self._eof or self._abandoned:
            return
        if final:
            self.put(final)
        elif self._failure is not None:
            raise AppGone() from self._failure
        self._wake()
        self._eof = True
        self._start_writer()
        while not self._idle:
            await self._await_progress()

    async def _await_progress(self) -> None:
        """Wait for the writer's next step (a write done, the end written, a failure)."""
        if self._failure is not None:
            raise AppGone() from self._failure
        self._start_clock()
        remaining = self._progress + self._timeout - self._loop.time()
        if remaining <= 0:
            if not self._app_read_meanwhile():
                raise AppTooSlow()
            remaining = self._timeout
        waiter = self._waiter
        if waiter is None or waiter.done():  # (a timed-out wait cancels its future)
            waiter = self._waiter = self._loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, remaining)
        if self._failure is not None:
            raise AppGone() from self._failure

    def _buffer_size(self) -> int:
        transport = self._transport
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
            self._frames = []
            return frames[0]
        size = 0
        n = 0
        for frame in frames:
            size += len(frame)
            n += 1
            if size >= _BATCH_BYTES:
                break
        if n == len(frames):
            self._frames = []
            return b"".join(frames)
        take = frames[:n]
        del frames[:n]
        return b"".join(take)

    def _given_up(self) -> bool:
        return self._abandoned

    async def _run(self) -> None:
        """The writer task: what is queued, then the end if requested; it returns when
        nothing is left to write."""
        resp = self._response
        try:
            while self._frames:
                batch = self._next_batch()
                self._writing = True
                await resp.write(batch)
                self._writing = False
                if self._given_up():
                    return  # abandoned while this write waited for the app
                self._queued -= len(batch)
                self._progress = self._loop.time()
                self._seen_buffer = self._buffer_size()
                self._notify()
            if self._abandoned:
                return
            if self._eof:
                self._eof_started = True
                self._writing = True
                await resp.write_eof()
            self._task = None
            self._set_idle()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # ConnectionResetError, ClientConnectionResetError, ...
            self._failure = exc
            self._task = None
            self._set_idle()

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
        if writer is not None and not writer.done() and not self._writing:
            writer.cancel()  # started but not in a write (so not in a drain): safe to cancel
        self._notify()
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
        await asyncio.gather(ending, *([writer] if writer else []), return_exceptions=True)

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
        writer = self._task
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
