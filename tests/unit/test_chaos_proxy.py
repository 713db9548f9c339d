"""The chaos proxy: faults by name in front of any OpenAI-compatible server, bytes otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import pytest
from aiohttp import web

from intact.chaos import ChaosProxy, ChaosSettings, FaultOdds, FaultPlanner
from intact.chaos.frames import EventFramer, EventRole, event_role
from intact.simulator import expected_answer
from intact.simulator.faults import ALL_FAULT_KINDS
from support import MESSAGES, anthropic_sdk, daemon_for, fast_sim, sdk, stream_chat

EXPECTED = expected_answer(MESSAGES)
MID_STREAM = ["reset", "stall", "error_event", "truncate"]
BEFORE_RESPONSE = ["http_429", "http_500", "http_503", "connect_drop"]
CHAT = {"model": "sim-1", "messages": MESSAGES}


def origin(base_url: str) -> str:
    return base_url.removesuffix("/v1")


@contextlib.asynccontextmanager
async def proxy_for(upstream: str, **over: Any) -> AsyncIterator[ChaosProxy]:
    async with ChaosProxy(ChaosSettings(upstream=upstream, **over)) as proxy:
        yield proxy


def client(proxy: ChaosProxy, timeout: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=proxy.url, timeout=timeout)


def content_chunks(data: bytes) -> list[dict[str, Any]]:
    """The chunks of a raw event stream that the proxy counts (choices, no finish)."""
    events = [e for e in data.split(b"\n\n") if e.startswith(b"data: {")]
    chunks = [orjson.loads(e[6:]) for e in events]
    return [c for c in chunks if c.get("choices") and not c["choices"][0].get("finish_reason")]


async def stream_until_broken(
    proxy: ChaosProxy, fault: str, read_timeout: float = 5.0
) -> tuple[bytes, BaseException | None]:
    """Raw bytes of a streamed request through the proxy, and how it ended."""
    received = b""
    async with client(proxy, timeout=read_timeout) as http:
        try:
            async with http.stream(
                "POST",
                "/v1/chat/completions",
                json={**CHAT, "stream": True},
                headers={"x-chaos-fault": fault},
            ) as resp:
                async for chunk in resp.aiter_raw():
                    received += chunk
        except httpx.HTTPError as exc:
            return received, exc
    return received, None


# --- mid-stream faults, in front of the simulator -----------------------------------------------


async def test_reset_closes_the_connection_after_exactly_k_chunks() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        data, error = await stream_until_broken(proxy, "reset@5")
    assert isinstance(error, httpx.RemoteProtocolError | httpx.ReadError)
    assert len(content_chunks(data)) == 5
    assert b"[DONE]" not in data
    assert proxy.stats.faults["reset"] == 1


async def test_stall_keeps_the_connection_open_and_silent() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        data, error = await stream_until_broken(proxy, "stall@7", read_timeout=0.5)
        for _ in range(100):  # the client gave up: its handler ends as soon as that is seen
            if proxy.stats.active == 0:
                break
            await asyncio.sleep(0.01)
        assert proxy.stats.active == 0
    assert isinstance(error, httpx.ReadTimeout)
    assert len(content_chunks(data)) == 7
    assert proxy.stats.faults["stall"] == 1
    assert proxy.stats.client_disconnects == 1


async def test_error_event_ends_the_stream_with_an_openai_error() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        data, error = await stream_until_broken(proxy, "error_event@3")
    assert error is None
    assert len(content_chunks(data)) == 3
    last = data.strip().split(b"\n\n")[-1]
    assert orjson.loads(last[6:])["error"]["type"] == "server_error"
    assert b"[DONE]" not in data


async def test_truncate_ends_cleanly_without_finish_reason_or_done() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        data, error = await stream_until_broken(proxy, "truncate@9")
    assert error is None
    assert len(content_chunks(data)) == 9
    assert b'"finish_reason":"stop"' not in data and b"[DONE]" not in data


async def test_a_position_past_the_end_strikes_before_the_finish_chunk() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        data, _ = await stream_until_broken(proxy, "truncate@100000")
        last, _ = await stream_until_broken(proxy, "truncate@last")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in content_chunks(data))
    assert text == EXPECTED.content
    assert b'"finish_reason":"stop"' not in data
    assert len(content_chunks(last)) == len(content_chunks(data))


async def test_done_position_strikes_after_the_finish_chunk() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        data, _ = await stream_until_broken(proxy, "truncate@done")
    assert b'"finish_reason":"stop"' in data and b"[DONE]" not in data


@pytest.mark.parametrize("kind", BEFORE_RESPONSE)
async def test_before_response_faults_never_reach_the_upstream(kind: str) -> None:
    async with (
        fast_sim() as sim,
        proxy_for(origin(sim.base_url), retry_after=2.5) as proxy,
        client(proxy) as http,
    ):
        if kind == "connect_drop":
            with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
                await http.post("/v1/chat/completions", json=CHAT, headers={"x-chaos-fault": kind})
        else:
            resp = await http.post(
                "/v1/chat/completions", json=CHAT, headers={"x-chaos-fault": kind}
            )
            assert resp.status_code == int(kind.removeprefix("http_"))
            error = resp.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            if kind == "http_429":
                assert resp.headers["Retry-After"] == "3"
                assert resp.headers["retry-after-ms"] == "2500"
                assert error["code"] == "rate_limit_exceeded"
        assert sim.stats.chat_requests == 0
        assert proxy.stats.faults[kind] == 1


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("reset", "connection"),
        ("stall", "timeout"),
        ("error_event", "500"),
        ("truncate", "short body"),
    ],
)
async def test_non_streamed_answers_break_the_way_their_clients_see_it(
    kind: str, expect: str
) -> None:
    async with (
        fast_sim() as sim,
        proxy_for(origin(sim.base_url)) as proxy,
        client(proxy, timeout=0.5) as http,
    ):
        headers = {"x-chaos-fault": f"{kind}@3"}
        if expect == "500":
            resp = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert resp.status_code == 500 and resp.json()["error"]["type"] == "server_error"
        else:
            broken = (httpx.RemoteProtocolError, httpx.ReadError)
            with pytest.raises(httpx.ReadTimeout if expect == "timeout" else broken):
                await http.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert proxy.stats.faults[kind] == 1


# --- through intact: every kind is recovered ---------------------------------------------------


@pytest.mark.parametrize("spec", [f"{k}@{p}" for k in MID_STREAM for p in (0, 4, 40)])
async def test_intact_recovers_every_mid_stream_fault_of_the_proxy(
    tmp_path: Path, spec: str
) -> None:
    async with (
        fast_sim() as sim,
        proxy_for(origin(sim.base_url), retry_after=0.05) as proxy,
        daemon_for(tmp_path, [], upstreams=[{"name": "p", "base_url": proxy.url + "/v1"}]) as d,
    ):
        proxy.schedule_faults([spec])
        seen = await stream_chat(sdk(d.socket_path))
    assert seen.error is None and seen.text == EXPECTED.content
    assert seen.finish_reason == EXPECTED.finish_reason
    assert sum(proxy.stats.faults.values()) == 1


@pytest.mark.parametrize("kind", BEFORE_RESPONSE)
async def test_intact_retries_every_before_response_fault_of_the_proxy(
    tmp_path: Path, kind: str
) -> None:
    async with (
        fast_sim() as sim,
        proxy_for(origin(sim.base_url), retry_after=0.05) as proxy,
        daemon_for(tmp_path, [], upstreams=[{"name": "p", "base_url": proxy.url + "/v1"}]) as d,
    ):
        proxy.schedule_faults([kind])
        resp = await sdk(d.socket_path).chat.completions.create(model="sim-1", messages=MESSAGES)
    assert resp.choices[0].message.content == EXPECTED.content
    assert proxy.stats.faults[kind] == 1


# --- pass-through ------------------------------------------------------------------------------


class EchoUpstream:
    """An upstream that records what reached it and answers with fixed, oddly framed bytes."""

    STREAM: ClassVar[list[bytes]] = [
        b": keep-alive comment\r\n\r\n",
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}\r\n',
        b"\r\n",
        b'data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    WHOLE = b'{"id":"x","object":"chat.completion","choices":[]}'

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> EchoUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        if request.path.endswith("/chat/completions") and b'"stream": true' in body:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for piece in self.STREAM:
                await resp.write(piece)
                await asyncio.sleep(0.01)
            await resp.write_eof()
            return resp
        if request.path.endswith("/chat/completions"):
            return web.Response(body=self.WHOLE, content_type="application/json")
        return web.Response(
            body=b"echo " + body, status=201, headers={"X-Upstream": "yes"}, content_type="text/x"
        )


async def test_streams_pass_through_byte_for_byte_with_headers_and_auth() -> None:
    async with (
        EchoUpstream() as up,
        proxy_for(up.url) as proxy,
        client(proxy) as http,
        http.stream(
            "POST",
            "/v1/chat/completions?api-version=1",
            content=b'{"stream": true}',
            headers={"Authorization": "Bearer sk-test", "x-chaos-fault": "none"},
        ) as resp,
    ):
        pieces = [piece async for piece in resp.aiter_raw()]
    assert b"".join(pieces) == b"".join(EchoUpstream.STREAM)
    assert len(pieces) > 1  # forwarded as it arrived, not gathered
    sent = up.seen[0]
    assert sent["path_qs"] == "/v1/chat/completions?api-version=1"
    assert sent["headers"]["Authorization"] == "Bearer sk-test"
    assert "x-chaos-fault" not in {k.lower() for k in sent["headers"]}
    assert sent["body"] == b'{"stream": true}'
    assert proxy.stats.decisions == 1 and sum(proxy.stats.faults.values()) == 0


async def test_faulted_streams_keep_the_bytes_before_the_fault() -> None:
    async with EchoUpstream() as up, proxy_for(up.url) as proxy, client(proxy) as http:
        resp = await http.post(
            "/v1/chat/completions",
            content=b'{"stream": true}',
            headers={"x-chaos-fault": "truncate@2"},
        )
    hel = EchoUpstream.STREAM[3].split(b"\n\n")[0] + b"\n\n"
    assert resp.content == b"".join(EchoUpstream.STREAM[:3]) + hel
    assert up.seen[0]["headers"]["Accept-Encoding"] == "identity"


async def test_non_stream_and_non_chat_requests_pass_through() -> None:
    async with EchoUpstream() as up, proxy_for(up.url + "/prefix") as proxy, client(proxy) as http:
        whole = await http.post("/v1/chat/completions", content=b"{}")
        other = await http.put("/v1/files/abc?x=%2F", content=b"payload")
        await http.get("/v1/models")
    assert whole.content == EchoUpstream.WHOLE
    assert whole.headers["Content-Length"] == str(len(EchoUpstream.WHOLE))
    assert other.status_code == 201 and other.content == b"echo payload"
    assert other.headers["X-Upstream"] == "yes"
    assert [s["path_qs"] for s in up.seen] == [
        "/prefix/v1/chat/completions",
        "/prefix/v1/files/abc?x=%2F",
        "/prefix/v1/models",
    ]
    assert proxy.stats.decisions == 1  # only the chat request was a candidate for a fault


async def test_models_through_the_proxy_equal_the_simulators() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy, client(proxy) as http:
        via_proxy = (await http.get("/v1/models")).json()
        direct = (await http.get(sim.base_url + "/models")).json()
    assert via_proxy == direct


async def test_unreachable_upstream_is_a_502_in_openai_shape() -> None:
    async with proxy_for("http://127.0.0.1:9", connect_timeout=1.0) as proxy, client(proxy) as h:
        resp = await h.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502 and "could not reach" in resp.json()["error"]["message"]
    assert proxy.stats.upstream_errors == 1


# --- decisions: header, script, seed -----------------------------------------------------------


async def test_a_bad_fault_header_is_refused_with_its_reason() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy, client(proxy) as http:
        mid = await http.post("/v1/chat/completions", json=CHAT, headers={"x-chaos-fault": "x"})
        where = await http.post(
            "/v1/chat/completions", json=CHAT, headers={"x-chaos-fault": "reset@mid"}
        )
    assert mid.status_code == 400 and "unknown fault kind 'x'" in mid.json()["error"]["message"]
    assert "x-chaos-fault" in where.json()["error"]["message"]
    assert "middle" in where.json()["error"]["message"]
    assert sim.stats.chat_requests == 0


async def test_scripted_faults_apply_in_order_and_stats_count_them(tmp_path: Path) -> None:
    log = tmp_path / "faults.jsonl"
    async with (
        fast_sim() as sim,
        proxy_for(origin(sim.base_url), fault_log=str(log)) as proxy,
        client(proxy) as http,
    ):
        scheduled = await http.post(
            "/chaos/faults", json={"schedule": ["http_503", "none", "truncate@2"]}
        )
        assert scheduled.json() == {"pending": ["http_503", "none", "truncate@2"]}
        statuses = [
            (await http.post("/v1/chat/completions", json={**CHAT, "stream": True})).status_code
            for _ in range(3)
        ]
        stats = (await http.get("/chaos/stats")).json()
        bad = await http.post("/chaos/faults", json={"schedule": ["reset@mid"]})
    assert statuses == [503, 200, 200]
    assert stats["faults"]["http_503"] == 1 and stats["faults"]["truncate"] == 1
    assert stats["faults_total"] == 2 and stats["decisions"] == 3 and stats["pending"] == []
    assert bad.status_code == 400
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["request"], e["kind"], e["position"], e["source"]) for e in lines] == [
        (1, "http_503", None, "script"),
        (2, "none", None, "script"),
        (3, "truncate", 2, "script"),
    ]
    assert all(e["path"] == "/v1/chat/completions" and e["time"] for e in lines)


def _decisions(seed: int, bodies: list[bytes]) -> list[str]:
    planner = FaultPlanner(FaultOdds(fault_rate=0.5, max_position=50), seed=seed)
    path = "/v1/chat/completions"
    return [planner.decide(path=path, body=b, header=None).planned for b in bodies]


def test_the_same_seed_makes_the_same_decisions_and_another_seed_does_not() -> None:
    bodies = [b'{"n": %d}' % (i % 7) for i in range(60)]
    first = _decisions(3, bodies)
    assert first == _decisions(3, bodies)
    assert first != _decisions(4, bodies)
    faults = [d for d in first if d != "none"]
    assert 15 <= len(faults) <= 45
    assert {d.partition("@")[0] for d in faults} == set(ALL_FAULT_KINDS)


def test_decisions_do_not_depend_on_the_order_of_distinct_requests() -> None:
    bodies = [b'{"n": %d}' % i for i in range(20)]
    forward = dict(zip(bodies, _decisions(9, bodies), strict=True))
    backward = dict(zip(bodies[::-1], _decisions(9, bodies[::-1]), strict=True))
    assert forward == backward


def test_a_retried_body_gets_a_fresh_decision() -> None:
    same = _decisions(5, [b"{}"] * 12)
    assert len(set(same)) > 1


async def test_random_faults_through_the_proxy_replay_with_the_seed(tmp_path: Path) -> None:
    async def run(seed: int, name: str) -> list[tuple[Any, ...]]:
        log = tmp_path / name
        odds = FaultOdds(fault_rate=0.6, kinds=("truncate", "http_500"), max_position=30)
        async with (
            fast_sim() as sim,
            proxy_for(origin(sim.base_url), odds=odds, seed=seed, fault_log=str(log)) as proxy,
            client(proxy) as http,
        ):
            for i in range(12):
                body = {**CHAT, "stream": True, "user": f"u{i}"}
                await http.post("/v1/chat/completions", json=body)
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        return [(e["request"], e["kind"], e["position"], e["source"]) for e in entries]

    first = await run(11, "a.jsonl")
    assert first == await run(11, "b.jsonl")
    assert first != await run(12, "c.jsonl")
    assert {kind for _, kind, _, _ in first} == {"none", "truncate", "http_500"}


def test_settings_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="fault_rate must be between 0 and 1, got 2"):
        FaultOdds(fault_rate=2)
    with pytest.raises(ValueError, match="unknown fault kinds \\['boom'\\]"):
        FaultOdds(kinds=("boom",))
    with pytest.raises(ValueError, match="must be an http:// or https:// URL"):
        ChaosSettings(upstream="localhost:8000")


# --- SSE framing -------------------------------------------------------------------------------


def test_framer_cuts_events_at_blank_lines_across_reads_and_line_ends() -> None:
    stream = b"data: a\r\n\r\n: ping\n\ndata: b\rdata: c\r\rdata: [DONE]\n\n"
    for size in (1, 2, 3, 5, len(stream)):
        framer = EventFramer()
        events = []
        for i in range(0, len(stream), size):
            events += framer.feed(stream[i : i + size])
        assert b"".join(events) == stream
        assert events == [
            b"data: a\r\n\r\n",
            b": ping\n\n",
            b"data: b\rdata: c\r\r",
            b"data: [DONE]\n\n",
        ]


@pytest.mark.parametrize(
    ("raw", "role"),
    [
        (b'data: {"choices":[{"delta":{"content":"x"},"finish_reason":null}]}\n\n', "content"),
        (b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\n', "finish"),
        (b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n', "usage"),
        (b"data: [DONE]\n\n", "done"),
        (b'data: {"error":{"message":"x"}}\n\n', "other"),
        (b": ping\n\n", "other"),
    ],
)
def test_event_roles(raw: bytes, role: str) -> None:
    assert event_role(raw) is EventRole(role)


# --- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_the_command_serves_until_signalled_then_exits_cleanly(
    tmp_path: Path, sig: signal.Signals
) -> None:
    async with fast_sim() as sim:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "intact", "chaos-proxy", "--port", "0"),
            *("--upstream", origin(sim.base_url), "--seed", "5", "--fault-rate", "0"),
            *("--fault-log", str(tmp_path / "log.jsonl")),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert "seed 5" in line
            url = line.split(" listening on ")[1].split(" ")[0]
            async with httpx.AsyncClient(base_url=url) as http:
                resp = await http.post(
                    "/v1/chat/completions", json=CHAT, headers={"x-chaos-fault": "http_500"}
                )
                assert resp.status_code == 500
            proc.send_signal(sig)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert json.loads((tmp_path / "log.jsonl").read_text())["kind"] == "http_500"


def test_the_command_refuses_bad_flags_with_exit_2() -> None:
    out = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "intact",
                "chaos-proxy",
                "--upstream",
                "http://x",
                "--port",
                "1",
            ),
            *("--kinds", "reset,nope"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "unknown fault kinds ['nope']" in out.stderr


async def test_stopping_cuts_a_stalled_stream_at_once() -> None:
    async with fast_sim() as sim:
        proxy = ChaosProxy(ChaosSettings(upstream=origin(sim.base_url), stall_max=60))
        await proxy.start()
        broken = asyncio.create_task(stream_until_broken(proxy, "stall@2", read_timeout=30))
        while not proxy.stats.faults["stall"]:
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await proxy.stop()
        data, error = await broken
    assert loop.time() - started < 2.0
    assert len(content_chunks(data)) == 2 and error is not None
    assert proxy.stats.active == 0 and proxy.stats.client_disconnects == 0


# --- Anthropic Messages and OpenAI Responses -------------------------------------------------

ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}
MESSAGES_BODY = {"model": "sim-1", "max_tokens": 300, "messages": MESSAGES}
RESPONSES_BODY = {"model": "sim-1", "input": MESSAGES[0]["content"]}
API_REQUESTS = {
    "messages": ("/v1/messages", MESSAGES_BODY, ANTHROPIC_HEADERS),
    "responses": ("/v1/responses", RESPONSES_BODY, {}),
}
CLOSING = {
    "messages": {"message_delta", "message_stop"},
    "responses": {"response.completed", "response.incomplete"},
}


def typed_events(data: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of a named-event stream, in order."""
    events = []
    for raw in data.split(b"\n\n"):
        for line in raw.split(b"\n"):
            if line.startswith(b"data: "):
                events.append(orjson.loads(line[6:]))
    return events


