"""Bad input gets an OpenAI-shaped error and costs no upstream call; the daemon keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import MESSAGES, daemon_for, fast_sim, raw_client, sdk, stream_chat


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"model": "sim-1"}', 400, "missing_messages"),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "sim-1", "messages": []}',
            400,
            "invalid_messages",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "sim-1", "messages": ["hi"]}',
            400,
            "invalid_messages",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}]}',
            400,
            "missing_model",
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            400,
            "invalid_type",
        ),
        ("GET", "/v1/chat/completions", b"", 405, "method_not_allowed"),
        ("POST", "/v1/models", b"", 405, "method_not_allowed"),
        ("GET", "/v1/nothing-here", b"", 404, "not_found"),
        ("POST", "/v2/chat/completions", b"{}", 404, "not_found"),
    ],
)
async def test_bad_request_gets_status_and_openai_error_body(
    tmp_path: Path, method: str, path: str, body: bytes, status: int, code: str
) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        async with raw_client(d.socket_path) as client:
            resp = await client.request(
                method, path, content=body, headers={"Content-Type": "application/json"}
            )
        assert resp.status_code == status
        error = resp.json()["error"]
        assert set(error) >= {"message", "type", "code"}
        assert error["code"] == code and error["message"]
        assert sim.stats.chat_requests == 0
        # ...and the daemon keeps serving.
        assert (await stream_chat(sdk(d.socket_path))).error is None


async def test_body_over_the_limit_gets_413(tmp_path: Path) -> None:
    big = {"model": "sim-1", "messages": [{"role": "user", "content": "x" * 20_000}]}
    async with fast_sim() as sim, daemon_for(tmp_path, sim, server={"max_body_bytes": 16_384}) as d:
        async with raw_client(d.socket_path) as client:
            resp = await client.post("/v1/chat/completions", json=big)
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "request_too_large"
        assert sim.stats.chat_requests == 0
        assert (await stream_chat(sdk(d.socket_path), MESSAGES)).error is None


async def test_bad_intact_timeout_header_is_refused(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        seen = await stream_chat(sdk(d.socket_path), extra_headers={"intact-timeout": "soon"})
    assert seen.error is not None and getattr(seen.error, "status_code", None) == 400
