"""What the simulated model says: deterministic answers in several styles, and continuations.

The answer is a pure function of the conversation (hashed with SHA-256, so it is the same in
every process) and of the *variant* the request asks for, never of sampling parameters. That
is what lets a test compare the text an app received through intact with the text an
uninterrupted request gives (`expected_answer`), and what makes prefill continuations line
up exactly.

A request picks its variant with suffixes on the model name, OpenRouter-style:
`sim-1:code`, `gpt-4o:cjk:reasoning`, `sim-2:refusal`. The text styles are `prose`, `code`,
`table`, `cjk`, `json` (also chosen by `response_format` json_object / json_schema) and
`mixed` (one of them per conversation, from its hash); `reasoning` puts thinking in
`reasoning_content` before the answer; `refusal` answers in `refusal` with no content. With
no style suffix the server's default style applies.

Continuations follow the request's convention. prefill and prefix continue exactly where
the partial stopped, as a model at temperature 0 does (optionally echoing the whole partial
first, as llama-server does for a bare assistant message). instruct sometimes repeats the
tail (the last words; the last characters in CJK; the last line in code), starts over
exactly, or starts over with a reworded opening and goes on differently (`ContinuationQuirks`).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from intact.simulator.styles import (
    NOUNS,
    TEXT_STYLES,
    Draft,
    paraphrase,
    write,
    write_reasoning,
    write_refusal,
)
from intact.simulator.tokenizer import tokenize

Message = Mapping[str, Any]

MIN_ANSWER_TOKENS = 30
MAX_ANSWER_TOKENS = 250
MIN_REASONING_TOKENS = 20
MAX_REASONING_TOKENS = 120
MAX_REPEAT_CHARS = 8
"""Most CJK characters an instruct continuation repeats."""

STYLES: tuple[str, ...] = (*TEXT_STYLES, "mixed")
BEHAVIOURS: tuple[str, ...] = ("reasoning", "refusal")
MODEL_SUFFIXES: tuple[str, ...] = (*STYLES, *BEHAVIOURS)
"""What may follow a ':' in a model name."""

# --- variants ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Variant:
    """What kind of answer a request gets: a text style, thinking first, or a refusal."""

    style: str = "prose"
    """One of STYLES; "mixed" becomes one of TEXT_STYLES per conversation."""
    reasoning: bool = False
    refusal: bool = False
    json_keys: tuple[str, ...] = ()
    """Top-level keys of a JSON answer (a json_schema's properties)."""


PROSE = Variant()


def parse_model(model: str, *, default_style: str = "prose") -> Variant:
    """The variant a model name asks for ("sim-1", "sim-1:code", "sim-1:cjk:reasoning").

    Raises ValueError naming an unknown suffix and the allowed ones.
    """
    _name, *suffixes = model.split(":")
    variant = Variant(style=default_style)
    for suffix in suffixes:
        if suffix in STYLES:
            variant = replace(variant, style=suffix)
        elif suffix == "reasoning":
            variant = replace(variant, reasoning=True)
        elif suffix == "refusal":
            variant = replace(variant, refusal=True)
        else:
            raise ValueError(
                f"unknown variant {suffix!r} in model {model!r}; "
                f"allowed after ':': {', '.join(MODEL_SUFFIXES)}"
            )
    return variant


def request_variant(model: str, response_format: Any, *, default_style: str = "prose") -> Variant:
    """The variant of a request: its model name's suffixes, and JSON if response_format asks."""
    variant = parse_model(model, default_style=default_style)
    if not isinstance(response_format, Mapping):
        return variant
    kind = response_format.get("type")
    if kind == "json_object":
        return replace(variant, style="json")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        properties = schema.get("properties") if isinstance(schema, Mapping) else None
        keys = tuple(str(key) for key in properties) if isinstance(properties, Mapping) else ()
        return replace(variant, style="json", json_keys=keys)
    return variant


def resolve_style(style: str, digest: bytes) -> str:
    """The text style a conversation is answered in: "mixed" picks one from its digest."""
    if style == "mixed":
        return TEXT_STYLES[_rng_from(digest, b"mixed").randrange(len(TEXT_STYLES))]
    if style not in TEXT_STYLES:
        raise ValueError(f"unknown text style {style!r}; allowed: {', '.join(STYLES)}")
    return style


# --- conversation identity -------------------------------------------------------------------


def content_text(message: Message) -> str:
    """The text of a message's content, whether a string, null or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type", "text") == "text"
        )
    return ""


def _canonical_message(message: Message) -> dict[str, Any]:
    """The parts of a message that identify the conversation (ids and extra keys excluded)."""
    canonical: dict[str, Any] = {
        "role": str(message.get("role", "")),
        "content": content_text(message),
    }
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list) and tool_calls:
        canonical["tool_calls"] = [
            [
                str(call.get("function", {}).get("name", "")),
                str(call.get("function", {}).get("arguments", "")),
            ]
            for call in tool_calls
            if isinstance(call, Mapping)
        ]
    tool_call_id = message.get("tool_call_id")
    if isinstance(tool_call_id, str):
        canonical["tool_call_id"] = tool_call_id
    return canonical


def conversation_digest(messages: Sequence[Message], choice: int = 0) -> bytes:
    """SHA-256 of the conversation (and choice index): the seed of everything the model says."""
    payload = orjson.dumps([_canonical_message(m) for m in messages], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload + b"\x00choice=" + str(choice).encode()).digest()


def _rng_from(*parts: bytes) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(b"\x00".join(parts)).digest(), "big"))


def prompt_tokens(messages: Sequence[Message], *, continues_final: bool = False) -> int:
    """The prompt's token count as a chat template makes it: each message's content tokens
    + 3 (its header and end), + 3 for the assistant header the answer starts after.

    A prefill (`continues_final`) has no end on its final assistant message and no second
    header, so it counts exactly its partial's tokens more than the original request.
    """
    total = sum(len(tokenize(content_text(m))) + 3 for m in messages)
    return total if continues_final else total + 3


# --- drafts ------------------------------------------------------------------------------------

REASONING = "reasoning"
REFUSAL = "refusal"


def _draft(
    seed: bytes, kind: str, purpose: bytes, keys: tuple[str, ...] = (), language: str = ""
) -> Draft:
    """The draft of one kind ("reasoning", "refusal" or a text style) for a conversation;
    `keys` are a JSON answer's keys, `language` that of a code or CJK answer."""
    return _cached_draft(seed, kind, purpose, keys if kind == "json" else (), language)


@functools.lru_cache(maxsize=4096)
def _cached_draft(
    seed: bytes, kind: str, purpose: bytes, keys: tuple[str, ...], language: str
) -> Draft:
    rng = _rng_from(seed, purpose, kind.encode(), *(key.encode() for key in keys))
    if kind == REASONING:
        return write_reasoning(rng, MIN_REASONING_TOKENS, MAX_REASONING_TOKENS)
    if kind == REFUSAL:
        return write_refusal(rng)
    if purpose == b"answer":
        return write(kind, rng, MIN_ANSWER_TOKENS, MAX_ANSWER_TOKENS, keys=keys)
    return write(kind, rng, 15, 80, keys=keys, language=language)


# --- tool calls ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One function call the model makes; `arguments` is a JSON object as a string."""

    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _tool_names(tools: Sequence[Any]) -> list[str]:
    names: list[str] = []
    for tool in tools:
        if isinstance(tool, Mapping):
            function = tool.get("function")
            if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                names.append(function["name"])
    return names


def _declared_properties(tools: Sequence[Any], name: str) -> list[str]:
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and function.get("name") == name:
            parameters = function.get("parameters")
            if isinstance(parameters, Mapping) and isinstance(
                parameters.get("properties"), Mapping
            ):
                return [str(key) for key in parameters["properties"]]
    return []


def _arguments(rng: random.Random, declared: list[str]) -> str:
    count = rng.randint(2, 4)
    keys = declared[:count]
    while len(keys) < count:
        key = rng.choice(NOUNS).replace(" ", "_")
        if key not in keys:
            keys.append(key)
    arguments: dict[str, str | int | float] = {}
    for key in keys:
        roll = rng.random()
        if roll < 0.6:
            arguments[key] = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(1, 3)))
        elif roll < 0.8:
            arguments[key] = rng.randint(0, 10_000)
        else:
            arguments[key] = round(rng.uniform(0, 100), 2)
    return orjson.dumps(arguments).decode()


