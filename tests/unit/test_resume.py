"""Which resume mode a request gets: the upstream's default by host, its config, and the
app's intact-resume header; and the continuation request each mode builds."""

from __future__ import annotations

import pytest

from intact.config import Overrides, build_config, default_resume_mode, resolve
from intact.errors import AppError
from intact.recovery.resume import effective_resume_mode, resume_request
from intact.relay.request import ChatRequest, parse_chat_request

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'


# --- defaults by host -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "mode"),
    [
        ("https://api.openai.com/v1", "instruct"),
        ("https://my-resource.openai.azure.com/openai/deployments/gpt", "instruct"),
        ("https://api.anthropic.com/v1/", "instruct"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/", "instruct"),
        ("https://api.deepseek.com", "instruct"),
        ("https://api.deepseek.com/v1", "instruct"),
        ("https://api.deepseek.com/beta", "prefix"),
        ("https://api.deepseek.com/beta/", "prefix"),
        ("https://api.mistral.ai/v1", "prefix"),
        ("https://API.MISTRAL.AI/v1", "prefix"),
        # Hosts intact cannot know anything about: the mode every chat server follows.
        ("http://127.0.0.1:8000/v1", "instruct"),
        ("http://localhost:11434/v1", "instruct"),
        ("http://10.0.0.5:8000/v1", "instruct"),
        ("https://openai.example.com/v1", "instruct"),
        ("https://evil-api.openai.com.example.net/v1", "instruct"),
    ],
)
def test_default_resume_mode_depends_on_the_upstream_host(base_url: str, mode: str) -> None:
    assert default_resume_mode(base_url) == mode


def test_upstream_without_resume_gets_its_hosts_mode_and_an_explicit_one_wins() -> None:
    cfg = build_config(
        {
            "upstreams": [
                {"name": "mistral", "base_url": "https://api.mistral.ai/v1"},
                {"name": "vllm", "base_url": "http://10.0.0.5:8000/v1", "resume": "prefill"},
                {"name": "local", "base_url": "http://127.0.0.1:8000/v1"},
                {"name": "openai"},
            ]
        }
    )
    assert [(u.name, u.resume) for u in cfg.upstreams] == [
        ("mistral", "prefix"),
        ("vllm", "prefill"),
        ("local", "instruct"),
        ("openai", "instruct"),
    ]


def test_flag_upstream_resolves_by_host_unless_resume_is_given() -> None:
    env: dict[str, str] = {}
    by_host = resolve(Overrides(upstream="https://api.openai.com/v1"), environ=env)
    assert by_host.upstreams[0].resume == "instruct"
    explicit = resolve(Overrides(upstream="http://127.0.0.1:8000/v1", resume="prefill"), env)
    assert explicit.upstreams[0].resume == "prefill"
    assert resolve(environ=env).upstreams[0].resume == "instruct"  # no upstream configured


# --- the app's header -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "requested", "effective"),
    [
        ("prefill", None, "prefill"),
        ("instruct", None, "instruct"),
        ("prefill", "off", "off"),
        ("instruct", "off", "off"),
        ("prefill", "instruct", "instruct"),
        ("prefill", "restart", "restart"),
        ("prefix", "instruct", "instruct"),
        ("instruct", "restart", "restart"),
        ("instruct", "instruct", "instruct"),
        # What the upstream cannot do is refused, not silently done another way.
        ("instruct", "prefill", "off"),
        ("instruct", "prefix", "off"),
        ("prefill", "prefix", "off"),
        ("prefix", "prefill", "off"),
        ("restart", "instruct", "off"),
    ],
)
def test_effective_resume_mode_is_bounded_by_the_upstream(
    upstream: str, requested: str | None, effective: str
) -> None:
    assert effective_resume_mode(upstream, requested) == effective


@pytest.mark.parametrize("value", ["off", "prefill", "prefix", "instruct", "restart", " OFF "])
def test_resume_header_is_parsed_into_the_request(value: str) -> None:
    req = parse_chat_request(BODY, {"intact-resume": value})
    assert isinstance(req, ChatRequest)
    assert req.resume == value.strip().lower()


def test_request_without_resume_header_has_no_resume_choice() -> None:
    req = parse_chat_request(BODY, {})
    assert isinstance(req, ChatRequest) and req.resume is None


@pytest.mark.parametrize("value", ["", "on", "prefil", "auto"])
def test_invalid_resume_header_is_an_openai_shaped_400(value: str) -> None:
    err = parse_chat_request(BODY, {"intact-resume": value})
    assert isinstance(err, AppError)
    assert (err.status, err.code, err.type) == (400, "invalid_resume", "invalid_request_error")
    assert err.message == (
        "Header intact-resume must be one of off, prefill, prefix, instruct, restart, "
        f"got {value!r}."
    )


# --- the continuation request ---------------------------------------------------------------


ORIGINAL = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


def test_prefill_continues_the_final_assistant_message() -> None:
    body = resume_request(
        ORIGINAL, "Once upon", mode="prefill", generated_tokens=2, instruct_prompt="go on"
    )
    assert body["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
    assert body["max_tokens"] == 18
    assert ORIGINAL["messages"] == [{"role": "user", "content": "hi"}]  # not modified


@pytest.mark.parametrize("mode", ["restart", "off"])
def test_modes_without_a_partial_send_the_original_request(mode: str) -> None:
    body = resume_request(ORIGINAL, "", mode=mode, generated_tokens=0, instruct_prompt="go on")
    assert body == ORIGINAL and body is not ORIGINAL
