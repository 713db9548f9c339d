"""Streams through intact while a fault is on the wire, each judged against the answer the
simulator gives when nothing breaks.

Every stream ends in exactly one class: exact (intact saw no interruption), recovered
(interrupted, delivered byte-exact), explicit error (the SDK raised intact's error, what came
before it is a prefix of the answer), or one of the broken classes that must stay at 0:
silent truncation (no error, answer short), garbled (text that is not the answer), and
transport error (the app's connection died without intact saying why).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from intact.demo.loadgen import (
    LOADGEN_ID_HEADER,
    TRANSPORT_ERRORS,
    ConversationMix,
    Observation,
    ObservedError,
    Verdict,
    app_client,
    judge,
    make_conversation,
)
from intact.demo.outcomes import RelayOutcomes

# Streaming text answers only (tool-call answers are covered by bench/chaos.py); a third of
# them ask for usage, some are multi-turn, some are cut by max_tokens.
MIX = ConversationMix(non_stream_fraction=0.0, usage_fraction=0.3, tools_fraction=0.0)


@dataclass
class Tally:
    """What one fault did to its streams (one row of the results table)."""

    fault: str
    streams: int = 0
    exact: int = 0
    recovered: int = 0
    resumed: int = 0
    """Recovered streams that were resumed mid-answer (the rest were retried before text)."""
    explicit_errors: int = 0
    silent_truncations: int = 0
    garbled: int = 0
    transport_errors: int = 0
    error_codes: Counter[str] = field(default_factory=Counter)
    interruptions: Counter[str] = field(default_factory=Counter)
    wall_time: float = 0.0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """The first few broken streams, described for a human."""

    @property
    def broken(self) -> int:
        return self.silent_truncations + self.garbled + self.transport_errors


class Progress:
    """Content chunks each stream has received so far; a fault waits for enough of them."""

    def __init__(self) -> None:
        self.chunks: Counter[int] = Counter()
        self._changed = asyncio.Event()

    def add(self, index: int) -> None:
        self.chunks[index] += 1
        self._changed.set()

    def past(self, chunks: int) -> int:
        """How many streams have received at least ``chunks`` content chunks."""
        return sum(1 for n in self.chunks.values() if n >= chunks)

    async def wait_for(self, streams: int, chunks: int, within: float = 30.0) -> None:
        """Until ``streams`` streams have each received ``chunks`` content chunks."""
        async with asyncio.timeout(within):
            while self.past(chunks) < streams:
                self._changed.clear()
                await self._changed.wait()


async def _one_stream(client: Any, index: int, seed: int, progress: Progress) -> Observation:
    conversation = make_conversation(seed, index, MIX)
    seen = Observation()
    text: list[str] = []
    try:
        stream = await client.chat.completions.create(
            model=conversation.model,
            messages=list(conversation.messages),
            stream=True,
            extra_headers={LOADGEN_ID_HEADER: conversation.request_id},
            extra_body=conversation.options(),
        )
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        text.append(choice.delta.content)
                        progress.add(index)
                    if choice.finish_reason is not None:
                        seen.finish_reason = choice.finish_reason
    except Exception as exc:  # whatever the SDK raised is what the app would see
        seen.error = ObservedError.from_exception(exc)
    seen.content = "".join(text)
    return seen


@contextlib.asynccontextmanager
async def streams_in_background(
    socket_path: str,
    outcomes: RelayOutcomes,
    tally: Tally,
    *,
    count: int,
    concurrency: int,
    seed: int,
) -> AsyncIterator[Progress]:
    """`run_streams` while the body injects a fault (it gets their `Progress`); on exit,
    waits for every stream to end (or cancels them if the body failed)."""
    progress = Progress()
    task = asyncio.create_task(
        run_streams(
            socket_path,
            outcomes,
            tally,
            count=count,
            concurrency=concurrency,
            seed=seed,
            progress=progress,
        )
    )
    try:
        yield progress
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    await task


async def run_streams(
    socket_path: str,
    outcomes: RelayOutcomes,
    tally: Tally,
    *,
    count: int,
    concurrency: int,
    seed: int,
    progress: Progress,
    request_timeout: float = 60.0,
) -> None:
    """Send ``count`` streams, ``concurrency`` at a time, and judge each into ``tally``."""
    client = app_client(socket_path, timeout=request_timeout, connections=concurrency + 4)
    slots = asyncio.Semaphore(concurrency)
    seen: dict[int, Observation] = {}

    async def one(index: int) -> None:
        async with slots:
            try:
                async with asyncio.timeout(request_timeout):
                    seen[index] = await _one_stream(client, index, seed, progress)
            except TimeoutError:
                seen[index] = Observation(error=ObservedError.from_exception(TimeoutError()))

    started = time.monotonic()
    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        tally.wall_time = time.monotonic() - started
        with contextlib.suppress(Exception):
            await cast(Any, client).close()
    await asyncio.sleep(0.1)  # the relay records a request's summary just after its last byte
    for index in range(count):
        _judge_into(tally, outcomes, make_conversation(seed, index, MIX), seen[index])


def _judge_into(
    tally: Tally, outcomes: RelayOutcomes, conversation: Any, seen: Observation
) -> None:
    tally.streams += 1
    verdict = judge(conversation.expected(), seen).verdict
    summary = outcomes.summary_for(conversation.request_id)
    kinds = [k.value for k in summary.interruptions] if summary is not None else []
    tally.interruptions.update(kinds)
    error = seen.error
    if error is not None:
        tally.error_codes[error.label] += 1
    if verdict is Verdict.EXACT:
        if kinds:
            tally.recovered += 1
            tally.resumed += summary is not None and summary.resumes > 0
        else:
            tally.exact += 1
        return
    if verdict is Verdict.EXPLICIT_ERROR and error is not None:
        if error.label not in TRANSPORT_ERRORS:
            tally.explicit_errors += 1
            return
        tally.transport_errors += 1
    elif verdict is Verdict.SILENT_TRUNCATION:
        tally.silent_truncations += 1
    else:
        tally.garbled += 1
    if len(tally.problems) < 5:
        tally.problems.append(
            f"{conversation.request_id}: {verdict} error={error.label if error else None} "
            f"got {len(seen.content)} chars finish={seen.finish_reason} "
            f"relay={summary.outcome.value if summary else '?'} interruptions={kinds}"
        )
