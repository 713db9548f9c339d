"""Every field of a chunk survives a resume or the stream fails loudly: reasoning, refusal,
logprobs and usage through real resumes against the simulator, as the app sees the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from intact.simulator.server import expected_for_request
from support import MESSAGES, daemon_for, fast_sim, raw_client

BODY: dict[str, Any] = {"model": "sim-1", "messages": MESSAGES, "stream": True}


async def wire(socket_path: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The chunks the app received, and whether the stream ended with [DONE]."""
    async with (
        raw_client(socket_path) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        data = b"".join([chunk async for chunk in resp.aiter_bytes()])
    chunks: list[dict[str, Any]] = []
    done = False
    for line in data.split(b"\n"):
        if not line.startswith(b"data: "):
            continue
        payload = line[len(b"data: ") :]
        if payload == b"[DONE]":
            done = True
        else:
            chunks.append(orjson.loads(payload))
    return chunks, done


def joined(chunks: list[dict[str, Any]], field: str) -> str:
    return "".join(
        c["choices"][0]["delta"].get(field) or ""
        for c in chunks
        if c.get("choices") and c["choices"][0].get("delta")
    )


def errors(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["error"] for c in chunks if "error" in c]


def reasoning_chunks(chunks: list[dict[str, Any]]) -> int:
    return sum(
        1
        for c in chunks
        if c.get("choices") and (c["choices"][0].get("delta") or {}).get("reasoning_content")
    )


async def test_reasoning_then_content_survive_a_break_in_the_content(tmp_path: Path) -> None:
    body = {**BODY, "model": "sim-1:reasoning"}
    expected = expected_for_request(body)
    assert expected.reasoning and expected.content
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        clean, _ = await wire(d.socket_path, body)
        # Break 6 chunks into the answer, after the whole reasoning.
        sim.schedule_faults([f"reset@{reasoning_chunks(clean) + 6}"])
        chunks, done = await wire(d.socket_path, body)
        assert sim.stats.faults_injected["reset"] == 1
    assert not errors(chunks) and done
    assert joined(chunks, "reasoning_content") == expected.reasoning  # once, not twice
    assert joined(chunks, "content") == expected.content


async def test_a_break_during_reasoning_ends_explicitly(tmp_path: Path) -> None:
    body = {**BODY, "model": "sim-1:reasoning"}
    expected = expected_for_request(body)
    assert expected.reasoning
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@3"])
        chunks, done = await wire(d.socket_path, body)
    (error,) = errors(chunks)
    assert error["code"] == "not_resumable" and not done
    assert expected.reasoning.startswith(joined(chunks, "reasoning_content"))
    assert joined(chunks, "content") == ""


async def test_an_interrupted_refusal_is_continued_once(tmp_path: Path) -> None:
    body = {**BODY, "model": "sim-1:refusal"}
    expected = expected_for_request(body)
    assert expected.refusal
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@4"])
        chunks, done = await wire(d.socket_path, body)
    assert not errors(chunks) and done
    assert joined(chunks, "refusal") == expected.refusal
    assert joined(chunks, "content") == ""


async def test_logprobs_of_the_continuation_are_forwarded(tmp_path: Path) -> None:
    body = {**BODY, "logprobs": True, "top_logprobs": 2}
    expected = expected_for_request(body)
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@9"])
        chunks, done = await wire(d.socket_path, body)
        sim.schedule_faults([])
        clean, _ = await wire(d.socket_path, body)
    assert done and not errors(chunks)
    assert joined(chunks, "content") == expected.content

    def entries(cs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for c in cs:
            for choice in c.get("choices") or ():
                out.extend((choice.get("logprobs") or {}).get("content") or ())
        return out

    got = entries(chunks)
    assert "".join(e["token"] for e in got) == expected.content
    assert got == entries(clean)  # prefill reproduces the uninterrupted logprobs


async def test_non_streaming_responses_carry_logprobs(tmp_path: Path) -> None:
    body = {"model": "sim-1", "messages": MESSAGES, "logprobs": True, "top_logprobs": 1}
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        sim.schedule_faults(["reset@7"])
        async with raw_client(d.socket_path) as client:
            resp = await client.post("/v1/chat/completions", json=body)
    choice = resp.json()["choices"][0]
    content = choice["message"]["content"]
    assert content == expected_for_request(body).content
    tokens = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == content
    assert all(len(t["top_logprobs"]) == 1 for t in tokens)


async def test_usage_after_a_resume_matches_the_uninterrupted_answer(tmp_path: Path) -> None:
    body = {
        **BODY,
        "model": "sim-1:reasoning",
        "stream_options": {"include_usage": True},
    }
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        clean, _ = await wire(d.socket_path, body)
        sim.schedule_faults([f"reset@{reasoning_chunks(clean) + 10}"])
        healed, done = await wire(d.socket_path, body)
    assert done and not errors(healed)
    clean_usage = next(c["usage"] for c in clean if c.get("usage"))
    healed_usage = next(c["usage"] for c in healed if c.get("usage"))
    assert healed_usage["prompt_tokens"] == clean_usage["prompt_tokens"]
    assert healed_usage["completion_tokens"] == clean_usage["completion_tokens"]
    details = healed_usage.get("completion_tokens_details") or {}
    assert (
        details.get("reasoning_tokens")
        == clean_usage["completion_tokens_details"]["reasoning_tokens"]
    )
