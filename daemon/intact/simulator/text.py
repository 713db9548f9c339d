"""What the simulated model says: deterministic prose, tool calls and continuations.

The answer is a pure function of the conversation (hashed with SHA-256, so it is the same in
every process), never of the model name or sampling parameters. That is what lets a test
compare the text an app received through intact with the text an uninterrupted request
gives (`expected_answer`), and what makes prefill continuations line up exactly.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

Message = Mapping[str, Any]

MIN_ANSWER_TOKENS = 30
MAX_ANSWER_TOKENS = 250
SPLIT_WORDS_LONGER_THAN = 7
REPEAT_MIN_CHARS = 10
REPEAT_MAX_CHARS = 40

# --- vocabulary ----------------------------------------------------------------------------

_DETERMINERS = (
    "the", "a", "this", "that", "each", "every", "some", "any", "our", "their", "its",
    "another", "one", "no", "your",
)  # fmt: skip
_SUBJECT_PRONOUNS = ("it", "this", "everything", "nobody", "someone", "something", "each")
_ADJECTIVES = (
    "quiet", "careful", "simple", "broken", "steady", "ancient", "modern", "bright", "distant",
    "gentle", "heavy", "hidden", "honest", "narrow", "patient", "rapid", "remote", "silent",
    "subtle", "useful", "vivid", "warm", "wild", "clever", "curious", "durable", "early",
    "empty", "familiar", "fragile", "generous", "golden", "hollow", "humble", "invisible",
    "little", "local", "lucky", "massive", "mellow", "minor", "natural", "nervous", "obvious",
    "ordinary", "pale", "plain", "precise", "proper", "rare", "restless", "rough", "rustic",
    "sacred", "shallow", "sharp", "short", "slender", "smooth", "solid", "sparse", "spare",
    "stable", "strange", "strict", "sudden", "sturdy", "tender", "tidy", "tiny", "tired",
    "urgent", "vast", "wary", "weary", "wise", "young", "bold", "calm", "clear", "cold",
    "crisp", "deep", "dense", "dry", "fair", "faint", "fresh", "grand", "green", "kind",
    "late", "loud", "mild", "neat", "new", "odd", "open", "proud", "quick", "raw", "ripe",
    "round", "soft", "thin", "true", "wide", "elegant", "abstract", "practical", "reliable",
)  # fmt: skip
_NOUNS = (
    "river", "garden", "system", "window", "letter", "bridge", "engine", "forest", "harbor",
    "journey", "kitchen", "ladder", "market", "meadow", "mountain", "network", "notebook",
    "orchard", "pattern", "picture", "planet", "question", "rhythm", "signal", "story",
    "teacher", "theory", "traveler", "valley", "village", "voice", "weather", "answer",
    "archive", "balance", "basket", "battery", "blanket", "border", "branch", "breeze",
    "budget", "cabinet", "candle", "canvas", "castle", "channel", "circle", "climate",
    "cluster", "compass", "contract", "corner", "council", "courage", "crystal", "current",
    "decision", "desert", "detail", "diagram", "distance", "doctor", "dream", "editor",
    "element", "evening", "factory", "feather", "festival", "figure", "fountain", "fragment",
    "friend", "future", "gallery", "harvest", "horizon", "island", "journal", "kernel",
    "lantern", "library", "machine", "manner", "memory", "message", "method", "minute",
    "mirror", "moment", "morning", "museum", "neighbor", "number", "ocean", "office",
    "opinion", "painter", "palace", "paper", "passage", "pebble", "pencil", "pilot",
    "pocket", "poem", "problem", "process", "promise", "purpose", "puzzle", "reason",
    "record", "region", "report", "result", "ribbon", "road", "room", "sailor", "school",
    "season", "secret", "shadow", "shelter", "silence", "sketch", "socket", "station",
    "stone", "stream", "street", "student", "summer", "surface", "table", "thread", "ticket",
    "timber", "tower", "tradition", "trail", "tunnel", "version", "vessel", "window sill",
    "winter", "wonder", "worker", "writer", "yard", "anchor", "apple", "author", "owl",
    "orange", "island chain", "idea", "image", "instrument", "invoice", "echo", "umbrella",
    "field", "cloud", "lake", "light", "map", "path", "plan", "rule", "seed", "song", "tool",
)  # fmt: skip
_VERBS = (
    "shape", "require", "carry", "follow", "reveal", "protect", "measure", "gather",
    "explain", "describe", "improve", "connect", "balance", "build", "change", "choose",
    "collect", "compare", "consider", "contain", "create", "deliver", "design", "discover",
    "divide", "examine", "expect", "explore", "express", "extend", "favor", "fill", "find",
    "finish", "guide", "handle", "hold", "imagine", "include", "inspire", "invite", "join",
    "keep", "lift", "limit", "mark", "mention", "mirror", "move", "notice", "offer", "open",
    "organize", "paint", "pass", "prefer", "prepare", "preserve", "produce", "question",
    "reach", "receive", "recall", "record", "reflect", "remember", "repair", "replace",
    "resemble", "restore", "return", "review", "schedule", "search", "select", "serve",
    "settle", "share", "signal", "support", "survey", "sustain", "test", "touch", "trace",
    "track", "transform", "trust", "turn", "welcome", "wander", "watch", "weigh", "reward",
    "borrow", "echo", "polish", "stretch", "soften", "steady", "study", "vary", "worry",
)  # fmt: skip
_ADVERBS = (
    "quietly", "often", "rarely", "gently", "slowly", "quickly", "carefully", "always",
    "seldom", "usually", "clearly", "simply", "mostly", "nearly", "barely", "openly",
    "calmly", "boldly", "softly", "firmly", "freely", "gladly", "honestly", "patiently",
    "steadily", "suddenly", "eventually", "certainly", "probably", "truly",
)  # fmt: skip
_PREPOSITIONS = (
    "in", "on", "with", "from", "across", "under", "through", "between", "without", "beyond",
    "toward", "around", "after", "before", "during", "within", "along", "near", "behind",
    "above", "below", "inside", "past", "against", "beside", "for", "of", "into",
)  # fmt: skip
_CONJUNCTIONS = (
    "and", "but", "so", "while", "because", "although", "yet", "since", "unless", "whereas",
)  # fmt: skip
_OPENERS = (
    "However", "Meanwhile", "Still", "Indeed", "Naturally", "In practice", "Of course",
    "For now", "In short", "As a rule", "Even so", "Later", "Above all", "At first",
    "Over time", "In the end", "Perhaps", "Surprisingly", "Admittedly", "Then again",
)  # fmt: skip
_AUXILIARIES = ("Does", "Can", "Should", "Will", "Could", "Would", "Might", "Must")


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


VOCABULARY: frozenset[str] = (
    frozenset(
        word.lower()
        for group in (
            _DETERMINERS,
            _SUBJECT_PRONOUNS,
            _ADJECTIVES,
            _NOUNS,
            _VERBS,
            _ADVERBS,
            _PREPOSITIONS,
            _CONJUNCTIONS,
            _OPENERS,
            _AUXILIARIES,
        )
        for phrase in group
        for word in phrase.split()
    )
    | {"an"}
    | {_third_person(verb) for verb in _VERBS}
)
"""Every word the prose generator can use (lower case), for tests and curious readers."""

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


def prompt_tokens(messages: Sequence[Message]) -> int:
    """A deterministic stand-in for the prompt's token count: words + 3 per message."""
    return sum(len(content_text(m).split()) + 3 for m in messages)


