"""One typed configuration tree: TOML file < ``INTACT_*`` env vars < CLI flags, validated once.

Every timeout, bound and policy intact uses lives here with its default and a one-line
meaning; the README's configuration reference is generated from these declarations
(``intact config-reference``), so docs and code cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

BackoffGrowth = Literal["exponential", "linear", "fibonacci"]
JitterKind = Literal["full", "equal", "decorrelated", "none"]
ResumeMode = Literal["prefill", "prefix", "instruct", "restart"]
UpstreamKind = Literal["openai", "anthropic"]
# The app-facing APIs the relay recovers (bounded: the `api` label of the stream metrics).
RELAYED_APIS = ("chat", "responses", "messages")
DEFAULT_APIS_BY_KIND: dict[str, tuple[str, ...]] = {
    "openai": ("chat", "responses"),
    "anthropic": ("messages",),
}
ANTHROPIC_VERSION = "2023-06-01"
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
OtlpProtocol = Literal["grpc", "http/protobuf"]


class ConfigError(ValueError):
    """A configuration problem, worded for the person who has to fix it."""


class StringTable(Mapping[str, str]):
    """An immutable table of string keys to string values (a TOML table such as an
    upstream's ``headers``); hashable and comparable, like the rest of the config."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, str] = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._items == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"StringTable({self._items!r})"


# An HTTP header name (RFC 9110 token).
HEADER_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# Headers an app never has forwarded by name: its credentials (only `forward_api_key`
# passes them on) and intact's own request headers.
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})
# Hop-by-hop and framing headers: they belong to one connection, never copied across.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# The providers' organisation, project, API version and beta-feature headers, and the
# app's own request id (OpenAI echoes X-Client-Request-Id in its logs).
DEFAULT_FORWARD_HEADERS = (
    "OpenAI-Organization",
    "OpenAI-Project",
    "OpenAI-Beta",
    "X-Client-Request-Id",
    "anthropic-version",
    "anthropic-beta",
)


