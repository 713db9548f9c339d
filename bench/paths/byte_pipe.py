"""The floor for any Python relay: an aiohttp proxy on a Unix socket that parses nothing.

    python bench/paths/byte_pipe.py --socket PATH --upstream http://127.0.0.1:PORT

Each request is sent on to the upstream unchanged (same path, body and content type) over
one pooled client session, and every read of the upstream's body is written to the app as
it came: no SSE decoding, no JSON, no retries. An upstream connection broken mid-body
breaks the app's; an upstream that ends early ends the app's stream early too. Whatever
intact costs beyond this pipe is its own work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

import aiohttp
from aiohttp import web

_FORWARDED = ("Content-Type", "Authorization")


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    sessions: list[aiohttp.ClientSession] = []

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=0)
        sessions.append(aiohttp.ClientSession(connector=connector, auto_decompress=False))
        yield
        await sessions[0].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k in _FORWARDED if (v := request.headers.get(k)) is not None}
        async with sessions[0].request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as up:
            response = web.StreamResponse(status=up.status)
            response.content_type = up.content_type
            try:
                await response.prepare(request)
                async for data in up.content.iter_any():
                    await response.write(data)
                await response.write_eof()
            except ConnectionError:  # the app left: nothing to tell it
                pass
            except aiohttp.ClientPayloadError:  # the upstream broke: so does the app's stream
                if request.transport is not None:
                    request.transport.abort()
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


async def serve(socket_path: str, upstream: str) -> None:
    runner = web.AppRunner(build_app(upstream.rstrip("/")), access_log=None)
    await runner.setup()
    site = web.UnixSite(runner, socket_path, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        with contextlib.suppress(OSError):
            os.unlink(socket_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--upstream", required=True, help="scheme://host:port, no path")
    args = parser.parse_args()
    asyncio.run(serve(args.socket, args.upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
