"""Resume strategies: how to ask an upstream to continue a partial answer.

Each mode is a small function from (original request, partial text) to the continuation
request; every other field of the original request is kept. The seed article's mistake was
to drop the partial text from the continuation prompt, so the model could not know where
to go on; every mode here carries the partial text verbatim.

Which mode a request gets is the upstream's (``resume`` in its config), narrowed by the app's
``intact-resume`` header: see ``effective_resume_mode``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

ResumeBuilder = Callable[[dict[str, Any], str, str], dict[str, Any]]

# Values of the app's `intact-resume` header: "off" plus every upstream resume mode.
REQUEST_RESUME_MODES: Final = ("off", "prefill", "prefix", "instruct", "restart")

# What an upstream configured for a mode can also be asked to do. Every chat server can
# answer an instruct-style continuation and a re-run; prefill and prefix are server features.
_ALLOWED_BY_UPSTREAM: Final[Mapping[str, frozenset[str]]] = {
    "prefill": frozenset({"prefill", "instruct", "restart"}),
    "prefix": frozenset({"prefix", "instruct", "restart"}),
    "instruct": frozenset({"instruct", "restart"}),
    "restart": frozenset({"restart"}),
}


def effective_resume_mode(upstream_mode: str, requested: str | None) -> str:
    """The resume mode of one request on one upstream.

    No header: the upstream's mode. A header the upstream can honour wins. A mode the
    upstream cannot do (prefill on an instruct-only provider) becomes ``"off"``: the app
    asked for a specific way of continuing, so it gets an explicit error rather than a
    continuation made another way.
    """
    if requested is None:
        return upstream_mode
    if requested == "off" or requested in _ALLOWED_BY_UPSTREAM.get(upstream_mode, ()):
        return requested
    return "off"


def _with_messages(original: dict[str, Any], extra: list[dict[str, Any]]) -> dict[str, Any]:
    body = dict(original)
    body["messages"] = [*original["messages"], *extra]
    return body


def prefill(original: dict[str, Any], partial: str, _prompt: str) -> dict[str, Any]:
    """vLLM/SGLang/llama.cpp: the final assistant message is continued, not answered."""
    body = _with_messages(original, [{"role": "assistant", "content": partial}])
    body["continue_final_message"] = True
    body["add_generation_prompt"] = False
    return body


def prefix(original: dict[str, Any], partial: str, _prompt: str) -> dict[str, Any]:
    """DeepSeek (beta endpoint) and Mistral: an assistant message flagged as the prefix."""
    return _with_messages(original, [{"role": "assistant", "content": partial, "prefix": True}])


def instruct(original: dict[str, Any], partial: str, prompt: str) -> dict[str, Any]:
    """Providers without prefill (OpenAI): show the partial answer, then ask to go on."""
    return _with_messages(
        original,
        [{"role": "assistant", "content": partial}, {"role": "user", "content": prompt}],
    )


BUILDERS: dict[str, ResumeBuilder] = {"prefill": prefill, "prefix": prefix, "instruct": instruct}


def resume_request(
    original: dict[str, Any],
    partial: str,
    *,
    mode: str,
    generated_tokens: int,
    instruct_prompt: str,
) -> dict[str, Any]:
    """The body of the next attempt after an interruption.

    With no partial text the original request is simply sent again (the splice layer hides
    whatever the app already saw, e.g. the role delta). ``restart`` and ``off`` never reach
    here with partial text: the caller refuses that case with an explicit error.
    """
    builder = BUILDERS.get(mode)
    body = builder(original, partial, instruct_prompt) if partial and builder else dict(original)
    # The budget for new tokens shrinks by what was already generated.
    for key in ("max_tokens", "max_completion_tokens"):
        limit = original.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool) and generated_tokens:
            body[key] = max(1, limit - generated_tokens)
    return body


# Where each API asks for structured output: chat's response_format, Responses'
# text.format, Anthropic's output_format.
_FORMAT_FIELDS: tuple[tuple[str, ...], ...] = (
    ("response_format",),
    ("text", "format"),
    ("output_format",),
)


def structured_output(body: Mapping[str, Any]) -> str | None:
    """The structured output the request asks for, as "<field> <type>" (e.g.
    "response_format json_schema"), or None."""
    for path in _FORMAT_FIELDS:
        fmt: Any = body
        for key in path:
            fmt = fmt.get(key) if isinstance(fmt, Mapping) else None
        kind = fmt.get("type") if isinstance(fmt, Mapping) else None
        if kind in ("json_object", "json_schema"):
            return f"{'.'.join(path)} {kind}"
    return None


def json_not_resumable(output: str) -> str:
    """Why a JSON answer (``output``, from ``structured_output``) cannot be continued."""
    return (
        f"a JSON answer ({output}) cannot be continued: the upstream applies the format "
        "from the start of its continuation"
    )
