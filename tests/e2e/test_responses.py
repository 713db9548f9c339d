"""OpenAI Responses over the socket with the official ``openai`` SDK: every fault kind at
every position gives the exact answer or an error the SDK raises; a background response is
reattached (``starting_after``), losslessly, without a new generation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from support import daemon_for, fast_sim, raw_client, sdk

pytestmark = pytest.mark.timeout(120)

INPUT = "Explain how a lighthouse keeps ships safe at night."


@dataclass
class Got:
    """What the app saw of one streamed response."""

    text: str = ""
    types: list[str] = field(default_factory=list)
    sequence: list[int] = field(default_factory=list)
    item_ids: set[str] = field(default_factory=set)
    response_ids: set[str] = field(default_factory=set)
    final: Any = None
    error: BaseException | None = None


async def stream_response(client: openai.AsyncOpenAI, **kw: Any) -> Got:
    got = Got()
    try:
        stream = await client.responses.create(
            model=kw.pop("model", "sim-1"), input=kw.pop("input", INPUT), stream=True, **kw
        )
        async for event in stream:
            got.types.append(event.type)
            got.sequence.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                got.text += event.delta
                got.item_ids.add(event.item_id)
            elif event.type in ("response.created", "response.completed"):
                got.response_ids.add(event.response.id)
                if event.type == "response.completed":
                    got.final = event.response
    except openai.APIError as exc:
        got.error = exc
    return got


async def direct_text(base_url: str) -> str:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    response = await client.responses.create(model="sim-1", input=INPUT)
    return response.output_text


def check_whole(got: Got, expected: str) -> None:
    assert got.error is None, got.error
    assert got.text == expected
    assert got.types[0] == "response.created"
    assert got.types[-1] == "response.completed"
    assert got.types.count("response.created") == 1
    assert got.sequence == list(range(got.sequence[0], got.sequence[0] + len(got.sequence)))
    assert len(got.item_ids) == 1
    assert len(got.response_ids) == 1
    assert got.final.output_text == expected


async def test_a_plain_response_streams_and_collects(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        expected = await direct_text(sim.base_url)
        client = sdk(d.socket_path)
        got = await stream_response(client)
        whole = await client.responses.create(model="sim-1", input=INPUT)
    check_whole(got, expected)
    assert whole.output_text == expected
    assert whole.status == "completed"


FAULTS = [
    "reset@0",
    "reset@2",
    "reset@5",
    "reset@mid",
    "reset@last",
    "truncate@mid",
    "stall@mid",
    "error_event@mid",
    "http_500",
    "http_503",
    "http_429",
    "connect_drop",
]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("mode", ["instruct", "prefill"])
async def test_every_fault_gives_the_exact_answer(tmp_path: Path, fault: str, mode: str) -> None:
    async with fast_sim() as sim:
        ups = [{"name": "sim", "base_url": sim.base_url, "resume": mode}]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            expected = await direct_text(sim.base_url)
            sim.schedule_faults([fault])
            got = await stream_response(sdk(d.socket_path))
            sim.schedule_faults([fault])
            whole = await sdk(d.socket_path).responses.create(model="sim-1", input=INPUT)
    check_whole(got, expected)
    assert whole.output_text == expected


@pytest.mark.parametrize("fault", ["reset@mid", "truncate@3", "stall@mid", "error_event@mid"])
async def test_a_background_response_is_reattached_not_generated_again(
    tmp_path: Path, fault: str
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        expected = await direct_text(sim.base_url)
        sim.schedule_faults([fault])
        got = await stream_response(sdk(d.socket_path), background=True)
        requests = [(r.method, r.path, dict(r.query)) for r in sim.stats.http_requests]
    check_whole(got, expected)
    posts = [r for r in requests if r[0] == "POST"]
    gets = [r for r in requests if r[0] == "GET"]
    assert len(posts) == 2  # the direct reference, then the app's one generation
    assert len(gets) == 1
    _, path, query = gets[0]
    assert path == f"/v1/responses/{next(iter(got.response_ids))}"
    assert query["stream"] == "true"
    assert int(query["starting_after"]) >= 0


async def test_a_lost_stream_ends_failed_and_the_sdk_raises(tmp_path: Path) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, retry={"max_attempts": 2}) as d,
        raw_client(d.socket_path) as raw,
    ):
        sim.schedule_faults(["reset@5", "reset@1"])
        got = await stream_response(sdk(d.socket_path))
        sim.schedule_faults(["reset@5", "reset@1"])
        body = {"model": "sim-1", "input": INPUT, "stream": True}
        wire = (await raw.post("/v1/responses", json=body)).content
    assert isinstance(got.error, openai.APIError)
    assert got.text
    assert "response.completed" not in got.types
    assert b"response.completed" not in wire
    assert b"event: response.failed" in wire
    assert wire.rstrip().split(b"\n")[-2] == b"event: error"


async def test_a_background_request_without_a_stream_passes_through(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        client = sdk(d.socket_path)
        queued = await client.responses.create(model="sim-1", input=INPUT, background=True)
        assert queued.status in ("queued", "in_progress", "completed")
        for _ in range(200):
            fetched = await client.responses.retrieve(queued.id)
            if fetched.status == "completed":
                break
            await asyncio.sleep(0.01)
        expected = await direct_text(sim.base_url)
    assert fetched.output_text == expected


KINDS = ("reset", "truncate", "error_event")
# Every request's first attempt breaks on purpose: a breaker would rightly open.
NO_BREAKER = {"minimum_calls": 10_000}


def event_count(text: str) -> int:
    return len(text.split()) + 8  # more than the stream's events: every position is reached


@pytest.mark.parametrize("mode", ["instruct", "prefill"])
async def test_responses_break_at_every_position(tmp_path: Path, mode: str) -> None:
    async with fast_sim() as sim:
        ups = [{"name": "sim", "base_url": sim.base_url, "resume": mode, "apis": ["responses"]}]
        body = {"model": "sim-1", "input": INPUT, "max_output_tokens": 60}
        expected = sim.responses_api.expected(body).text
        async with daemon_for(tmp_path, sim, upstreams=ups, breaker=NO_BREAKER) as d:
            client = sdk(d.socket_path)
            for kind in KINDS:
                for position in range(event_count(expected)):
                    sim.schedule_faults([f"{kind}@{position}"])
                    got = await stream_response(client, max_output_tokens=60)
                    sim.clear_faults()
                    assert got.error is None, (kind, position, got.error)
                    assert got.text == expected, (kind, position)
                    assert got.types.count("response.created") == 1
                    assert got.types[-1] in ("response.completed", "response.incomplete")
                    seq = got.sequence
                    assert seq == list(range(seq[0], seq[0] + len(seq))), (kind, position)


async def test_responses_in_background_reattach_at_every_position(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim, breaker=NO_BREAKER) as d:
        body = {"model": "sim-1", "input": INPUT, "max_output_tokens": 60}
        expected = sim.responses_api.expected(body).text
        client = sdk(d.socket_path)
        for position in range(event_count(expected)):
            sim.schedule_faults([f"reset@{position}"])
            got = await stream_response(client, max_output_tokens=60, background=True)
            sim.clear_faults()
            assert got.error is None, (position, got.error)
            assert got.text == expected, position
            assert len(got.response_ids) == 1
        posts = sum(1 for r in sim.stats.http_requests if r.method == "POST")
        gets = sum(1 for r in sim.stats.http_requests if r.method == "GET")
    positions = event_count(expected)
    # One generation per request, but for a break before response.created reached the app
    # (then nothing is lost by starting over); every later break reattaches.
    assert posts <= positions + 1
    assert gets >= positions - 1
