"""Resume strategies: how to ask an upstream to continue a partial answer.

Each mode is a small function from (original request, partial text) to the continuation
request; every other field of the original request is kept. The seed article's mistake was
to drop the partial text from the continuation prompt, so the model could not know where
to go on; every mode here carries the partial text verbatim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from intact.config import ResumeMode

ResumeBuilder = Callable[[dict[str, Any], str, str], dict[str, Any]]


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
    mode: ResumeMode,
    generated_tokens: int,
    instruct_prompt: str,
) -> dict[str, Any]:
    """The body of the next attempt after an interruption.

    With no partial text the original request is simply sent again (the splice layer hides
    whatever the app already saw, e.g. the role delta). ``restart`` never reaches here with
    partial text: the caller refuses that case with an explicit error.
    """
    if not partial or mode == "restart":
        body = dict(original)
    else:
        body = BUILDERS[mode](original, partial, instruct_prompt)
    # The budget for new tokens shrinks by what was already generated.
    for key in ("max_tokens", "max_completion_tokens"):
        limit = original.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool) and generated_tokens:
            body[key] = max(1, limit - generated_tokens)
    return body
