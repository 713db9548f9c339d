"""Splice a continuation onto the partial answer the app already has, dropping only repeats.

What is a repeat depends on what the resume mode makes the model do. Prefill/prefix: the
model continues its own tokens, so its text is new even when it doubles a word ("had had")
or a closing line; only a server echoing the whole partial first (llama-server) is dropped.
Instruct: the model reads the partial and is asked to go on, and often restates its last
words or lines, or starts over.

Every mode is sent the partial without its trailing whitespace (tokenizers re-merge it, some
APIs reject it, chat templates trim it), and whitespace the model sends again is not sent
twice. That makes the seam the evidence in instruct mode: a model going on sends the
separator first (" had", "\\n| 2 |"), so what follows is the text's own, doubled words and
rows included; a model restating starts at one of the partial's words or lines (with its
indentation), glued to it ("had had", "| 2 |\\n"), and that restatement is dropped (blank
runs inside a line may differ). A restart is cut to what is new. What cannot be placed
raises ContinuationDiverged, so the relay tries again and then fails explicitly: a restart
that departs from the partial or rewords its opening ("Here's" for "Here is"), new text glued
where the partial needs a separator ("corner.Certainly."), and the two ambiguities no text
settles: a restated CJK character that may be natural reduplication (看|看) unless the
partial shows which, and restated lines of a partial that repeats them (table rows; a
Markdown table's header settles how many cells a row has).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

MODES = ("prefill", "prefix", "instruct")

# Scripts written without spaces between words: any character may start a repeat.
_UNSPACED = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3000, 0x30FF),  # CJK punctuation, Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF00, 0xFFEF),  # full- and half-width forms
    (0x20000, 0x3FFFF),  # CJK Extensions B and later
)
_BLANKS = " \t"
# Where a sentence ends: these followed by whitespace (or the end), a CJK stop anywhere.
_STOPS = ".!?:"
_CJK_STOPS = "。！？"
# A tokenizer never cuts between these and a letter (".Every" is one pre-token), so a capital
# glued to them is new text, not the rest of the partial's token stream.
_GLUE_PUNCTUATION = ".!?,;:"

# Instruct: how much more of a continuation to read for evidence of natural reduplication.
_EVIDENCE_CHARS = 120

_End = Literal["bound", "finish"] | None


def _unspaced(ch: str) -> bool:
    code = ord(ch)
    return code >= 0x0E00 and any(lo <= code <= hi for lo, hi in _UNSPACED)


def _word(ch: str) -> bool:
    """A letter or digit of a space-separated script: two of them in a row are one word."""
    return (ch.isalnum() or ch == "_") and not _unspaced(ch)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _find_all(text: str, part: str) -> list[int]:
    found, at = [], text.find(part)
    while at != -1:
        found.append(at)
        at = text.find(part, at + 1)
    return found


def _weight(text: str) -> int:
    """Evidence in matched text: non-space chars, a CJK character counting twice."""
    return sum(1 + _unspaced(ch) for ch in text if not ch.isspace())


def _first_sentence(text: str, ended: bool) -> tuple[str, bool]:
    """The first sentence or line of `text`, and whether it is known to be complete."""
    for i, ch in enumerate(text):
        if (ch == "\n" and text[:i].strip()) or ch in _CJK_STOPS:
            return text[: i + 1], True
        if ch in _STOPS and i + 1 < len(text) and text[i + 1].isspace():
            return text[: i + 1], True
    return text, ended


def _glued_sentence(partial: str, sentence: str) -> bool:
    """A prose sentence ("The sky is blue.") right after a whole lowercase word of prose
    ("perception of"): a new text, never the rest of the partial's word. Code (an open
    fence) may split an identifier there ("my" + "Variable = 1")."""
    word = partial[len(partial.rstrip("abcdefghijklmnopqrstuvwxyz")) :]
    head = sentence.split(maxsplit=1)[0] if sentence.strip() else ""
    return (
        len(word) >= 2
        and partial[-len(word) - 1 : -len(word)].isspace()
        and head.replace("'", "").isalpha()
        and len(sentence.split()) >= 2
        and (sentence.rstrip()[-1:] in ".!?" or sum(w.isalpha() for w in sentence.split()) >= 4)
        and partial.count("```") % 2 == 0
    )


def _lead(text: str, ended: bool) -> tuple[str, bool]:
    """The first sentences of `text` on its first line, enough for four units, and whether
    they are known to be complete."""
    taken = 0
    while True:
        sentence, complete = _first_sentence(text[taken:], ended)
        taken += len(sentence)
        if not complete:
            return text[:taken], False
        if len(_units(text[:taken])) >= 4 or "\n" in sentence:
            return text[:taken], True
        if taken >= len(text):
            # Out of text: the lead is whole only if the continuation ended ("东京。" may go
            # on "谢谢…", which tells it from a restart "东京是…").
            return text[:taken], ended
        while taken < len(text) and text[taken] in _BLANKS:
            taken += 1


# English contractions, so that "here's" and "here is" compare as the same words.
_CONTRACTIONS = {"s": "is", "re": "are", "ll": "will", "ve": "have", "m": "am", "d": "would"}


def _units(text: str) -> list[str]:
    """What two openings are compared by: lower-case words (contractions spelt out) and
    single CJK characters; punctuation and spaces skipped."""
    units: list[str] = []
    word, prev, contracted = "", "", False
    for ch in text + " ":
        if _word(ch):
            if not word:
                contracted = prev in "'’" and bool(units)
            word += ch.lower()
        elif word:
            units.append(_CONTRACTIONS.get(word, word) if contracted else word)
            word = ""
        if _unspaced(ch) and ch.isalnum():
            units.append(ch)
        prev = ch
    return units


def _reworded(ours: str, theirs: str) -> bool:
    """Whether sentence `theirs` is `ours` reworded ("Here's the story." for "Here is the
    story.", "Sure, here" for "Sure! Here") or cut short ("当然。" for "当然可以。")."""
    a, b = _units(ours), _units(theirs)
    if not a or not b or ours.strip() == theirs.strip():
        return False
    if a == b or (len(b) < len(a) <= 2 * len(b) and a[: len(b)] == b) or _alike(a, b):
        return True
    # "はい。" for "はい、説明します。": the first clause reworded.
    clause = next((i for i, ch in enumerate(ours) if ch in "，、"), -1)
    return 0 < clause < len(ours) - 1 and _reworded(ours[: clause + 1], theirs)


def _alike(a: list[str], b: list[str], ratio: float = 0.7) -> bool:
    """Most units in common, in order (at least two)."""
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return matched >= 2 and matcher.ratio() >= ratio


class ContinuationDiverged(Exception):
    """The continuation cannot be placed after the partial answer (e.g. a paraphrased restart)."""


@dataclass(frozen=True, slots=True)
class SpliceLimits:
    min_overlap_chars: int = 8
    """Instruct: a restart that re-emits this much of the partial's start and then departs is
    diverged. Prefill: a partial shorter than this counts as echoed only up to a word end."""
    max_overlap_chars: int = 2048
    """How far back into the partial a repeated tail may start; with as much again for a
    restart from the beginning, the most continuation text ever held back."""
    divergence_chars: int = 32
    """Instruct, continuation starting a new line: how much of the partial's start it must
    re-emit before departing to be diverged (lists and code often start lines alike)."""


class _Repeat:
    """A repeat the continuation may start with: the partial from `start` to its end, read
    from the held text at `at`; `ti`/`hi` say how far each has been matched."""

    __slots__ = ("at", "blank", "end", "hi", "start", "state", "ti")

    def __init__(self, start: int, at: int) -> None:
        self.start = start
        self.at = at
        self.ti = start
        self.hi = at
        self.blank = False  # inside a blank run of the partial, skipping the held one's
        self.end = -1  # where in the held text the repeat ends, once matched
        self.state: bool | None = None  # True: matched to the partial's end; False: departed


class ContinuationSplicer:
    """Decides, as continuation text streams in, which start of it repeats the partial answer.

    Text is held back only while it could still be a repeat; what is dropped is always a
    prefix of the continuation (``dropped_chars`` long) and everything after it is forwarded.
    """

    __slots__ = (
        "_core",
        "_decided",
        "_echo",
        "_held",
        "_hold_limit",
        "_instruct",
        "_last_alnum",
        "_limits",
        "_repeats",
        "_tail_ws",
        "_top",
        "dropped_chars",
        "prompt_text",
    )

    def __init__(
        self, sent: str, limits: SpliceLimits = SpliceLimits(), *, mode: str = "prefill"
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown resume mode {mode!r}: expected one of {', '.join(MODES)}")
        self._limits = limits
        self._instruct = mode == "instruct"
        core = sent.rstrip()
        self._core = core
        self.prompt_text = core or sent
        self._tail_ws = sent[len(self.prompt_text) :]
        self._top = len(core) - len(core.lstrip())
        floor = max(0, len(core) - limits.max_overlap_chars)
        self._last_alnum = next(
            (i for i in range(len(core) - 1, floor - 1, -1) if core[i].isalnum()), -1
        )
        self._hold_limit = limits.max_overlap_chars + min(len(core), limits.max_overlap_chars)
        self._held = ""
        self._repeats: list[_Repeat] | None = None  # chosen once the continuation's start is seen
        self._echo: _Repeat | None = None  # prefill: the whole partial sent back first
        if not self._instruct:
            # Echo: the whole partial, re-sent verbatim. A partial without a letter or digit
            # ("#", "```") may be naturally followed by itself ("## Title", "`````python").
            echo = bool(core) and (len(core) >= limits.min_overlap_chars or self._last_alnum >= 0)
            self._repeats = [_Repeat(0, 0)] if echo else []
            self._echo = self._repeats[0] if echo else None
            self._decided = not (echo or self._tail_ws)
        else:
            self._decided = not core
        self.dropped_chars = 0

    @property
    def decided(self) -> bool:
        return self._decided

    def feed(self, text: str) -> str | None:
        """Take the next piece of continuation text; return what may be forwarded now, or
        None while the start of the continuation is still held back."""
        if self._decided:
            return text
        self._held += text
        cut = self._decide(None)
        if cut is None and len(self._held) > self._hold_limit:
            cut = self._decide("bound")
        return None if cut is None else self._release(cut)

    def finish(self) -> str:
        """The continuation ended: release whatever is still held (or raise
        ContinuationDiverged if it cannot be placed)."""
        if self._decided:
            return ""
        cut = self._decide("finish")
        assert cut is not None
        return self._release(cut)

    def _release(self, cut: int) -> str:
        held = self._held
        self._decided = True
        self.dropped_chars = cut
        self._held = ""
        self._repeats = None
        self._echo = None
        return held[cut:]

    # --- deciding ---------------------------------------------------------------------------

    def _decide(self, end: _End) -> int | None:
        """How many held chars to drop, or None to keep holding. `end` says no more text
        will be held: the stream finished, or the hold bound was hit."""
        repeats = self._repeats
        if repeats is None:
            if self._body() == len(self._held):
                # Instruct, only whitespace so far: a repeat may still follow it.
                return None if end is None else self._seam(0, end)
            repeats = self._repeats = self._start_repeats()
        for repeat in repeats:
            if repeat.state is None:
                repeat.state = self._advance(repeat)
        if any(repeat.state is None for repeat in repeats):
            if end is None:
                return None
            self._abandon(end)
        held = self._held
        done = sorted((repeat for repeat in repeats if repeat.state), key=lambda r: r.start)
        if end is None and any(repeat.end == len(held) for repeat in done):
            return None  # whether a repeat ends at a word boundary is not known yet
        if self._instruct and done:
            cut = self._table_row([0] + [repeat.end for repeat in done], end)
            if cut != -1:
                return None if cut is None else self._seam(cut, end)
        accepted = [
            repeat
            for repeat in done  # longest first
            if self._accept(repeat, held[repeat.end] if repeat.end < len(held) else None)
        ]
        if not self._instruct:
            return self._seam(accepted[0].end if accepted else 0, end)
        cut = self._chosen(accepted, end)
        return None if cut is None else self._seam(cut, end)

    def _body(self) -> int:
        """Where the held text's first non-space is (its length if none)."""
        return len(self._held) - len(self._held.lstrip())

    def _start_repeats(self) -> list[_Repeat]:
        """Instruct: once the continuation's first non-space arrives, find the repeats it may
        start with. A restatement is glued to the partial: it starts at one of its words, or
        at one of its lines (indentation included), right where the continuation starts. A
        continuation opening with a separator the partial lacks goes on from it."""
        held, core = self._held, self._core
        first = held[0]
        floor = max(0, len(core) - self._limits.max_overlap_chars)
        repeats = []
        at = core.find(first, floor)
        while at != -1:
            if self._repeat_start(at):
                repeats.append(_Repeat(at, 0))
            at = core.find(first, at + 1)
        top, body = self._top, self._body()
        if core[top] == held[body] and all(r.start != top for r in repeats):
            # A restart from the top, read from the continuation's first non-space.
            repeats.append(_Repeat(top, body))
        return repeats

    def _repeat_start(self, at: int) -> bool:
        """Whether a restatement of the partial may start at `at`."""
        core = self._core
        ch = core[at]
        prev = core[at - 1] if at else "\n"
        if prev == "\n":
            return True  # a line, read with its indentation
        if ch.isspace():
            return False
        if _unspaced(ch) or _unspaced(prev):
            return True
        return prev.isspace()  # a word ("|", "]," and "{" are words too)

    def _reduplication(self, start: int) -> bool:
        """Whether a restatement from `start` looks just like natural reduplication at the
        cut, or a restart reworded right after it: one CJK character (看|看, 。谢|谢), two
        inside a clause (いろ|いろ), or a partial of two (当然 + 当然。 for 当然可以。). Two
        after a clause mark ("，也是" + "也是…") are restated."""
        core = self._core
        text = core[start:]
        if len(text) > 2 or not all(_unspaced(ch) and ch.isalnum() for ch in text):
            return False
        prev = core[start - 1] if start > self._top else ""
        return len(text) == 1 or not prev or (_unspaced(prev) and prev.isalnum())

    def _advance(self, repeat: _Repeat) -> bool | None:
        """Match more of `repeat`: True once it reaches the partial's end, False if the held
        text departs from it, None if the held text runs out first. Instruct: a blank run
        inside a line matches any blank run (models re-space what they restate)."""
        core, held = self._core, self._held
        ti, hi = repeat.ti, repeat.hi
        n, m = len(core), len(held)
        while True:
            if repeat.blank:
                while hi < m and held[hi] in _BLANKS:
                    hi += 1
                if hi == m:
                    break
                repeat.blank = False
            if ti == n:
                repeat.end = hi
                return True
            if hi == m:
                break
            ch = core[ti]
            if self._instruct and ch in _BLANKS and not self._indentation(ti):
                if held[hi] not in _BLANKS:
                    return False
                while core[ti] in _BLANKS:
                    ti += 1
                hi += 1
                repeat.blank = True
                continue
            if held[hi] != ch:
                return False
            ti += 1
            hi += 1
        repeat.ti, repeat.hi = ti, hi
        return None

    def _indentation(self, at: int) -> bool:
        line = self._core.rfind("\n", 0, at) + 1
        return not self._core[line:at].strip(_BLANKS)

    def _abandon(self, end: _End) -> None:
        """No more text will come to settle the repeats still matching: they are not."""
        echo = self._echo
        if end == "bound" and echo is not None and echo.state is None:
            # (Instruct settles a restart that stops short in _chosen.)
            raise ContinuationDiverged(
                f"continuation echoes more than {len(self._held)} chars of the partial answer; "
                "too long to hold back until the echo is complete"
            )
        for repeat in self._repeats or ():
            if repeat.state is None:
                repeat.state = False

    def _accept(self, repeat: _Repeat, after: str | None) -> bool:
        """Whether a repeat matched to the partial's end really ends there, given the
        continuation's next char (None: none)."""
        core = self._core
        last = core[-1]
        if not self._instruct:
            if after is None or len(core) >= self._limits.min_overlap_chars:
                return True
            # A short partial may be the first letters of a word ("l" + "lama"): it is an
            # echo only if the continuation's word ends with it.
            if _unspaced(last):
                return len(core) >= 2
            if _word(last):
                return not _word(after)
            # A symbol-ended partial with a word in it ("1. **"): its echo runs straight
            # into the next word ("1. **Code"); text going on from it never restates it.
            return after.isspace() or (_word(after) and self._last_alnum >= 0)
        if after is None:
            return True
        text = core[repeat.start :]
        if not any(ch.isalnum() for ch in text):
            # Only symbols ("  }", "- ", "|", "],", "。"): natural text may go on with more
            # of them ("`" + "``python", "|---|---" + "|---|"). Symbols restated across a
            # line end ("|\n|---" + "|---|"), up to a space ("| - |" + " 4 |") or before the
            # word cut short ('"' + '"tags"', "。" + "。川") are repeats; a run that may go
            # on is not. (A tokenizer keeps a run of one symbol together: "__" is never cut.)
            return "\n" in text or after.isspace() or after.isalnum()
        if not (_word(last) and _word(after)):
            return True
        # The repeat ends inside a longer word of the continuation ("the" + "ater"): the
        # model restarts the word it was cut in ("capi" + "capital"), unless the partial's
        # last word was complete.
        return not self._tail_ws

    def _diverged(self, matched: str) -> bool:
        """Instruct: whether a restart re-emitted enough of the partial's start to be one."""
        weight = _weight(matched)
        if "\n" in self._tail_ws + self._held[: self._body()]:
            return weight >= self._limits.divergence_chars
        words = len(matched.split()) - (0 if matched[-1:].isspace() else 1)
        return weight >= self._limits.min_overlap_chars or words >= 2

    # --- instruct: which repeat, or none ----------------------------------------------------

    def _chosen(self, accepted: list[_Repeat], end: _End) -> int | None:
        """Instruct: how many held chars to drop given the repeats found (longest first),
        None to hold more first; raise ContinuationDiverged if the continuation cannot be
        placed."""
        longest = accepted[0].end if accepted else 0
        if not self._no_respaced_restart(longest, end):
            return None
        if not accepted:
            return self._unrepeated(end)
        start = accepted[0].start
        if self._reduplication(start):
            return self._reduplicated(start, longest, end)
        periodic = [self._periodic(accepted[0], repeat, end) for repeat in accepted[1:]]
        if None in periodic:
            return None
        if any(periodic):
            raise ContinuationDiverged(
                "continuation restates the partial's last lines, which repeat themselves: "
                "cannot tell how many"
            )
        return longest

    def _no_respaced_restart(self, longest: int, end: _End) -> bool:
        """Raise if the continuation re-emits more of the partial's start, blanks aside ("{ "
        for "{\\n"), than the `longest` chars of repeat found, and then departs from it or
        lays its lines out differently; False to hold more first."""
        held, core = self._held, self._core
        taken, matched = self._restart_match()
        if taken <= longest:
            return True
        if len(matched) == len(core) - self._top:
            if _weight(matched) < 2:
                return True
            raise ContinuationDiverged(
                f"continuation restarted the answer laid out differently ({held[:40]!r}...)"
            )
        if taken == len(held) and end is None:
            return False
        if self._is_restart(matched):
            raise ContinuationDiverged(
                f"continuation restarted the answer ({matched[:40]!r}...) and then "
                + ("ended before the cut" if taken == len(held) else "departed from it")
            )
        return True

    def _reduplicated(self, start: int, longest: int, end: _End) -> int | None:
        """The chars to drop for a restatement that looks like reduplication, None to hold
        more first; raise if nothing tells it from the text's own double.

        看 + 看看信号 restates 看 before the text's own 看看 (as 看看 + 看信号 does). 看 + 看信号
        may restate it or be the second half of 看看: the partial, and the continuation after
        the characters in question, may show which (看看 written elsewhere, 看信 never but as
        the end of 看看信); if not, another try may."""
        core, held = self._core, self._held
        text, following = core[start:], held[longest : longest + 1]
        if len(held) < longest + len(text) and end is None:
            return None
        if self._opening()[1] and self._unrepeated(end) is None:
            return None  # ("好，下面是…" after "…小猫好好" is a reworded restart)
        if held.startswith(text, longest) or core.endswith(text + text):
            return longest  # else the double and the restated half make a triple
        # What the model wrote, before the cut and after the characters in question.
        said = core + "\n" + held[longest + 1 :]
        before = core[start - 1 : start] if start > self._top else ""
        doubled = before + text + text in said or text + text + following in said
        restated = any(  # 看信 somewhere, and not as the end of 看看信
            not said.endswith(text, 0, at) for at in _find_all(said, text + following)
        )
        if doubled != restated:
            return 0 if doubled else longest
        if end is None and len(held) < longest + _EVIDENCE_CHARS:
            return None  # the continuation may yet show it
        raise ContinuationDiverged(
            f"continuation starts with {text!r} again, which may restate the partial's last "
            "characters or double them (看|看): cannot tell"
        )

    def _periodic(self, longest: _Repeat, other: _Repeat, end: _End) -> bool | None:
        """Whether restating the partial from `longest` or from `other` (shorter) are both
        likely (None: not known yet). The shorter has the text after the cut repeat the
        partial's last stretch: natural for a row like the one before or after it ("| 5 |
        dry |\\n| 5 |" + "| dry |\\n| 5 | dry |\\n"), or where the partial already repeats
        it; not otherwise ("ha ha" + "ha ha ha!")."""
        core = self._core
        period = other.start - longest.start
        if "\n" not in core[longest.start : other.start]:
            return False
        start = core.rfind("\n") + 1
        line, before = core[start:], core[core.rfind("\n", 0, start - 1) + 1 : start - 1]
        if period == len(before) + 1 and line and before.startswith(line):
            return True
        if len(core) >= 2 * period and core[-2 * period : -period] == core[-period:]:
            return True
        # The shorter reading completes the partial's last line, then says it again.
        lines = (line + self._held[other.end :]).split("\n")
        if len(lines) < 3 and end is None:
            return None
        return len(lines) >= 2 and lines[0] == lines[1]

    def _table_row(self, cuts: list[int], end: _End) -> int | None:
        """In a Markdown table, the one of `cuts` that gives the row at the cut as many cells
        as the table's header ("| 2 | 0 |" + "| 0 |" restates "|", not "| 0 |"); None to
        hold until that row ends, -1 if that does not settle it."""
        core, held = self._core, self._held
        if not core[core.rfind("\n") + 1 :].startswith("|"):
            return -1
        sent = core + self._tail_ws
        fits = set()
        for cut in cuts:
            seam = self._seam(cut, "finish")
            assert seam is not None
            text = sent + held[seam:]
            start = text.rfind("\n", 0, len(sent)) + 1
            stop = text.find("\n", max(start, len(sent) - 1))
            if stop < 0:
                if end is None:
                    return None
                stop = len(text)
            row = text[start:stop]
            header = -1
            for line in reversed(text[:start].split("\n")[:-1]):
                if not line.startswith("|"):
                    break
                header = line.rstrip().count("|")
            if row.startswith("|") and row.rstrip().count("|") == header:
                fits.add(cut)
        return fits.pop() if len(fits) == 1 else -1

    def _restart_match(self) -> tuple[int, str]:
        """How far the held text re-emits the partial from its top, blanks aside: the held
        chars it takes, and the partial's text they match."""
        held, core = self._held, self._core
        body = self._body()
        theirs, ours = held[body:], core[self._top :]
        i = j = 0
        while i < len(theirs) and j < len(ours):
            if theirs[i].isspace():
                i += 1
            elif ours[j].isspace():
                j += 1
            elif theirs[i] == ours[j]:
                i += 1
                j += 1
            else:
                break
        return body + i, ours[:j]

    def _is_restart(self, matched: str) -> bool:
        """Whether re-emitting `matched` of the partial's start makes the continuation a
        restart. On a new line it must be a lot (lists and code start lines alike), unless
        it departs inside a line ('{ "topic": "b"' after '{\\n  "topic": "a"')."""
        if self._diverged(matched):
            return True
        line_mode = "\n" in self._tail_ws + self._held[: self._body()]
        mid_line = "\n" not in matched[len(matched.rstrip()) :]
        return line_mode and mid_line and _weight(matched) >= self._limits.min_overlap_chars

    def _unrepeated(self, end: _End) -> int | None:
        """Instruct, no repeat: 0 (the text goes on from the cut), None to hold more of it
        first, or raise ContinuationDiverged if it is a new text, not the partial's rest."""
        held = self._held
        first = held[0]
        if not (first.isupper() or (_unspaced(first) and first.isalnum())):
            return 0  # after a separator, inside a word, or symbols: the text goes on
        opening, opened = self._opening()
        ended = end is not None or len(held) > len(opening) + 64
        sentence, complete = _first_sentence(held, ended)
        if not complete:
            return None
        last = self._core[-1]
        if (
            not self._tail_ws
            and first.isupper()
            and (
                last in _GLUE_PUNCTUATION
                or (last.islower() and sentence[-1] in ".!?" and len(sentence.split()) <= 3)
                or (last.islower() and _glued_sentence(self._core, sentence))
            )
        ):
            # "corner.Certainly." or "painterSure!": a new text glued where the partial
            # needs a separator.
            raise ContinuationDiverged(
                f"continuation starts a new text ({sentence!r}) glued to the partial answer"
            )
        return 0 if self._new_opening(opening, opened, sentence, ended) else None

    def _opening(self) -> tuple[str, bool]:
        """The partial's first sentence, and whether the partial goes beyond it."""
        text = self._core[self._top :]
        opening, complete = _first_sentence(text, False)
        return opening, complete or text[-1] in _STOPS + _CJK_STOPS

    def _new_opening(self, opening: str, opened: bool, sentence: str, ended: bool) -> bool:
        """Raise if the continuation's first sentence rewords the partial's first one (a
        paraphrased restart: "Here's the story." after "Here is the story.", "当然。" after
        "当然可以。", "Sure! " before it); False to hold more of it first."""
        held = self._held
        if not opened:
            # The partial is inside its first sentence: compare what there is of both. A
            # restart says the partial's last word again near its start, not as a restated
            # tail ("Each anchor" after "Every anchor"), or most of its words, or stops short
            # of them ("当然。" after "当然可以").
            mine, said = _units(opening), _units(sentence)
            theirs = _units(held)[: len(mine) + 1]
            tail = any(theirs[:i] == mine[-i:] for i in range(1, len(mine) + 1))
            if (
                (len(mine) <= 2 and theirs[:1] == mine[:1])  # "好，…" after "好的"
                or (len(mine) >= 2 and mine[-1] in theirs[:3] and not tail)
                or _alike(mine, theirs, 0.5 if held[0] == opening[0] else 0.7)
                or (sentence[-1:] in _STOPS + _CJK_STOPS and said == mine[: len(said)] != mine)
            ):
                raise ContinuationDiverged(
                    f"continuation restarts the answer reworded ({sentence[:40]!r}...)"
                )
            return True
        if sentence.strip() == opening.strip() or _reworded(opening, sentence):
            raise ContinuationDiverged(
                f"continuation restarts the answer reworded ({sentence[:40]!r}...)"
            )
        if min(len(_units(opening)), len(_units(sentence))) <= 2:
            # Openings of a word or two ("Sure!", "Of course.") are judged with what follows.
            lead, done = _lead(held, ended)
            if not done:
                return False
            mine = _units(_lead(self._core[self._top :], True)[0])
            units = _units(lead)
            size = min(len(mine), len(units))
            if _alike(mine[:size], units[:size]):
                raise ContinuationDiverged(
                    f"continuation restarts the answer reworded ({lead[:40]!r}...)"
                )
        return True

    def _seam(self, start: int, end: _End) -> int | None:
        """`start` plus the held whitespace from there that the partial already ends with
        ("\\n\\n" after a partial ending "\\n\\n"), or None while that is undecided."""
        held, tail = self._held, self._tail_ws
        stop = start
        while stop < len(held) and held[stop].isspace():
            stop += 1
        same = _common_prefix(held[start:stop], tail)
        if end is None and stop == len(held) and same == stop - start and same < len(tail):
            return None
        return start + same