def wants_tool_calls(
    conversation: Sequence[Message], tools: Sequence[Any] | None, tool_choice: Any
) -> bool:
    """Whether the model answers with tool calls: tools offered, allowed, and not just used."""
    if not tools or not _tool_names(tools) or tool_choice == "none":
        return False
    return not conversation or conversation[-1].get("role") != "tool"


def _tool_calls(
    digest: bytes, tools: Sequence[Any], tool_choice: Any, parallel: bool
) -> tuple[ToolCall, ...]:
    rng = _rng_from(digest, b"tools")
    names = _tool_names(tools)
    forced = None
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        if isinstance(function, Mapping) and function.get("name") in names:
            forced = str(function["name"])
    count = 1 if forced or not parallel else rng.randint(1, 2)
    calls = []
    for i in range(count):
        name = forced or rng.choice(names)
        call_id = "call_" + hashlib.sha256(digest + b"call" + bytes([i])).hexdigest()[:24]
        calls.append(ToolCall(call_id, name, _arguments(rng, _declared_properties(tools, name))))
    return tuple(calls)


# --- answers and completions -----------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """Everything the model would say to a conversation if nothing limited it.

    `reasoning` tokens come first (in `reasoning_content`), then `tokens`: the content, or
    the refusal when `refusal` is set, or `tool_calls` instead.
    """

    tokens: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: tuple[str, ...] = ()
    refusal: bool = False
    kind: str = "prose"
    """The text style of `tokens` ("refusal" for a refusal)."""
    seed: bytes = b""
    """The conversation digest fresh text (continuations, paraphrases) is drawn from."""
    json_keys: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)


def answer_for(
    conversation: Sequence[Message],
    *,
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    choice: int = 0,
    variant: Variant = PROSE,
) -> Answer:
    """The model's full answer to `conversation` (choice `choice` when n > 1)."""
    digest = conversation_digest(conversation, choice)
    reasoning: tuple[str, ...] = ()
    if variant.reasoning:
        reasoning = tuple(tokenize(_draft(digest, REASONING, b"answer").text))
    if variant.refusal:
        refusal = _draft(digest, REFUSAL, b"answer")
        return Answer(
            tokens=tuple(tokenize(refusal.text)),
            reasoning=reasoning,
            refusal=True,
            kind=REFUSAL,
            seed=digest,
        )
    if wants_tool_calls(conversation, tools, tool_choice):
        assert tools is not None
        calls = _tool_calls(digest, tools, tool_choice, parallel_tool_calls)
        return Answer(tool_calls=calls, reasoning=reasoning, seed=digest)
    style = resolve_style(variant.style, digest)
    draft = _draft(digest, style, b"answer", variant.json_keys)
    return Answer(
        tokens=tuple(tokenize(draft.text)),
        reasoning=reasoning,
        kind=style,
        seed=digest,
        json_keys=variant.json_keys,
    )


