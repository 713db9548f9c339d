"""Anthropic Messages and OpenAI Responses against a real model, broken on purpose.

llama-server (greedy, seeded, checking its API key) sits behind intact's chaos proxy, and
intact behind that: for Messages as a `kind = "anthropic"` upstream (x-api-key,
anthropic-version) with the official `anthropic` SDK as the app, for Responses as an OpenAI
upstream with the official `openai` SDK's `responses.create`. Each case scripts faults at
event positions drawn from a seeded RNG over the reference stream (the proxy counts SSE
events, not bytes).

- `prefill`: every interrupted answer, streamed or not, must equal the uninterrupted one
  fetched from llama-server directly (text and stop reason / status), in the stream shape
  the app expects (one message_start / response.created, one block / item).
- `instruct`: a continuation is a new generation, so the app must get the reference itself,
  or an error its SDK raises, or a finished answer that starts with exactly what it had
  before the break and goes on without doubling the seam; never one that is short, open
  (no message_stop / response.completed) or spliced wrong. The seams are recorded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from intact.daemon import RunningDaemon
from intact.simulator.faults import ERROR_EVENT, MID_STREAM_KINDS, RESET, TRUNCATE
from realmodel.harness import (
    BEFORE_RESPONSE,
    chaos_intact,
    difference,
    doubled_seam,
    fault_log,
    record,
)
from realmodel.llama import (
    RECORD,
    SEED,
    LlamaServer,
    Reference,
    fetch_messages_reference,
    fetch_responses_reference,
    messages_body,
    responses_body,
)
from support import Seen, anthropic_sdk, sdk

MAX_TOKENS = 32
"""Shorter answers than the chat test's: two APIs in about the time of one."""
APIS = ("messages", "responses")


@dataclass
class Got(Seen):
    """What the app saw, and what was wrong with the shape of what it saw."""

    closed: bool = False
    """The stream ended as a whole one does (message_stop, response.completed), or a
    non-streamed answer arrived."""
    problems: list[str] = field(default_factory=list)


