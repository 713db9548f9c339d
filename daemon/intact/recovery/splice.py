"""Splice a continuation onto the partial answer the app already has, dropping only repeats.

What is a repeat depends on what the resume mode makes the model do. Prefill/prefix: the
model continues its own tokens, so its text is new even when it doubles a word ("had had")
or a closing line; only a server echoing the whole partial first (llama-server) is dropped.
Instruct: the model reads the partial and is asked to go on, and often restates its last
words or lines, or starts over. Both modes are sent the partial without its trailing
whitespace (tokenizers re-merge it, some APIs reject it, chat templates trim it), so the
seam says which it is: a model going on regenerates the separator (" had", "\\n| 2 |"), one
restating starts at a word or line of the partial, glued to it ("had had", "| 2 |\\n").
The glued restatement is dropped (its blank runs may differ within a line); the separator
that follows is the text's own, so a doubled word or row after it is kept. A restart is cut
to what is new; one that departs from the partial, or new text glued where the partial
needs a separator ("corner.Certainly."), cannot be placed and raises ContinuationDiverged.
Lines are compared with their indentation: ``}`` never repeats ``  }``.
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


def _weight(text: str) -> int:
    """Evidence in matched text: non-space chars, a CJK character counting twice."""
    return sum(1 + _unspaced(ch) for ch in text if not ch.isspace())


def _first_sentence(text: str, ended: bool) -> tuple[str, bool]:
    """The first sentence or line of `text`, and whether it is known to be complete."""
    for i, ch in enumerate(text):
        if ch == "\n" and text[:i].strip() or ch in _CJK_STOPS:
            return text[: i + 1], True
        if ch in _STOPS and i + 1 < len(text) and text[i + 1].isspace():
            return text[: i + 1], True
    return text, ended


def _units(text: str) -> list[str]:
    """What two openings are compared by: lower-case words (split at apostrophes, so
    "here's" keeps "here") and single CJK characters; punctuation and spaces skipped."""
    units: list[str] = []
    word = ""
    for ch in text:
        if _word(ch):
            word += ch.lower()
            continue
        if word:
            units.append(word)
            word = ""
        if _unspaced(ch) and ch.isalnum():
            units.append(ch)
    if word:
        units.append(word)
    return units


def _reworded(ours: str, theirs: str) -> bool:
    """Whether sentence `theirs` is `ours` reworded ("Here's the story." for "Here is the
    story.") or cut short ("当然。" for "当然可以。")."""
    a, b = _units(ours), _units(theirs)
    if not a or not b or a == b:
        return False
    if len(b) < len(a) and a[: len(b)] == b:
        return True
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return matched >= 2 and matcher.ratio() >= 0.6


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
        "_held",
        "_hold_limit",
        "_instruct",
        "_last_alnum",
        "_limits",
        "_repeats",
        "_restart",
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
        self._restart: _Repeat | None = None  # the repeat that reads the partial from its top
        if not self._instruct:
            # Echo: the whole partial, re-sent verbatim. A partial without a letter or digit
            # ("#", "```") may be naturally followed by itself ("## Title", "`````python").
            echo = bool(core) and (len(core) >= limits.min_overlap_chars or self._last_alnum >= 0)
            self._repeats = [_Repeat(0, 0)] if echo else []
            self._restart = self._repeats[0] if echo else None
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
        self._restart = None
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
        for repeat in sorted(repeats, key=lambda r: r.start):  # longest first
            if not repeat.state:
                continue
            after = held[repeat.end] if repeat.end < len(held) else None
            if after is None and end is None:
                return None  # whether it ends at a word boundary is not known yet
            if self._accept(repeat, after):
                return self._seam(repeat.end, end)
        if self._instruct and not self._placed(end):
            return None
        return self._seam(0, end)

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
        restart = next((r for r in repeats if r.start == top), None)
        if restart is None and core[top] == held[body]:
            # A restart from the top, read from the continuation's first non-space.
            restart = _Repeat(top, body)
            repeats.append(restart)
        self._restart = restart
        return repeats

    def _repeat_start(self, at: int) -> bool:
        """Whether a restatement of the partial may start at `at`."""
        core = self._core
        ch = core[at]
        prev = core[at - 1] if at else "\n"
        if prev == "\n":
            return not self._single_unspaced(at)  # a line, read with its indentation
        if ch.isspace() or at > self._last_alnum:
            return False  # no letter or digit: a lone "|", ")" or "-" recurs naturally
        if _unspaced(ch) or _unspaced(prev):
            return not self._single_unspaced(at)
        return prev.isspace()  # a word

    def _single_unspaced(self, at: int) -> bool:
        """A repeat of one CJK character: too often a natural double (谢谢) to drop."""
        return at == len(self._core) - 1 and _unspaced(self._core[at])

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
        restart = self._restart
        if restart is not None and restart.state is None:
            # The continuation re-emits the partial from the top and stops short of its end.
            text = self._held[restart.at :]
            if self._instruct and self._diverged(self._core[self._top : restart.ti]):
                raise ContinuationDiverged(
                    "continuation restarted the answer and ended before reaching the point "
                    "where it was cut"
                    if end == "finish"
                    else f"continuation re-emits more than {len(text)} chars of the answer"
                )
            if not self._instruct and end == "bound":
                raise ContinuationDiverged(
                    f"continuation echoes more than {len(text)} chars of the partial answer; "
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
            return not _word(after) if _word(last) else after.isspace()
        if after is None:
            return True
        text = core[repeat.start :]
        if not any(ch.isalnum() for ch in text):
            # Only symbols ("  }", "- ", "| ---"): natural text may go on with more of them
            # ("`" + "``python", "| --- " + "| --- |"). Whole lines, and a restart of the word
            # cut short ("    @" + "    @items"), are repeats; a run that may go on is not.
            if "\n" in text or after in "\r\n" or after.isalnum():
                return True
            if after == text[-1]:
                return False
            return not (after.isspace() and self._tail_ws and len(text.split()) > 1)
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

    # --- instruct: a continuation that repeats nothing ----------------------------------------

    def _placed(self, end: _End) -> bool:
        """Instruct, no repeat found: raise ContinuationDiverged if the continuation is a
        new text rather than the rest of the partial; False to hold more of it first."""
        self._check_restart()
        held = self._held
        if self._tail_ws or held[0].isspace():
            return True  # after a separator any text may follow
        first = held[0]
        if not (first.isupper() or (_unspaced(first) and first.isalnum())):
            return True
        ended = end is not None
        sentence, complete = _first_sentence(held, ended)
        if not complete:
            return False
        last = self._core[-1]
        if first.isupper() and (
            last in _GLUE_PUNCTUATION
            or (last.islower() and sentence[-1] in ".!?" and len(sentence.split()) <= 3)
        ):
            # "corner.Certainly." or "painterSure!": a new text glued where the partial
            # needs a separator.
            raise ContinuationDiverged(
                f"continuation starts a new text ({sentence!r}) glued to the partial answer"
            )
        return self._check_reworded(sentence, ended)

    def _check_restart(self) -> None:
        """Raise if the continuation re-emits the partial's start (blanks aside) and then
        departs from it: a restart that rewords or goes on differently."""
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
        if i == len(theirs) or j == len(ours):
            return
        matched = ours[:j]
        mid_line = ours[j:].lstrip(_BLANKS)[:1] != "\n" and "\n" not in theirs[:i].rstrip()[-1:]
        line_mode = "\n" in self._tail_ws + held[:body]
        weight = _weight(matched)
        if self._diverged(matched) or (
            line_mode and mid_line and weight >= self._limits.min_overlap_chars
        ):
            raise ContinuationDiverged(
                f"continuation restarted the answer ({matched[:40]!r}...) and then departed "
                "from it"
            )

    def _check_reworded(self, sentence: str, ended: bool) -> bool:
        """Raise if the continuation's first sentence (or the one after a short preamble:
        "Sure! ...") rewords the partial's first sentence; False to hold more first."""
        core = self._core
        opening, complete = _first_sentence(core[self._top :], True)
        if not complete or opening == core[self._top :] and not core.endswith(opening):
            # The partial is inside its first sentence: compare what there is of both.
            ours = "".join(core[self._top :].lower().split())
            theirs = "".join(self._held.lower().split())[: len(ours) + 2]
            matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
            if len(ours) >= 6 and matcher.ratio() >= 0.75:
                raise ContinuationDiverged(
                    f"continuation restarts the answer reworded ({sentence[:40]!r}...)"
                )
            return True
        candidates = [sentence]
        if len(_units(sentence)) <= 2:
            rest = self._held[len(sentence) :]
            second, done = _first_sentence(rest.lstrip(), ended)
            if not done and len(rest) < len(opening) + 32:
                return False
            candidates.append(second)
        for candidate in candidates:
            if _reworded(opening, candidate) or candidate.strip() == opening:
                raise ContinuationDiverged(
                    f"continuation restarts the answer reworded ({candidate[:40]!r}...)"
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