# --- prose -----------------------------------------------------------------------------------


def _pick(rng: random.Random, words: Sequence[str], avoid: str | None) -> str:
    word = rng.choice(words)
    while word == avoid:
        word = rng.choice(words)
    return word


def _noun_phrase(rng: random.Random, *, subject: bool) -> list[str]:
    if subject and rng.random() < 0.15:
        return [rng.choice(_SUBJECT_PRONOUNS)]
    determiner = rng.choice(_DETERMINERS)
    words = [determiner]
    if rng.random() < 0.45:
        words.append(rng.choice(_ADJECTIVES))
    words.extend(rng.choice(_NOUNS).split())
    if determiner == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return words


def _clause(rng: random.Random) -> list[str]:
    words = _noun_phrase(rng, subject=True)
    if rng.random() < 0.25:
        words.append(rng.choice(_ADVERBS))
    words.append(_third_person(rng.choice(_VERBS)))
    words.extend(_noun_phrase(rng, subject=False))
    if rng.random() < 0.4:
        words.append(rng.choice(_PREPOSITIONS))
        words.extend(_noun_phrase(rng, subject=False))
    return words


def _statement(rng: random.Random) -> list[str]:
    words: list[str] = []
    if rng.random() < 0.2:
        opener = rng.choice(_OPENERS).split()
        opener[-1] += ","
        words.extend(opener)
    words.extend(_clause(rng))
    if rng.random() < 0.35:
        words[-1] += ","
        words.append(rng.choice(_CONJUNCTIONS))
        words.extend(_clause(rng))
    words[-1] += "."
    return words


def _question(rng: random.Random) -> list[str]:
    words = [rng.choice(_AUXILIARIES), *_noun_phrase(rng, subject=False)]
    words.append(rng.choice(_VERBS))
    words.extend(_noun_phrase(rng, subject=False))
    if rng.random() < 0.3:
        words.append(rng.choice(_PREPOSITIONS))
        words.extend(_noun_phrase(rng, subject=False))
    words[-1] += "?"
    return words