def setting(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    pattern: str | None = None,
    shown: str | None = None,
    off: bool = False,
    redacted: bool = False,
) -> Any:
    """Declare a config key with its default, its meaning and its allowed range; ``shown``
    describes a default that the config resolves from other keys; ``redacted`` values (a
    table's values) may hold secrets and are never shown."""
    meta = {
        "doc": doc,
        "ge": ge,
        "gt": gt,
        "le": le,
        "pattern": pattern,
        "shown": shown,
        "off": off,
        "redacted": redacted,
    }
    if isinstance(default, list | dict):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The app-side Unix socket and the admin HTTP listener."""

    socket: str = setting(
        "",
        "Unix socket path apps connect to; empty means $XDG_RUNTIME_DIR/intact.sock, else "
        "/run/intact/intact.sock for root, else $TMPDIR (or /tmp)/intact-<uid>/intact.sock "
        "in a private 0700 directory; intact refuses a default directory that another "
        "user owns or can write to.",
    )
    socket_mode: str = setting(
        "0660", "Permission bits of the socket file (octal string).", pattern=r"0?[0-7]{3}"
    )
    max_body_bytes: int = setting(
        8 * 1024 * 1024, "Largest request body accepted from an app; larger gets HTTP 413.", ge=1024
    )
    drain_timeout: float = setting(
        30.0, "Seconds in-flight streams may run on after SIGTERM before they are cut.", ge=0
    )
    max_app_buffer_bytes: int = setting(
        4 * 1024 * 1024,
        "Bytes intact buffers for an app that reads slower than the upstream writes; when "
        "full, intact stops reading the upstream (TCP backpressure) until the app catches up.",
        ge=64 * 1024,
    )
    app_write_timeout: float = setting(
        30.0,
        "Seconds an app may take no bytes while its buffer is full (or its stream's end is "
        "pending) before the stream is ended with a client_too_slow error event.",
        gt=0,
    )
    slow_app_linger: float = setting(
        30.0,
        "Seconds a stream ended as client_too_slow keeps its connection open so the app can "
        "still read the error event; then the connection is aborted.",
        ge=0,
    )
    metrics_addr: str = setting(
        "127.0.0.1:9464",
        "HOST:PORT of the admin listener (/metrics, /healthz, /readyz, /debug/state); "
        "'off' disables it.",
        pattern=r"off|\[?[^\s\]]*\]?:\d{1,5}",
    )
    request_read_timeout: float = setting(
        10.0,
        "Seconds an app may take to send a request's head (from its first byte) and again "
        "its body; a slower head closes the connection, a slower body gets HTTP 408.",
        gt=0,
    )
    idle_timeout: float = setting(
        75.0,
        "Seconds an app connection may stay open without a request (before the first and "
        "between requests) before intact closes it.",
        gt=0,
    )
    max_connections_per_peer: int = setting(
        1024,
        "Open connections allowed per peer process (per uid when its pid is not visible, "
        "e.g. from another pid namespace); a connection over the cap gets HTTP 429.",
        ge=1,
    )
    allowed_uids: tuple[int, ...] = setting(
        (),
        "Peer uids (SO_PEERCRED) allowed to use the socket; with allowed_gids empty too, "
        "every peer the socket's file mode lets in is served. Others get HTTP 403.",
        ge=0,
    )
    allowed_gids: tuple[int, ...] = setting(
        (), "Peer primary gids allowed to use the socket (in addition to allowed_uids).", ge=0
    )
    trust_app_header: bool = setting(
        False,
        "Let an `intact-app: <name>` request header choose the [[apps]] entry (any peer "
        "may then claim any app); otherwise the app is chosen by the peer's uid.",
    )
    forward_headers: tuple[str, ...] = setting(
        DEFAULT_FORWARD_HEADERS,
        "App request headers passed on to the upstream (case-insensitive), on every route; "
        "any other app header is dropped. Credentials (Authorization, x-api-key, api-key) "
        "cannot be listed: see the upstream's forward_api_key.",
        pattern=HEADER_NAME,
    )


@dataclass(frozen=True, kw_only=True)
class RetryConfig:
    """How often and how patiently intact re-tries an upstream."""

    max_attempts: int = setting(
        6, "Upstream attempts per app request, initial + retries + resumes together.", ge=1, le=50
    )
    base_delay: float = setting(0.25, "Backoff base delay in seconds.", ge=0)
    max_delay: float = setting(8.0, "Upper bound of one backoff sleep in seconds.", ge=0)
    backoff: BackoffGrowth = setting("exponential", "How the backoff grows per retry.")
    jitter: JitterKind = setting("full", "How the backoff is randomised (AWS study: full).")
    max_retry_after: float = setting(
        60.0,
        "Longest provider-requested wait (Retry-After etc.) intact will honour, seconds.",
        ge=0,
    )
    rate_limit_base_delay: float = setting(
        1.0,
        "Backoff base after a 429 that names no wait (no Retry-After): exponential with "
        "full jitter from here, and shared by every request to the upstream, so a "
        "rate-limited provider sees fewer calls, not more.",
        ge=0,
    )
    rate_limit_max_delay: float = setting(
        30.0, "Upper bound of one rate-limit backoff step in seconds.", ge=0
    )
    budget_ratio: float = setting(
        0.2,
        "Retries+resumes allowed as a fraction of recent requests (per upstream).",
        ge=0,
        le=10,
    )
    budget_min_per_second: float = setting(
        10.0, "Retries+resumes always allowed per second regardless of traffic.", ge=0
    )
    budget_ttl: float = setting(
        10.0,
        "Seconds a request keeps counting towards the retry budget (Finagle ttl).",
        ge=1,
        le=60,
    )


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """Timeouts of one app request and its upstream attempts."""

    connect_timeout: float = setting(5.0, "Seconds to establish an upstream connection.", gt=0)
    first_token_timeout: float = setting(
        30.0,
        "Seconds from sending an attempt to its first SSE event before it is abandoned.",
        gt=0,
    )
    stall_timeout: float = setting(
        20.0,
        "Longest silence between SSE events after the first before the stream is "
        "treated as stalled.",
        gt=0,
    )
    total_timeout: float = setting(
        600.0,
        "Deadline of a whole app request, every attempt and backoff included; apps "
        "may shorten it with the `intact-timeout` header.",
        gt=0,
    )
    answer_start_timeout: float = setting(
        60.0,
        "Seconds an app waits for the first chunk of its answer, every attempt, hedge and "
        "backoff before it included; then it gets an explicit error (504). Bounds the worst "
        "case of a silent or rate-limited upstream (see `intact check-config`).",
        gt=0,
    )
    models_timeout: float = setting(
        10.0, "Seconds to wait for an upstream's GET /models answer (for GET /v1/models).", gt=0
    )


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    """Per-upstream circuit breaker (failure rate over a sliding time window)."""

    failure_rate_threshold: float = setting(
        0.5, "Failure rate (0..1) over the window at which the breaker opens.", gt=0, le=1
    )
    minimum_calls: int = setting(
        20, "Calls needed in the window before the failure rate is judged.", ge=1
    )
    window: float = setting(30.0, "Sliding window length in seconds.", gt=0)
    open_duration: float = setting(
        30.0, "Seconds the breaker stays open before half-open probes are let through.", gt=0
    )
    half_open_probes: int = setting(
        3, "Probe calls in half-open; all must succeed to close, one failure re-opens.", ge=1
    )


@dataclass(frozen=True, kw_only=True)
class RecoveryConfig:
    """Mid-stream recovery: how a broken stream is resumed and spliced."""

    buffer_tool_calls: bool = setting(
        True,
        "Hold tool-call deltas until each tool call is complete, so an interruption "
        "inside one is regenerated invisibly.",
    )
    resume_across_upstreams: bool = setting(
        False, "Allow a resume to move to the next upstream (the model may differ)."
    )
    min_overlap_chars: int = setting(
        8,
        "instruct mode: a restart that matches the start of the partial text for this many "
        "chars (or 2 words) and then departs from it is rejected as a paraphrase (and the "
        "resume is tried again); prefill/prefix: the shortest partial whose echo is removed.",
        ge=1,
    )
    max_overlap_chars: int = setting(
        2048,
        "Most continuation text held back while it could still be a repeat of the partial "
        "text (and how far back into it a repeat may start).",
        ge=16,
    )
    divergence_chars: int = setting(
        32,
        "instruct mode: a continuation that starts a new line by restarting the answer is "
        "rejected as a paraphrase only after matching this many chars (lists and code often "
        "start lines alike).",
        ge=8,
    )
    max_partial_chars: int = setting(
        4_000_000,
        "Largest partial answer kept for resuming; longer streams still flow but "
        "end with an explicit error if interrupted.",
        ge=1024,
    )
    max_tool_call_bytes: int = setting(
        1_048_576, "Largest buffered tool call; a larger one is released unbuffered.", ge=1024
    )
    instruct_prompt: str = setting(
        "Your previous reply was cut off. Continue it exactly where it stopped: do not "
        "repeat any of it, do not add any preamble, start with the next characters.",
        "User message appended after the partial answer in `instruct` resume mode.",
    )


@dataclass(frozen=True, kw_only=True)
class RoutingConfig:
    """Hedged first tokens: racing a slow upstream against the next one."""

    hedge_after: float = setting(
        3.0,
        "Seconds an attempt may go without its first event before the same request is also "
        "sent to the next eligible upstream (first to answer wins, the other is cancelled); "
        "'off' or 0 disables. Per upstream: the wait on that upstream.",
        ge=0,
        off=True,
    )
    max_hedges: int = setting(1, "Hedges at most per app request.", ge=0, le=4)


@dataclass(frozen=True, kw_only=True)
class RouteConfig:
    """Model routing: which (upstream, model) targets serve a model, and fallbacks."""

    model: str = setting("", "The model name apps ask for.", pattern=r"\S+")
    targets: tuple[str, ...] = setting(
        (),
        "Ordered 'upstream' or 'upstream:model' targets; the model field is rewritten to "
        "the target's model. Empty: every upstream that serves the model, unchanged.",
    )
    context_fallbacks: tuple[str, ...] = setting(
        (),
        "Targets tried, in order, when the upstream answers context_length_exceeded "
        "(e.g. a larger-context model), before the error goes back to the app.",
    )
    policy_fallbacks: tuple[str, ...] = setting(
        (),
        "Targets tried when the upstream refuses the request for its content policy "
        "(content_filter / content_policy_violation).",
    )


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    """Logs, traces and metrics."""

    log_format: LogFormat = setting(
        "auto", "JSON lines, or a console format; auto = console when stdout is a terminal."
    )
    log_level: LogLevel = setting("info", "Lowest log level written.")
    log_content: bool = setting(
        False,
        "Log each request's prompt messages and the answer text it delivered (one "
        "`request_content` line at info level). Off by default: prompts and answers can "
        "hold user data.",
    )
    otlp_endpoint: str = setting(
        "",
        "OTLP collector base endpoint (e.g. http://127.0.0.1:4317; /v1/traces and /v1/metrics "
        "are appended for http/protobuf); empty = use OTEL_EXPORTER_OTLP_* variables if set, "
        "else no OTLP export.",
    )
    otlp_protocol: OtlpProtocol = setting(
        "grpc", "OTLP transport (OTEL_EXPORTER_OTLP_PROTOCOL overrides when set)."
    )
    export_interval: float = setting(15.0, "Seconds between OTLP metric exports.", gt=0)
    max_model_labels: int = setting(
        20,
        "Distinct model label values per upstream before further ones become 'other'.",
        ge=1,
    )


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    """One app using the socket: how its peers are recognised and what it may use."""

    name: str = setting(
        "",
        "The app's name: the `app` label of intact_app_* metrics and `intact.app` on spans "
        "(peers matching no app are 'other').",
        pattern=r"[A-Za-z0-9_.-]{1,64}",
    )
    uids: tuple[int, ...] = setting(
        (), "Peer uids (SO_PEERCRED) that are this app; a uid belongs to one app only.", ge=0
    )
    max_concurrent_streams: int = setting(
        0,
        "Requests of this app relayed at once; more get HTTP 429 with Retry-After. 0 = no limit.",
        ge=0,
    )


@dataclass(frozen=True, kw_only=True)
class UpstreamConfig:
    """One OpenAI-compatible provider endpoint; upstreams are tried in the order given."""

    name: str = setting(
        "default", "Name used in logs, metrics and /debug/state.", pattern=r"[A-Za-z0-9_.-]{1,64}"
    )
    base_url: str = setting(
        "https://api.openai.com/v1",
        "Base URL of the OpenAI-compatible API.",
        pattern=r"https?://\S+",
    )
    api_key_env: str = setting(
        "", "Name of the environment variable holding this upstream's API key."
    )
    api_key_file: str = setting(
        "",
        "File holding this upstream's API key (e.g. a mounted Secret); read at start and on "
        "every reload (SIGHUP), so a rotated key needs no restart. Wins over api_key_env.",
    )
    models: tuple[str, ...] = setting((), "Models this upstream serves; empty = every model.")
    kind: UpstreamKind = setting(
        "openai",
        "The API family the upstream speaks: openai (chat completions, Responses and every "
        "other /v1/ path) or anthropic (Messages at base_url + /messages; intact's key goes "
        "in x-api-key and anthropic-version is sent unless the app sends its own).",
    )
    apis: tuple[str, ...] = setting(
        (),
        "App APIs this upstream serves (chat, responses, messages); empty = by kind: openai "
        "serves chat and responses, anthropic serves messages. A server that speaks both "
        "families (the built-in simulator, llama.cpp) can list all three.",
        pattern="chat|responses|messages",
        shown="by kind",
    )
    provider: str = setting(
        "openai", "gen_ai.provider.name reported in telemetry (openai, azure.ai.openai, ...)."
    )
    resume: ResumeMode = setting(
        "instruct",
        "How a broken stream is continued: prefill (vLLM continue_final_message), "
        "prefix (DeepSeek/Mistral), instruct (OpenAI), restart (only before any output). "
        "Unset, it is chosen by the host of base_url (see *Providers and the resume mode "
        "each needs*); check-config shows the result.",
        shown="by base_url host",
    )
    max_concurrent_streams: int = setting(
        256, "Attempts in flight to this upstream; more wait up to queue_timeout.", ge=1
    )
    queue_timeout: float = setting(
        1.0, "Seconds a request waits for a free stream slot before HTTP 503.", ge=0
    )
    max_queued: int = setting(
        64, "Requests allowed to wait for a stream slot; more get HTTP 503 at once.", ge=0
    )
    headers: StringTable = setting(
        StringTable(),
        "Extra HTTP headers sent with every request to this upstream, e.g. "
        '`{ "X-Route" = "eu" }`; they win over forwarded app headers. Values are shown '
        "redacted by check-config and /debug/state.",
        pattern=HEADER_NAME,
        redacted=True,
    )
    query: StringTable = setting(
        StringTable(),
        "Query parameters added to every request URL of this upstream, e.g. Azure OpenAI's "
        '`{ "api-version" = "2024-10-21" }`; they win over the app\'s own.',
        pattern=r"[^\s&=#]+",
    )
    forward_api_key: bool = setting(
        False,
        "Pass the app's own credentials (Authorization, x-api-key, api-key headers) to this "
        "upstream instead of intact's key; off, an app's credentials never leave intact.",
    )
    api_key_header: str = setting(
        "Authorization",
        "Header that carries intact's API key for this upstream: Authorization sends "
        "`Bearer <key>`, any other name (Azure OpenAI's api-key, Anthropic's x-api-key) the "
        "key alone.",
        pattern=HEADER_NAME,
    )
    retry: RetryConfig = field(default_factory=RetryConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole daemon configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    upstreams: tuple[UpstreamConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    apps: tuple[AppConfig, ...] = ()

    def socket_path(self) -> str:
        if self.server.socket:
            return self.server.socket
        return default_socket_path()


def default_socket_path(environ: Mapping[str, str] | None = None, euid: int | None = None) -> str:
    """The socket path when ``server.socket`` is empty: never directly in a directory that
    other users can write to (where any of them could take the path first)."""
    env = os.environ if environ is None else environ
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return str(Path(runtime_dir) / "intact.sock")
    uid = os.geteuid() if euid is None else euid
    if uid == 0:
        return "/run/intact/intact.sock"
    return str(Path(env.get("TMPDIR") or "/tmp") / f"intact-{uid}" / "intact.sock")


# Sections every upstream inherits and may override key by key.
_OVERRIDABLE = ("retry", "stream", "breaker", "routing")
_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "retry": RetryConfig,
    "stream": StreamConfig,
    "breaker": BreakerConfig,
    "recovery": RecoveryConfig,
    "telemetry": TelemetryConfig,
    "routing": RoutingConfig,
}

# The single-upstream shortcut when neither flags, env nor file name an upstream.
_DEFAULT_UPSTREAM = {
    "name": "default",
    "base_url": "https://api.openai.com/v1",
    "api_key_env": "OPENAI_API_KEY",
}


@dataclass(frozen=True, slots=True)
class ProviderResume:
    """The resume mode an upstream gets when its config does not set one, by base_url."""

    provider: str
    host: str  # exact host, or ".suffix" for every host under it
    mode: ResumeMode
    why: str
    path: str = ""  # base_url path prefix ("" = any)

    def matches(self, host: str, path: str) -> bool:
        if self.host.startswith("."):
            if not host.endswith(self.host):
                return False
        elif host != self.host:
            return False
        return not self.path or path == self.path or path.startswith(self.path + "/")


# First match wins. Only what a provider documents is assumed; every other host, loopback
# and self-hosted servers included, gets UNKNOWN_HOST_RESUME.
PROVIDER_RESUME_DEFAULTS: tuple[ProviderResume, ...] = (
    ProviderResume(
        "OpenAI", "api.openai.com", "instruct", "no prefill; unknown fields are rejected"
    ),
    ProviderResume("Azure OpenAI", ".openai.azure.com", "instruct", "as OpenAI"),
    ProviderResume(
        "Anthropic (OpenAI-compatible API)",
        "api.anthropic.com",
        "instruct",
        "no `continue_final_message`; newer models reject a final assistant message",
    ),
    ProviderResume(
        "Google Gemini (OpenAI-compatible API)",
        "generativelanguage.googleapis.com",
        "instruct",
        "no documented prefill on the OpenAI-compatible API",
    ),
    ProviderResume(
        "DeepSeek, beta endpoint",
        "api.deepseek.com",
        "prefix",
        'chat prefix completion (`"prefix": true`) exists only on the beta endpoint',
        path="/beta",
    ),
    ProviderResume(
        "DeepSeek, other endpoints", "api.deepseek.com", "instruct", "no prefix completion"
    ),
    ProviderResume(
        "Mistral", "api.mistral.ai", "prefix", '`"prefix": true` on the assistant message'
    ),
)

# A host intact does not know may or may not continue a prefill (vLLM needs
# continue_final_message, a proxy in front of OpenAI rejects it, a server that ignores it
# answers a fresh turn that would be spliced on). Every chat server can follow instruct.
UNKNOWN_HOST_RESUME: ResumeMode = "instruct"


def default_resume_mode(base_url: str) -> ResumeMode:
    """The resume mode of an upstream whose config does not set one."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    path = parts.path.rstrip("/")
    for rule in PROVIDER_RESUME_DEFAULTS:
        if rule.matches(host, path):
            return rule.mode
    return UNKNOWN_HOST_RESUME


