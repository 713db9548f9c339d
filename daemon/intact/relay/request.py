"""The app's request, parsed once and validated before anything is sent upstream."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from intact.config import RecoveryConfig
from intact.errors import AppError, invalid_request
from intact.recovery.resume import REQUEST_RESUME_MODES
from intact.relay.delivery import Delivery
from intact.relay.sinks import AppSink

# Header an app may send to shorten the whole request's deadline (seconds).
TIMEOUT_HEADER = "intact-timeout"
# Header an app may send to choose how (or whether) its stream is resumed.
RESUME_HEADER = "intact-resume"


@dataclass(slots=True)
class ChatRequest:
    """A validated chat-completion request and what intact needs to know about it."""

    body: dict[str, Any]
    model: str
    stream: bool
    n: int
    app_wants_usage: bool
    timeout: float | None
    # The app's intact-resume header (off, prefill, prefix, instruct, restart), if sent.
    resume: str | None = None
    api: str = "chat"
    hedgeable: bool = True

    def new_answer(self, sink: AppSink, recovery: RecoveryConfig) -> Delivery:
        return Delivery(
            sink,
            recovery,
            app_wants_usage=self.app_wants_usage,
            n=self.n,
            token_limit=self.token_limit,
        )

    @property
    def token_limit(self) -> int | None:
        """The app's cap on generated tokens, if it set one."""
        limits = [
            v
            for v in (self.body.get("max_tokens"), self.body.get("max_completion_tokens"))
            if isinstance(v, int) and not isinstance(v, bool) and v > 0
        ]
        return min(limits) if limits else None

    @property
    def resumable(self) -> bool:
        """Only a single-choice answer has one partial text to continue from."""
        return self.n == 1

    def upstream_body(self) -> dict[str, Any]:
        """What goes upstream: always streamed, always with usage, everything else unchanged.

        Non-streaming requests are streamed internally so they can be recovered the same
        way; usage is requested so tokens can be accounted even when the app did not ask.
        """
        body = dict(self.body)
        body["stream"] = True
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        options["include_usage"] = True
        body["stream_options"] = options
        return body


def parse_chat_request(raw: bytes, headers: dict[str, str] | Any) -> ChatRequest | AppError:
    """Parse and validate; return an OpenAI-shaped 400 for anything an upstream would refuse
    for certain, so it never costs an upstream call."""
    body = parse_json_object(raw)
    if isinstance(body, AppError):
        return body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return invalid_request(
            "'messages' is required and must be a non-empty array of message objects.",
            code="missing_messages" if messages is None else "invalid_messages",
            param="messages",
        )
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            return invalid_request(
                f"messages[{i}] must be an object with a string 'role'.",
                code="invalid_messages",
                param=f"messages[{i}]",
            )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return invalid_request(
            "'model' is required and must be a non-empty string.",
            code="missing_model",
            param="model",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return invalid_request("'stream' must be a boolean.", code="invalid_type", param="stream")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return invalid_request("'n' must be a positive integer.", code="invalid_type", param="n")
    options = body.get("stream_options")
    # A non-streamed completion always carries usage; a stream only when asked for.
    wants_usage = not stream or bool(isinstance(options, dict) and options.get("include_usage"))
    relay_headers = parse_relay_headers(headers)
    if isinstance(relay_headers, AppError):
        return relay_headers
    timeout, resume = relay_headers
    return ChatRequest(
        body=body,
        model=model,
        stream=stream,
        n=n,
        app_wants_usage=wants_usage,
        timeout=timeout,
        resume=resume,
    )


def parse_relay_headers(headers: Mapping[str, str]) -> tuple[float | None, str | None] | AppError:
    """The app's ``intact-timeout`` and ``intact-resume`` headers (any API), validated."""
    timeout: float | None = None
    header = headers.get(TIMEOUT_HEADER)
    if header is not None:
        try:
            timeout = float(header)
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            return invalid_request(
                f"Header {TIMEOUT_HEADER} must be a positive number of seconds, got {header!r}.",
                code="invalid_timeout",
            )
    resume = headers.get(RESUME_HEADER)
    if resume is not None:
        resume = resume.strip().lower()
        if resume not in REQUEST_RESUME_MODES:
            allowed = ", ".join(REQUEST_RESUME_MODES)
            return invalid_request(
                f"Header {RESUME_HEADER} must be one of {allowed}, "
                f"got {headers.get(RESUME_HEADER)!r}.",
                code="invalid_resume",
            )
    return timeout, resume


def parse_json_object(raw: bytes) -> dict[str, Any] | AppError:
    """The request body as a JSON object, or OpenAI's 400 for anything else."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return invalid_request(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        )
    if not isinstance(body, dict):
        return invalid_request("The request body must be a JSON object.", code="invalid_json")
    return body
