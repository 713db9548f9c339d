"""Token usage of a recovered answer, from the upstreams' own usage reports.

An answer stitched from several attempts has no single usage report: the interrupted
attempts never sent theirs (it comes after the finish_reason), and a continuation's report
counts the partial answer in its prompt and the overlap it repeated in its completion. Each
attempt keeps an ``AttemptTokens`` record; ``recovered_usage`` folds them into the report the
app gets:

- ``prompt_tokens``: the original request's own count, from an attempt that sent it
  unchanged and reported usage; else the continuation's count minus the partial answer it
  carried (counted in chunks; in ``instruct`` mode the instruction's own tokens stay in).
- ``completion_tokens``: what the app received. A finished attempt contributes its reported
  ``completion_tokens`` minus what intact dropped from it (the repeated overlap, in chunks,
  and any reasoning it re-did, by its reported ``reasoning_tokens`` when it has them); an
  interrupted attempt contributes the chunks it delivered (one token per chunk, as
  OpenAI-style streams send them). Tokens generated but never delivered are not counted.
- ``completion_tokens_details``: summed over the finished attempts' reports, with the
  reasoning of a continuation whose reasoning was dropped left out and the reasoning chunks
  of interrupted attempts added; present only when an upstream reported details.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class AttemptTokens:
    """What one attempt generated and what of it reached the app (chunks stand for tokens)."""

    original_prompt: bool  # the attempt sent the app's messages without a partial answer
    partial_tokens: int = 0  # chunks of the partial answer its prompt carried
    reasoning_forwarded: bool = True  # its reasoning reached the app (else it was dropped)
    reported: Mapping[str, Any] | None = None  # the upstream's last usage report
    finished: bool = False  # it ended with a finish_reason: the report covers all of it
    delivered: int = 0  # chunks (content, refusal, reasoning, tool-call deltas) forwarded
    delivered_reasoning: int = 0  # of which reasoning
    dropped_overlap: int = 0  # answer chunks dropped as a repeat of what the app had
    dropped_reasoning: int = 0  # reasoning chunks dropped (the app had its reasoning)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _prompt(parts: Sequence[AttemptTokens]) -> tuple[int, Mapping[str, Any] | None]:
    for part in parts:
        if part.original_prompt and part.reported and "prompt_tokens" in part.reported:
            report = part.reported
            return _int(report["prompt_tokens"]), report.get("prompt_tokens_details")
    for part in reversed(parts):
        if part.reported and "prompt_tokens" in part.reported:
            report = part.reported
            prompt = max(0, _int(report["prompt_tokens"]) - part.partial_tokens)
            details = report.get("prompt_tokens_details")
            if isinstance(details, Mapping):
                # Cached tokens of the continuation may include the partial answer.
                details = {
                    k: min(v, prompt) if isinstance(v, int) and not isinstance(v, bool) else v
                    for k, v in details.items()
                }
            return prompt, details
    return 0, None


def recovered_usage(parts: Sequence[AttemptTokens]) -> dict[str, Any]:
    """The usage object of an answer delivered by ``parts`` (in attempt order)."""
    final = next((p.reported for p in reversed(parts) if p.reported), None)
    usage: dict[str, Any] = dict(final) if final else {}
    prompt, prompt_details = _prompt(parts)
    completion = 0
    details: dict[str, Any] | None = None
    estimated_reasoning = 0
    for part in parts:
        report = part.reported if part.finished else None
        if report is None:
            completion += part.delivered
            estimated_reasoning += part.delivered_reasoning
            continue
        reported_details = report.get("completion_tokens_details")
        reported_details = reported_details if isinstance(reported_details, Mapping) else {}
        reasoning = _int(reported_details.get("reasoning_tokens"))
        dropped = part.dropped_overlap
        if not part.reasoning_forwarded:
            dropped += reasoning or part.dropped_reasoning
        completion += max(0, _int(report.get("completion_tokens")) - dropped)
        if reported_details:
            details = details if details is not None else {}
            for key, value in reported_details.items():
                if key == "reasoning_tokens" and not part.reasoning_forwarded:
                    value = 0
                if isinstance(value, int) and not isinstance(value, bool):
                    details[key] = _int(details.get(key)) + value
                elif key not in details:
                    details[key] = value
    if details is not None and estimated_reasoning:
        details["reasoning_tokens"] = _int(details.get("reasoning_tokens")) + estimated_reasoning
    usage["prompt_tokens"] = prompt
    usage["completion_tokens"] = completion
    usage["total_tokens"] = prompt + completion
    if prompt_details is not None:
        usage["prompt_tokens_details"] = prompt_details
    else:
        usage.pop("prompt_tokens_details", None)
    if details is not None:
        usage["completion_tokens_details"] = details
    else:
        usage.pop("completion_tokens_details", None)
    return usage
