"""App-side load through the official openai SDK, every answer judged against the simulator's.

Each request is a conversation built deterministically from (seed, index); what the app saw
(text, tool calls, finish_reason, or the exception the SDK raised) is compared with
`expected_answer`, the uninterrupted answer, and put in exactly one class:

- exact: byte-exact text (or equal tool calls) and the same finish_reason;
- explicit_error: the SDK raised, and what arrived before is a prefix of the answer;
- silent_truncation: no error, but the answer stopped short (or lacks its finish_reason);
- garbled: text that is not a prefix of the answer (duplicated, corrupted), error or not.

Only counts, two bounded latency samples and the first few anomalies (with a diff) are kept,
so a demo can run for hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import httpx
import openai

from intact.simulator import ExpectedAnswer, expected_answer

LOADGEN_ID_HEADER = "x-intact-loadgen-id"
"""Header carrying the load generator's request id, so relay-side records can be joined."""

APP_BASE_URL = "http://intact/v1"
"""What apps put in `base_url`: the host is ignored, the Unix socket is the transport."""


TRANSPORT_ERRORS = frozenset({"connection_error", "sdk_timeout", "client_timeout"})
"""Error labels that mean the connection died or hung rather than intact saying what failed."""


class Verdict(enum.StrEnum):
    """What the app got, compared with the uninterrupted answer."""

    EXACT = "exact"
    EXPLICIT_ERROR = "explicit_error"
    SILENT_TRUNCATION = "silent_truncation"
    GARBLED = "garbled"


def app_client(
    socket_path: str, *, timeout: float = 120.0, connections: int = 100
) -> openai.AsyncOpenAI:
    """An openai SDK client that reaches intact over its Unix socket, SDK retries off."""
    http = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(
            uds=socket_path,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        ),
        timeout=httpx.Timeout(timeout, connect=5.0),
    )
    # The SDK accepts an httpx client (newer releases annotate their own httpx2 type).
    return openai.AsyncOpenAI(
        base_url=APP_BASE_URL, api_key="unused", max_retries=0, http_client=cast(Any, http)
    )


# --- conversations ----------------------------------------------------------------------------

_TOPICS = (
    "a lighthouse keeper", "distributed tracing", "sourdough bread", "a night train",
    "retry budgets", "tide pools", "an old map", "circuit breakers", "a city library",
    "mountain weather", "a jazz quartet", "garden soil", "the first telescope", "paper cranes",
    "a harbor at dawn", "migrating birds", "a clockmaker", "desert roads", "winter markets",
    "a lost letter",
)  # fmt: skip
_ASKS = (
    "Tell me a story about {topic}.",
    "Explain {topic} to a new colleague.",
    "Write a short note on {topic}.",
    "What should I know about {topic}?",
    "Describe {topic} in a few paragraphs.",
    "Give me your thoughts on {topic}.",
)
_SYSTEMS = (
    "You are a helpful assistant.",
    "You are concise and precise.",
    "You write in plain, friendly prose.",
)
TOOLS: tuple[dict[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the internal documentation.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        },
    },
)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ConversationMix:
    """What share of requests is non-streaming, asks for usage, offers tools, caps tokens."""

    non_stream_fraction: float = 0.1
    usage_fraction: float = 0.5
    """Share of streaming requests with stream_options.include_usage."""
    tools_fraction: float = 0.0
    max_tokens_fraction: float = 0.1
    """Share of text requests with max_tokens / max_completion_tokens (finish "length")."""
    multi_turn_fraction: float = 0.2
    models: tuple[str, ...] = ("sim-1", "sim-2")

    def __post_init__(self) -> None:
        for name in (
            "non_stream_fraction",
            "usage_fraction",
            "tools_fraction",
            "max_tokens_fraction",
            "multi_turn_fraction",
        ):
            _check_fraction(name, getattr(self, name))
        if not self.models:
            raise ValueError("models must name at least one model")


