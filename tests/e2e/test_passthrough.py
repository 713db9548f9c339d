"""Every other /v1/ route passes through to the upstream that serves it: the same bodies
both ways, retries and failover before the first byte, an abrupt end after it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from intact.simulator.other_endpoints import completion_tokens, embedding, transcription
from support import daemon_for, fast_sim, raw_client, sdk

pytestmark = pytest.mark.timeout(30)

TEXTS = ["the lighthouse keeper", "a storm at sea"]
PROMPT = "Write a tagline for a lighthouse."


async def stream_completion(client: openai.AsyncOpenAI, pieces: list[str]) -> None:
    stream = await client.completions.create(
        model="sim-1", prompt=PROMPT, max_tokens=12, stream=True
    )
    async for chunk in stream:
        pieces.append(chunk.choices[0].text)


async def test_embeddings_pass_through_unchanged_after_a_retried_503(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["http_503"])
        raw = await sdk(d.socket_path).embeddings.with_raw_response.create(
            model="sim-1", input=TEXTS
        )
        result = raw.parse()
        assert raw.headers["intact-attempts"] == "2"
        assert sim.stats.requests_by_route["POST /v1/embeddings"] == 2
    assert [item.embedding for item in result.data] == [embedding(t) for t in TEXTS]
    assert result.model == "sim-1"


async def test_embeddings_as_floats_are_the_upstreams_bytes(tmp_path: Path) -> None:
    body = {"model": "sim-1", "input": "hi", "encoding_format": "float", "dimensions": 4}
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim) as d,
        raw_client(d.socket_path) as client,
        httpx.AsyncClient() as plain,
    ):
        resp = await client.post("/v1/embeddings", json=body)
        direct = await plain.post(f"{sim.base_url}/embeddings", json=body)
    assert resp.status_code == 200
    assert resp.content == direct.content
    assert resp.headers["content-type"] == direct.headers["content-type"]
    assert resp.headers["x-request-id"].startswith("req_")  # the upstream's own headers


async def test_a_model_by_id_passes_through_and_so_does_its_404(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        client = sdk(d.socket_path)
        model = await client.models.retrieve("sim-2")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("no-such-model")
    assert model.id == "sim-2" and model.owned_by == "intact-sim"
    assert missing.value.code == "model_not_found"
    assert [r.path for r in sim.stats.http_requests] == [
        "/v1/models/sim-2",
        "/v1/models/no-such-model",
    ]


async def test_a_multipart_audio_upload_arrives_byte_for_byte(tmp_path: Path) -> None:
    audio = bytes(range(256)) * 64 + b"\r\n--not-a-boundary\r\n"
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        result = await sdk(d.socket_path).audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", audio, "audio/wav")
        )
    assert result.text == transcription(audio, "clip.wav")["text"]


async def test_a_streamed_legacy_completion_arrives_whole(tmp_path: Path) -> None:
    async with fast_sim(tok_per_s=200.0) as sim, daemon_for(tmp_path, sim) as d:
        pieces: list[str] = []
        await stream_completion(sdk(d.socket_path), pieces)
    tokens, finish = completion_tokens(PROMPT, 12)
    assert "".join(pieces) == "".join(tokens)
    assert len(pieces) == len(tokens) + 1  # one event per token, then the finish event
    assert finish == "length"


async def test_a_non_streamed_completion_is_retried_after_a_reset(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset"])
        result = await sdk(d.socket_path).completions.create(model="sim-1", prompt=PROMPT)
    assert result.choices[0].text == "".join(completion_tokens(PROMPT)[0])
    assert sim.stats.requests_by_route["POST /v1/completions"] == 2


@pytest.mark.parametrize("fault", ["reset@3", "truncate@3", "stall@3"])
async def test_a_stream_that_breaks_after_the_first_byte_is_cut_not_closed(
    tmp_path: Path, fault: str
) -> None:
    """No recovery once bytes went out: the app's client sees a broken response (truncate:
    the upstream closed cleanly, but before the stream's [DONE])."""
    async with fast_sim(tok_per_s=200.0) as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults([fault])
        pieces: list[str] = []
        with pytest.raises((httpx.TransportError, openai.APIError)):
            await stream_completion(sdk(d.socket_path), pieces)
        # What did arrive is the upstream's text so far (a cut may lose the last bytes).
        assert "".join(completion_tokens(PROMPT, 12)[0][:3]).startswith("".join(pieces))
        assert sim.stats.requests_by_route["POST /v1/completions"] == 1  # never retried
        # ...and the daemon keeps serving.
        again = await sdk(d.socket_path).embeddings.create(model="sim-1", input="x")
    assert again.data[0].embedding == embedding("x")


