"""The kinds of text the simulated model writes: prose, code, tables, CJK, JSON.

Each writer turns a seeded `random.Random` into a `Draft`: an opening (the first sentence or
line, which a paraphrasing restart rewrites) and the body after it. The text is built to be
a hard oracle for a splicer, the way real answers are: prose has doubled words ("had had",
"that that") and refrains ("a weary soul, a weary soul"); code closes nested blocks with
identical lines (`  }`, `}`, `end`, `</div>`) and repeats lines like `return None`; tables
repeat cells and rows (`| 1 | 2 |`); Chinese and Japanese have no spaces and repeat
characters (慢慢, いろいろ); JSON repeats keys and closing braces.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from intact.simulator.tokenizer import is_cjk, tokenize

TEXT_STYLES: tuple[str, ...] = ("prose", "code", "table", "cjk", "json")
"""Styles with a writer; "mixed" (see `text.resolve_style`) picks one per conversation."""

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
NOUNS = (
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
_PROSE_OPENINGS = (
    "Here is a short answer.", "Here is how I see it.", "Sure, here is what I know.",
    "Of course.", "Certainly.", "It is a fair question.", "I will keep this brief.",
    "Here is the story.",
)  # fmt: skip
# Words of the doubled-word constructions ("had had", "that that", "very, very", ...).
_DOUBLING_WORDS = (
    "had", "we", "know", "i", "think", "it", "seems", "was", "very", "far", "away", "again",
    "on", "and", "more", "went", "said", "is",
)  # fmt: skip


def third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


VOCABULARY: frozenset[str] = (
    frozenset(
        word.lower().strip(",.?!")
        for group in (
            _DETERMINERS,
            _SUBJECT_PRONOUNS,
            _ADJECTIVES,
            NOUNS,
            _VERBS,
            _ADVERBS,
            _PREPOSITIONS,
            _CONJUNCTIONS,
            _OPENERS,
            _AUXILIARIES,
            _PROSE_OPENINGS,
            _DOUBLING_WORDS,
        )
        for phrase in group
        for word in phrase.split()
    )
    | {"an"}
    | {third_person(verb) for verb in _VERBS}
)
"""Every word the prose writer can use (lower case), for tests and curious readers."""


@dataclass(frozen=True)
class Draft:
    """A text as its opening (first sentence or line) and the body after it."""

    opening: str
    body: str
    language: str = ""
    """The programming or natural language of a code or CJK draft ("python", "zh", ...)."""

    @property
    def text(self) -> str:
        return self.opening + self.body


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _count(text: str) -> int:
    return len(tokenize(text))


# --- prose -----------------------------------------------------------------------------------


def _noun_phrase(rng: random.Random, *, subject: bool) -> list[str]:
    if subject and rng.random() < 0.15:
        return [rng.choice(_SUBJECT_PRONOUNS)]
    determiner = rng.choice(_DETERMINERS)
    words = [determiner]
    if rng.random() < 0.45:
        words.append(rng.choice(_ADJECTIVES))
    words.extend(rng.choice(NOUNS).split())
    if determiner == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return words


def _clause(rng: random.Random) -> list[str]:
    words = _noun_phrase(rng, subject=True)
    if rng.random() < 0.25:
        words.append(rng.choice(_ADVERBS))
    words.append(third_person(rng.choice(_VERBS)))
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


def _doubled(rng: random.Random) -> list[str]:
    """A sentence whose doubled words are natural English, not a stutter."""
    kind = rng.randrange(5)
    if kind == 0:  # "The editor had had a quiet morning."
        words = [*_noun_phrase(rng, subject=True), "had", "had", *_noun_phrase(rng, subject=False)]
    elif kind == 1:  # "We know that that river carries the letter."
        words = [*rng.choice((["we", "know"], ["i", "think"], ["it", "seems"])), "that", "that"]
        words += [rng.choice(NOUNS).split()[0], third_person(rng.choice(_VERBS))]
        words += _noun_phrase(rng, subject=False)
    elif kind == 2:  # "The lantern was very, very quiet."
        words = [*_noun_phrase(rng, subject=True), "was", "very,", "very", rng.choice(_ADJECTIVES)]
    elif kind == 3:  # "Far, far away, the valley keeps a secret."
        words = ["far,", "far", "away,", *_clause(rng)]
    else:  # "The river went on and on, again and again."
        words = [*_noun_phrase(rng, subject=True), "went", "on", "and", "on,", "again", "and"]
        words.append("again")
    words[-1] += "."
    return words


def _bare(word: str) -> str:
    return word.strip(",.?").lower()


def _reads_naturally(words: Sequence[str], previous: str | None) -> bool:
    """No accidental stutter ("the the", "of the of the"); doubling is `_doubled`'s job."""
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
        roll = rng.random()
        if roll < 0.1:
            words = _doubled(rng)
            if previous is None or _bare(words[0]) != _bare(previous):
                break
            continue
        words = _question(rng) if roll < 0.2 else _statement(rng)
        if 6 <= len(words) <= 20 and _reads_naturally(words, previous):
            break
    words[0] = _cap(words[0])
    return words