@dataclass(frozen=True)
class Conversation:
    """One app request: the messages and options, and the id that tags it end to end."""

    request_id: str
    model: str
    messages: tuple[dict[str, Any], ...]
    stream: bool
    include_usage: bool = False
    tools: tuple[dict[str, Any], ...] = ()
    max_tokens: int | None = None
    max_tokens_key: str = "max_tokens"

    def expected(self) -> ExpectedAnswer:
        return expected_answer(
            list(self.messages), tools=list(self.tools) or None, max_tokens=self.max_tokens
        )

    def options(self) -> dict[str, Any]:
        """Body fields besides model, messages and stream."""
        extra: dict[str, Any] = {}
        if self.stream and self.include_usage:
            extra["stream_options"] = {"include_usage": True}
        if self.tools:
            extra["tools"] = list(self.tools)
        if self.max_tokens is not None:
            extra[self.max_tokens_key] = self.max_tokens
        return extra

    def describe(self) -> str:
        parts = [self.request_id, self.model, "stream" if self.stream else "non-stream"]
        if self.include_usage:
            parts.append("include_usage")
        if self.tools:
            parts.append("tools")
        if self.max_tokens is not None:
            parts.append(f"{self.max_tokens_key}={self.max_tokens}")
        parts.append(f"{len(self.messages)} messages")
        return " ".join(parts)

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""


def make_conversation(seed: int, index: int, mix: ConversationMix) -> Conversation:
    """Request number `index` of a run seeded `seed` (the same in every process)."""
    rng = random.Random(f"intact-loadgen:{seed}:{index}")
    request_id = f"lg-{seed}-{index}"
    model = rng.choice(mix.models)
    stream = rng.random() >= mix.non_stream_fraction
    include_usage = stream and rng.random() < mix.usage_fraction
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": rng.choice(_SYSTEMS)})
    ask = rng.choice(_ASKS).format(topic=rng.choice(_TOPICS))
    if rng.random() < mix.multi_turn_fraction:
        first = {"role": "user", "content": f"{ask} (conversation {request_id}, part 1)"}
        answer = expected_answer([*messages, first]).content or ""
        messages += [first, {"role": "assistant", "content": answer}]
        ask = rng.choice(_ASKS).format(topic=rng.choice(_TOPICS))
    messages.append({"role": "user", "content": f"{ask} (conversation {request_id})"})
    if rng.random() < mix.tools_fraction:
        tools = TOOLS
        if rng.random() < 0.3:
            # The tool results are in: the model answers in text.
            calls = expected_answer(messages, tools=list(tools)).tool_calls
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
            messages += [
                {"role": "tool", "tool_call_id": call["id"], "content": '{"ok": true, "value": 21}'}
                for call in calls
            ]
        return Conversation(request_id, model, tuple(messages), stream, include_usage, tools=tools)
    max_tokens = None
    key = "max_tokens"
    if rng.random() < mix.max_tokens_fraction:
        max_tokens = rng.randint(5, 80)
        key = rng.choice(("max_tokens", "max_completion_tokens"))
    return Conversation(
        request_id,
        model,
        tuple(messages),
        stream,
        include_usage,
        max_tokens=max_tokens,
        max_tokens_key=key,
    )


# --- what the app saw, and the verdict ----------------------------------------------------------


@dataclass(frozen=True)
class ObservedError:
    """The exception the SDK raised to the app, reduced to what identifies it."""

    kind: str
    """Exception class name (APIError, APIStatusError subclass, ...) or "client_timeout"."""
    message: str
    status: int | None = None
    type: str | None = None
    code: str | None = None

    @property
    def label(self) -> str:
        """A short grouping key: "stream_interrupted:attempts_exhausted", "http_503:..."."""
        if self.kind == "client_timeout":
            return "client_timeout"
        if self.kind == "APITimeoutError":
            return "sdk_timeout"
        if self.kind == "APIConnectionError":
            return "connection_error"
        head = f"http_{self.status}" if self.status is not None else (self.type or self.kind)
        tail = self.code or (self.type if self.status is not None else None)
        return f"{head}:{tail}" if tail else head

    @classmethod
    def from_exception(cls, exc: BaseException) -> ObservedError:
        if isinstance(exc, TimeoutError):
            return cls("client_timeout", "no answer within the load generator's timeout")
        if isinstance(exc, openai.APIStatusError):
            return cls(type(exc).__name__, exc.message, exc.status_code, exc.type, exc.code)
        if isinstance(exc, openai.APIError):
            return cls(type(exc).__name__, exc.message, None, exc.type, exc.code)
        return cls(type(exc).__name__, str(exc))


