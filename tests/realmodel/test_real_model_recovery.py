"""A real model, broken on purpose: every interrupted answer must equal the uninterrupted one.

llama-server (greedy, seeded) sits behind intact's chaos proxy, and intact behind that with
`resume = "prefill"`. Each case scripts a fault at a chunk position drawn from a seeded RNG
over the reference answer's length; the official openai SDK over the Unix socket is the app.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from intact.chaos import FaultOdds
from intact.daemon import RunningDaemon
from intact.simulator.faults import ALL_FAULT_KINDS, MID_STREAM_KINDS
from realmodel.harness import (
    BEFORE_RESPONSE,
    chaos_intact,
    difference,
    doubled_seam,
    fault_log,
    record,
)
from realmodel.llama import (
    MAX_TOKENS,
    MODEL,
    PROMPTS,
    RECORD,
    SAMPLING,
    SEED,
    LlamaServer,
    Reference,
    messages,
)
from support import Seen, sdk, stream_chat


async def ask(daemon: RunningDaemon, prompt: str, *, stream: bool) -> Seen:
    """One request through intact with the official SDK, as an app would send it."""
    client = sdk(daemon.socket_path, timeout=90)
    if stream:
        return await stream_chat(client, messages(prompt), model=MODEL, **SAMPLING)
    seen = Seen()
    try:
        resp = await client.chat.completions.create(
            model=MODEL, messages=messages(prompt), **SAMPLING
        )
        seen.text = resp.choices[0].message.content or ""
        seen.finish_reason = resp.choices[0].finish_reason
    except openai.APIError as exc:
        seen.error = exc
    return seen


@dataclass(frozen=True)
class Case:
    prompt: str
    kinds: tuple[str, ...]
    """One fault per attempt, in order; mid-stream ones get a seeded random position."""
    stream: bool

    @property
    def id(self) -> str:
        return f"{self.prompt}-{'+'.join(self.kinds)}-{'stream' if self.stream else 'whole'}"

    def specs(self, ref: Reference) -> list[str]:
        rng = random.Random(f"{SEED}-{self.id}")
        # 0 is headers only; len(chunks) is every content chunk but not the finish chunk.
        return [
            f"{kind}@{rng.randint(0, len(ref.chunks))}" if kind in MID_STREAM_KINDS else kind
            for kind in self.kinds
        ]


def _cases() -> list[Case]:
    cases = [Case(p, (kind,), True) for p in PROMPTS for kind in MID_STREAM_KINDS]
    cases += [Case(("sky", "hash")[i % 2], (k,), False) for i, k in enumerate(MID_STREAM_KINDS)]
    for i, kind in enumerate(BEFORE_RESPONSE):
        cases.append(Case(("tips", "poem")[i % 2], (kind,), True))
        cases.append(Case(("hash", "sky")[i % 2], (kind,), False))
    # A resume that breaks again; a retry, then a break, then a broken resume.
    cases.append(Case("tips", ("reset", "stall"), True))
    cases.append(Case("poem", ("http_503", "truncate", "error_event"), True))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_interrupted_answer_is_byte_identical_to_the_uninterrupted_one(
    tmp_path: Path, llama_server: LlamaServer, references: dict[str, Reference], case: Case
) -> None:
    ref = references[case.prompt]
    async with chaos_intact(tmp_path, llama_server) as (proxy, daemon):
        proxy.schedule_faults(case.specs(ref))
        seen = await ask(daemon, case.prompt, stream=case.stream)
        struck = proxy.stats.faults.copy()
    log = fault_log(tmp_path)
    RECORD.faults.update(struck)
    exact = record(case.id, ref, seen, log)
    # A fault that did not strike: intact left the attempt first (a token gap over
    # stall_timeout on a busy machine), so this case did not test what it says.
    assert sum(struck.values()) == len(case.kinds), f"not every fault struck:\n    {log}"
    assert exact, f"{difference(ref, seen)}\n    {log}"


async def test_seeded_random_faults_leave_every_answer_exact(
    tmp_path: Path, llama_server: LlamaServer, references: dict[str, Reference]
) -> None:
    # The proxy's own seeded draws over every kind, continuations included, not a script.
    odds = FaultOdds(fault_rate=0.5, kinds=ALL_FAULT_KINDS, max_position=MAX_TOKENS)
    verdicts = []
    async with chaos_intact(tmp_path, llama_server, odds=odds, seed=SEED) as (proxy, daemon):
        for prompt in PROMPTS:
            seen = await ask(daemon, prompt, stream=True)
            verdicts.append(record(f"random-{prompt}", references[prompt], seen, ""))
        struck = proxy.stats.faults.copy()
    RECORD.faults.update(struck)
    log = fault_log(tmp_path)
    assert sum(struck.values()) >= 2, f"seed {SEED} struck too few faults:\n    {log}"
    assert all(verdicts), f"{verdicts}\n    {log}"


def seam_positions(ref: Reference) -> list[int]:
    """Cuts where resuming is hardest for a real model and a splicer.

    After a chunk ending in whitespace ("\n" then "\n" re-tokenises as "\n\n": the model
    can continue differently), and where the rest of the answer starts by repeating the end
    of the partial (a model repeating a line: a splicer must not take it for an echo).
    """
    positions = [p for p in range(1, len(ref.chunks) + 1) if ref.chunks[p - 1][-1:].isspace()]
    for p in range(1, len(ref.chunks)):
        partial = ref.partial(p)
        rest = ref.text[len(partial) :]
        if len(partial) >= 20 and rest.startswith(partial[-20:]) and p not in positions:
            positions.append(p)
            break
    return sorted(positions)


@pytest.mark.parametrize("prompt", ["sky", "poem", "tips"])
async def test_resume_at_a_whitespace_or_repeated_line_seam_is_byte_identical(
    tmp_path: Path, llama_server: LlamaServer, references: dict[str, Reference], prompt: str
) -> None:
    ref = references[prompt]
    positions = seam_positions(ref)
    kinds = ("reset", "truncate", "error_event")
    differed = []
    async with chaos_intact(tmp_path, llama_server) as (proxy, daemon):
        for i, position in enumerate(positions):
            spec = f"{kinds[i % len(kinds)]}@{position}"
            proxy.schedule_faults([spec])
            seen = await ask(daemon, prompt, stream=True)
            where = f"cut after {ref.partial(position)[-30:]!r}"
            if not record(f"{prompt}-seam-{spec}", ref, seen, where):
                differed.append(f"{spec} ({where}): {difference(ref, seen)}")
        struck = proxy.stats.faults.copy()
    RECORD.faults.update(struck)
    assert positions, f"no whitespace seam in the {prompt!r} answer: {ref.text!r}"
    assert sum(struck.values()) == len(positions), fault_log(tmp_path)
    assert not differed, "\n".join(differed)


@pytest.mark.parametrize("prompt", list(PROMPTS))
async def test_instruct_resume_on_a_weak_model_is_whole_or_an_explicit_error(
    tmp_path: Path, llama_server: LlamaServer, references: dict[str, Reference], prompt: str
) -> None:
    # No byte-identity: an instruct resume is a new answer to "continue". The app must get a
    # finished answer without doubled text at the seam, or an error its SDK raises.
    ref = references[prompt]
    rng = random.Random(f"instruct-{prompt}")
    kind = rng.choice(["reset", "error_event", "truncate"])
    position = rng.randint(10, len(ref.chunks) - 10)
    # Three attempts: a weak model that restarts its answer fails the same way every time.
    instruct = chaos_intact(tmp_path, llama_server, resume="instruct", max_attempts=3)
    async with instruct as (proxy, daemon):
        proxy.schedule_faults([f"{kind}@{position}"])
        seen = await ask(daemon, prompt, stream=True)
    partial = ref.partial(position)
    if seen.error is not None:
        RECORD.seams.append(f"{prompt} {kind}@{position}: explicit error: {seen.error}")
        assert isinstance(seen.error, openai.APIError)
        assert ref.text.startswith(seen.text)
        return
    continuation = seen.text[len(partial) :]
    RECORD.seams.append(
        f"{prompt} {kind}@{position} finish={seen.finish_reason}: "
        f"{partial[-60:]!r} || {continuation[:80]!r}"
    )
    assert seen.text.startswith(partial)
    assert seen.finish_reason is not None
    assert doubled_seam(partial, continuation) is None, f"seam doubled: {RECORD.seams[-1]}"
