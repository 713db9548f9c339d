"""The real model's shared pieces: the prompts, reference answers per API, and the run record."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from intact.sse import DONE_DATA, SSEDecoder

MODEL = "smollm2"
SEED = 42
API_KEY = "sk-intact-real-model"
"""llama-server runs with --api-key: Authorization (chat, Responses) and x-api-key (Messages)
are checked for real."""
MAX_TOKENS = 80
PROMPTS = {
    "sky": "Why is the sky blue?",
    "poem": "Write a short poem about the sea.",
    "tips": "List three tips for learning to program.",
    "hash": "Explain what a hash table is in two sentences.",
}
SAMPLING = {"temperature": 0, "seed": SEED, "max_tokens": MAX_TOKENS}
"""Greedy, seeded, bounded: what every real-model request sends besides its messages."""


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[prompt]}]


@dataclass(frozen=True)
class LlamaServer:
    url: str
    """Origin, e.g. http://127.0.0.1:PORT (the OpenAI API is under /v1)."""
    log: Path
    api_key: str = API_KEY

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass(frozen=True)
class Reference:
    """An uninterrupted answer, straight from llama-server."""

    text: str
    finish_reason: str
    chunks: list[str]
    """Content of each content chunk (the role chunk's is ""), as the chaos proxy counts them;
    for Messages and Responses, the text of each event the proxy counts ("" but deltas)."""

    also: tuple[str, ...] = ()
    """Other finish reasons that say the same (see fetch_responses_reference)."""

    def partial(self, position: int) -> str:
        """What a client has after `position` content chunks."""
        return "".join(self.chunks[:position])


def fetch_reference(server: LlamaServer, prompt: str) -> Reference:
    decoder = SSEDecoder()
    chunks: list[str] = []
    finish = None
    body = {"model": MODEL, "messages": messages(prompt), "stream": True, **SAMPLING}
    url = server.url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=server.auth, timeout=60) as resp:
        resp.raise_for_status()
        for raw in resp.iter_bytes():
            for event in decoder.feed(raw):
                if event.data == DONE_DATA:
                    continue
                for choice in orjson.loads(event.data).get("choices") or ():
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    else:
                        chunks.append(choice["delta"].get("content") or "")
    assert finish is not None, f"reference for {prompt!r} has no finish_reason"
    return Reference(text="".join(chunks), finish_reason=finish, chunks=chunks)


def messages_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    """An Anthropic Messages request for `prompt`, greedy (seed: llama.cpp's own field)."""
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": messages(prompt),
        "temperature": 0,
        "seed": SEED,
    }


def responses_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    """An OpenAI Responses request for `prompt`, greedy."""
    return {
        "model": MODEL,
        "input": PROMPTS[prompt],
        "max_output_tokens": max_tokens,
        "temperature": 0,
        "seed": SEED,
    }


def _named_events(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    decoder = SSEDecoder()
    for raw in resp.iter_bytes():
        for event in decoder.feed(raw):
            yield orjson.loads(event.data)


def fetch_messages_reference(server: LlamaServer, prompt: str, max_tokens: int) -> Reference:
    """The uninterrupted Messages answer; `chunks` are the events before message_delta."""
    body = {**messages_body(prompt, max_tokens), "stream": True}
    headers = {"x-api-key": server.api_key, "anthropic-version": "2023-06-01"}
    chunks: list[str] = []
    finish = None
    url = server.url + "/v1/messages"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as resp:
        resp.raise_for_status()
        for event in _named_events(resp):
            kind = event["type"]
            if kind == "message_delta":
                finish = event["delta"]["stop_reason"]
            elif kind not in ("message_stop", "error", "ping"):
                delta = event.get("delta") or {}
                chunks.append(delta.get("text") or "")
    assert finish is not None, f"Messages reference for {prompt!r} has no stop_reason"
    return Reference(text="".join(chunks), finish_reason=finish, chunks=chunks)


def fetch_responses_reference(server: LlamaServer, prompt: str, max_tokens: int) -> Reference:
    """The uninterrupted Responses answer; `chunks` are the events before response.completed
    (finish_reason: the response's status).

    llama-server reports "completed" for an answer cut at max_output_tokens, where OpenAI
    (and intact, when a continuation reaches the app's limit) says "incomplete": at the
    limit, both are taken as the reference's."""
    body = {**responses_body(prompt, max_tokens), "stream": True}
    chunks: list[str] = []
    finish = None
    at_limit = False
    url = server.url + "/v1/responses"
    with httpx.stream("POST", url, json=body, headers=server.auth, timeout=60) as resp:
        resp.raise_for_status()
        for event in _named_events(resp):
            kind = event["type"]
            if kind in ("response.completed", "response.incomplete"):
                finish = event["response"]["status"]
                usage = event["response"].get("usage") or {}
                at_limit = usage.get("output_tokens") == max_tokens
            elif kind.endswith(".delta"):
                chunks.append(event["delta"])
            elif kind not in ("error", "response.failed"):
                chunks.append("")
    assert finish is not None, f"Responses reference for {prompt!r} has no ending"
    also = ("completed", "incomplete") if at_limit else ()
    return Reference(text="".join(chunks), finish_reason=finish, chunks=chunks, also=also)


@dataclass
class RunRecord:
    """What the real-model suite did, printed at the end of the run."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    exact: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    differences: list[str] = field(default_factory=list)
    seams: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    """Interrupted requests of the typed APIs by "api mode stream|whole: outcome"."""


RECORD = RunRecord()