@dataclass
class Observation:
    """Everything the app received for one request."""

    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    error: ObservedError | None = None
    notes: list[str] = field(default_factory=list)
    """Protocol oddities that do not change the verdict (missing usage, changing ids)."""
    first_token_at: float | None = None
    """time.monotonic() of the first content or tool-call delta (streams only)."""


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    detail: str = ""
    """Why it is not exact (empty when it is)."""


Relation = Literal["equal", "prefix", "diverged"]
_RANK: dict[Relation, int] = {"equal": 0, "prefix": 1, "diverged": 2}


def first_difference(expected: str, got: str) -> int:
    """Index of the first character where the strings differ (len of the shorter if none)."""
    for i, (a, b) in enumerate(zip(expected, got, strict=False)):
        if a != b:
            return i
    return min(len(expected), len(got))


def excerpt(text: str, at: int, width: int = 40) -> str:
    """`text` around index `at`, repr-quoted, with ellipses where it was cut."""
    start, end = max(0, at - width), min(len(text), at + width)
    return ("…" if start else "") + repr(text[start:end]) + ("…" if end < len(text) else "")


def _text_relation(expected: str, got: str) -> Relation:
    if got == expected:
        return "equal"
    return "prefix" if expected.startswith(got) else "diverged"


def _tools_relation(expected: Sequence[dict[str, Any]], got: Sequence[dict[str, Any]]) -> Relation:
    if list(got) == list(expected):
        return "equal"
    if len(got) > len(expected):
        return "diverged"
    for i, call in enumerate(got):
        want = expected[i]
        if call == want:
            continue
        last = i == len(got) - 1
        fn, want_fn = call.get("function") or {}, want.get("function") or {}
        partial = (
            call.get("id") in (None, want.get("id"))
            and fn.get("name") in ("", None, want_fn.get("name"))
            and str(want_fn.get("arguments", "")).startswith(str(fn.get("arguments", "")))
        )
        if not (last and partial):
            return "diverged"
    return "prefix"


def judge(expected: ExpectedAnswer, seen: Observation) -> Judgement:
    """Classify what the app saw (see the module docstring)."""
    want_text = expected.content or ""
    text = _text_relation(want_text, seen.content)
    tools = _tools_relation(expected.tool_calls, seen.tool_calls)
    relation = max(text, tools, key=_RANK.__getitem__)
    detail = describe_difference(expected, seen, text, tools)
    if seen.error is not None:
        if relation == "diverged":
            return Judgement(Verdict.GARBLED, f"{detail}; then error {seen.error.label}")
        return Judgement(Verdict.EXPLICIT_ERROR, f"error {seen.error.label} after {detail}")
    if relation == "diverged":
        return Judgement(Verdict.GARBLED, detail)
    if relation == "prefix" or seen.finish_reason is None:
        return Judgement(Verdict.SILENT_TRUNCATION, detail)
    if seen.finish_reason != expected.finish_reason:
        return Judgement(Verdict.GARBLED, detail)
    return Judgement(Verdict.EXACT)


def describe_difference(
    expected: ExpectedAnswer, seen: Observation, text: Relation, tools: Relation
) -> str:
    want_text = expected.content or ""
    finish = f"finish_reason {seen.finish_reason!r} (expected {expected.finish_reason!r})"
    if text == "diverged":
        at = first_difference(want_text, seen.content)
        return (
            f"text differs at char {at} of {len(want_text)} (got {len(seen.content)}): "
            f"expected {excerpt(want_text, at)} got {excerpt(seen.content, at)}; {finish}"
        )
    if tools == "diverged":
        return f"tool calls differ: expected {expected.tool_calls!r} got {seen.tool_calls!r}"
    if expected.tool_calls:
        return f"{len(seen.tool_calls)} of {len(expected.tool_calls)} tool calls; {finish}"
    return f"{len(seen.content)} of {len(want_text)} chars; {finish}"