async def test_failover_moves_to_the_next_upstream(tmp_path: Path) -> None:
    async with fast_sim() as down, fast_sim() as up, daemon_for(tmp_path, [down, up]) as d:
        down.set_mode("down")
        result = await sdk(d.socket_path).embeddings.create(model="sim-1", input=TEXTS)
        tried = down.stats.requests_by_route["POST /v1/embeddings"]
        served = up.stats.requests_by_route["POST /v1/embeddings"]
    assert [item.embedding for item in result.data] == [embedding(t) for t in TEXTS]
    assert tried == 3 and served == 1  # the first upstream's share of max_attempts (6 // 2)


async def test_a_route_chooses_the_upstream_and_rewrites_the_model(tmp_path: Path) -> None:
    routes = [{"model": "house-embedder", "targets": ["sim1:sim-2"]}]
    async with (
        fast_sim() as first,
        fast_sim() as second,
        daemon_for(tmp_path, [first, second], routes=routes) as d,
    ):
        result = await sdk(d.socket_path).embeddings.create(model="house-embedder", input="x")
        assert first.stats.requests_by_route == {}
    assert result.model == "sim-2"  # what the upstream was asked for


async def test_a_model_no_upstream_serves_costs_no_upstream_call(tmp_path: Path) -> None:
    async with fast_sim() as sim:
        ups = [{"name": "sim0", "base_url": sim.base_url, "models": ["sim-1"]}]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            with pytest.raises(openai.NotFoundError) as refused:
                await sdk(d.socket_path).embeddings.create(model="gpt-x", input="x")
    assert refused.value.code == "model_not_found"
    assert sim.stats.http_requests == type(sim.stats.http_requests)()


async def test_a_final_4xx_passes_through_unchanged_and_is_not_retried(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["http_400"])
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk(d.socket_path).embeddings.create(model="sim-1", input="x")
        assert sim.stats.requests_by_route["POST /v1/embeddings"] == 1
    assert refused.value.code == "invalid_request"
    assert "prefill" in refused.value.message  # the simulator's own wording


async def test_a_429_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    async with fast_sim(retry_after=0.3) as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["http_429"])
        started = asyncio.get_running_loop().time()
        await sdk(d.socket_path).embeddings.create(model="sim-1", input="x")
        waited = asyncio.get_running_loop().time() - started
    assert waited >= 0.3
    assert sim.stats.requests_by_route["POST /v1/embeddings"] == 2


async def test_without_retry_budget_the_upstream_error_goes_back_at_once(tmp_path: Path) -> None:
    retry = {"budget_ratio": 0.0, "budget_min_per_second": 0.0}
    async with fast_sim() as sim, daemon_for(tmp_path, sim, retry=retry) as d:
        sim.schedule_faults(["http_503"])
        with pytest.raises(openai.InternalServerError) as failed:
            await sdk(d.socket_path).embeddings.create(model="sim-1", input="x")
        assert sim.stats.requests_by_route["POST /v1/embeddings"] == 1
    assert failed.value.status_code == 503
    assert "overloaded" in failed.value.message


async def test_an_open_breaker_answers_503_without_calling_the_upstream(tmp_path: Path) -> None:
    breaker = {"minimum_calls": 2, "failure_rate_threshold": 0.5, "open_duration": 30.0}
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, breaker=breaker, retry={"max_attempts": 2}) as d,
    ):
        sim.set_mode("down")
        client = sdk(d.socket_path)
        with pytest.raises(openai.InternalServerError):
            await client.embeddings.create(model="sim-1", input="x")
        with pytest.raises(openai.InternalServerError) as refused:
            await client.embeddings.create(model="sim-1", input="x")
        assert sim.stats.requests_by_route["POST /v1/embeddings"] == 2
    assert refused.value.code == "upstream_unavailable"
    assert int(refused.value.response.headers["Retry-After"]) >= 1


async def test_a_body_over_the_limit_gets_413_without_an_upstream_call(tmp_path: Path) -> None:
    async with (
        fast_sim() as sim,
        daemon_for(tmp_path, sim, server={"max_body_bytes": 16_384}) as d,
        raw_client(d.socket_path) as client,
    ):
        resp = await client.post("/v1/embeddings", json={"model": "sim-1", "input": "x" * 20_000})
        assert sim.stats.http_requests == type(sim.stats.http_requests)()
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


async def test_intact_own_routes_keep_their_methods(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        async with raw_client(d.socket_path) as client:
            resp = await client.delete("/v1/models")
        assert sim.stats.http_requests == type(sim.stats.http_requests)()
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "GET"


async def test_an_app_that_leaves_mid_stream_closes_the_upstream_call(tmp_path: Path) -> None:
    async with fast_sim(tok_per_s=20.0) as sim, daemon_for(tmp_path, sim) as d:
        client = sdk(d.socket_path)
        stream = await client.completions.create(
            model="sim-1", prompt=PROMPT, max_tokens=40, stream=True
        )
        async for _ in stream:
            break
        await stream.close()
        for _ in range(100):
            if sim.stats.client_disconnects:
                break
            await asyncio.sleep(0.02)
        assert sim.stats.client_disconnects == 1
        assert (await client.embeddings.create(model="sim-1", input="x")).data
