"""Which headers reach the upstream: the allow-listed app headers, the upstream's own
headers and query, intact's key; never the app's credentials unless configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from intact.config import ConfigError, build_config, to_dict
from intact.simulator import SimulatedUpstream
from support import MESSAGES, daemon_for, fast_sim, raw_client

pytestmark = pytest.mark.timeout(30)

APP_HEADERS = {
    "OpenAI-Organization": "org-app",
    "OpenAI-Project": "proj-app",
    "OpenAI-Beta": "assistants=v2",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "prompt-caching-2024-07-31",
    "X-Client-Request-Id": "req-from-app",
    "X-Internal-Tenant": "acme",  # not on the allow-list
    "intact-timeout": "20",  # intact's own
}


def app(socket_path: str, **kwargs: Any) -> openai.AsyncOpenAI:
    """The SDK with the app's headers and its own key (which intact must not pass on)."""
    transport = httpx.AsyncHTTPTransport(uds=socket_path)
    return openai.AsyncOpenAI(
        base_url="http://intact/v1",
        api_key=kwargs.pop("api_key", "sk-app-secret"),
        max_retries=0,
        default_headers={**APP_HEADERS, **kwargs.pop("headers", {})},
        http_client=httpx.AsyncClient(transport=transport, timeout=10.0),
    )


async def one_of_each(client: openai.AsyncOpenAI) -> None:
    """A streamed chat completion, the model list and a pass-through request."""
    stream = await client.chat.completions.create(model="sim-1", messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    await client.models.list()
    await client.embeddings.create(model="sim-1", input="x")


def seen_by(sim: SimulatedUpstream) -> dict[str, Any]:
    """Path -> the headers of the last request the simulator saw there."""
    return {record.path: record.headers for record in sim.stats.http_requests}


async def test_allow_listed_app_headers_reach_the_upstream_on_every_route(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        await one_of_each(app(d.socket_path))
    routes = seen_by(sim)
    assert set(routes) == {"/v1/chat/completions", "/v1/models", "/v1/embeddings"}
    for headers in routes.values():
        for name in ("OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta", "anthropic-version",
                     "anthropic-beta", "X-Client-Request-Id"):  # fmt: skip
            assert headers[name] == APP_HEADERS[name]
        assert "X-Internal-Tenant" not in headers
        assert "intact-timeout" not in headers


async def test_the_apps_credentials_never_reach_the_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_API_KEY", "sk-intact")
    async with fast_sim(api_key="sk-intact") as sim:
        ups = [{"name": "sim0", "base_url": sim.base_url, "api_key_env": "SIM_API_KEY"}]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            await one_of_each(app(d.socket_path, headers={"x-api-key": "sk-app", "api-key": "k"}))
    for headers in seen_by(sim).values():
        assert headers.getall("Authorization") == ["Bearer sk-intact"]
        assert "x-api-key" not in headers and "api-key" not in headers


async def test_without_a_key_of_its_own_intact_sends_none(tmp_path: Path) -> None:
    async with fast_sim() as sim, daemon_for(tmp_path, sim) as d:
        await one_of_each(app(d.socket_path))
    for headers in seen_by(sim).values():
        assert "Authorization" not in headers


async def test_forward_api_key_passes_the_apps_own_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_API_KEY", "sk-intact")
    async with fast_sim(api_key="sk-app-secret") as sim:
        ups = [
            {
                "name": "sim0",
                "base_url": sim.base_url,
                "api_key_env": "SIM_API_KEY",
                "forward_api_key": True,
            }
        ]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            await one_of_each(app(d.socket_path))
    for headers in seen_by(sim).values():
        assert headers.getall("Authorization") == ["Bearer sk-app-secret"]


async def test_the_key_goes_in_the_header_the_upstream_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_API_KEY", "sk-intact")
    async with fast_sim() as sim:
        ups = [
            {
                "name": "azure-like",
                "base_url": sim.base_url,
                "api_key_env": "SIM_API_KEY",
                "api_key_header": "api-key",
            }
        ]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            await one_of_each(app(d.socket_path))
    for headers in seen_by(sim).values():
        assert headers.getall("api-key") == ["sk-intact"]
        assert "Authorization" not in headers


async def test_upstream_headers_and_query_reach_the_upstream(tmp_path: Path) -> None:
    async with fast_sim() as sim:
        ups = [
            {
                "name": "azure-like",
                "base_url": sim.base_url,
                "headers": {"X-Route": "eu-west", "OpenAI-Organization": "org-fixed"},
                "query": {"api-version": "2024-10-21"},
            }
        ]
        async with daemon_for(tmp_path, sim, upstreams=ups) as d:
            await one_of_each(app(d.socket_path))
            async with raw_client(d.socket_path) as client:
                await client.get("/v1/models/sim-1?api-version=old&expand=owner")
    for record in sim.stats.http_requests:
        assert record.headers["X-Route"] == "eu-west"
        assert record.headers.getall("OpenAI-Organization") == ["org-fixed"]  # config wins
        assert record.query["api-version"] == "2024-10-21"
    assert dict(sim.stats.http_requests[-1].query) == {
        "api-version": "2024-10-21",
        "expand": "owner",
    }


async def test_the_allow_list_is_configurable(tmp_path: Path) -> None:
    server = {"forward_headers": ["X-Internal-Tenant"]}
    async with fast_sim() as sim, daemon_for(tmp_path, sim, server=server) as d:
        await one_of_each(app(d.socket_path))
    for headers in seen_by(sim).values():
        assert headers["X-Internal-Tenant"] == "acme"
        assert "OpenAI-Organization" not in headers


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"server": {"forward_headers": ["Authorization"]}},
            "server.forward_headers: 'Authorization' is not allowed: an app's credentials are "
            "forwarded only by an upstream's forward_api_key = true",
        ),
        (
            {"server": {"forward_headers": ["intact-app"]}},
            "server.forward_headers: 'intact-app' is not allowed: hop-by-hop, Host and "
            "intact-* headers are never forwarded",
        ),
        (
            {"server": {"forward_headers": ["Bad Header"]}},
            "server.forward_headers[0] = 'Bad Header' is not allowed: expected a string "
            "matching [!#$%&'*+.^_`|~0-9A-Za-z-]+",
        ),
        (
            {"upstreams": [{"headers": {"Transfer-Encoding": "chunked"}}]},
            "upstreams[0].headers: 'Transfer-Encoding' is not allowed: hop-by-hop and framing "
            "headers are set per connection",
        ),
        (
            {"upstreams": [{"headers": {"X-Route": 1}}]},
            "upstreams[0].headers.X-Route = 1 is not allowed: expected a string",
        ),
        (
            {"upstreams": [{"headers": {"X-Route": "a\r\nX-Evil: 1"}}]},
            "upstreams[0].headers.X-Route = 'a\\r\\nX-Evil: 1' is not allowed: expected a "
            "string without control characters",
        ),
        (
            {"upstreams": [{"query": ["api-version"]}]},
            "upstreams[0].query = ['api-version'] is not allowed: expected a table of strings",
        ),
    ],
)
def test_bad_header_settings_stop_the_daemon_naming_the_key(
    raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        build_config(raw)
    assert str(error.value) == message


def test_upstream_header_values_are_never_shown() -> None:
    cfg = build_config(
        {"upstreams": [{"headers": {"api-key": "secret"}, "query": {"api-version": "1"}}]}
    )
    shown = to_dict(cfg)["upstreams"][0]
    assert shown["headers"] == {"api-key": "<redacted>"}
    assert shown["query"] == {"api-version": "1"}
    assert cfg.upstreams[0].headers["api-key"] == "secret"
