"""What the relay engine needs from an app-facing API (chat completions, Messages, Responses).

The engine (``relay.engine``) knows attempts, failures and endings; it does not know what a
chunk looks like. Each API supplies three things through these interfaces:

- an ``AppRequest``: the app's parsed request (model, stream, deadline, resume header) and
  where its attempts go upstream;
- an ``Answer``: what the app has received so far, whether it can still be continued, and
  the upstream call of the next attempt (the original request, a continuation of the
  partial answer, or a reattach to the same response);
- an ``AttemptFeed`` per attempt: the upstream's events in, the app's events out, with the
  continuation spliced onto what the app already has.

Chat completions implement them in ``relay.delivery``, Anthropic Messages in
``relay.messages``, OpenAI Responses in ``relay.responses``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from intact.config import RecoveryConfig
from intact.relay.sinks import AppSink
from intact.upstream.client import UpstreamCall

__all__ = ["Answer", "AppRequest", "AttemptFeed", "UpstreamCall"]


class AttemptFeed(Protocol):
    """One upstream attempt's events, fed into the app's answer."""

    response_id: str | None
    response_model: str | None
    finish_reason: str | None
    tokens_delivered: int

    @property
    def finished(self) -> bool:
        """The upstream said the answer is complete (a finish/stop reason arrived)."""

    def preamble(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` is sent before the model produces anything (Messages'
        ``message_start``, Responses' ``response.created``): it does not decide a hedge race
        or judge the upstream, and the feed holds it until the first content event."""

    async def on_chunk(self, obj: dict[str, Any], raw: bytes) -> None:
        """One upstream event; raises UpstreamFailure for error events and divergence."""

    async def on_stream_end(self) -> None:
        """The attempt ended after it finished: flush what is still held."""

    async def synthesize_finish(self, reason: str) -> None:
        """End the answer as the upstream would have (e.g. "length" at max_tokens)."""

    async def send_trailer(self) -> None:
        """The answer is complete: send what goes after the last content (usage, stop)."""

    def token_counts(self) -> tuple[int | None, int | None]:
        """(input, output) tokens this attempt's upstream reported, if it did."""


class Answer(Protocol):
    """What the app has received of one request, across attempts."""

    @property
    def started(self) -> bool:
        """Something reached the app (or the collector): later attempts are continuations."""

    @property
    def answer_chars(self) -> int: ...

    @property
    def content_chars(self) -> int: ...

    @property
    def tokens_delivered(self) -> int: ...

    def content(self) -> str:
        """The exact answer text the app has received."""

    def budget_spent(self) -> bool:
        """The app already has its max tokens: the answer is complete as it is."""

    def why_not_resumable(
        self, mode: str, body: Mapping[str, Any] | None = None, upstream: str | None = None
    ) -> str | None:
        """None if an interrupted answer can be continued in ``mode`` on ``upstream`` (the
        one chosen next; None: any), else why not."""

    def next_call(
        self,
        base_body: dict[str, Any],
        mode: str,
        instruct_prompt: str,
        *,
        model: str,
        upstream: str,
    ) -> UpstreamCall:
        """The upstream call of the next attempt, sent to ``model`` on ``upstream``."""

    def attempt(self, mode: str = "instruct") -> AttemptFeed:
        """The feed of the next attempt; ``mode`` is its effective resume mode."""


class AppRequest(Protocol):
    """An app's request as the engine sees it, whatever its API."""

    @property
    def api(self) -> str:
        """The bounded API label: chat, messages or responses."""

    @property
    def body(self) -> dict[str, Any]: ...

    @property
    def hedgeable(self) -> bool:
        """Whether a second upstream may be sent the same request while the first is slow
        (not when the upstream keeps running it after intact hangs up, as a background
        Responses request does)."""

    @property
    def model(self) -> str: ...

    @property
    def stream(self) -> bool: ...

    @property
    def timeout(self) -> float | None: ...

    @property
    def resume(self) -> str | None: ...

    def upstream_body(self) -> dict[str, Any]:
        """The first attempt's body: always streamed, everything else unchanged."""

    def new_answer(self, sink: AppSink, recovery: RecoveryConfig) -> Answer: ...
