"""Telemetry split by app-facing API and by app: every stream metric carries `api` and `app`
(in the SDK's view and in /metrics as Prometheus scrapes it), spans carry `intact.api`,
`intact.app` and the GenAI operation of their API, and OTEL_SEMCONV_STABILITY_OPT_IN picks
the GenAI client metric names.

These drive the `Telemetry` interface directly, as the relay does at request and attempt
boundaries, so each API can be shown before the relay serves it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from intact.resilience.classify import FailureKind, UpstreamFailure
from intact.telemetry.api import (
    REQUEST_APP,
    Api,
    AttemptReason,
    NoTelemetry,
    Outcome,
    RequestSummary,
    Telemetry,
    UpstreamInfo,
)
from intact.telemetry.semconv import GenAiConventions
from telemetry.helpers import Sinks, daemon_config

CLAUDE = UpstreamInfo(name="claude", provider="anthropic", address="api.anthropic.com", port=443)
GPT = UpstreamInfo(name="gpt", provider="openai", address="api.openai.com", port=443)
APPS = [{"name": "alpha", "uids": [4242]}, {"name": "beta", "uids": [4343]}]

# Every stream metric, by its OpenTelemetry name.
STREAM_METRICS = (
    "intact.streams",
    "intact.active_streams",
    "intact.attempts",
    "intact.interruptions",
    "intact.recovered_tokens",
    "intact.stream.duration",
    "intact.recovery.duration",
)
OLD_GENAI = (
    "gen_ai.client.operation.duration",
    "gen_ai.client.operation.time_to_first_chunk",
    "gen_ai.client.token.usage",
)
NEW_GENAI = (
    "gen_ai.client.inference.duration",
    "gen_ai.client.inference.time_to_first_chunk",
    "gen_ai.client.inference.usage.input_tokens",
    "gen_ai.client.inference.usage.output_tokens",
    "gen_ai.client.inference.operation.input_tokens",
    "gen_ai.client.inference.operation.output_tokens",
)


def recovered_request(tel: Telemetry, *, api: str, app: str, upstream: UpstreamInfo) -> None:
    """One request as the relay reports it: a reset after 3 tokens, then a resume that
    delivers 4 more and ends with usage."""
    token = REQUEST_APP.set(app)  # as the app-side listener does around Relay.serve
    try:
        trace = tel.request(headers={}, model="m-1", stream=True, api=api)
    finally:
        REQUEST_APP.reset(token)
    with trace:
        attempt = dict(upstream=upstream, request_model="m-1", prefix_chars=0)
        with trace.attempt(
            number=1, reason=AttemptReason.INITIAL, resume_mode=None, **attempt
        ) as a:
            a.first_chunk()
            failure = UpstreamFailure(
                FailureKind.RESET, "reset", retryable=True, breaker_failure=True
            )
            a.failed(failure, response_id=None, response_model=None, delivered_tokens=3)
        trace.recovered(upstream=upstream.name, seconds=0.2)
        with trace.attempt(number=2, reason=AttemptReason.RESUME, resume_mode="prefill",
                           **attempt) as a:  # fmt: skip
            a.first_chunk()
            a.succeeded(response_id="r-1", response_model="m-1", finish_reasons=["stop"],
                        input_tokens=10, output_tokens=5, delivered_tokens=4)  # fmt: skip
        trace.finish(
            RequestSummary(
                outcome=Outcome.RECOVERED, model="m-1", stream=True, upstream=upstream.name,
                attempts=2, resumes=1, interruptions=[FailureKind.RESET], completion_tokens=7,
                recovered_tokens=4, duration=0.5, api=api,
            )
        )  # fmt: skip


def scraped_labels(sinks: Sinks) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets of its samples, from the Prometheus registry."""
    text = generate_latest(sinks.runtime.registry).decode()
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def nonzero(sinks: Sinks, name: str, *keys: str) -> set[tuple[Any, ...]]:
    return set(sinks.counts(name, *keys))


def test_the_interface_takes_an_api_that_defaults_to_chat() -> None:
    assert [api.value for api in Api] == ["chat", "responses", "messages", "passthrough"]
    assert RequestSummary(Outcome.COMPLETED, "m", True, "u", 1, 0).api == "chat"
    NoTelemetry().request(headers={}, model="m", stream=True)
    NoTelemetry().request(headers={}, model="m", stream=True, api="messages")


