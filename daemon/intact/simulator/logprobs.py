"""Token log probabilities for `logprobs: true`, shaped like OpenAI's and deterministic.

The simulated model decodes greedily, so the token it emits is always the most likely one:
its probability is drawn (from a hash of the token and the one before it) between 0.5 and 1,
and the alternatives in `top_logprobs` share what is left, each less likely than the last.
The same token after the same token always gets the same numbers, which is what a model at
temperature 0 gives when a resumed request regenerates it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

MAX_TOP_LOGPROBS = 20

_FILLERS = (
    " the", " a", " and", " of", " to", " in", " is", " it", "\n", ",", ".", " that", " for",
    " on", " with", " as", " this", " be", " or", " not", " are", " was", " by", " we",
)  # fmt: skip


def _unit(*parts: str) -> float:
    """A number in [0, 1) from the parts, the same in every process."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _alternatives(token: str, count: int) -> list[str]:
    """Other tokens a model might have weighed instead of `token`: variants, then fillers."""
    bare = token.lstrip()
    candidates = [
        bare if bare != token else " " + token,
        token.upper(),
        token.lower(),
        token.capitalize(),
        token + ".",
        token + ",",
        *_FILLERS,
    ]
    seen = {token}
    chosen: list[str] = []
    if count <= 0:
        return chosen
    for candidate in candidates:
        if candidate and candidate not in seen:
            seen.add(candidate)
            chosen.append(candidate)
            if len(chosen) == count:
                break
    return chosen


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def token_logprob(token: str, previous: str, top: int) -> dict[str, Any]:
    """One entry of `logprobs.content`: the token, its logprob, its bytes, the top-k."""
    p = 0.5 + 0.5 * _unit("logprob", previous, token)
    rest = 1.0 - p
    entry = _entry(token, round(math.log(p), 6))
    if top <= 0:
        entry["top_logprobs"] = []
        return entry
    top_entries = [entry.copy()]
    for rank, other in enumerate(_alternatives(token, top - 1), start=1):
        share = rest * 0.5**rank * (0.5 + 0.5 * _unit("alt", previous, token, other))
        top_entries.append(_entry(other, round(math.log(max(share, 1e-12)), 6)))
    entry["top_logprobs"] = top_entries
    return entry


def logprobs_for(tokens: Sequence[str], previous: str, top: int) -> list[dict[str, Any]]:
    """Entries for consecutive tokens; `previous` is the token before the first one."""
    entries = []
    for token in tokens:
        entries.append(token_logprob(token, previous, top))
        previous = token
    return entries