# --- bounded statistics -----------------------------------------------------------------------


class Reservoir:
    """A uniform sample of at most `capacity` values (Algorithm R), for percentiles."""

    def __init__(self, capacity: int = 10_000, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self._values: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self._values) < self.capacity:
            self._values.append(value)
            return
        slot = self._rng.randrange(self.count)
        if slot < self.capacity:
            self._values[slot] = value

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (0..100, nearest rank) of the sample; None when empty."""
        if not self._values:
            return None
        ordered = sorted(self._values)
        rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank]


@dataclass
class Anomaly:
    """A request the app saw broken (or oddly framed), kept for a human to debug."""

    conversation: Conversation
    verdict: Verdict
    detail: str
    error: ObservedError | None
    content: str
    finish_reason: str | None
    notes: list[str] = field(default_factory=list)
    """Context other parts add (the simulator's faults, the relay's attempts)."""

    def render(self) -> str:
        lines = [
            f"[{self.verdict}] {self.conversation.describe()}",
            f"  prompt: {self.conversation.last_user_text()!r}",
            f"  {self.detail}",
        ]
        if self.error is not None:
            lines.append(f"  error: {self.error.label}: {self.error.message}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class RequestResult:
    """One finished request, as handed to `LoadGenerator.on_result`."""

    conversation: Conversation
    observation: Observation
    judgement: Judgement
    started: float
    """time.monotonic() when the request was sent."""
    finished: float
    ttft: float | None
    anomaly: Anomaly | None
    """The kept anomaly record (add notes to it), if this request was one and was kept."""


class LoadStats:
    """Live counters of a load run; read them while it runs (one event loop, no locks)."""

    RATE_WINDOW = 5.0

    def __init__(self, *, max_anomalies: int = 20, seed: int = 0) -> None:
        self.max_anomalies = max_anomalies
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.issued = 0
        self.in_flight = 0
        self.cancelled = 0
        self.verdicts: Counter[Verdict] = Counter()
        self.error_codes: Counter[str] = Counter()
        self.protocol_issues = 0
        self.streaming = 0
        self.non_streaming = 0
        self.ttft = Reservoir(seed=seed)
        self.latency = Reservoir(seed=seed + 1)
        self.anomalies: list[Anomaly] = []
        self.anomalies_dropped = 0
        self._recent: deque[float] = deque()

    @property
    def done(self) -> int:
        return sum(self.verdicts.values())

    @property
    def exact(self) -> int:
        return self.verdicts[Verdict.EXACT]

    @property
    def explicit_errors(self) -> int:
        return self.verdicts[Verdict.EXPLICIT_ERROR]

    @property
    def silent(self) -> int:
        return self.verdicts[Verdict.SILENT_TRUNCATION]

    @property
    def garbled(self) -> int:
        return self.verdicts[Verdict.GARBLED]

    @property
    def broken(self) -> int:
        """Answers that reached the app wrong without it being told: must be 0."""
        return self.silent + self.garbled

    def elapsed(self, now: float | None = None) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else (now or time.monotonic())
        return max(0.0, end - self.started_at)

    def rate(self, now: float | None = None) -> float:
        """Requests finished per second over the last few seconds."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        window = min(self.RATE_WINDOW, self.elapsed(now))
        return len(self._recent) / window if window > 0 else 0.0

    def record(self, result: RequestResult) -> Anomaly | None:
        verdict = result.judgement.verdict
        self.verdicts[verdict] += 1
        if result.conversation.stream:
            self.streaming += 1
        else:
            self.non_streaming += 1
        error = result.observation.error
        if error is not None:
            self.error_codes[error.label] += 1
        if result.ttft is not None:
            self.ttft.add(result.ttft)
        self.latency.add(result.finished - result.started)
        self._recent.append(result.finished)
        self._trim(result.finished)
        notes = result.observation.notes
        if notes:
            self.protocol_issues += 1
        if verdict in (Verdict.EXACT, Verdict.EXPLICIT_ERROR) and not notes:
            return None
        if len(self.anomalies) >= self.max_anomalies:
            self.anomalies_dropped += 1
            return None
        seen = result.observation
        anomaly = Anomaly(
            result.conversation,
            verdict,
            result.judgement.detail or "protocol issue",
            error,
            seen.content,
            seen.finish_reason,
            notes=list(notes),
        )
        self.anomalies.append(anomaly)
        return anomaly

    def _trim(self, now: float) -> None:
        recent = self._recent
        while recent and recent[0] < now - self.RATE_WINDOW:
            recent.popleft()


