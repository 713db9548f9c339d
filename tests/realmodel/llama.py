"""The real model's shared pieces: the prompts, reference answers, and the run record."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from intact.sse import DONE_DATA, SSEDecoder

MODEL = "smollm2"
SEED = 42
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


@dataclass(frozen=True)
class Reference:
    """An uninterrupted answer, straight from llama-server."""

    text: str
    finish_reason: str
    chunks: list[str]
    """Content of each content chunk (the role chunk's is ""), as the chaos proxy counts them."""

    def partial(self, position: int) -> str:
        """What a client has after `position` content chunks."""
        return "".join(self.chunks[:position])


def fetch_reference(server: LlamaServer, prompt: str) -> Reference:
    decoder = SSEDecoder()
    chunks: list[str] = []
    finish = None
    body = {"model": MODEL, "messages": messages(prompt), "stream": True, **SAMPLING}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as resp:
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


@dataclass
class RunRecord:
    """What the real-model suite did, printed at the end of the run."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    exact: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    differences: list[str] = field(default_factory=list)
    seams: list[str] = field(default_factory=list)


RECORD = RunRecord()