def _refrain(rng: random.Random) -> list[str]:
    """A phrase said twice, as poems and stories do: "A weary soul, a weary soul."""
    phrase = [rng.choice(("a", "the", "one")), rng.choice(_ADJECTIVES), rng.choice(NOUNS)]
    phrase = phrase[:2] + phrase[2].split()
    if phrase[0] == "a" and phrase[1][0] in "aeiou":
        phrase[0] = "an"
    first = [*phrase]
    first[-1] += ","
    return [_cap(first[0]), *first[1:], *phrase[:-1], phrase[-1] + "."]


def write_prose(rng: random.Random, min_tokens: int, max_tokens: int, *, lead: str = "") -> Draft:
    """Paragraphs of whole sentences, `min_tokens` to `max_tokens` tokens long.

    `lead` is the whitespace before the first word ("" at the start of an answer).
    """
    target = rng.randint(min_tokens, max_tokens)
    refrain = _refrain(rng) if rng.random() < 0.35 else None
    if rng.random() < 0.4:
        opening = lead + rng.choice(_PROSE_OPENINGS)
        previous: str | None = opening.split()[-1]
    else:
        words = _sentence(rng, None)
        opening = lead + " ".join(words)
        previous = words[-1]
    body = ""
    while True:
        words = refrain if refrain is not None and rng.random() < 0.12 else _sentence(rng, previous)
        gap = "\n\n" if rng.random() < 0.2 else " "
        candidate = body + gap + " ".join(words)
        if _count(opening + candidate) > max_tokens:
            break
        body = candidate
        previous = words[-1]
        if _count(opening + body) >= target:
            break
    return Draft(opening, body)


# --- code ------------------------------------------------------------------------------------

_LANGUAGES = ("python", "c", "ruby", "html")
_CODE_OPENINGS = (
    "Here is a {lang} {thing} that {verb} the {noun}:",
    "Sure! Here is a {lang} {thing}:",
)
_CODE_CLOSINGS = (
    "It returns early when the input is empty.",
    "Each branch closes its own block, so the nesting stays easy to follow.",
    "Call it with the {noun} you already have.",
    "The same check appears twice on purpose.",
)
_LANGUAGE_NAMES = {"python": "Python", "c": "C", "ruby": "Ruby", "html": "HTML"}
_THINGS = {"python": "function", "c": "function", "ruby": "method", "html": "snippet"}


def _identifier(rng: random.Random) -> str:
    return rng.choice(NOUNS).split()[0]


def _python_block(rng: random.Random, depth: int, names: list[str], lines: list[str]) -> None:
    pad = "    " * depth
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        var = rng.choice(names)
        if roll < 0.3 and depth < 4:
            lines.append(f"{pad}if not {var}:")
            lines.append(f"{pad}    return None")
        elif roll < 0.55 and depth < 4:
            item = _identifier(rng)
            lines.append(f"{pad}for {item} in {var}:")
            inner = [*names, item]
            if rng.random() < 0.5:
                lines.append(f"{pad}    if {item} is None:")
                lines.append(f"{pad}        continue")
            _python_block(rng, depth + 1, inner, lines)
        elif roll < 0.7 and depth < 4:
            lines.append(f"{pad}if {var} is None:")
            _python_block(rng, depth + 1, names, lines)
            lines.append(f"{pad}else:")
            lines.append(f"{pad}    return None")
        else:
            target = _identifier(rng)
            lines.append(f"{pad}{target} = {var}.get({rng.randint(0, 9)})")
            names.append(target)