# --- the generator ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LoadSettings:
    """How much load: `concurrency` clients until `requests` are done or `duration` passed."""

    concurrency: int = 16
    requests: int | None = None
    duration: float | None = None
    seed: int = 0
    mix: ConversationMix = field(default_factory=ConversationMix)
    request_timeout: float = 120.0
    """Longest one request may take before the app gives up (counted as client_timeout)."""
    error_pause: float = 0.0
    """Seconds a client waits after an error before its next request, as real apps do."""
    max_anomalies: int = 20

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency!r}")
        if self.requests is not None and self.requests < 0:
            raise ValueError(f"requests must be >= 0, got {self.requests!r}")
        if self.duration is not None and self.duration < 0:
            raise ValueError(f"duration must be >= 0, got {self.duration!r}")
        for name in ("request_timeout", "error_pause"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


ResultHook = Callable[[RequestResult], None]


class LoadGenerator:
    """Runs `settings.concurrency` app clients against intact's socket; see `run`."""

    def __init__(
        self, socket_path: str, settings: LoadSettings, *, on_result: ResultHook | None = None
    ) -> None:
        self.socket_path = socket_path
        self.settings = settings
        self.stats = LoadStats(max_anomalies=settings.max_anomalies, seed=settings.seed)
        self._on_result = on_result
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._deadline: float | None = None
        self._ran = False

    def stop(self) -> None:
        """Start no new requests; the ones in flight run to their end."""
        self._stopping.set()

    def cancel(self) -> None:
        """Stop now: in-flight requests are cancelled (and counted as cancelled)."""
        self._stopping.set()
        for task in self._workers:
            task.cancel()

    async def run(self) -> LoadStats:
        """Issue requests until the count, the duration or stop(); return the final stats."""
        if self._ran:
            raise RuntimeError("a LoadGenerator runs once; make a new one")
        self._ran = True
        s = self.settings
        stats = self.stats
        stats.started_at = time.monotonic()
        if s.duration is not None:
            self._deadline = stats.started_at + s.duration
        client = app_client(
            self.socket_path, timeout=s.request_timeout, connections=s.concurrency + 4
        )
        try:
            self._workers = [
                asyncio.create_task(self._client_loop(client), name=f"loadgen-{i}")
                for i in range(s.concurrency)
            ]
            outcomes = await asyncio.gather(*self._workers, return_exceptions=True)
            # Cancelled clients (cancel()) end the run; a client that crashed is a bug to show.
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
        finally:
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            stats.finished_at = time.monotonic()
            await client.close()
        return stats

    def _claim(self) -> int | None:
        """The index of the next request to send, or None when the run is over."""
        s = self.settings
        if self._stopping.is_set():
            return None
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return None
        if s.requests is not None and self.stats.issued >= s.requests:
            return None
        index = self.stats.issued
        self.stats.issued += 1
        return index

    async def _client_loop(self, client: openai.AsyncOpenAI) -> None:
        s = self.settings
        while (index := self._claim()) is not None:
            conversation = make_conversation(s.seed, index, s.mix)
            self.stats.in_flight += 1
            try:
                result = await self._send(client, conversation)
            except asyncio.CancelledError:
                self.stats.cancelled += 1
                raise
            finally:
                self.stats.in_flight -= 1
            result.anomaly = self.stats.record(result)
            if self._on_result is not None:
                self._on_result(result)
            if result.observation.error is not None and s.error_pause > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(s.error_pause):
                        await self._stopping.wait()

    async def _send(self, client: openai.AsyncOpenAI, conversation: Conversation) -> RequestResult:
        seen = Observation()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                if conversation.stream:
                    await _read_stream(client, conversation, seen)
                else:
                    await _read_completion(client, conversation, seen)
        except Exception as exc:  # whatever the SDK raised is what the app would see
            seen.error = ObservedError.from_exception(exc)
            if seen.error.label in TRANSPORT_ERRORS:
                seen.notes.append(f"the app got no error from intact, only {seen.error.label}")
        finished = time.monotonic()
        judgement = judge(conversation.expected(), seen)
        ttft = None if seen.first_token_at is None else seen.first_token_at - started
        return RequestResult(conversation, seen, judgement, started, finished, ttft, None)


async def _read_stream(
    client: openai.AsyncOpenAI, conversation: Conversation, seen: Observation
) -> None:
    """Consume one streamed answer into `seen`."""
    stream = await client.chat.completions.create(
        model=conversation.model,
        messages=cast(Any, list(conversation.messages)),
        stream=True,
        extra_headers={LOADGEN_ID_HEADER: conversation.request_id},
        extra_body=conversation.options(),
    )
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    ids: set[str] = set()
    usage_seen = False
    try:
        async with stream:
            async for chunk in stream:
                ids.add(chunk.id)
                if chunk.usage is not None:
                    usage_seen = True
                for choice in chunk.choices:
                    delta = choice.delta
                    if seen.finish_reason is not None and (delta.content or delta.tool_calls):
                        seen.notes.append("content after finish_reason")
                    if seen.first_token_at is None and (delta.content or delta.tool_calls):
                        seen.first_token_at = time.monotonic()
                    if delta.content:
                        text.append(delta.content)
                    for call in delta.tool_calls or ():
                        _merge_call(
                            calls,
                            call.index,
                            call.id,
                            call.type,
                            call.function.name if call.function else None,
                            call.function.arguments if call.function else None,
                        )
                    if choice.finish_reason is not None:
                        seen.finish_reason = choice.finish_reason
    finally:
        seen.content = "".join(text)
        seen.tool_calls = [calls[i] for i in sorted(calls)]
    if len(ids) > 1:
        seen.notes.append(f"chunk ids changed within the stream: {sorted(ids)}")
    if conversation.include_usage and not usage_seen:
        seen.notes.append("stream_options.include_usage was set but no usage chunk arrived")


def _merge_call(
    calls: dict[int, dict[str, Any]],
    index: int,
    call_id: str | None,
    call_type: str | None,
    name: str | None,
    arguments: str | None,
) -> None:
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    )
    if call_id:
        call["id"] = call_id
    if call_type:
        call["type"] = call_type
    if name:
        call["function"]["name"] += name
    if arguments:
        call["function"]["arguments"] += arguments