def _bare(word: str) -> str:
    return word.strip(",.?").lower()


def _reads_naturally(words: Sequence[str], previous: str | None) -> bool:
    """No word twice in a row ("the the") and no bigram twice in a row ("of the of the")."""
    bare = [_bare(w) for w in words]
    if previous is not None and bare and bare[0] == _bare(previous):
        return False
    for i in range(1, len(bare)):
        if bare[i] == bare[i - 1]:
            return False
        if i >= 3 and bare[i] == bare[i - 2] and bare[i - 1] == bare[i - 3]:
            return False
    return True


def _sentence(rng: random.Random, previous: str | None) -> list[str]:
    """One sentence of 6-20 words, capitalised, ending in '.' or '?'."""
    while True:
        words = _question(rng) if rng.random() < 0.1 else _statement(rng)
        if 6 <= len(words) <= 20 and _reads_naturally(words, previous):
            words[0] = words[0][0].upper() + words[0][1:]
            return words


def _word_tokens(word: str, lead: str) -> list[str]:
    """A word as tokens: long words split in two, so a cut can land mid-word as with BPE."""
    letters = len(word.rstrip(",.?"))
    if letters <= SPLIT_WORDS_LONGER_THAN:
        return [lead + word]
    cut = (letters + 1) // 2
    return [lead + word[:cut], word[cut:]]


def prose_tokens(
    rng: random.Random,
    *,
    min_tokens: int,
    max_tokens: int,
    lead: str = "",
) -> list[str]:
    """Paragraphs of whole sentences, a random length between `min_tokens` and `max_tokens`.

    `lead` is the whitespace before the first word ("" at the start of an answer).
    """
    tokens: list[str] = []
    previous: str | None = None
    target = rng.randint(min_tokens, max_tokens)
    while len(tokens) < target:
        words = _sentence(rng, previous)
        sentence: list[str] = []
        for i, word in enumerate(words):
            if i > 0:
                word_lead = " "
            elif not tokens:
                word_lead = lead
            else:
                word_lead = "\n\n" if rng.random() < 0.2 else " "
            sentence.extend(_word_tokens(word, word_lead))
        if tokens and len(tokens) + len(sentence) > max_tokens:
            break
        tokens.extend(sentence)
        previous = words[-1]
    return tokens


def split_tokens(text: str) -> list[str]:
    """Tokens for text the model echoes back: words with their leading whitespace."""
    return re.findall(r"\s*\S+|\s+", text)


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
        key = rng.choice(_NOUNS).replace(" ", "_")
        if key not in keys:
            keys.append(key)
    arguments: dict[str, str | int | float] = {}
    for key in keys:
        roll = rng.random()
        if roll < 0.6:
            arguments[key] = " ".join(rng.choice(_NOUNS) for _ in range(rng.randint(1, 3)))
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
    """Everything the model would say to a conversation if nothing limited it."""

    tokens: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def answer_for(
    conversation: Sequence[Message],
    *,
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    choice: int = 0,
) -> Answer:
    """The model's full answer to `conversation` (choice `choice` when n > 1)."""
    digest = conversation_digest(conversation, choice)
    if wants_tool_calls(conversation, tools, tool_choice):
        assert tools is not None
        return Answer(tool_calls=_tool_calls(digest, tools, tool_choice, parallel_tool_calls))
    rng = _rng_from(digest, b"prose")
    return Answer(
        tokens=tuple(prose_tokens(rng, min_tokens=MIN_ANSWER_TOKENS, max_tokens=MAX_ANSWER_TOKENS))
    )


@dataclass(frozen=True)
class Completion:
    """What one choice of one response emits, in order.

    `tokens` are content tokens; the first `echoed` of them repeat text the client already
    has (a repeated tail or a restart) and did not count against max_tokens.
    """

    tokens: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"
    echoed: int = 0

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def _limited(
    tokens: Sequence[str], max_tokens: int | None, *, echoed: Sequence[str] = ()
) -> Completion:
    if max_tokens is not None and len(tokens) > max_tokens:
        kept = (*echoed, *tokens[: max(0, max_tokens)])
        return Completion(tokens=kept, finish_reason="length", echoed=len(echoed))
    return Completion(tokens=(*echoed, *tokens), finish_reason="stop", echoed=len(echoed))


def complete(answer: Answer, max_tokens: int | None) -> Completion:
    """An ordinary (non-continuation) response: the answer, cut at max_tokens."""
    if answer.tool_calls:
        return Completion(tool_calls=answer.tool_calls, finish_reason="tool_calls")
    return _limited(answer.tokens, max_tokens)


