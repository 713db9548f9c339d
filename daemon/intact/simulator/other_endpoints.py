"""What the simulated upstream answers on its routes besides chat: embeddings, legacy
completions, audio transcriptions and a model by id.

Every answer is a pure function of the request, so a test can compute what an app must
receive (``embedding``, ``completion_tokens``, ``transcription``) and compare exactly.
Bad input raises ``ValueError`` with OpenAI's wording where it matters; the server turns it
into a 400.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from intact.simulator.text import answer_for, complete

DEFAULT_DIMENSIONS = 16
MAX_DIMENSIONS = 3072


def embedding(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The vector of ``text``: values in [-1, 1) in steps of 1/128, so they survive float32
    (the base64 encoding) exactly."""
    raw = hashlib.shake_256(text.encode("utf-8")).digest(dimensions)
    return [(byte - 128) / 128 for byte in raw]


def _inputs(value: Any) -> list[str]:
    """The texts of an ``input``: a string, a list of strings, or token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [" ".join(map(str, value))]
        if all(isinstance(v, list) for v in value):
            return [" ".join(map(str, v)) for v in value]
    raise ValueError("'input' must be a string, an array of strings or an array of tokens.")


def embeddings_response(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``POST /v1/embeddings`` answer (OpenAI's ``list`` of ``embedding`` objects)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("you must provide a model parameter")
    texts = _inputs(body.get("input"))
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise ValueError("'dimensions' must be an integer.")
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise ValueError(f"'dimensions' must be from 1 to {MAX_DIMENSIONS}.")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ValueError("'encoding_format' must be 'float' or 'base64'.")
    data = []
    for index, text in enumerate(texts):
        vector = embedding(text, dimensions)
        encoded: list[float] | str = vector
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(text.split()) for text in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def completion_tokens(prompt: str, max_tokens: int | None = 16) -> tuple[list[str], str]:
    """The tokens a legacy completion of ``prompt`` emits, and its finish reason (the chat
    answer to the prompt as one user message; OpenAI's default max_tokens is 16)."""
    done = complete(answer_for([{"role": "user", "content": prompt}]), max_tokens)
    return list(done.tokens), done.finish_reason


def completion_request(body: Mapping[str, Any]) -> tuple[str, str, int | None, bool]:
    """(model, prompt, max_tokens, stream) of a ``POST /v1/completions`` body."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("you must provide a model parameter")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValueError("'prompt' must be a string (the simulator answers one prompt).")
    max_tokens = body.get("max_tokens", 16)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValueError("'max_tokens' must be a positive integer.")
    return model, prompt, max_tokens, body.get("stream") is True


def completion_object(
    completion_id: str, created: int, model: str, choices: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """A ``text_completion`` object (a whole response, or one event of a stream)."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": list(choices),
    }


def completion_choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def transcription(audio: bytes, filename: str) -> dict[str, Any]:
    """The ``POST /v1/audio/transcriptions`` answer: what arrived, so a test can tell the
    upload was relayed byte for byte."""
    digest = hashlib.sha256(audio).hexdigest()
    return {"text": f"{filename}: {len(audio)} bytes, sha256 {digest}"}