def _python(rng: random.Random) -> list[str]:
    name = f"{rng.choice(_VERBS)}_{_identifier(rng)}"
    args = [_identifier(rng) for _ in range(rng.randint(1, 2))]
    lines = [f"def {name}({', '.join(dict.fromkeys(args))}):"]
    lines.append(f'    """{_cap(rng.choice(_VERBS))} the {rng.choice(NOUNS)}."""')
    names = list(dict.fromkeys(args))
    _python_block(rng, 1, names, lines)
    lines.append(f"    return {rng.choice(names)}")
    return lines


def _c_block(rng: random.Random, depth: int, lines: list[str]) -> None:
    pad = "    " * depth
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.35 and depth < 4:
            lines.append(f"{pad}for (size_t i{depth} = 0; i{depth} < n; i{depth}++) {{")
            _c_block(rng, depth + 1, lines)
            lines.append(f"{pad}}}")
        elif roll < 0.65 and depth < 4:
            lines.append(f"{pad}if (values[{rng.randint(0, 3)}] < {rng.randint(0, 9)}) {{")
            if rng.random() < 0.5:
                lines.append(f"{pad}    return -1;")
            else:
                _c_block(rng, depth + 1, lines)
            lines.append(f"{pad}}}")
        else:
            lines.append(f"{pad}total += values[{rng.randint(0, 3)}];")


def _c(rng: random.Random) -> list[str]:
    name = f"{rng.choice(_VERBS)}_{_identifier(rng)}"
    lines = [f"int {name}(const int *values, size_t n) {{", "    int total = 0;"]
    _c_block(rng, 1, lines)
    lines += ["    return total;", "}"]
    return lines


