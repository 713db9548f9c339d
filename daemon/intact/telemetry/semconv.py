"""Attribute keys shared by spans and metrics: OpenTelemetry semantic conventions and intact's.

GenAI keys follow semantic conventions v1.41.0 (``gen_ai.provider.name``, never the deprecated
``gen_ai.system``; ``gen_ai.usage.input_tokens``/``output_tokens``, never ``prompt_tokens``).
The span attributes intact sets are the same in the GenAI conventions' own repository
(open-telemetry/semantic-conventions-genai, v0.1.0); its renamed client *metrics* are opt-in
(``GenAiConventions``, and metrics.py).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

CHAT_COMPLETIONS_ROUTE: Final = "/v1/chat/completions"
RESPONSES_ROUTE: Final = "/v1/responses"
MESSAGES_ROUTE: Final = "/v1/messages"
# http.route of the server span per app-facing API (``telemetry.api.Api`` values).
ROUTE_BY_API: Final[Mapping[str, str]] = {
    "chat": CHAT_COMPLETIONS_ROUTE,
    "responses": RESPONSES_ROUTE,
    "messages": MESSAGES_ROUTE,
}

OPERATION_CHAT: Final = "chat"
# gen_ai.operation.name of an upstream attempt per app-facing API. The conventions' well-known
# inference values are chat, generate_content and text_completion; their client inference
# document lists OpenAI Create Chat Completion, OpenAI Create Response and Anthropic Create a
# Message alike as inference operations, and no value is defined for the Responses API (OpenAI
# tells the two apart with ``openai.api.type``, not the operation name). All three are chat;
# text_completion is the legacy Completions API, generate_content is Gemini's.
OPERATION_BY_API: Final[Mapping[str, str]] = {
    "chat": OPERATION_CHAT,
    "responses": OPERATION_CHAT,
    "messages": OPERATION_CHAT,
}


def operation_name(api: str) -> str:
    return OPERATION_BY_API.get(api, OPERATION_CHAT)


# --- which GenAI conventions to emit ---------------------------------------------------------
# The GenAI conventions' transition plan: instrumentations SHOULD NOT change the conventions
# they emit by default, and SHOULD read OTEL_SEMCONV_STABILITY_OPT_IN, a comma-separated list
# in which ``gen_ai_latest_experimental`` means "emit the latest experimental conventions and
# do not emit the old ones". The plan defines no ``/dup`` value for GenAI; intact also accepts
# ``gen_ai_latest_experimental/dup`` (both, as ``http/dup`` and ``database/dup`` do for their
# conventions) so dashboards can move from one set of names to the other without a gap.
SEMCONV_OPT_IN_ENV: Final = "OTEL_SEMCONV_STABILITY_OPT_IN"
GEN_AI_LATEST: Final = "gen_ai_latest_experimental"
GEN_AI_LATEST_DUP: Final = "gen_ai_latest_experimental/dup"


class GenAiConventions(enum.Flag):
    """Which GenAI client metric names are emitted."""

    OLD = enum.auto()  # semantic conventions v1.41.0: gen_ai.client.operation.*, token.usage
    LATEST = enum.auto()  # semantic-conventions-genai v0.1.0: gen_ai.client.inference.*
    BOTH = OLD | LATEST

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GenAiConventions:
        """From ``OTEL_SEMCONV_STABILITY_OPT_IN`` (read once, at telemetry setup)."""
        values = {v.strip().lower() for v in environ.get(SEMCONV_OPT_IN_ENV, "").split(",")}
        if GEN_AI_LATEST_DUP in values:
            return cls.BOTH
        if GEN_AI_LATEST in values:
            return cls.LATEST
        return cls.OLD


# HTTP semantic conventions (server span)
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"

# GenAI semantic conventions
GENAI_OPERATION_NAME: Final = "gen_ai.operation.name"
GENAI_TOKEN_TYPE: Final = "gen_ai.token.type"  # input | output (v1.41.0 token usage metric)
GENAI_TOKEN_MODALITY: Final = "gen_ai.token.modality"  # of the v0.1.0 token usage counters
TOKEN_MODALITY_UNKNOWN: Final = "unknown"  # upstreams' usage is not broken down by modality
GENAI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GENAI_REQUEST_MODEL: Final = "gen_ai.request.model"
GENAI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GENAI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GENAI_RESPONSE_ID: Final = "gen_ai.response.id"
GENAI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GENAI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GENAI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GENAI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"

# intact's own attributes
INTACT_OUTCOME: Final = "intact.outcome"
INTACT_ATTEMPTS: Final = "intact.attempts"
INTACT_INTERRUPTIONS: Final = "intact.interruptions"  # count
INTACT_INTERRUPTION_KINDS: Final = "intact.interruption.kinds"  # string[], in order
INTACT_RESUMES: Final = "intact.resumes"
INTACT_COMPLETION_TOKENS: Final = "intact.completion_tokens"
INTACT_RECOVERED_TOKENS: Final = "intact.recovered_tokens"
INTACT_ERROR_CODE: Final = "intact.error_code"
INTACT_UPSTREAM: Final = "intact.upstream"
INTACT_APP: Final = "intact.app"  # an [[apps]] name or "other" (server and attempt spans)
INTACT_API: Final = "intact.api"  # chat | responses | messages (server and attempt spans)
INTACT_ATTEMPT: Final = "intact.attempt"  # 1-based
INTACT_ATTEMPT_REASON: Final = "intact.attempt.reason"  # initial | retry | resume
INTACT_ATTEMPT_RESULT: Final = "intact.attempt.result"  # success | <failure kind> | cancelled
INTACT_DELIVERED_TOKENS: Final = "intact.delivered_tokens"  # by this attempt, to the app
INTACT_RESUME_MODE: Final = "intact.resume.mode"
INTACT_RESUME_PREFIX_CHARS: Final = "intact.resume.prefix_chars"
INTACT_INTERRUPTION_KIND: Final = "intact.interruption.kind"

# span events (boundaries only)
EVENT_FIRST_CHUNK: Final = "intact.first_chunk"
EVENT_INTERRUPTION: Final = "intact.interruption"
EVENT_RECOVERED: Final = "intact.recovered"
EVENT_RETRY_BUDGET_EXHAUSTED: Final = "intact.retry_budget_exhausted"
EVENT_HEDGE: Final = "intact.hedge"
INTACT_SERVED_MODEL: Final = "intact.served_model"  # the model that answered (routes rewrite)
EVENT_BREAKER_TRANSITION: Final = "intact.breaker_transition"
EVENT_ATTR_KIND: Final = "kind"
EVENT_ATTR_MESSAGE: Final = "message"
