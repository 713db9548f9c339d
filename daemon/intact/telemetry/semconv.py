"""Attribute keys shared by spans and metrics: OpenTelemetry semantic conventions and intact's.

GenAI keys follow semantic conventions v1.41.0 (``gen_ai.provider.name``, never the deprecated
``gen_ai.system``; ``gen_ai.usage.input_tokens``/``output_tokens``, never ``prompt_tokens``).
"""

from __future__ import annotations

from typing import Final

CHAT_COMPLETIONS_ROUTE: Final = "/v1/chat/completions"
OPERATION_CHAT: Final = "chat"  # gen_ai.operation.name of every attempt

# HTTP semantic conventions (server span)
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"

# GenAI semantic conventions
GENAI_OPERATION_NAME: Final = "gen_ai.operation.name"
GENAI_TOKEN_TYPE: Final = "gen_ai.token.type"  # input | output (token usage metric)
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
INTACT_APP: Final = "intact.app"  # an [[apps]] name or "other" (server span)
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