def _ruby_block(rng: random.Random, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        item = _identifier(rng)
        if roll < 0.35 and depth < 4:
            lines.append(f"{pad}{_identifier(rng)}s.each do |{item}|")
            _ruby_block(rng, depth + 1, lines)
            lines.append(f"{pad}end")
        elif roll < 0.65 and depth < 4:
            lines.append(f"{pad}if {item}.nil?")
            lines.append(f"{pad}  return nil")
            lines.append(f"{pad}end")
        else:
            lines.append(f"{pad}{item} = {_identifier(rng)}.fetch(:{_identifier(rng)}, nil)")


def _ruby(rng: random.Random) -> list[str]:
    lines = [f"def {rng.choice(_VERBS)}_{_identifier(rng)}({_identifier(rng)}s)"]
    _ruby_block(rng, 1, lines)
    lines += ["  nil", "end"]
    return lines


def _html_block(rng: random.Random, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.4 and depth < 4:
            lines.append(f'{pad}<div class="{_identifier(rng)}">')
            _html_block(rng, depth + 1, lines)
            lines.append(f"{pad}</div>")
        elif roll < 0.6 and depth < 4:
            lines.append(f"{pad}<ul>")
            for _ in range(rng.randint(2, 4)):
                lines.append(f"{pad}  <li>{_cap(rng.choice(NOUNS))}</li>")
            lines.append(f"{pad}</ul>")
        else:
            words = " ".join(_noun_phrase(rng, subject=False))
            lines.append(f"{pad}<p>{_cap(words)}.</p>")


def _html(rng: random.Random) -> list[str]:
    lines = [f'<div class="{_identifier(rng)}">']
    _html_block(rng, 1, lines)
    lines.append("</div>")
    return lines


_CODE_WRITERS: dict[str, Callable[[random.Random], list[str]]] = {
    "python": _python,
    "c": _c,
    "ruby": _ruby,
    "html": _html,
}


def write_code(
    rng: random.Random, min_tokens: int, max_tokens: int, *, language: str = ""
) -> Draft:
    """A sentence, a fenced code block of one to three units, and a closing sentence."""
    language = language or rng.choice(_LANGUAGES)
    opening = rng.choice(_CODE_OPENINGS).format(
        lang=_LANGUAGE_NAMES[language],
        thing=_THINGS[language],
        verb=third_person(rng.choice(_VERBS)),
        noun=rng.choice(NOUNS),
    )
    target = rng.randint(min_tokens, max_tokens)
    units: list[str] = []
    while True:
        units.append("\n".join(_CODE_WRITERS[language](rng)))
        block = "\n\n".join(units)
        if len(units) == 3 or _count(block) >= target * 0.8:
            break
    closing = rng.choice(_CODE_CLOSINGS).format(noun=rng.choice(NOUNS))
    fence = "html" if language == "html" else language
    return Draft(opening, f"\n\n```{fence}\n{block}\n```\n\n{closing}", language)


# --- tables and lists ------------------------------------------------------------------------

_TABLE_OPENINGS = (
    "Here is a comparison:",
    "Here are the numbers:",
    "Sure! Here is a summary table:",
    "Here is how they line up:",
)


def _cell(rng: random.Random, kind: str, row: int) -> str:
    if kind == "index":
        return str(row + 1)
    if kind == "count":
        return str(rng.randint(0, 5))
    if kind == "flag":
        return rng.choice(("yes", "no", "yes", "-"))
    return rng.choice(_ADJECTIVES)


def _table(rng: random.Random) -> list[str]:
    columns = rng.randint(2, 4)
    kinds = ["index" if rng.random() < 0.5 else "word"]
    kinds += [rng.choice(("count", "count", "flag", "word")) for _ in range(columns - 1)]
    header = [_cap(rng.choice(NOUNS).split()[0]) for _ in range(columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * columns) + "|"]
    previous: list[str] | None = None
    for row in range(rng.randint(3, 7)):
        if previous is not None and rng.random() < 0.2:
            cells = previous  # a repeated row, as real tables have
        else:
            cells = [_cell(rng, kind, row) for kind in kinds]
        lines.append("| " + " | ".join(cells) + " |")
        previous = cells
    return lines


def _bullets(rng: random.Random) -> list[str]:
    numbered = rng.random() < 0.4
    verb = _cap(rng.choice(_VERBS))
    items = []
    for i in range(rng.randint(3, 6)):
        if rng.random() < 0.5:
            item = f"{verb} the {rng.choice(NOUNS)}."  # items that start alike
        else:
            item = _cap(" ".join(_clause(rng))) + "."
        items.append(f"{i + 1}. {item}" if numbered else f"- {item}")
    return items


def write_table(rng: random.Random, min_tokens: int, max_tokens: int) -> Draft:
    """A sentence, a markdown table, a list, and more of either until long enough."""
    opening = rng.choice(_TABLE_OPENINGS)
    target = rng.randint(min_tokens, max_tokens)
    parts = ["\n".join(_table(rng))]
    while _count("\n\n".join(parts)) < target and len(parts) < 5:
        if rng.random() < 0.5:
            parts.append(_cap(" ".join(_clause(rng))) + ":")
            parts.append("\n".join(_bullets(rng)))
        else:
            parts.append("\n".join(_table(rng)))
    return Draft(opening, "\n\n" + "\n\n".join(parts))


# --- Chinese and Japanese --------------------------------------------------------------------

_ZH_OPENINGS = ("好的，下面是我的回答。", "当然可以。", "好的。", "这是一个好问题。")
_ZH_SUBJECTS = (
    "我们",
    "这个系统",
    "老师",
    "学生们",
    "那条河",
    "城市",
    "工程师",
    "用户",
    "他们",
    "小猫",
)
_ZH_ADVERBS = (
    "慢慢地",
    "一步一步地",
    "常常",
    "总是",
    "认真地",
    "静静地",
    "好好地",
    "天天",
    "一遍又一遍地",
)
_ZH_VERBS = (
    "需要",
    "喜欢",
    "发现",
    "保护",
    "建立",
    "改变",
    "记得",
    "等待",
    "理解",
    "看看",
    "想想",
    "试试",
)
_ZH_OBJECTS = (
    "花园",
    "问题",
    "答案",
    "故事",
    "道路",
    "时间",
    "方法",
    "数据",
    "窗户",
    "信号",
    "很多很多的书",
)
_ZH_LINKS = ("但是", "所以", "因为", "然后", "而且", "其实")
_JA_OPENINGS = ("はい、説明します。", "もちろんです。", "いい質問ですね。")
_JA_SUBJECTS = (
    "私たちは",
    "システムは",
    "先生は",
    "学生は",
    "川は",
    "町は",
    "エンジニアは",
    "猫は",
)
_JA_ADVERBS = ("だんだん", "少しずつ", "いろいろと", "ときどき", "どんどん", "ゆっくり", "そろそろ")
_JA_OBJECTS = ("庭を", "問題を", "答えを", "物語を", "道を", "時間を", "方法を", "データを", "窓を")
_JA_VERBS = (
    "使います",
    "守ります",
    "待っています",
    "作ります",
    "変えます",
    "覚えています",
    "見ます",
)


def _zh_sentence(rng: random.Random) -> str:
    text = rng.choice(_ZH_SUBJECTS)
    if rng.random() < 0.6:
        text += rng.choice(_ZH_ADVERBS)
    text += rng.choice(_ZH_VERBS) + rng.choice(_ZH_OBJECTS)
    if rng.random() < 0.3:
        text += "，" + rng.choice(_ZH_LINKS) + rng.choice(_ZH_VERBS) + rng.choice(_ZH_OBJECTS)
    return text + rng.choice(("。", "。", "！"))


def _ja_sentence(rng: random.Random) -> str:
    text = rng.choice(_JA_SUBJECTS)
    if rng.random() < 0.6:
        text += rng.choice(_JA_ADVERBS)
    text += rng.choice(_JA_OBJECTS) + rng.choice(_JA_VERBS)
    return text + "。"


def write_cjk(rng: random.Random, min_tokens: int, max_tokens: int, *, language: str = "") -> Draft:
    """Chinese or Japanese paragraphs: no spaces, repeated characters and phrases."""
    chinese = language == "zh" if language else rng.random() < 0.6
    sentence = _zh_sentence if chinese else _ja_sentence
    opening = rng.choice(_ZH_OPENINGS if chinese else _JA_OPENINGS)
    target = rng.randint(min_tokens, max_tokens)
    body = ""
    while _count(opening + body) < target:
        if body and rng.random() < 0.15:
            body += "\n\n"
        body += sentence(rng)
    return Draft(opening, body, "zh" if chinese else "ja")


# --- JSON ------------------------------------------------------------------------------------


def _json_value(rng: random.Random, depth: int) -> object:
    roll = rng.random()
    if depth < 2 and roll < 0.15:
        return [_json_item(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    if roll < 0.5:
        return " ".join(_noun_phrase(rng, subject=False))
    if roll < 0.7:
        return rng.randint(0, 5)
    if roll < 0.85:
        return rng.random() < 0.5
    return None


def _json_item(rng: random.Random, depth: int) -> dict[str, object]:
    item: dict[str, object] = {"id": rng.randint(1, 9), "name": rng.choice(NOUNS)}
    item["tags"] = [rng.choice(_ADJECTIVES) for _ in range(rng.randint(1, 3))]
    item["active"] = rng.random() < 0.5
    if depth < 2 and rng.random() < 0.3:
        item["parts"] = [_json_item(rng, depth + 1) for _ in range(rng.randint(1, 2))]
    return item


def write_json(
    rng: random.Random, min_tokens: int, max_tokens: int, *, keys: Sequence[str] = ()
) -> Draft:
    """A JSON object, indented by two spaces; `keys` (from a json_schema) come first."""
    target = rng.randint(min_tokens, max_tokens)
    answer: dict[str, object] = {key: _json_value(rng, 0) for key in keys}
    if not keys:
        items: list[object] = []
        answer.update(topic=rng.choice(NOUNS), summary=_cap(" ".join(_clause(rng))) + ".")
        answer["items"] = items
        while True:
            items.append(_json_item(rng, 1))
            if _count(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode()) >= target:
                break
        answer.update(count=len(items), notes=None)
    text = orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode()
    return Draft(text[:2], text[2:])  # opening "{\n"


# --- reasoning and refusals ------------------------------------------------------------------

_THINKING_OPENINGS = (
    "Okay, the user wants an answer about the {noun}.",
    "Let me think about the {noun} first.",
    "Hmm, this is about the {noun}.",
)
_THINKING_STEPS = ("First,", "Then", "Wait,", "Hmm, maybe", "Also,", "So", "Actually,")


def write_reasoning(rng: random.Random, min_tokens: int, max_tokens: int) -> Draft:
    """Thinking-out-loud text, as reasoning models put in `reasoning_content`."""
    opening = rng.choice(_THINKING_OPENINGS).format(noun=rng.choice(NOUNS))
    target = rng.randint(min_tokens, max_tokens)
    body = ""
    while _count(opening + body) < target:
        step = rng.choice(_THINKING_STEPS)
        gap = "\n\n" if rng.random() < 0.25 else " "
        body += f"{gap}{step} {' '.join(_clause(rng))}."
    return Draft(opening, body)


_REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "I can't help with that request.",
)


def write_refusal(rng: random.Random) -> Draft:
    """What a model says in `refusal` instead of answering."""
    opening = rng.choice(_REFUSALS)
    body = ""
    if rng.random() < 0.6:
        body = f" It asks for details about {' '.join(_noun_phrase(rng, subject=False))}"
        body += " that I am not able to share."
    return Draft(opening, body)


# --- paraphrase ------------------------------------------------------------------------------

_PARAPHRASES = (
    ("Here is", "Here's"),
    ("Sure! Here is", "Sure, here's"),
    ("Sure, here is", "Sure! Here's"),
    ("It is", "It's"),
    ("I will", "I'll"),
    ("Of course.", "Certainly."),
    ("Certainly.", "Of course."),
    ("Okay,", "OK,"),
    ("Let me", "I'll"),
    ("Hmm,", "Hm,"),
    ("The ", "This "),
    ("This ", "The "),
    ("A ", "One "),
    ("An ", "One "),
    ("Each ", "Every "),
    ("Every ", "Each "),
    ("好的，", "好，"),
    ("当然可以。", "当然。"),
    ("好的。", "好。"),
    ("这是一个", "这是个"),
    ("はい、", "はい。"),
    ("もちろんです。", "もちろん。"),
    ("いい質問ですね。", "いい質問です。"),
    ("{\n", "{ "),
)

_PARAPHRASES_LONGEST_FIRST = sorted(_PARAPHRASES, key=lambda pair: -len(pair[0]))


def paraphrase(opening: str) -> str:
    """`opening` with one small change ("Here is" -> "Here's"), as a model restarting does."""
    stripped = opening.lstrip()
    lead = opening[: len(opening) - len(stripped)]
    for old, new in _PARAPHRASES_LONGEST_FIRST:
        if stripped.startswith(old):
            return lead + new + stripped[len(old) :]
    if stripped and is_cjk(stripped[0]):
        return lead + "好的，" + stripped
    return lead + "Sure! " + stripped


# --- dispatch --------------------------------------------------------------------------------


def write(
    style: str,
    rng: random.Random,
    min_tokens: int,
    max_tokens: int,
    *,
    keys: Sequence[str] = (),
    language: str = "",
) -> Draft:
    """A draft in `style` (one of TEXT_STYLES); `language` keeps a code or CJK draft in the
    language of another (a paraphrase goes on in the same language)."""
    if style == "prose":
        return write_prose(rng, min_tokens, max_tokens)
    if style == "code":
        return write_code(rng, min_tokens, max_tokens, language=language)
    if style == "table":
        return write_table(rng, min_tokens, max_tokens)
    if style == "cjk":
        return write_cjk(rng, min_tokens, max_tokens, language=language)
    if style == "json":
        return write_json(rng, min_tokens, max_tokens, keys=keys)
    raise ValueError(f"unknown text style {style!r}; allowed: {', '.join(TEXT_STYLES)}")
