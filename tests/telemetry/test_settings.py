"""Start-up decisions without a network: OTLP destinations, the resource, label caps."""

from __future__ import annotations

import pytest

from intact.config import ConfigError, TelemetryConfig, build_config
from intact.telemetry.export import OtlpTarget, resolve_otlp
from intact.telemetry.metrics import ModelLabels
from intact.telemetry.runtime import build_resource


def targets(env: dict[str, str], **config: object) -> list[tuple[str, str, str]]:
    cfg = build_config({"telemetry": config}).telemetry
    return [(t.signal, t.protocol, t.endpoint) for t in resolve_otlp(cfg, env)]


def test_no_endpoint_anywhere_means_no_otlp_export() -> None:
    assert targets({}) == []


def test_config_endpoint_feeds_both_signals_over_grpc_by_default() -> None:
    assert targets({}, otlp_endpoint="http://collector:4317") == [
        ("traces", "grpc", "http://collector:4317"),
        ("metrics", "grpc", "http://collector:4317"),
    ]


def test_http_protobuf_appends_the_signal_paths_to_a_base_endpoint() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}  # fmt: skip
    assert targets(env) == [
        ("traces", "http/protobuf", "http://collector:4318/v1/traces"),
        ("metrics", "http/protobuf", "http://collector:4318/v1/metrics"),
    ]


def test_signal_endpoints_are_used_as_given_and_enable_only_their_signal() -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/custom",
           "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}  # fmt: skip
    assert targets(env) == [("traces", "http/protobuf", "http://tempo:4318/custom")]


def test_environment_protocol_overrides_the_config_protocol() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert targets(env, otlp_endpoint="http://c:4318", otlp_protocol="grpc")[0] == (
        "traces", "http/protobuf", "http://c:4318/v1/traces",
    )  # fmt: skip


def test_config_endpoint_wins_over_the_environment_endpoint() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://elsewhere:4317"}
    assert {t[2] for t in targets(env, otlp_endpoint="http://mine:4317")} == {"http://mine:4317"}


def test_exporter_none_and_sdk_disabled_turn_signals_off() -> None:
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    assert [t[0] for t in targets({**base, "OTEL_TRACES_EXPORTER": "none"})] == ["metrics"]
    assert targets({**base, "OTEL_SDK_DISABLED": "true"}) == []


def test_an_unsupported_protocol_stops_start_up_naming_the_variable() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}  # fmt: skip
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL = 'http/json'"):
        resolve_otlp(TelemetryConfig(), env)


def test_target_is_a_plain_value() -> None:
    assert OtlpTarget("traces", "grpc", "http://c:4317", "x") == OtlpTarget(
        "traces", "grpc", "http://c:4317", "x"
    )


def test_resource_defaults_to_intact_and_honours_otel_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    attrs = build_resource().attributes
    assert attrs["service.name"] == "intact"
    assert attrs["service.version"]

    monkeypatch.setenv("OTEL_SERVICE_NAME", "intact-sidecar")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    attrs = build_resource().attributes
    assert attrs["service.name"] == "intact-sidecar"
    assert attrs["deployment.environment.name"] == "test"


def test_model_labels_keep_the_first_models_per_upstream_then_say_other() -> None:
    labels = ModelLabels(limit=2)
    assert [labels.label("a", m) for m in ("m1", "m2", "m3", "m1")] == ["m1", "m2", "other", "m1"]
    assert labels.label("b", "m3") == "m3"  # each upstream has its own allowance