@dataclass(frozen=True, kw_only=True)
class ContinuationQuirks:
    """How often a model fails to continue a prefill cleanly (each a probability)."""

    repeat_prob: float = 0.0
    whitespace_variation_prob: float = 0.0
    restart_prob: float = 0.0


def _token_starts(tokens: Sequence[str]) -> list[int]:
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token)
    return starts


def _fully_inside(tokens: Sequence[str], length: int) -> int:
    """How many leading tokens end at or before character `length`."""
    count, end = 0, 0
    for token in tokens:
        end += len(token)
        if end > length:
            break
        count += 1
    return count


def _tail_start(partial: str, rng: random.Random) -> int:
    """Where a repeated tail begins: a word boundary 10-40 characters from the end."""
    if len(partial) < REPEAT_MIN_CHARS:
        return 0
    boundaries = [0] + [m.end() for m in re.finditer(r"\s+", partial) if m.end() < len(partial)]
    fitting = [b for b in boundaries if REPEAT_MIN_CHARS <= len(partial) - b <= REPEAT_MAX_CHARS]
    if fitting:
        return rng.choice(fitting)
    return max(b for b in boundaries if len(partial) - b >= REPEAT_MIN_CHARS)


def _vary_whitespace(text: str, rng: random.Random) -> str:
    """Alter whitespace runs the way re-tokenisation does: paragraph breaks flatten, spaces
    double."""
    runs = list(re.finditer(r"\s+", text))
    if not runs:
        return text
    chosen = {i for i in range(len(runs)) if rng.random() < 0.5} or {rng.randrange(len(runs))}
    pieces, last = [], 0
    for i, run in enumerate(runs):
        pieces.append(text[last : run.start()])
        whitespace = run.group()
        if i in chosen:
            whitespace = " " if "\n" in whitespace else whitespace + " "
        pieces.append(whitespace)
        last = run.end()
    pieces.append(text[last:])
    return "".join(pieces)


def continue_answer(
    conversation: Sequence[Message],
    answer: Answer,
    partial: str,
    *,
    max_tokens: int | None,
    quirks: ContinuationQuirks,
    rng: random.Random,
    choice: int = 0,
) -> Completion:
    """The model's response when asked to continue `partial`, its own interrupted answer.

    If `partial` is a prefix of the answer the rest follows exactly, cut at `max_tokens`
    counted from the first token not wholly inside `partial`; otherwise a fresh continuation
    seeded by (conversation, partial). `rng` (per request) draws the quirks: restarting from
    the top, or repeating the tail of `partial` first.
    """
    restart = rng.random() < quirks.restart_prob
    repeat = rng.random() < quirks.repeat_prob
    vary = rng.random() < quirks.whitespace_variation_prob
    if answer.tool_calls:
        # A tool-call answer cannot be continued as text: the model calls the tools again.
        return complete(answer, max_tokens)

    generated = _fully_inside(answer.tokens, len(partial))
    if partial and restart:
        limit = None if max_tokens is None else generated + max_tokens
        restarted = _limited(answer.tokens, limit)
        return Completion(
            tokens=restarted.tokens,
            finish_reason=restarted.finish_reason,
            echoed=min(generated, len(restarted.tokens)),
        )

    if answer.text.startswith(partial):
        rest = list(answer.tokens[generated:])
        if rest:
            # The token straddling the cut is trimmed to start exactly where `partial` ends.
            rest[0] = rest[0][len(partial) - _token_starts(answer.tokens)[generated] :]
    else:
        lead = "" if not partial or partial[-1].isspace() else " "
        fresh_rng = _rng_from(conversation_digest(conversation, choice), partial.encode())
        rest = prose_tokens(fresh_rng, min_tokens=15, max_tokens=80, lead=lead)

    echoed: list[str] = []
    if partial and repeat:
        tail = partial[_tail_start(partial, rng) :]
        echoed = split_tokens(_vary_whitespace(tail, rng) if vary else tail)
    return _limited(rest, max_tokens, echoed=echoed)


# --- what tests compare against --------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedAnswer:
    """What an uninterrupted, non-streaming request for the conversation returns."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str


def expected_answer(
    messages: Sequence[Message],
    *,
    tools: Sequence[Any] | None = None,
    tool_choice: Any = None,
    max_tokens: int | None = None,
) -> ExpectedAnswer:
    """The answer (choice 0) the simulator gives to `messages` when nothing goes wrong."""
    completion = complete(answer_for(messages, tools=tools, tool_choice=tool_choice), max_tokens)
    if completion.tool_calls:
        return ExpectedAnswer(
            content=None,
            tool_calls=[call.as_dict() for call in completion.tool_calls],
            finish_reason=completion.finish_reason,
        )
    return ExpectedAnswer(
        content=completion.text, tool_calls=[], finish_reason=completion.finish_reason
    )