def resume_defaults_markdown() -> str:
    """The README's table of providers and the resume mode each gets by default."""
    lines = ["| upstream (`base_url` host) | default `resume` | why |", "| --- | --- | --- |"]
    for rule in PROVIDER_RESUME_DEFAULTS:
        host = f"*{rule.host}" if rule.host.startswith(".") else rule.host
        path = rule.path or ""
        lines.append(f"| {rule.provider}: `{host}{path}` | `{rule.mode}` | {rule.why} |")
    lines.append(
        f"| anything else: loopback, private addresses, other hosts | "
        f"`{UNKNOWN_HOST_RESUME}` | intact cannot know that the server continues a prefill; "
        'every chat server follows an instruction. Set `resume = "prefill"` for vLLM, '
        "SGLang or llama.cpp, which continue exactly |"
    )
    return "\n".join(lines) + "\n"


def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe_type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return "a list of integers" if get_args(tp)[0] is int else "a list of strings"
    if tp is StringTable:
        return "a table of strings"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _check_value(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """Coerce and validate one scalar; raise ConfigError naming key, value and what is allowed."""
    origin = get_origin(tp)
    allowed = _describe_type(tp)
    bad = ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")
    if origin is Literal:
        if value not in get_args(tp):
            raise bad
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad
        if get_args(tp)[0] is int:
            return tuple(_check_value(f"{key}[{i}]", v, int, meta) for i, v in enumerate(value))
        if not all(isinstance(v, str) for v in value):
            raise bad
        pattern = meta.get("pattern")
        for i, item in enumerate(value):
            if pattern and not re.fullmatch(pattern, item):
                raise ConfigError(
                    f"{key}[{i}] = {item!r} is not allowed: expected a string matching {pattern}"
                )
        return tuple(value)
    if tp is StringTable:
        return _check_table(key, value, meta.get("pattern"), bad)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif tp is float:
        if value == "off" and meta.get("off"):
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise bad
        pattern = meta.get("pattern")
        if pattern and not re.fullmatch(pattern, value):
            raise ConfigError(
                f"{key} = {value!r} is not allowed: expected a string matching {pattern}"
            )
        return value
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    for limit, ok, word in (
        (ge, ge is None or value >= ge, ">="),
        (gt, gt is None or value > gt, ">"),
        (le, le is None or value <= le, "<="),
    ):
        if not ok:
            raise ConfigError(
                f"{key} = {value!r} is not allowed: expected {allowed} {word} {limit}"
            )
    return value


# Control characters would split a header line or a query string.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _check_table(key: str, value: Any, pattern: str | None, bad: ConfigError) -> StringTable:
    """A table of strings: names matching ``pattern``, values without control characters."""
    if not isinstance(value, Mapping):
        raise bad
    for name, item in value.items():
        if pattern and not re.fullmatch(pattern, name):
            raise ConfigError(
                f"{key}: name {name!r} is not allowed: expected a name matching {pattern}"
            )
        if not isinstance(item, str):
            raise ConfigError(f"{key}.{name} = {item!r} is not allowed: expected a string")
        if _CONTROL_CHARS.search(item):
            raise ConfigError(
                f"{key}.{name} = {item!r} is not allowed: expected a string without "
                "control characters"
            )
    return StringTable(value)


def _build(cls: type[Any], raw: Mapping[str, Any], prefix: str) -> Any:
    """Build one config dataclass from a raw table, rejecting unknown keys."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')} must be a table, got {raw!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key {prefix}{key} (allowed keys: {allowed})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(typing.cast(type[Any], tp), value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_value(f"{prefix}{key}", value, tp, fields[key].metadata)
    return cls(**kwargs)


def merge_tables(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge raw config tables: values in ``over`` win, nested tables merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def build_config(raw: Mapping[str, Any]) -> Config:
    """Validate a merged raw tree (file < env < flags) into a Config."""
    top_allowed = {*list(_SECTIONS), "upstreams", "routes", "apps"}
    for key in raw:
        if key not in top_allowed:
            raise ConfigError(f"unknown key {key} (allowed keys: {', '.join(sorted(top_allowed))})")
    sections = {name: _build(cls, raw.get(name, {}), f"{name}.") for name, cls in _SECTIONS.items()}
    _check_forward_headers(sections["server"].forward_headers)
    raw_upstreams = raw.get("upstreams")
    if raw_upstreams is None:
        raw_upstreams = [_DEFAULT_UPSTREAM]
    if not isinstance(raw_upstreams, list) or not raw_upstreams:
        raise ConfigError(
            f"upstreams = {raw_upstreams!r} is not allowed: expected a non-empty "
            "array of tables ([[upstreams]])"
        )
    upstreams: list[UpstreamConfig] = []
    for i, up in enumerate(raw_upstreams):
        if not isinstance(up, Mapping):
            raise ConfigError(f"upstreams[{i}] must be a table, got {up!r}")
        # Each upstream inherits the global [retry]/[stream]/[breaker] and overrides per key.
        resolved = dict(up)
        if resolved.get("kind") == "anthropic":
            # Anthropic's own conventions, unless the config says otherwise.
            resolved.setdefault("api_key_header", "x-api-key")
            resolved.setdefault("provider", "anthropic")
        if "resume" not in resolved and isinstance(resolved.get("base_url", ""), str):
            base_url = resolved.get("base_url", UpstreamConfig.base_url)
            resolved["resume"] = default_resume_mode(base_url)
        for name in _OVERRIDABLE:
            resolved[name] = merge_tables(raw.get(name, {}), up.get(name, {}) or {})
        upstream = _build(UpstreamConfig, resolved, f"upstreams[{i}].")
        for name in upstream.headers:
            if name.lower() in HOP_BY_HOP_HEADERS:
                raise ConfigError(
                    f"upstreams[{i}].headers: {name!r} is not allowed: hop-by-hop and framing "
                    "headers are set per connection"
                )
        upstreams.append(upstream)
    names = [u.name for u in upstreams]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"upstreams: name {dupes[0]!r} is used twice (names must be unique)")
    routes = _build_routes(raw.get("routes", []), set(names))
    apps = _build_apps(raw.get("apps", []))
    return Config(upstreams=tuple(upstreams), routes=routes, apps=apps, **sections)


def _check_forward_headers(names: tuple[str, ...]) -> None:
    for name in names:
        lowered = name.lower()
        if lowered in CREDENTIAL_HEADERS:
            raise ConfigError(
                f"server.forward_headers: {name!r} is not allowed: an app's credentials are "
                "forwarded only by an upstream's forward_api_key = true"
            )
        if lowered in HOP_BY_HOP_HEADERS or lowered == "host" or lowered.startswith("intact-"):
            raise ConfigError(
                f"server.forward_headers: {name!r} is not allowed: hop-by-hop, Host and "
                "intact-* headers are never forwarded"
            )


# The `app` label of every peer that matches no [[apps]] entry.
OTHER_APP = "other"


def _build_apps(raw: Any) -> tuple[AppConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"apps = {raw!r} is not allowed: expected an array of tables ([[apps]])")
    apps: list[AppConfig] = []
    owner: dict[int, str] = {}
    for i, table in enumerate(raw):
        app = _build(AppConfig, table, f"apps[{i}].")
        if not app.name:
            raise ConfigError(f"apps[{i}].name is required")
        if app.name == OTHER_APP or any(a.name == app.name for a in apps):
            raise ConfigError(
                f"apps[{i}].name = {app.name!r} is not allowed: names must be unique and "
                f"{OTHER_APP!r} is the label of peers that match no app"
            )
        for uid in app.uids:
            if uid in owner:
                raise ConfigError(
                    f"apps[{i}].uids: uid {uid} already belongs to app {owner[uid]!r}"
                )
            owner[uid] = app.name
        apps.append(app)
    return tuple(apps)


def parse_target(target: str) -> tuple[str, str | None]:
    """'upstream' or 'upstream:model' -> (upstream, model or None for 'as requested')."""
    name, sep, model = target.partition(":")
    return name, (model if sep and model else None)


def _build_routes(raw: Any, upstream_names: set[str]) -> tuple[RouteConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"routes = {raw!r} is not allowed: expected an array of tables")
    routes: list[RouteConfig] = []
    seen: set[str] = set()
    for i, table in enumerate(raw):
        route = _build(RouteConfig, table, f"routes[{i}].")
        if not route.model:
            raise ConfigError(f"routes[{i}].model is required")
        if route.model in seen:
            raise ConfigError(f"routes: model {route.model!r} is routed twice")
        seen.add(route.model)
        for key in ("targets", "context_fallbacks", "policy_fallbacks"):
            for target in getattr(route, key):
                name, _ = parse_target(target)
                if name not in upstream_names:
                    known = ", ".join(sorted(upstream_names))
                    raise ConfigError(
                        f"routes[{i}].{key}: {target!r} names no upstream (upstreams: {known})"
                    )
        routes.append(route)
    return tuple(routes)


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {exc}") from None


# Flag-like env vars; INTACT_<SECTION>__<KEY> covers every other scalar key.
ENV_SHORTCUTS = {
    "INTACT_CONFIG": "config",
    "INTACT_SOCKET": "socket",
    "INTACT_UPSTREAM": "upstream",
    "INTACT_API_KEY_ENV": "api_key_env",
    "INTACT_METRICS_ADDR": "metrics_addr",
    "INTACT_RESUME": "resume",
}


def _parse_env_value(name: str, text: str, tp: Any) -> Any:
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} = {text!r} is not allowed: expected true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name} = {text!r} is not allowed: expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{name} = {text!r} is not allowed: expected a number") from None
    if get_origin(tp) is tuple:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if get_args(tp)[0] is int:
            return [_parse_env_value(name, part, int) for part in parts]
        return parts
    return text


# Kubernetes injects these for a Service named "intact" in the pod's namespace; they are not
# intact's settings and must not stop the daemon.
_KUBERNETES_SERVICE_LINK = re.compile(r"INTACT_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\w+)?)")


def env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split INTACT_* variables into a raw config overlay and flag-like shortcuts."""
    overlay: dict[str, Any] = {}
    shortcuts: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith("INTACT_") or _KUBERNETES_SERVICE_LINK.fullmatch(name):
            continue
        if name in ENV_SHORTCUTS:
            shortcuts[ENV_SHORTCUTS[name]] = value
            continue
        section, sep, key = name[len("INTACT_") :].lower().partition("__")
        cls = _SECTIONS.get(section)
        if not sep or cls is None or key not in _hints(cls):
            known = ", ".join([*ENV_SHORTCUTS, "INTACT_<SECTION>__<KEY>"])
            raise ConfigError(f"unknown environment variable {name} (known: {known})")
        overlay.setdefault(section, {})[key] = _parse_env_value(name, value, _hints(cls)[key])
    return overlay, shortcuts


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """What the command line sets; None means 'not given'."""

    config: str | None = None
    socket: str | None = None
    upstream: str | None = None
    api_key_env: str | None = None
    metrics_addr: str | None = None
    resume: str | None = None


def _apply_shortcuts(raw: dict[str, Any], opts: Mapping[str, str | None]) -> dict[str, Any]:
    out = dict(raw)
    if opts.get("socket") is not None:
        out["server"] = {**out.get("server", {}), "socket": opts["socket"]}
    if opts.get("metrics_addr") is not None:
        out["server"] = {**out.get("server", {}), "metrics_addr": opts["metrics_addr"]}
    if opts.get("upstream") is not None:
        single: dict[str, Any] = {"name": "default", "base_url": opts["upstream"]}
        out["upstreams"] = [single]
    for key in ("api_key_env", "resume"):
        if opts.get(key) is None:
            continue
        if opts.get("upstream") is None:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{flag} applies to the upstream given with --upstream (or INTACT_UPSTREAM); "
                f"with [[upstreams]] in a config file set {key} per upstream there"
            )
        out["upstreams"][0][key] = opts[key]
    return out