def _split(body: dict[str, Any], *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the SDK's arguments, extra_body): fields the SDK has no argument for (`seed` is
    llama.cpp's; anthropic 2.x has no `temperature`) go in extra_body."""
    return {k: v for k, v in body.items() if k not in extra}, {k: body[k] for k in extra}


async def ask_messages(daemon: RunningDaemon, prompt: str, *, stream: bool) -> Got:
    client = anthropic_sdk(daemon.socket_path, timeout=90)
    body, extra = _split(messages_body(prompt, MAX_TOKENS), "seed", "temperature")
    got = Got()
    try:
        if not stream:
            message = await client.messages.create(**body, extra_body=extra)
            got.text = "".join(b.text for b in message.content if b.type == "text")
            got.finish_reason = message.stop_reason
            got.closed = True
            if [b.type for b in message.content] != ["text"]:
                got.problems.append(f"content blocks {[b.type for b in message.content]}")
            return got
        starts, blocks = 0, []
        events = await client.messages.create(**body, stream=True, extra_body=extra)
        async for event in events:
            if event.type == "message_start":
                starts += 1
            elif event.type == "content_block_start":
                blocks.append(event.index)
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                got.text += event.delta.text
            elif event.type == "message_delta":
                got.finish_reason = event.delta.stop_reason
            elif event.type == "message_stop":
                got.closed = True
        if starts != 1 or blocks != [0]:
            got.problems.append(f"{starts} message_start, block starts {blocks}")
    except (anthropic.APIError, httpx2.HTTPError) as exc:
        got.error = exc
    return got


async def ask_responses(daemon: RunningDaemon, prompt: str, *, stream: bool) -> Got:
    client = sdk(daemon.socket_path, timeout=90)
    body, extra = _split(responses_body(prompt, MAX_TOKENS), "seed")
    got = Got()
    try:
        if not stream:
            response = await client.responses.create(**body, extra_body=extra)
            got.text = response.output_text
            got.finish_reason = response.status
            got.closed = True
            return got
        created, items = 0, set()
        events = await client.responses.create(**body, stream=True, extra_body=extra)
        async for event in events:
            if event.type == "response.created":
                created += 1
            elif event.type == "response.output_text.delta":
                got.text += event.delta
                items.add(event.item_id)
            elif event.type in ("response.completed", "response.incomplete"):
                got.finish_reason = event.response.status
                got.closed = True
                if event.response.output_text != got.text:
                    got.problems.append(
                        f"final output_text {event.response.output_text!r} is not the streamed text"
                    )
        if created != 1 or len(items) > 1:
            got.problems.append(f"{created} response.created, text items {sorted(items)}")
    except (openai.APIError, httpx.HTTPError) as exc:
        got.error = exc
    return got


ASK = {"messages": ask_messages, "responses": ask_responses}
KIND = {"messages": "anthropic", "responses": "openai"}


@dataclass(frozen=True)
class ApiCase:
    api: str
    prompt: str
    faults: tuple[str, ...]
    """One fault per attempt, in order: a mid-stream kind gets a seeded position over the
    reference's events; "@after_text" is right after the last text delta (before the
    closing events of the text), "@symbol_end" after the first text that ends in a symbol
    ("1. **"); any other spec with "@" is used as it is."""
    stream: bool

    @property
    def id(self) -> str:
        faults = "+".join(self.faults)
        return f"{self.api}-{self.prompt}-{faults}-{'stream' if self.stream else 'whole'}"

    def specs(self, ref: Reference) -> list[str]:
        rng = random.Random(f"{SEED}-{self.id}")
        # 0 is headers only; len(chunks) is every event before message_delta /
        # response.completed.
        after_text = max(p for p in range(1, len(ref.chunks) + 1) if ref.chunks[p - 1])
        symbol_end = next(
            (p for p in range(1, len(ref.chunks)) if _symbol_ended(ref.partial(p))), 0
        )
        return [
            f"{kind}@{rng.randint(0, len(ref.chunks))}"
            if kind in MID_STREAM_KINDS
            else kind.replace("@after_text", f"@{after_text}").replace(
                "@symbol_end", f"@{symbol_end}"
            )
            for kind in self.faults
        ]


def _symbol_ended(partial: str) -> bool:
    return bool(partial) and any(c.isalnum() for c in partial) and partial[-1] in "*#`|-"


def _cases(api: str) -> list[ApiCase]:
    mids = MID_STREAM_KINDS  # reset, stall, error_event, truncate
    cases = [ApiCase(api, "sky", (kind,), True) for kind in mids]
    # Every before-response fault, then a mid-stream one on the retry (no stall: the
    # slowest fault is already in both other groups).
    again = (ERROR_EVENT, TRUNCATE, RESET, TRUNCATE)
    cases += [ApiCase(api, "tips", pair, True) for pair in zip(BEFORE_RESPONSE, again, strict=True)]
    cases += [ApiCase(api, "hash", pair, False) for pair in zip(BEFORE_RESPONSE, mids, strict=True)]
    # A resume that breaks again; the seams where the relay holds back or has no text yet:
    # after the first event, before any text, before the closing events are held, after
    # them, and after the finish event.
    cases.append(ApiCase(api, "poem", ("reset", "error_event"), True))
    before_text = 2 if api == "messages" else 4
    cases += [
        ApiCase(api, "poem", ("reset@1",), True),
        ApiCase(api, "tips", ("reset@symbol_end",), True),
        ApiCase(api, "poem", (f"error_event@{before_text}",), False),
        ApiCase(api, "poem", ("truncate@after_text",), True),
        ApiCase(api, "poem", ("reset@last",), True),
        ApiCase(api, "sky", ("reset@done",), True),
        ApiCase(api, "sky", ("truncate@done",), False),
    ]
    return cases


CASES = [case for api in APIS for case in _cases(api)]
PROMPTS_USED = ("sky", "tips", "hash", "poem")


@pytest.fixture(scope="module")
def api_references(llama_server: LlamaServer) -> dict[tuple[str, str], Reference]:
    """The uninterrupted answer per API and prompt, straight from llama-server."""
    refs = {}
    for prompt in PROMPTS_USED:
        refs["messages", prompt] = fetch_messages_reference(llama_server, prompt, MAX_TOKENS)
        refs["responses", prompt] = fetch_responses_reference(llama_server, prompt, MAX_TOKENS)
    return refs


def judge(case: str, ref: Reference, got: Got, log: str, tally: str) -> bool:
    """Record one prefill answer; True when it is the reference in a whole stream."""
    exact = record(case, ref, got, log, tally=tally)
    if exact and got.finish_reason != ref.finish_reason:
        RECORD.outcomes[
            f"{tally}: {got.finish_reason} where llama-server says {ref.finish_reason}"
        ] += 1
    if exact and (got.problems or not got.closed):
        RECORD.exact -= 1
        RECORD.outcomes[f"{tally}: exact"] -= 1
        RECORD.outcomes[f"{tally}: different"] += 1
        shape = got.problems or ["the stream did not end as a whole one does"]
        RECORD.differences.append(f"{case}: {'; '.join(shape)}\n    {log}")
        return False
    return exact


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_prefill_answer_is_byte_identical_to_the_uninterrupted_one(
    tmp_path: Path,
    llama_server: LlamaServer,
    api_references: dict[tuple[str, str], Reference],
    case: ApiCase,
) -> None:
    ref = api_references[case.api, case.prompt]
    specs = case.specs(ref)
    async with chaos_intact(tmp_path, llama_server, kind=KIND[case.api]) as (proxy, daemon):
        proxy.schedule_faults(specs)
        got = await ASK[case.api](daemon, case.prompt, stream=case.stream)
        struck = proxy.stats.faults.copy()
    log = fault_log(tmp_path)
    RECORD.faults.update(struck)
    tally = f"{case.api} prefill {'stream' if case.stream else 'whole'}"
    exact = judge(f"{case.id} {specs}", ref, got, log, tally)
    # A fault that did not strike: intact left the attempt first (a token gap over
    # stall_timeout on a busy machine), so this case did not test what it says.
    assert sum(struck.values()) == len(specs), f"not every fault struck:\n    {log}"
    assert exact, f"{difference(ref, got)} {got.problems}\n    {log}"


INSTRUCT = [
    pytest.param(api, prompt, stream, id=f"{api}-{prompt}-{'stream' if stream else 'whole'}")
    for api in APIS
    for prompt, stream in (("sky", True), ("tips", True), ("hash", False))
]


def glued(partial: str, continuation: str) -> bool:
    """A new sentence stuck to the partial without a separator ("ofThe", "water,The")."""
    last, first = partial[-1:], continuation[:1]
    return first.isupper() and (last.islower() or last in ".!?,;:")


@pytest.mark.parametrize(("api", "prompt", "stream"), INSTRUCT)
async def test_instruct_answer_is_the_reference_an_explicit_error_or_whole(
    tmp_path: Path,
    llama_server: LlamaServer,
    api_references: dict[tuple[str, str], Reference],
    api: str,
    prompt: str,
    stream: bool,
) -> None:
    ref = api_references[api, prompt]
    rng = random.Random(f"instruct-{api}-{prompt}")
    kind = rng.choice(["reset", "error_event", "truncate"])
    # A cut inside the text, away from its ends: a real continuation is needed.
    texts = [p for p in range(1, len(ref.chunks)) if ref.chunks[p - 1]]
    position = rng.choice(texts[len(texts) // 4 : 3 * len(texts) // 4])
    spec = f"{kind}@{position}"
    # Three attempts: a weak model that restarts its answer fails the same way every time.
    instruct = chaos_intact(
        tmp_path, llama_server, resume="instruct", max_attempts=3, kind=KIND[api]
    )
    async with instruct as (proxy, daemon):
        proxy.schedule_faults([spec])
        got = await ASK[api](daemon, prompt, stream=stream)
        struck = sum(proxy.stats.faults.values())
    RECORD.requests += 1
    RECORD.faults[kind] += struck
    partial = ref.partial(position)
    case = f"{api} {prompt} {spec} {'stream' if stream else 'whole'}"
    tally = f"{api} instruct {'stream' if stream else 'whole'}"
    assert struck == 1, fault_log(tmp_path)
    if got.error is not None:
        RECORD.outcomes[f"{tally}: explicit error"] += 1
        RECORD.seams.append(f"{case}: explicit error: {got.error}")
        if stream:  # what the app had is what llama-server sent before the break, and more
            assert got.text.startswith(partial), difference(ref, got)
        return
    same_end = got.finish_reason == ref.finish_reason or got.finish_reason in ref.also
    if got.text == ref.text and same_end and not got.problems:
        RECORD.exact += 1
        RECORD.outcomes[f"{tally}: exact"] += 1
        RECORD.seams.append(f"{case}: the reference exactly")
        return
    continuation = got.text[len(partial) :]
    seam = f"{case} finish={got.finish_reason}: {partial[-60:]!r} || {continuation[:80]!r}"
    RECORD.seams.append(seam)
    doubled = doubled_seam(partial, continuation)
    whole = got.closed and got.finish_reason is not None and not got.problems
    clean = whole and got.text.startswith(partial) and len(got.text) > len(partial)
    clean = clean and doubled is None and not glued(partial, continuation)
    RECORD.outcomes[f"{tally}: {'whole, new continuation' if clean else 'SILENTLY WRONG'}"] += 1
    if not clean:
        RECORD.differences.append(f"{case}: not a clean continuation: {seam}")
    assert got.closed and got.finish_reason is not None, f"an open answer: {seam}"
    assert not got.problems, got.problems
    assert got.text.startswith(partial), f"the app's text before the break changed: {seam}"
    assert doubled is None, f"seam doubled ({doubled!r}): {seam}"
    assert not glued(partial, continuation), f"a new text glued to the partial: {seam}"
    assert len(got.text) > len(partial), f"the continuation only restated the partial: {seam}"