async def _read_completion(
    client: openai.AsyncOpenAI, conversation: Conversation, seen: Observation
) -> None:
    completion = await client.chat.completions.create(
        model=conversation.model,
        messages=cast(Any, list(conversation.messages)),
        stream=False,
        extra_headers={LOADGEN_ID_HEADER: conversation.request_id},
        extra_body=conversation.options(),
    )
    if not completion.choices:
        seen.notes.append("completion without choices")
        return
    choice = completion.choices[0]
    seen.content = choice.message.content or ""
    for call in choice.message.tool_calls or ():
        dumped = call.model_dump()
        function = dumped.get("function") or {}
        seen.tool_calls.append(
            {
                "id": dumped.get("id"),
                "type": dumped.get("type"),
                "function": {"name": function.get("name"), "arguments": function.get("arguments")},
            }
        )
    seen.finish_reason = choice.finish_reason
    if completion.usage is None:
        seen.notes.append("non-streaming completion without usage")


__all__ = [
    "APP_BASE_URL",
    "LOADGEN_ID_HEADER",
    "TOOLS",
    "TRANSPORT_ERRORS",
    "Anomaly",
    "Conversation",
    "ConversationMix",
    "Judgement",
    "LoadGenerator",
    "LoadSettings",
    "LoadStats",
    "Observation",
    "ObservedError",
    "RequestResult",
    "Reservoir",
    "Verdict",
    "app_client",
    "excerpt",
    "first_difference",
    "judge",
    "make_conversation",
]
