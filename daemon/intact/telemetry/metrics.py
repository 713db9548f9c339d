"""Every metric intact exports: names, units, buckets and label sets, in this one module.

Dashboards and alerts depend on these names; renaming one is a breaking change. The
Prometheus name (after the OpenTelemetry exporter's translation: dots -> underscores, unit
suffix, ``_total`` for counters) is given next to each OpenTelemetry name.

Stream outcomes (``intact_streams_total{outcome}``):
  completed  no interruption
  recovered  interrupted, then delivered whole (resume + splice)
  failed     ended with an explicit error (HTTP error, or an in-band SSE error event)
  rejected   the upstream refused the request with a 4xx that was passed through
  cancelled  the app went away

Interruption rate = (recovered + failed) / (completed + recovered + failed); rejected and
cancelled requests say nothing about stream health and stay out of it.

Every stream metric (streams, active streams, attempts, interruptions, recovered tokens, the
stream, recovery and GenAI client histograms) carries ``api`` (the app-facing API: chat,
responses or messages) and ``app`` (who asked), both fixed when the request starts.

Label values are bounded: upstream names come from the config, kinds/reasons/results/outcomes
and ``api`` are enums (an unknown API is "other"), the model label is the request's model
capped per upstream (``ModelLabels``), and the app label is an ``[[apps]]`` name or "other"
(``AppLabels``), chosen by the peer's uid, never by free text. Never prompts, ids or other
user data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation
from opentelemetry.util.types import AttributeValue

from intact.config import OTHER_APP
from intact.resilience.breaker import BreakerState
from intact.resilience.classify import FailureKind
from intact.telemetry.api import Api, Outcome, RefusalReason, UpstreamInfo
from intact.telemetry.semconv import (
    GENAI_OPERATION_NAME,
    GENAI_PROVIDER_NAME,
    GENAI_REQUEST_MODEL,
    GENAI_TOKEN_MODALITY,
    GENAI_TOKEN_TYPE,
    SERVER_ADDRESS,
    SERVER_PORT,
    TOKEN_MODALITY_UNKNOWN,
    GenAiConventions,
    operation_name,
)

Attrs = Mapping[str, AttributeValue]

# --- instrument names (OpenTelemetry name; the Prometheus name after "->") ---------------
STREAMS: Final = "intact.streams"
# -> intact_streams_total{outcome,upstream,model,served_model,api,app}
INTERRUPTIONS: Final = (
    "intact.interruptions"  # -> intact_interruptions_total{kind,upstream,api,app}
)
ATTEMPTS: Final = "intact.attempts"  # -> intact_attempts_total{upstream,reason,result,api,app}
RECOVERED_TOKENS: Final = "intact.recovered_tokens"
# -> intact_recovered_tokens_total{upstream,api,app}
BREAKER_STATE: Final = "intact.breaker.state"  # -> intact_breaker_state{upstream}
BREAKER_TRANSITIONS: Final = "intact.breaker.transitions"
# -> intact_breaker_transitions_total{upstream,to}
RETRY_BUDGET_EXHAUSTED: Final = "intact.retry_budget.exhausted"
# -> intact_retry_budget_exhausted_total{upstream}
HEDGES: Final = "intact.hedges"  # -> intact_hedges_total{upstream,result}: won | lost
HEDGE_RESULTS: Final = ("won", "lost")
ACTIVE_STREAMS: Final = "intact.active_streams"  # -> intact_active_streams{api,app} (a gauge)
# Per app (an [[apps]] name or "other"; see ``AppLabels``):
APP_STREAMS: Final = "intact.app.streams"  # -> intact_app_streams_total{app,outcome}
APP_ACTIVE_STREAMS: Final = "intact.app.active_streams"  # -> intact_app_active_streams{app}
APP_REFUSED: Final = "intact.app.refused"  # -> intact_app_refused_total{app,reason}
# Pass-through requests (every /v1/ route but the streamed APIs and the model list):
PASSTHROUGH_REQUESTS: Final = "intact.passthrough.requests"
# -> intact_passthrough_requests_total{api,endpoint,upstream,outcome}
STREAM_DURATION: Final = "intact.stream.duration"
# -> intact_stream_duration_seconds{outcome,upstream,api,app}
RECOVERY_DURATION: Final = "intact.recovery.duration"
# -> intact_recovery_duration_seconds{upstream,api,app}

# GenAI client metrics. Attributes: gen_ai.operation.name, gen_ai.provider.name,
# gen_ai.request.model, server.address, server.port, and intact's upstream, api and app;
# error.type on failed attempts.
#
# By default, those of semantic conventions v1.41.0, the last release that carried GenAI in
# open-telemetry/semantic-conventions (gen_ai.token.type on token usage):
GENAI_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
# -> gen_ai_client_operation_duration_seconds
GENAI_TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # -> gen_ai_client_token_usage
GENAI_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"
# -> gen_ai_client_operation_time_to_first_chunk_seconds
#
# With OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental instead (both with
# gen_ai_latest_experimental/dup; see semconv.GenAiConventions): the names of the GenAI
# conventions' own repository, open-telemetry/semantic-conventions-genai v0.1.0
# (docs/gen-ai/client-inference.md, docs/gen-ai/non-normative/migration.md). Durations are
# renamed with unchanged attributes; the token usage histogram is replaced by counters per
# token type (gen_ai.token.modality "unknown": upstreams do not break usage down by modality)
# and per-operation histograms (no token attribute).
GENAI_INFERENCE_DURATION: Final = "gen_ai.client.inference.duration"
# -> gen_ai_client_inference_duration_seconds
GENAI_INFERENCE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.inference.time_to_first_chunk"
# -> gen_ai_client_inference_time_to_first_chunk_seconds
GENAI_INFERENCE_INPUT_TOKENS: Final = "gen_ai.client.inference.usage.input_tokens"
# -> gen_ai_client_inference_usage_input_tokens_total
GENAI_INFERENCE_OUTPUT_TOKENS: Final = "gen_ai.client.inference.usage.output_tokens"
# -> gen_ai_client_inference_usage_output_tokens_total
GENAI_INFERENCE_OPERATION_INPUT_TOKENS: Final = "gen_ai.client.inference.operation.input_tokens"
# -> gen_ai_client_inference_operation_input_tokens
GENAI_INFERENCE_OPERATION_OUTPUT_TOKENS: Final = "gen_ai.client.inference.operation.output_tokens"
# -> gen_ai_client_inference_operation_output_tokens

# --- label keys ---------------------------------------------------------------------------
UPSTREAM: Final = "upstream"
API: Final = "api"  # chat | responses | messages (streams); passthrough (pass-through)
ENDPOINT: Final = "endpoint"
API_PASSTHROUGH: Final = Api.PASSTHROUGH.value
# The app-facing APIs intact streams (every stream metric's api label), and the label of
# anything else the relay might report.
STREAM_APIS: Final = (Api.CHAT.value, Api.RESPONSES.value, Api.MESSAGES.value)
OTHER_API: Final = "other"
_API_LABELS: Final = frozenset(api.value for api in Api)
APP: Final = "app"
MODEL: Final = "model"
OUTCOME: Final = "outcome"
KIND: Final = "kind"
REASON: Final = "reason"
RESULT: Final = "result"
SERVED_MODEL: Final = "served_model"
TO: Final = "to"
RESULT_SUCCESS: Final = "success"
RESULT_CANCELLED: Final = "cancelled"
RESULT_INTERNAL_ERROR: Final = "internal_error"  # a bug in intact, not an upstream failure
OTHER_MODEL: Final = "other"

BREAKER_STATE_LABELS: Final[Mapping[BreakerState, str]] = {
    BreakerState.CLOSED: "closed",
    BreakerState.HALF_OPEN: "half_open",
    BreakerState.OPEN: "open",
}

# --- buckets ------------------------------------------------------------------------------
GENAI_DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
GENAI_TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
# Whole app requests: a long answer streams for minutes (total_timeout defaults to 600 s).
STREAM_DURATION_BUCKETS: Final = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0,
)  # fmt: skip
# Interruption detected -> first continuation content delivered: backoff + TTFT of a resume.
RECOVERY_DURATION_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

BreakerStates = Callable[[], Iterable[tuple[str, BreakerState]]]


def api_label(api: str) -> str:
    """The ``api`` label of an API the relay reported: an ``Api`` value, else "other"."""
    return api if api in _API_LABELS else OTHER_API


class ModelLabels:
    """Caps the model label: the first ``limit`` models seen per upstream keep their name."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: dict[str, set[str]] = {}

    def label(self, upstream: str, model: str) -> str:
        seen = self._seen.setdefault(upstream, set())
        if model in seen:
            return model
        if len(seen) < self._limit:
            seen.add(model)
            return model
        return OTHER_MODEL


