"""llama-server behind intact's chaos proxy behind intact, and how an answer is judged."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from intact.chaos import ChaosProxy, ChaosSettings
from intact.daemon import RunningDaemon
from realmodel.llama import RECORD, LlamaServer, Reference
from support import Seen, daemon_for

BEFORE_RESPONSE = ("http_429", "http_500", "http_503", "connect_drop")
# Quick to notice a stall, patient enough for a CPU model on a busy 2-core machine.
TIMEOUTS = {
    "first_token_timeout": 10.0,
    "stall_timeout": 1.5,
    "connect_timeout": 2.0,
    "total_timeout": 60.0,
}


@contextlib.asynccontextmanager
async def chaos_intact(
    tmp_path: Path,
    llama: LlamaServer,
    *,
    resume: str = "prefill",
    max_attempts: int = 6,
    kind: str = "openai",
    **chaos: Any,
) -> AsyncIterator[tuple[ChaosProxy, RunningDaemon]]:
    """llama-server <- chaos proxy <- intact, for one test. `kind = "anthropic"` makes it an
    Anthropic upstream (Messages, x-api-key, anthropic-version)."""
    settings = ChaosSettings(
        upstream=llama.url,
        retry_after=0.05,
        stall_max=30.0,
        fault_log=str(tmp_path / "faults.jsonl"),
        **chaos,
    )
    key = tmp_path / "llama.key"
    key.write_text(llama.api_key)
    async with ChaosProxy(settings) as proxy:
        upstream = {
            "name": "llama",
            "kind": kind,
            "base_url": proxy.url + "/v1",
            "resume": resume,
            "api_key_file": str(key),
        }
        async with daemon_for(
            tmp_path,
            [],
            upstreams=[upstream],
            stream=TIMEOUTS,
            retry={"max_attempts": max_attempts},
        ) as daemon:
            yield proxy, daemon


def fault_log(tmp_path: Path) -> str:
    return (tmp_path / "faults.jsonl").read_text().strip().replace("\n", "\n    ")


def difference(ref: Reference, seen: Seen) -> str:
    """Where an answer departs from the reference, with context on both sides."""
    if seen.error is not None:
        return f"explicit error {seen.error!r} after {len(seen.text)} chars"
    at = next(
        (i for i, (a, b) in enumerate(zip(ref.text, seen.text, strict=False)) if a != b),
        min(len(ref.text), len(seen.text)),
    )
    return (
        f"first difference at char {at}: expected {ref.text[max(0, at - 40) : at + 40]!r}, "
        f"got {seen.text[max(0, at - 40) : at + 40]!r}; finish_reason {seen.finish_reason} "
        f"(expected {ref.finish_reason})"
    )


def record(case: str, ref: Reference, seen: Seen, log: str, *, tally: str | None = None) -> bool:
    """Count one interrupted request; True when it is byte-identical to the reference."""
    exact = seen.error is None and seen.text == ref.text
    exact = exact and (seen.finish_reason == ref.finish_reason or seen.finish_reason in ref.also)
    RECORD.requests += 1
    RECORD.exact += exact
    if tally is not None:
        RECORD.outcomes[f"{tally}: {'exact' if exact else 'different'}"] += 1
    if not exact:
        RECORD.differences.append(f"{case}: {difference(ref, seen)}\n    {log}")
    return exact


def doubled_seam(partial: str, continuation: str) -> str | None:
    """Text the continuation repeats from the partial's end (or its start), if any."""
    head = re.sub(r"\s+", " ", continuation).lstrip()
    tail = re.sub(r"\s+", " ", partial).rstrip()
    for size in range(min(len(tail), 200), 11, -1):
        piece = tail[-size:].lstrip()
        if len(piece) >= 12 and head.startswith(piece):
            return piece
    start = tail[:24]
    if len(start) == 24 and head.startswith(start):
        return start
    return None
