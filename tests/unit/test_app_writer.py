"""The app writer over a real connection: writes made at once while the app keeps up, the
writer task for the rest, the bounds, and an app that stops reading or leaves.

A tiny aiohttp server on a Unix socket hands each request to the test as an AppWriter; the
test plays the relay (put, room, close) and a raw socket plays the app, so reading can be
stopped and resumed at will.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from intact.relay.app_writer import AppGone, AppTooSlow, AppWriter

Relay = Callable[[AppWriter], Awaitable[None]]


class Harness:
    def __init__(self, path: str) -> None:
        self.path = path
        self.relay: Relay | None = None
        self.outcome: asyncio.Future[BaseException | None] | None = None
        self.writer: AppWriter | None = None
        self.limit = 1 << 20
        self.timeout = 5.0
        self.linger = 0.5

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        writer = AppWriter(
            request,
            resp,
            max_buffer_bytes=self.limit,
            write_timeout=self.timeout,
            linger=self.linger,
        )
        self.writer = writer
        assert self.relay is not None and self.outcome is not None
        try:
            await self.relay(writer)
        except (AppGone, AppTooSlow, asyncio.CancelledError) as exc:
            # (aiohttp cancels the handler of a connection the app closed)
            self.outcome.set_result(exc)
            with contextlib.suppress(Exception):
                await writer.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            self.outcome.set_result(None)
        return resp

    async def request(self, relay: Relay) -> socket.socket:
        """Start a request served by ``relay``; the app's raw socket, request sent."""
        self.relay = relay
        self.outcome = asyncio.get_running_loop().create_future()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, self.path)
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return sock


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(str(tmp_path / "w.sock"))
    app = web.Application()
    app.router.add_get("/", h.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.UnixSite(runner, h.path).start()
    try:
        yield h
    finally:
        await runner.cleanup()


async def read_all(sock: socket.socket, within: float = 10.0, start: bytes = b"") -> bytes:
    """Everything until the connection ends or the chunked body's end marker arrives."""
    loop = asyncio.get_running_loop()
    out = bytearray(start)
    async with asyncio.timeout(within):
        while not out.endswith(b"\r\n0\r\n\r\n"):
            data = await loop.sock_recv(sock, 65536)
            if not data:
                break
            out += data
    return bytes(out)


def body_of(raw: bytes) -> bytes:
    """The chunked body, decoded."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    out = bytearray()
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


async def test_frames_of_one_read_go_out_in_one_write_without_a_task(harness: Harness) -> None:
    tasks_seen: list[bool] = []

    async def relay(w: AppWriter) -> None:
        for i in range(3):
            w.put(b"data: %d\n\n" % i)
            w.put(b"data: %d+\n\n" % i)
            await w.room()
            tasks_seen.append(w._task is not None)
            await asyncio.sleep(0.01)
        await w.close(b"data: [DONE]\n\n")

    sock = await harness.request(relay)
    raw = await read_all(sock)
    sock.close()
    assert harness.outcome is not None and await harness.outcome is None
    assert body_of(raw) == b"".join(b"data: %d\n\ndata: %d+\n\n" % (i, i) for i in range(3)) + (
        b"data: [DONE]\n\n"
    )
    assert tasks_seen == [False, False, False]  # written by room itself
    # One chunked write per read: the two frames of a read share one chunk header.
    assert raw.count(b"\r\ndata: 0\n\ndata: 0+\n\n\r\n") == 1


async def test_frames_put_without_room_are_written_on_the_next_turn(harness: Harness) -> None:
    got = asyncio.Event()

    async def relay(w: AppWriter) -> None:
        w.put(b": comment\n\n")
        await got.wait()  # no room(): the loop's next turn writes it
        await w.close()

    sock = await harness.request(relay)
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(5):
        while b": comment" not in data:
            data += await loop.sock_recv(sock, 4096)
    got.set()
    data = await read_all(sock, start=data)
    sock.close()
    assert b": comment\n\n" in body_of(data)


async def test_big_output_goes_through_the_writer_task_and_arrives_whole(
    harness: Harness,
) -> None:
    frames = [b"data: " + (b"%06d" % i) * 50 + b"\n\n" for i in range(2000)]  # ~600 KB

    async def relay(w: AppWriter) -> None:
        for i in range(0, len(frames), 7):
            for frame in frames[i : i + 7]:
                w.put(frame)
            await w.room()
        await w.close(b"data: [DONE]\n\n")

    sock = await harness.request(relay)
    raw = await read_all(sock)
    sock.close()
    assert harness.outcome is not None and await harness.outcome is None
    assert body_of(raw) == b"".join(frames) + b"data: [DONE]\n\n"


async def test_room_waits_while_the_app_does_not_read(harness: Harness) -> None:
    harness.limit = 16 * 1024
    harness.timeout = 0.5
    frame = b"data: " + b"x" * 1000 + b"\n\n"
    sent = 0

    async def relay(w: AppWriter) -> None:
        nonlocal sent
        while True:
            w.put(frame)
            sent += 1
            await w.room()

    sock = await harness.request(relay)
    assert harness.outcome is not None
    outcome = await asyncio.wait_for(harness.outcome, 10)
    sock.close()
    assert isinstance(outcome, AppTooSlow)
    # Bounded: the kernel's buffers, the transport's and ours, not the whole stream.
    assert sent * len(frame) < 4 * 1024 * 1024


async def test_an_app_that_left_is_app_gone(harness: Harness) -> None:
    started = asyncio.Event()

    async def relay(w: AppWriter) -> None:
        started.set()
        while True:
            w.put(b"data: x\n\n")
            await w.room()
            await asyncio.sleep(0.005)

    sock = await harness.request(relay)
    await started.wait()
    await asyncio.sleep(0.05)
    sock.close()
    assert harness.outcome is not None
    # AppGone from a write, or the handler cancelled by aiohttp first: never a hang.
    outcome = await asyncio.wait_for(harness.outcome, 10)
    assert isinstance(outcome, AppGone | asyncio.CancelledError)


async def test_abandon_sends_the_final_event_behind_what_was_written(harness: Harness) -> None:
    async def relay(w: AppWriter) -> None:
        w.put(b"data: 1\n\n")
        await w.room()
        w.put(b"data: dropped\n\n")
        await w.abandon(b"data: too slow\n\n")

    sock = await harness.request(relay)
    raw = await read_all(sock)
    sock.close()
    assert body_of(raw) == b"data: 1\n\ndata: too slow\n\n"