@dataclass(frozen=True)
class Completion:
    """What one choice of one response emits, in order: `reasoning`, then `tokens` (content,
    or the refusal when `refusal`), or `tool_calls`.

    The first `echoed` tokens (reasoning first) did not count against max_tokens: they
    repeat text the client already has (a repeated tail, a restart, an echoed prefix).
    """

    tokens: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    echoed: int = 0
    reasoning: tuple[str, ...] = ()
    refusal: bool = False

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)


def _limited(
    reasoning: Sequence[str],
    tokens: Sequence[str],
    max_tokens: int | None,
    *,
    echoed: int = 0,
    refusal: bool = False,
) -> Completion:
    """Reasoning then tokens, cut after `max_tokens` tokens beyond the first `echoed`."""
    finish = "stop"
    if max_tokens is not None and len(reasoning) + len(tokens) - echoed > max_tokens:
        keep = echoed + max(0, max_tokens)
        reasoning, tokens = reasoning[:keep], tokens[: max(0, keep - len(reasoning))]
        finish = "length"
    return Completion(
        tokens=tuple(tokens),
        finish_reason=finish,
        echoed=echoed,
        reasoning=tuple(reasoning),
        refusal=refusal,
    )


def complete(answer: Answer, max_tokens: int | None) -> Completion:
    """An ordinary (non-continuation) response: the answer, cut at max_tokens."""
    if answer.tool_calls:
        return Completion(
            tool_calls=answer.tool_calls, finish_reason="tool_calls", reasoning=answer.reasoning
        )
    return _limited(answer.reasoning, answer.tokens, max_tokens, refusal=answer.refusal)