def counted(api: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events a fault position counts: all but the closing ones and errors."""
    return [e for e in events if e["type"] not in CLOSING[api] and e["type"] != "error"]


def sketch(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Each event's type and delta (ids differ from one generation to the next)."""
    return [(e["type"], e.get("delta")) for e in events]


async def api_stream(
    proxy: ChaosProxy, api: str, fault: str, read_timeout: float = 5.0
) -> tuple[bytes, BaseException | None]:
    path, body, headers = API_REQUESTS[api]
    received = b""
    async with client(proxy, timeout=read_timeout) as http:
        try:
            async with http.stream(
                "POST",
                path,
                json={**body, "stream": True},
                headers={**headers, "x-chaos-fault": fault},
            ) as resp:
                assert resp.status_code == 200
                async for chunk in resp.aiter_raw():
                    received += chunk
        except httpx.HTTPError as exc:
            return received, exc
    return received, None


async def whole_stream(sim: Any, api: str) -> list[dict[str, Any]]:
    """The uninterrupted stream of `api`, straight from the simulator."""
    path, body, headers = API_REQUESTS[api]
    async with httpx.AsyncClient(base_url=origin(sim.base_url)) as http:
        resp = await http.post(path, json={**body, "stream": True}, headers=headers)
    return typed_events(resp.content)


@pytest.mark.parametrize("api", ["messages", "responses"])
@pytest.mark.parametrize("position", [0, 1, 3, 6])
async def test_typed_streams_are_cut_after_exactly_k_events(api: str, position: int) -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        whole = await whole_stream(sim, api)
        data, error = await api_stream(proxy, api, f"reset@{position}")
    assert isinstance(error, httpx.RemoteProtocolError | httpx.ReadError)
    # The events before the cut, as the upstream sent them.
    assert sketch(typed_events(data)) == sketch(whole[:position])
    assert proxy.stats.faults["reset"] == 1


async def test_a_messages_error_event_is_anthropics_in_band_overloaded_error() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        data, error = await api_stream(proxy, "messages", "error_event@4")
    assert error is None
    events = data.strip().split(b"\n\n")
    assert len(events) == 5
    assert events[-1] == (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    )
    assert b"message_stop" not in data


async def test_a_responses_error_event_is_openais_error_event_numbered_next() -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        data, error = await api_stream(proxy, "responses", "error_event@5")
    assert error is None
    events = typed_events(data)
    assert len(events) == 6
    last = events[-1]
    assert data.strip().split(b"\n\n")[-1].startswith(b"event: error\n")
    assert last["type"] == "error" and last["code"] == "server_error" and last["message"]
    assert last["sequence_number"] == events[-2]["sequence_number"] + 1
    assert b"response.completed" not in data


@pytest.mark.parametrize("api", ["messages", "responses"])
async def test_typed_streams_truncated_at_last_lack_only_the_closing_events(api: str) -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        whole = await whole_stream(sim, api)
        data, error = await api_stream(proxy, api, "truncate@last")
        beyond, _ = await api_stream(proxy, api, "truncate@100000")
        done, _ = await api_stream(proxy, api, "truncate@done")
    assert error is None
    assert sketch(typed_events(data)) == sketch(counted(api, whole))
    assert sketch(typed_events(beyond)) == sketch(counted(api, whole))
    assert whole[len(counted(api, whole)) :][0]["type"] in CLOSING[api]
    # "done": after message_delta, before message_stop; a Responses stream ends at completed.
    finish = "message_delta" if api == "messages" else "response.completed"
    done_types = [e["type"] for e in typed_events(done)]
    assert done_types[-1] == finish and done_types == [e["type"] for e in whole][: len(done_types)]


@pytest.mark.parametrize("api", ["messages", "responses"])
async def test_a_stall_in_a_typed_stream_keeps_the_connection_silent(api: str) -> None:
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy:
        whole = await whole_stream(sim, api)
        data, error = await api_stream(proxy, api, "stall@4", read_timeout=0.5)
    assert isinstance(error, httpx.ReadTimeout)
    assert sketch(typed_events(data)) == sketch(whole[:4])
    assert proxy.stats.faults["stall"] == 1


@pytest.mark.parametrize("kind", [*BEFORE_RESPONSE, "http_529", "http_400", "context_length"])
async def test_messages_refusals_have_anthropics_shape(kind: str) -> None:
    path, body, headers = API_REQUESTS["messages"]
    async with (
        fast_sim() as sim,
        proxy_for(origin(sim.base_url), retry_after=2.5) as proxy,
        client(proxy) as http,
    ):
        if kind == "connect_drop":
            with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
                await http.post(path, json=body, headers={**headers, "x-chaos-fault": kind})
            return
        resp = await http.post(path, json=body, headers={**headers, "x-chaos-fault": kind})
    # Anthropic sends no 503: overloaded is 529 (as the simulator answers http_503).
    statuses = {"http_503": 529, "context_length": 400}
    types = {
        "http_429": "rate_limit_error",
        "http_500": "api_error",
        "http_503": "overloaded_error",
        "http_529": "overloaded_error",
    }
    assert resp.status_code == (statuses.get(kind) or int(kind.removeprefix("http_")))
    payload = resp.json()
    assert set(payload) == {"type", "error"} and payload["type"] == "error"
    assert set(payload["error"]) == {"type", "message"} and payload["error"]["message"]
    assert payload["error"]["type"] == types.get(kind, "invalid_request_error")
    if kind == "http_429":
        assert resp.headers["retry-after"] == "3"
    assert sim.stats.requests_by_api["messages"] == 0
    assert proxy.stats.faults[kind] == 1


@pytest.mark.parametrize("kind", [*BEFORE_RESPONSE[:3], "http_529", "context_length"])
async def test_responses_refusals_have_openais_shape(kind: str) -> None:
    path, body, _ = API_REQUESTS["responses"]
    async with (
        fast_sim() as sim,
        proxy_for(origin(sim.base_url)) as proxy,
        client(proxy) as http,
    ):
        resp = await http.post(path, json=body, headers={"x-chaos-fault": kind})
    assert resp.status_code == (400 if kind == "context_length" else int(kind[5:]))
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert sim.stats.requests_by_api["responses"] == 0
    assert proxy.stats.faults[kind] == 1


@pytest.mark.parametrize(
    ("api", "status", "error_type"),
    [("messages", 529, "overloaded_error"), ("responses", 500, "server_error")],
)
async def test_a_non_streamed_typed_answer_meets_error_event_as_its_apis_http_error(
    api: str, status: int, error_type: str
) -> None:
    path, body, headers = API_REQUESTS[api]
    async with fast_sim() as sim, proxy_for(origin(sim.base_url)) as proxy, client(proxy) as http:
        failed = await http.post(
            path, json=body, headers={**headers, "x-chaos-fault": "error_event@2"}
        )
        with pytest.raises(httpx.RemoteProtocolError):  # a short body
            await http.post(path, json=body, headers={**headers, "x-chaos-fault": "truncate@2"})
        clean = await http.post(path, json=body, headers={**headers, "x-chaos-fault": "none"})
    assert failed.status_code == status
    assert failed.json()["error"]["type"] == error_type
    assert clean.status_code == 200 and clean.json()["id"]
    assert proxy.stats.faults["error_event"] == proxy.stats.faults["truncate"] == 1


async def test_the_proxys_own_errors_on_messages_have_anthropics_shape() -> None:
    path, body, headers = API_REQUESTS["messages"]
    async with proxy_for("http://127.0.0.1:9", connect_timeout=1.0) as proxy, client(proxy) as h:
        down = await h.post(path, json=body, headers=headers)
        bad = await h.post(path, json=body, headers={**headers, "x-chaos-fault": "nope"})
    assert down.status_code == 502
    assert down.json()["type"] == "error" and down.json()["error"]["type"] == "api_error"
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


async def test_only_generation_requests_of_the_typed_apis_are_faulted() -> None:
    async with EchoUpstream() as up, proxy_for(up.url) as proxy, client(proxy) as http:
        await http.post("/v1/messages/count_tokens", content=b"{}")
        await http.get("/v1/responses/resp_1?stream=true")
        await http.post("/v1/responses/resp_1/cancel", content=b"{}")
        await http.post("/v1/messages", content=b"{}", headers={"x-chaos-fault": "none"})
        await http.post("/v1/responses", content=b"{}", headers={"x-chaos-fault": "none"})
    assert proxy.stats.decisions == 2


@pytest.mark.parametrize(
    ("raw", "api", "role"),
    [
        (
            b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n',
            "messages",
            "content",
        ),
        (
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
            "messages",
            "content",
        ),
        (b'event: ping\ndata: {"type": "ping"}\n\n', "messages", "content"),
        (
            b'event: message_delta\ndata: {"type":"message_delta","delta":{}}\n\n',
            "messages",
            "finish",
        ),
        (b'event: message_stop\ndata: {"type":"message_stop"}\n\n', "messages", "done"),
        (b'event: error\ndata: {"type":"error","error":{"type":"x"}}\n\n', "messages", "other"),
        (b'event: response.created\ndata: {"type":"response.created"}\n\n', "responses", "content"),
        (
            b'event: response.output_item.done\ndata: {"type":"response.output_item.done"}\n\n',
            "responses",
            "content",
        ),
        (
            b'event: response.completed\ndata: {"type":"response.completed"}\n\n',
            "responses",
            "finish",
        ),
        (
            b'event: response.incomplete\ndata: {"type":"response.incomplete"}\n\n',
            "responses",
            "finish",
        ),
        (b'event: response.failed\ndata: {"type":"response.failed"}\n\n', "responses", "other"),
        (b'event: error\ndata: {"type":"error","code":"x"}\n\n', "responses", "other"),
        (b": keep-alive\n\n", "responses", "other"),
    ],
)
def test_typed_event_roles(raw: bytes, api: Any, role: str) -> None:
    assert event_role(raw, api) is EventRole(role)


# --- through intact, with the official SDKs --------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "reset@1",
        "reset@5",
        "error_event@0",
        "error_event@4",
        "truncate@last",
        "stall@3",
        "http_503",
        "connect_drop",
    ],
)
async def test_intact_recovers_the_proxys_faults_in_anthropic_messages(
    tmp_path: Path, spec: str
) -> None:
    key = tmp_path / "key"
    key.write_text("sk-ant-test")
    async with (
        fast_sim(api_key="sk-ant-test") as sim,
        proxy_for(origin(sim.base_url), retry_after=0.05) as proxy,
    ):
        up = {
            "name": "claude",
            "kind": "anthropic",
            "base_url": proxy.url + "/v1",
            "api_key_file": str(key),
            "resume": "prefill",
        }
        async with daemon_for(tmp_path, [], upstreams=[up]) as d:
            expected = sim.messages_api.expected(MESSAGES_BODY)
            proxy.schedule_faults([spec])
            text = ""
            async with anthropic_sdk(d.socket_path).messages.stream(**MESSAGES_BODY) as stream:
                async for piece in stream.text_stream:
                    text += piece
                final = await stream.get_final_message()
    assert text == expected.text
    assert final.stop_reason == expected.stop_reason
    assert sum(proxy.stats.faults.values()) == 1


@pytest.mark.parametrize(
    "spec", ["reset@2", "reset@7", "error_event@5", "truncate@last", "stall@4", "http_429"]
)
async def test_intact_recovers_the_proxys_faults_in_openai_responses(
    tmp_path: Path, spec: str
) -> None:
    async with (
        fast_sim() as sim,
        proxy_for(origin(sim.base_url), retry_after=0.05) as proxy,
    ):
        up = {"name": "p", "base_url": proxy.url + "/v1", "resume": "prefill"}
        async with daemon_for(tmp_path, [], upstreams=[up]) as d:
            expected = sim.responses_api.expected(RESPONSES_BODY)
            proxy.schedule_faults([spec])
            text, completed = "", None
            stream = await sdk(d.socket_path).responses.create(**RESPONSES_BODY, stream=True)
            async for event in stream:
                if event.type == "response.output_text.delta":
                    text += event.delta
                elif event.type == "response.completed":
                    completed = event.response
    assert text == expected.text
    assert completed is not None and completed.output_text == expected.text
    assert sum(proxy.stats.faults.values()) == 1