def resolve(
    overrides: Overrides | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load the effective config: defaults < file < INTACT_* env < flags."""
    overrides = overrides or Overrides()
    environ = os.environ if environ is None else environ
    env_overlay, env_short = env_overrides(environ)
    config_path = overrides.config or env_short.get("config")
    raw: dict[str, Any] = load_toml(config_path) if config_path else {}
    raw = merge_tables(raw, env_overlay)
    # Env shortcuts first, then flags, so flags win. A flag-given upstream replaces the
    # env-given one together with its api_key_env/resume.
    flag_opts = {k: v for k, v in dataclasses.asdict(overrides).items() if k != "config"}
    env_opts: dict[str, str | None] = {k: v for k, v in env_short.items() if k != "config"}
    if flag_opts.get("upstream") is not None:
        for key in ("upstream", "api_key_env", "resume"):
            env_opts.pop(key, None)
    raw = _apply_shortcuts(raw, env_opts)
    if flag_opts.get("upstream") is None and env_opts.get("upstream") is not None:
        flag_opts["upstream"] = env_opts["upstream"]
        for key in ("api_key_env", "resume"):
            if flag_opts.get(key) is None and env_opts.get(key) is not None:
                flag_opts[key] = env_opts[key]
    return build_config(_apply_shortcuts(raw, flag_opts))


def reference_markdown() -> str:
    """The README's configuration reference, generated from the declarations above."""
    lines: list[str] = []

    def table(cls: type[Any], heading: str, skip: tuple[str, ...] = ()) -> None:
        lines.append(f"#### `{heading}`\n")
        doc = (cls.__doc__ or "").strip()
        if doc:
            lines.append(doc + "\n")
        lines.append("| key | default | meaning |")
        lines.append("| --- | --- | --- |")
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            default: Any = f.default
            if default is dataclasses.MISSING:
                continue
            shown = f.metadata.get("shown") or f"`{_toml_literal(default)}`"
            allowed = ""
            if get_origin(hints[f.name]) is Literal:
                allowed = " Allowed: " + ", ".join(f"`{a}`" for a in get_args(hints[f.name]))
            lines.append(f"| `{f.name}` | {shown} | {f.metadata.get('doc', '')}{allowed} |")
        lines.append("")

    for name, cls in _SECTIONS.items():
        table(cls, f"[{name}]")
    table(UpstreamConfig, "[[upstreams]]")
    lines.append(
        "Each `[[upstreams]]` entry may also carry `[upstreams.retry]`, `[upstreams.stream]` "
        "and `[upstreams.breaker]` tables that override the global values key by key.\n"
    )
    table(AppConfig, "[[apps]]")
    return "\n".join(lines).rstrip("\n") + "\n"


def _toml_literal(value: Any) -> str:
    if isinstance(value, Mapping):
        pairs = ", ".join(f"{_toml_literal(k)} = {_toml_literal(v)}" for k, v in value.items())
        return "{ " + pairs + " }" if pairs else "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return repr(value)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-data view of a config (for check-config and /debug/state); no secrets inside."""

    def conv(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {
                f.name: _redact(getattr(obj, f.name))
                if f.metadata.get("redacted")
                else conv(getattr(obj, f.name))
                for f in dataclasses.fields(obj)
            }
        if isinstance(obj, tuple):
            return [conv(v) for v in obj]
        if isinstance(obj, StringTable):
            return dict(obj)
        return obj

    return typing.cast(dict[str, Any], conv(cfg))


REDACTED = "<redacted>"


def _redact(table: Mapping[str, str]) -> dict[str, str]:
    return dict.fromkeys(table, REDACTED)


__all__ = [
    "OTHER_APP",
    "AppConfig",
    "BreakerConfig",
    "Config",
    "ConfigError",
    "Overrides",
    "ProviderResume",
    "RecoveryConfig",
    "RetryConfig",
    "ServerConfig",
    "StreamConfig",
    "StringTable",
    "TelemetryConfig",
    "UpstreamConfig",
    "build_config",
    "default_resume_mode",
    "default_socket_path",
    "merge_tables",
    "reference_markdown",
    "resolve",
    "resume_defaults_markdown",
    "to_dict",
]