# --- continuations ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ContinuationQuirks:
    """How a model answers a request to continue its partial answer (probabilities).

    The first four apply to instruct-style requests only: a real model continuing a prefill
    at temperature 0 never repeats itself. Restart wins over paraphrase, paraphrase over
    repeat; otherwise the continuation is clean.
    """

    repeat_prob: float = 0.0
    """instruct: first repeat the tail (the last 1..max_repeat_words words, the last few
    CJK characters, the whole last line of code)."""
    whitespace_variation_prob: float = 0.0
    """Given a repeat of words: its whitespace is altered, as re-tokenisation does."""
    restart_prob: float = 0.0
    """instruct: start the answer over, exactly."""
    paraphrase_prob: float = 0.0
    """instruct: start over with a reworded opening ("Here is" -> "Here's"), then go on
    differently."""
    prefill_echo_prob: float = 0.0
    """prefill/prefix: the first delta repeats the whole partial (llama-server does this for
    a bare assistant message)."""
    max_repeat_words: int = 6


def _fully_inside(tokens: Sequence[str], length: int) -> int:
    """How many leading tokens end at or before character `length`."""
    count, end = 0, 0
    for token in tokens:
        end += len(token)
        if end > length:
            break
        count += 1
    return count


def _rest_after(tokens: Sequence[str], length: int) -> list[str]:
    """The tokens after character `length`, the one straddling it trimmed to start there."""
    inside = _fully_inside(tokens, length)
    rest = list(tokens[inside:])
    if rest:
        start = sum(len(token) for token in tokens[:inside])
        rest[0] = rest[0][length - start :]
    return rest


def _tail_start(partial: str, kind: str, rng: random.Random, max_words: int) -> int:
    """Where a repeated tail begins: the last line of code, the last few CJK characters, or
    the start of one of the last `max_words` words."""
    if kind == "code":
        start = partial.rfind("\n", 0, len(partial) - 1) + 1
        if not partial[start:].strip() and start > 0:  # only indentation so far: the line before
            start = partial.rfind("\n", 0, start - 1) + 1
        return start
    if kind == "cjk":
        start = len(partial) - rng.randint(1, min(MAX_REPEAT_CHARS, len(partial)))
        # It restates characters, not the line break before them: a reply does not open
        # with a blank line.
        while start < len(partial) - 1 and partial[start].isspace():
            start += 1
        return start
    starts = [0] + [m.end() for m in re.finditer(r"\s+", partial) if m.end() < len(partial)]
    words = rng.randint(1, max(1, max_words))
    return starts[max(0, len(starts) - words)]


def _vary_whitespace(text: str, rng: random.Random) -> str:
    """Alter whitespace runs the way re-tokenisation does: spaces within a line double.
    Line breaks are kept: a model restating its last words reproduces the text's lines (a
    table row, a JSON member, a paragraph break) as it reproduces its words."""
    runs = list(re.finditer(r"\s+", text))
    if not runs:
        return text
    chosen = {i for i in range(len(runs)) if rng.random() < 0.5} or {rng.randrange(len(runs))}
    pieces, last = [], 0
    for i, run in enumerate(runs):
        pieces.append(text[last : run.start()])
        whitespace = run.group()
        if i in chosen and "\n" not in whitespace:
            whitespace += " "
        pieces.append(whitespace)
        last = run.end()
    pieces.append(text[last:])
    return "".join(pieces)


def _fresh(answer: Answer, kind: str, partial: str) -> list[str]:
    """Text that goes on from `partial` when the model never said it: new, deterministic."""
    language = _draft(answer.seed, kind, b"answer", answer.json_keys).language
    purpose = b"fresh\x00" + partial.encode()
    draft = _draft(answer.seed, kind, purpose, answer.json_keys, language)
    if not partial or partial[-1].isspace() or kind == "cjk":
        lead = ""
    else:
        lead = "\n" if kind == "code" else " "
    return tokenize(lead + draft.text)