def test_every_stream_metric_is_split_by_api_and_app(tmp_path: Path, start_sinks: Any) -> None:
    sinks: Sinks = start_sinks(daemon_config(tmp_path, "http://127.0.0.1:9/v1", apps=APPS))
    tel = sinks.runtime.telemetry
    recovered_request(tel, api="messages", app="alpha", upstream=CLAUDE)
    recovered_request(tel, api="responses", app="beta", upstream=GPT)
    recovered_request(tel, api="chat", app="somebody-else", upstream=GPT)  # not an [[apps]] name

    expected = {("messages", "alpha"), ("responses", "beta"), ("chat", "other")}
    for name in STREAM_METRICS:
        keys = {(attrs.get("api"), attrs.get("app")) for attrs, _ in sinks.metric(name)}
        assert keys == expected, name
    for name in STREAM_METRICS[:1] + STREAM_METRICS[2:]:  # active streams are back to 0
        assert nonzero(sinks, name, "api", "app") == expected, name
    assert sinks.counts("intact.streams", "api", "app", "outcome", "upstream") == {
        ("messages", "alpha", "recovered", "claude"): 1,
        ("responses", "beta", "recovered", "gpt"): 1,
        ("chat", "other", "recovered", "gpt"): 1,
    }
    assert sinks.counts("intact.recovered_tokens", "api", "app") == {k: 4 for k in expected}
    # The GenAI client metrics too, with the API's operation and the upstream's provider.
    for name in OLD_GENAI:
        assert nonzero(sinks, name, "api", "app") == expected, name
    keys = ("api", "gen_ai.operation.name", "gen_ai.provider.name", "error.type")
    durations = nonzero(sinks, "gen_ai.client.operation.duration", *keys)
    assert durations == {
        (api, "chat", provider, error)
        for api, provider in (
            ("messages", "anthropic"),
            ("responses", "openai"),
            ("chat", "openai"),
        )
        for error in (None, "reset")
    }
    # The separate per-app series keep counting as before.
    assert sinks.counts("intact.app.streams", "app", "outcome") == {
        ("alpha", "recovered"): 1, ("beta", "recovered"): 1, ("other", "recovered"): 1,
    }  # fmt: skip

    # The same labels as Prometheus scrapes them.
    samples = scraped_labels(sinks)
    for sample in (
        "intact_streams_total",
        "intact_active_streams",
        "intact_attempts_total",
        "intact_interruptions_total",
        "intact_recovered_tokens_total",
        "intact_stream_duration_seconds_count",
        "intact_recovery_duration_seconds_count",
        "gen_ai_client_operation_duration_seconds_count",
        "gen_ai_client_operation_time_to_first_chunk_seconds_count",
        "gen_ai_client_token_usage_count",
    ):
        pairs = {(labels.get("api"), labels.get("app")) for labels in samples[sample]}
        assert expected <= pairs, sample
        assert {api for api, _ in pairs} <= {"chat", "responses", "messages"}, sample
        assert {app for _, app in pairs} <= {"alpha", "beta", "other"}, sample

    done = [line for line in sinks.log_lines() if line["event"] == "request_done"]
    assert [(line["api"], line["app"]) for line in done] == [
        ("messages", "alpha"), ("responses", "beta"), ("chat", "other"),
    ]  # fmt: skip


def test_an_unknown_api_is_labelled_other(tmp_path: Path, start_sinks: Any) -> None:
    sinks: Sinks = start_sinks(daemon_config(tmp_path, "http://127.0.0.1:9/v1"))
    recovered_request(sinks.runtime.telemetry, api="/v1/whatever", app="x", upstream=GPT)
    assert nonzero(sinks, "intact.streams", "api") == {("other",)}
    (server,) = [s for s in sinks.finished_spans() if s.kind.name == "SERVER"]
    assert server.name == "POST"
    assert server.attributes is not None and "http.route" not in server.attributes


@pytest.mark.parametrize(
    ("api", "route"),
    [
        ("chat", "/v1/chat/completions"),
        ("responses", "/v1/responses"),
        ("messages", "/v1/messages"),
    ],
)
def test_spans_name_the_api_and_app_and_the_genai_operation(
    tmp_path: Path, start_sinks: Any, api: str, route: str
) -> None:
    sinks: Sinks = start_sinks(daemon_config(tmp_path, "http://127.0.0.1:9/v1", apps=APPS))
    recovered_request(sinks.runtime.telemetry, api=api, app="alpha", upstream=CLAUDE)
    spans = sinks.finished_spans()
    (server,) = [s for s in spans if s.kind.name == "SERVER"]
    attempts = [s for s in spans if s.kind.name == "CLIENT"]
    assert server.name == f"POST {route}"
    assert server.attributes is not None
    assert server.attributes["http.route"] == route
    assert server.attributes["intact.api"] == api
    assert server.attributes["intact.app"] == "alpha"
    assert len(attempts) == 2
    for span in attempts:
        attrs = span.attributes
        assert attrs is not None
        # Chat Completions, Responses and Messages are all the GenAI "chat" operation.
        assert span.name == "chat m-1"
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "anthropic"
        assert attrs["intact.api"] == api
        assert attrs["intact.app"] == "alpha"