class AppLabels:
    """Caps the app label: configured app names keep their name, anything else is 'other'."""

    __slots__ = ("names",)

    def __init__(self, names: Iterable[str]) -> None:
        self.names = (*dict.fromkeys(n for n in names if n != OTHER_APP), OTHER_APP)

    def label(self, app: str) -> str:
        return app if app in self.names else OTHER_APP


GenAiLabels = tuple[UpstreamInfo, str, str, str]
"""(upstream, capped model, api, app): what an attempt's GenAI attribute sets are built from."""


class Instruments:
    """The instruments, created once, and the attribute sets they are recorded with.

    Attribute dicts are built once per distinct label combination and reused, so recording
    at an attempt boundary is a dict lookup plus the SDK's own aggregation. ``conventions``
    picks the GenAI client metric names (``GenAiConventions``).
    """

    def __init__(
        self,
        meter: Meter,
        breaker_states: BreakerStates,
        conventions: GenAiConventions = GenAiConventions.OLD,
    ) -> None:
        self._breaker_states = breaker_states
        self.conventions = conventions
        self.streams = meter.create_counter(
            STREAMS, unit="{stream}", description="App requests by how they ended."
        )
        self.interruptions = meter.create_counter(
            INTERRUPTIONS,
            unit="{interruption}",
            description="Failed upstream attempts (any kind but http_4xx rejections).",
        )
        self.attempts = meter.create_counter(
            ATTEMPTS, unit="{attempt}", description="Upstream attempts by reason and result."
        )
        self.recovered_tokens = meter.create_counter(
            RECOVERED_TOKENS,
            unit="{token}",
            description="Tokens delivered to apps by resume attempts (text saved by recovery).",
        )
        self.breaker_transitions = meter.create_counter(
            BREAKER_TRANSITIONS, unit="{transition}", description="Circuit breaker transitions."
        )
        self.retry_budget_exhausted = meter.create_counter(
            RETRY_BUDGET_EXHAUSTED,
            unit="{request}",
            description="Retries and resumes refused: the upstream's retry budget was spent.",
        )
        self.hedges = meter.create_counter(
            HEDGES,
            unit="{attempt}",
            description="Hedged attempts (the same request sent to a second upstream because "
            "the first was slow to its first token), by upstream hedged to and whether the "
            "hedge answered first.",
        )
        self.active_streams = meter.create_up_down_counter(
            ACTIVE_STREAMS, unit="{stream}", description="App requests being served now."
        )
        self.app_streams = meter.create_counter(
            APP_STREAMS, unit="{stream}", description="App requests by app and how they ended."
        )
        self.app_active_streams = meter.create_up_down_counter(
            APP_ACTIVE_STREAMS, unit="{stream}", description="App requests being served now."
        )
        self.app_refused = meter.create_counter(
            APP_REFUSED,
            unit="{request}",
            description="Requests and connections refused before relaying, by app and reason.",
        )
        self.passthrough_requests = meter.create_counter(
            PASSTHROUGH_REQUESTS,
            unit="{request}",
            description="Pass-through requests (embeddings, audio, files, ...) by endpoint, "
            "upstream and how they ended.",
        )
        self.stream_duration = meter.create_histogram(
            STREAM_DURATION,
            unit="s",
            description="Duration of whole app requests, every attempt included.",
            explicit_bucket_boundaries_advisory=STREAM_DURATION_BUCKETS,
        )
        self.recovery_duration = meter.create_histogram(
            RECOVERY_DURATION,
            unit="s",
            description="From an interruption to the first continuation content delivered.",
            explicit_bucket_boundaries_advisory=RECOVERY_DURATION_BUCKETS,
        )
        self._create_genai(meter, conventions)
        meter.create_observable_gauge(
            BREAKER_STATE,
            callbacks=[self._observe_breakers],
            unit="1",
            description="Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        )
        self._cache: dict[tuple[tuple[str, AttributeValue], ...], Attrs] = {}

    def _create_genai(self, meter: Meter, conventions: GenAiConventions) -> None:
        durations: list[Histogram] = []
        first_chunks: list[Histogram] = []
        self.token_usage: Histogram | None = None
        self.input_tokens: Counter | None = None
        self.output_tokens: Counter | None = None
        self.operation_input_tokens: Histogram | None = None
        self.operation_output_tokens: Histogram | None = None
        if GenAiConventions.OLD in conventions:
            durations.append(
                meter.create_histogram(
                    GENAI_OPERATION_DURATION,
                    unit="s",
                    description="GenAI operation duration (one upstream attempt).",
                    explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS,
                )
            )
            first_chunks.append(
                meter.create_histogram(
                    GENAI_TIME_TO_FIRST_CHUNK,
                    unit="s",
                    description="Time from sending an upstream attempt to its first chunk.",
                    explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS,
                )
            )
            self.token_usage = meter.create_histogram(
                GENAI_TOKEN_USAGE,
                unit="{token}",
                description="Input and output tokens used, as reported by the upstream.",
                explicit_bucket_boundaries_advisory=GENAI_TOKEN_BUCKETS,
            )
        if GenAiConventions.LATEST in conventions:
            durations.append(
                meter.create_histogram(
                    GENAI_INFERENCE_DURATION,
                    unit="s",
                    description="GenAI inference duration (one upstream attempt).",
                    explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS,
                )
            )
            first_chunks.append(
                meter.create_histogram(
                    GENAI_INFERENCE_TIME_TO_FIRST_CHUNK,
                    unit="s",
                    description="Time from sending an upstream attempt to its first chunk.",
                    explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS,
                )
            )
            self.input_tokens = meter.create_counter(
                GENAI_INFERENCE_INPUT_TOKENS,
                unit="{token}",
                description="Input (prompt) tokens used, as reported by the upstream.",
            )
            self.output_tokens = meter.create_counter(
                GENAI_INFERENCE_OUTPUT_TOKENS,
                unit="{token}",
                description="Output (completion) tokens used, as reported by the upstream.",
            )
            self.operation_input_tokens = meter.create_histogram(
                GENAI_INFERENCE_OPERATION_INPUT_TOKENS,
                unit="{token}",
                description="Input tokens per upstream attempt, as reported by the upstream.",
                explicit_bucket_boundaries_advisory=GENAI_TOKEN_BUCKETS,
            )
            self.operation_output_tokens = meter.create_histogram(
                GENAI_INFERENCE_OPERATION_OUTPUT_TOKENS,
                unit="{token}",
                description="Output tokens per upstream attempt, as reported by the upstream.",
                explicit_bucket_boundaries_advisory=GENAI_TOKEN_BUCKETS,
            )
        self.operation_durations: tuple[Histogram, ...] = tuple(durations)
        self.first_chunk_times: tuple[Histogram, ...] = tuple(first_chunks)

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(int(state), self.labels(UPSTREAM, name))
            for name, state in self._breaker_states()
        ]

    def preset_upstream(self, upstream: str) -> None:
        """Start the rare-event counters of a configured upstream at 0.

        ``increase()`` over a series that appears with its first event misses that event, and
        alerts such as "a breaker opened" fire exactly on the first one.
        """
        for state in BREAKER_STATE_LABELS.values():
            self.breaker_transitions.add(0, self.breaker_labels(upstream, state))
        self.retry_budget_exhausted.add(0, self.labels(UPSTREAM, upstream))
        for result in HEDGE_RESULTS:
            self.hedges.add(0, self.hedge_labels(upstream, result))

    def preset_app(self, app: str) -> None:
        """Start an app's counters at 0 (same reason as ``preset_upstream``)."""
        for outcome in Outcome:
            self.app_streams.add(0, self.app_labels(app, (OUTCOME, outcome.value)))
        for reason in RefusalReason:
            self.app_refused.add(0, self.app_labels(app, (REASON, reason.value)))

    # --- recording GenAI client metrics (at attempt boundaries) -----------------------------

    def record_operation_duration(self, seconds: float, attrs: Attrs) -> None:
        for histogram in self.operation_durations:
            histogram.record(seconds, attrs)

    def record_time_to_first_chunk(self, seconds: float, attrs: Attrs) -> None:
        for histogram in self.first_chunk_times:
            histogram.record(seconds, attrs)

    def record_token_usage(self, token_type: str, tokens: int, genai: GenAiLabels) -> None:
        """``token_type``: input or output, as the upstream reported them."""
        if self.token_usage is not None:
            attrs = self.genai_labels(*genai, (GENAI_TOKEN_TYPE, token_type))
            self.token_usage.record(tokens, attrs)
        counter = self.input_tokens if token_type == "input" else self.output_tokens
        if counter is not None:
            counter.add(
                tokens, self.genai_labels(*genai, (GENAI_TOKEN_MODALITY, TOKEN_MODALITY_UNKNOWN))
            )
        histogram = (
            self.operation_input_tokens if token_type == "input" else self.operation_output_tokens
        )
        if histogram is not None:
            histogram.record(tokens, self.genai_labels(*genai))

    # --- attribute sets (cached; every input is bounded) --------------------------------

    def _attrs(self, *pairs: tuple[str, AttributeValue]) -> Attrs:
        found = self._cache.get(pairs)
        if found is None:
            found = self._cache[pairs] = dict(pairs)
        return found

    def labels(self, key: str, value: str) -> Attrs:
        return self._attrs((key, value))

    def app_labels(self, app: str, *extra: tuple[str, AttributeValue]) -> Attrs:
        """An app's attribute set (+ ``outcome`` or ``reason``); ``app`` is already capped."""
        return self._attrs((APP, app), *extra)

    def request_labels(self, api: str, app: str) -> Attrs:
        """``api`` and ``app`` of a request (active streams); both already bounded."""
        return self._attrs((API, api), (APP, app))

    def passthrough_labels(self, endpoint: str, upstream: str, outcome: str) -> Attrs:
        """``endpoint`` is bounded by the caller (a known route family or "other")."""
        return self._attrs(
            (API, API_PASSTHROUGH), (ENDPOINT, endpoint), (UPSTREAM, upstream), (OUTCOME, outcome)
        )

    def hedge_labels(self, upstream: str, result: str) -> Attrs:
        return self._attrs((UPSTREAM, upstream), (RESULT, result))

    def stream_labels(
        self,
        outcome: str,
        upstream: str,
        model: str,
        served: str | None = None,
        *,
        api: str = Api.CHAT.value,
        app: str = OTHER_APP,
    ) -> Attrs:
        """``model``: what the app asked for; ``served``: what answered (a route may rewrite
        it; same as ``model`` when it did not)."""
        return self._attrs(
            (OUTCOME, outcome),
            (UPSTREAM, upstream),
            (MODEL, model),
            (SERVED_MODEL, served or model),
            (API, api),
            (APP, app),
        )

    def stream_duration_labels(self, outcome: str, upstream: str, api: str, app: str) -> Attrs:
        return self._attrs((OUTCOME, outcome), (UPSTREAM, upstream), (API, api), (APP, app))

    def upstream_labels(self, upstream: str, api: str, app: str) -> Attrs:
        """Recovered tokens and recovery duration."""
        return self._attrs((UPSTREAM, upstream), (API, api), (APP, app))

    def interruption_labels(self, kind: FailureKind, upstream: str, api: str, app: str) -> Attrs:
        return self._attrs((KIND, kind.value), (UPSTREAM, upstream), (API, api), (APP, app))

    def attempt_labels(self, upstream: str, reason: str, result: str, api: str, app: str) -> Attrs:
        return self._attrs(
            (UPSTREAM, upstream), (REASON, reason), (RESULT, result), (API, api), (APP, app)
        )

    def breaker_labels(self, upstream: str, to: str) -> Attrs:
        return self._attrs((UPSTREAM, upstream), (TO, to))

    def genai_labels(
        self,
        upstream: UpstreamInfo,
        model: str,
        api: str,
        app: str,
        *extra: tuple[str, AttributeValue],
    ) -> Attrs:
        """GenAI client metric attributes of one (upstream, capped model, api, app) (+ extras:
        ``error.type`` on failures, the token type or modality for token usage)."""
        return self._attrs(
            (GENAI_OPERATION_NAME, operation_name(api)),
            (GENAI_PROVIDER_NAME, upstream.provider),
            (GENAI_REQUEST_MODEL, model),
            (SERVER_ADDRESS, upstream.address),
            (SERVER_PORT, upstream.port),
            (UPSTREAM, upstream.name),
            (API, api),
            (APP, app),
            *extra,
        )