def _reworded(answer: Answer, kind: str) -> list[str]:
    """A restart whose opening is slightly reworded, going on with a different body (in the
    same language)."""
    original = _draft(answer.seed, kind, b"answer", answer.json_keys)
    body = _draft(answer.seed, kind, b"paraphrase", answer.json_keys, original.language).body
    return tokenize(paraphrase(original.opening) + body)


def continue_answer(
    answer: Answer,
    partial: str,
    *,
    kind: str,
    max_tokens: int | None,
    quirks: ContinuationQuirks,
    rng: random.Random,
    partial_reasoning: str = "",
) -> Completion:
    """The model's response when asked to continue its interrupted answer.

    `kind` is the request's convention ("prefill", "prefix" or "instruct"); `partial` is the
    content the client has and `partial_reasoning` its reasoning. Content already started:
    the content goes on. Otherwise reasoning already started: the reasoning goes on, then
    the content follows. If the partial is a prefix of the answer the rest follows exactly,
    cut at `max_tokens` counted from the first token not wholly inside it; otherwise a fresh
    continuation seeded by (conversation, partial). `rng` (per request) draws the quirks.
    """
    restart = rng.random() < quirks.restart_prob
    repeat = rng.random() < quirks.repeat_prob
    vary = rng.random() < quirks.whitespace_variation_prob
    reword = rng.random() < quirks.paraphrase_prob
    echo = rng.random() < quirks.prefill_echo_prob
    if answer.tool_calls:
        # A tool-call answer cannot be continued as text: the model calls the tools again.
        return complete(answer, max_tokens)
    thinking = not partial and bool(partial_reasoning and answer.reasoning)
    if thinking:
        channel, have, kind_of_text = answer.reasoning, partial_reasoning, REASONING
    elif partial:
        channel, have, kind_of_text = answer.tokens, partial, answer.kind
    else:
        return complete(answer, max_tokens)

    whole = "".join(channel)
    instruct = kind == "instruct"
    generated = _fully_inside(channel, len(have))
    echoed = 0
    if instruct and restart:
        out, echoed = list(channel), min(generated, len(channel))
    elif instruct and reword:
        out = _reworded(answer, kind_of_text)
        echoed = min(generated, len(out))
    else:
        if whole.startswith(have):
            out = _rest_after(channel, len(have))
        else:
            out = _fresh(answer, kind_of_text, have)
        if instruct and repeat:
            tail = have[_tail_start(have, kind_of_text, rng, quirks.max_repeat_words) :]
            if vary and kind_of_text not in ("code", "cjk"):
                tail = _vary_whitespace(tail, rng)
            repeated = tokenize(tail)
            out, echoed = repeated + out, len(repeated)
        elif not instruct and echo:
            out, echoed = [have, *out], 1
    if thinking:  # the whole content follows the rest of the reasoning
        return _limited(out, answer.tokens, max_tokens, echoed=echoed, refusal=answer.refusal)
    return _limited((), out, max_tokens, echoed=echoed, refusal=answer.refusal)


# --- what tests compare against --------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedAnswer:
    """What an uninterrupted, non-streaming request for the conversation returns."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    reasoning: str | None = None
    refusal: str | None = None
    style: str | None = None
    """The text style of the answer ("refusal" for a refusal; None for tool calls)."""


def expected_answer(
    messages: Sequence[Message],
    *,
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    max_tokens: int | None = None,
    variant: Variant = PROSE,
) -> ExpectedAnswer:
    """The answer (choice 0) the simulator gives to `messages` when nothing goes wrong."""
    answer = answer_for(messages, tools=tools, tool_choice=tool_choice, variant=variant)
    completion = complete(answer, max_tokens)
    reasoning = completion.reasoning_text if answer.reasoning else None
    if completion.tool_calls:
        return ExpectedAnswer(
            content=None,
            tool_calls=[call.as_dict() for call in completion.tool_calls],
            finish_reason=completion.finish_reason,
            reasoning=reasoning,
        )
    if completion.refusal:
        return ExpectedAnswer(
            content=None,
            tool_calls=[],
            finish_reason=completion.finish_reason,
            reasoning=reasoning,
            refusal=completion.text,
            style=answer.kind,
        )
    return ExpectedAnswer(
        content=completion.text,
        tool_calls=[],
        finish_reason=completion.finish_reason,
        reasoning=reasoning,
        style=answer.kind,
    )