@pytest.mark.parametrize(
    ("value", "conventions"),
    [
        ("", GenAiConventions.OLD),
        ("http", GenAiConventions.OLD),
        ("gen_ai_latest_experimental", GenAiConventions.LATEST),
        ("http/dup, gen_ai_latest_experimental ", GenAiConventions.LATEST),
        ("GEN_AI_LATEST_EXPERIMENTAL", GenAiConventions.LATEST),
        ("gen_ai_latest_experimental/dup", GenAiConventions.BOTH),
        ("gen_ai_latest_experimental,gen_ai_latest_experimental/dup", GenAiConventions.BOTH),
        ("gen_ai_latest", GenAiConventions.OLD),
    ],
)
def test_the_opt_in_variable_is_a_comma_separated_list(
    value: str, conventions: GenAiConventions
) -> None:
    assert GenAiConventions.from_env({"OTEL_SEMCONV_STABILITY_OPT_IN": value}) is conventions
    assert GenAiConventions.from_env({}) is GenAiConventions.OLD


def genai_names(sinks: Sinks) -> set[str]:
    data = sinks.reader.get_metrics_data()
    assert data is not None
    return {
        m.name
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name.startswith("gen_ai.")
    }


OLD_PROMETHEUS = {
    "gen_ai_client_operation_duration_seconds_bucket",
    "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
    "gen_ai_client_token_usage_bucket",
}
NEW_PROMETHEUS = {
    "gen_ai_client_inference_duration_seconds_bucket",
    "gen_ai_client_inference_time_to_first_chunk_seconds_bucket",
    "gen_ai_client_inference_usage_input_tokens_total",
    "gen_ai_client_inference_usage_output_tokens_total",
    "gen_ai_client_inference_operation_input_tokens_bucket",
    "gen_ai_client_inference_operation_output_tokens_bucket",
}


@pytest.mark.parametrize(
    ("environ", "old", "new"),
    [
        ({}, True, False),
        ({"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental"}, False, True),
        ({"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental/dup"}, True, True),
    ],
    ids=["default", "opted-in", "dup"],
)
def test_genai_metric_names_follow_the_opt_in(
    tmp_path: Path, start_sinks: Any, environ: Mapping[str, str], old: bool, new: bool
) -> None:
    sinks: Sinks = start_sinks(
        daemon_config(tmp_path, "http://127.0.0.1:9/v1", apps=APPS), environ=environ
    )
    recovered_request(sinks.runtime.telemetry, api="messages", app="alpha", upstream=CLAUDE)

    assert genai_names(sinks) == set(OLD_GENAI if old else ()) | set(NEW_GENAI if new else ())
    scraped = set(scraped_labels(sinks))
    assert scraped & OLD_PROMETHEUS == (OLD_PROMETHEUS if old else set())
    assert scraped & NEW_PROMETHEUS == (NEW_PROMETHEUS if new else set())
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", name) for name in scraped}
    assert {name for name in families if name.startswith("gen_ai_")} == {
        re.sub(r"_(bucket|total)$", "", name)
        for name in (OLD_PROMETHEUS if old else set()) | (NEW_PROMETHEUS if new else set())
    }
    # intact's own metrics do not depend on it.
    assert sinks.counts("intact.streams", "api") == {("messages",): 1}
    if not new:
        return
    # Durations keep their attributes (error.type on the failed attempt) under the new names.
    assert sinks.counts("gen_ai.client.inference.duration", "error.type", "api", "app") == {
        (None, "messages", "alpha"): 1, ("reset", "messages", "alpha"): 1,
    }  # fmt: skip
    assert sinks.counts("gen_ai.client.inference.time_to_first_chunk", "api") == {("messages",): 2}
    # Token usage: a counter per token type, by modality (not reported: unknown), and a
    # per-operation histogram without token attributes.
    for name, tokens in (("input", 10), ("output", 5)):
        counter = sinks.metric(f"gen_ai.client.inference.usage.{name}_tokens")
        assert [(attrs["gen_ai.token.modality"], value) for attrs, value in counter] == [
            ("unknown", tokens)
        ]
        assert "gen_ai.token.type" not in counter[0][0]
        assert counter[0][0]["gen_ai.operation.name"] == "chat"
        assert counter[0][0]["gen_ai.provider.name"] == "anthropic"
        assert counter[0][0]["api"] == "messages" and counter[0][0]["app"] == "alpha"
        histogram = sinks.metric(f"gen_ai.client.inference.operation.{name}_tokens")
        assert len(histogram) == 1 and histogram[0][1] == 1
        assert not {"gen_ai.token.type", "gen_ai.token.modality"} & set(histogram[0][0])
