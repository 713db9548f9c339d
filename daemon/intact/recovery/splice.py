"""Splice a continuation onto the partial answer the app already has, dropping only repeats.

What is a repeat depends on what the resume mode makes the model do. Prefill/prefix: the
model continues its own tokens, so its text is new even when it doubles a word ("had had")
or a closing line; only a server echoing the whole partial first (llama-server) is dropped.
Instruct: the model reads the partial and is asked to go on, and often repeats its last words
or lines or starts over; those are dropped (so is a natural doubled word at the seam, the
price of the mode), and a restart that departs from the partial raises ContinuationDiverged.
Lines are compared with their indentation: ``}`` never repeats ``  }``. A prefill prompt
loses its trailing whitespace (tokenizers re-merge it, some APIs reject it), and the
whitespace the model regenerates is not sent twice.
"""

from __future__ import annotations

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


class _Probe:
    """The continuation read from one position, and the repeats of the partial it still
    matches: whole lines (read from the line start, indentation included) or words (read
    from the first non-space)."""

    __slots__ = ("alive", "at", "checked", "indent")

    def __init__(self, at: int, indent: str, alive: list[int]) -> None:
        self.at = at  # where in the held text the probe starts
        self.indent = indent  # the app's own indentation of the line, read before it
        self.alive = alive  # starts in the partial of repeats still matching
        self.checked = 0  # probe chars compared with them so far

    def text(self, held: str) -> str:
        return self.indent + held[self.at :]

    def cut(self, length: int) -> int:
        """Held chars covered by the first `length` chars of the probe."""
        return self.at + length - len(self.indent)


class ContinuationSplicer:
    """Decides, as continuation text streams in, which start of it repeats the partial answer.

    Text is held back only while it could still be a repeat; what is dropped is always a
    prefix of the continuation (``dropped_chars`` long) and everything after it is forwarded.
    """

    __slots__ = (
        "_complete",
        "_core",
        "_decided",
        "_held",
        "_hold_limit",
        "_instruct",
        "_last_alnum",
        "_limits",
        "_line_mode",
        "_probes",
        "_restart",
        "_restart_match",
        "_restart_probe",
        "_tail_ws",
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
        if self._instruct:
            self.prompt_text = sent
            self._tail_ws = sent[len(core) :]
        else:
            self.prompt_text = core or sent
            self._tail_ws = sent[len(self.prompt_text) :]
        floor = max(0, len(core) - limits.max_overlap_chars)
        self._last_alnum = next(
            (i for i in range(len(core) - 1, floor - 1, -1) if core[i].isalnum()), -1
        )
        self._hold_limit = limits.max_overlap_chars + min(len(core), limits.max_overlap_chars)
        self._held = ""
        self._probes: list[_Probe] | None = None  # chosen once the continuation's start is seen
        self._complete: list[tuple[int, _Probe]] = []  # repeats matched to the partial's end
        self._line_mode = False  # the continuation starts on a new line
        self._restart = -1  # where in the partial a restart from the top starts
        self._restart_probe: _Probe | None = None
        self._restart_match: str | None = None  # what a restart matched before departing
        if not self._instruct:
            # Echo: the whole partial, re-sent verbatim. A partial without a letter or digit
            # ("#", "```") may be naturally followed by itself ("## Title", "`````python").
            echo = bool(core) and (len(core) >= limits.min_overlap_chars or self._last_alnum >= 0)
            probe = _Probe(0, "", [0] if echo else [])
            self._probes = [probe]
            if echo:
                self._restart, self._restart_probe = 0, probe
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
        self._probes = None
        self._complete = []
        return held[cut:]

    def _decide(self, end: _End) -> int | None:
        """How many held chars to drop, or None to keep holding. `end` says no more text
        will be held: the stream finished, or the hold bound was hit."""
        probes = self._probes or self._start_probes()
        if not probes:
            # Instruct, only whitespace so far: a repeat may still follow it.
            return None if end is None else self._no_repeat(end)
        held, core = self._held, self._core
        for probe in probes:
            self._advance(probe, probe.text(held))
        if any(probe.alive for probe in probes):
            if end is None:
                return None
            self._abandon(end)
        for start, probe in sorted(self._complete, key=lambda c: c[0]):  # longest first
            text = probe.text(held)
            stop = len(core) - start  # where the repeat ends in the probe
            if stop == len(text) and end is None:
                return None  # whether it ends at a word boundary is not known yet
            after = text[stop] if stop < len(text) else None
            if self._accept(start, probe, after):
                return self._seam(probe.cut(stop), end)
        if self._restart_match is not None and self._diverged(self._restart_match):
            raise ContinuationDiverged(
                f"continuation restarted the answer ({self._restart_match[:40]!r}...) "
                "and then departed from it"
            )
        return self._no_repeat(end)

    def _no_repeat(self, end: _End) -> int | None:
        """The continuation repeats nothing: drop only whitespace the app already has.

        A prefill model never saw the whitespace cut from its prompt, so it regenerates it.
        An instruct model saw it: its leading newlines are its own (a blank line may be
        meant), but a space doubling the partial's trailing space mid-line is not."""
        if self._instruct and "\n" in self._tail_ws + self._held[: self._body()]:
            return 0
        return self._seam(0, end)

    def _body(self) -> int:
        """Where the continuation's first non-space is (its length if none)."""
        return len(self._held) - len(self._held.lstrip())

    def _start_probes(self) -> list[_Probe]:
        """Instruct: once the continuation's first non-space arrives, find the repeats it may
        start: lines read with their indentation, words read from the first non-space."""
        held, core, tail = self._held, self._core, self._tail_ws
        body = self._body()
        if body == len(held):
            return []
        # Lines are read from the continuation's last line start, or from its start (a
        # repeat of the current line may restart it). When the partial ends inside a line's
        # indentation the model may repeat a line with its own indentation or with the rest.
        newline = held.rfind("\n", 0, body)
        self._line_mode = newline >= 0 or "\n" in tail
        indent = tail[tail.rfind("\n") + 1 :] if newline < 0 and "\n" in tail else ""
        probes = [_Probe(newline + 1, "", [])]
        if indent:
            probes.append(_Probe(0, indent, []))
        floor = max(0, len(core) - self._limits.max_overlap_chars)
        for lines in probes:
            first = lines.text(held)[0]
            at = core.find(first, floor)
            while at != -1:
                if (at == 0 or core[at - 1] == "\n") and not self._single_unspaced(at):
                    lines.alive.append(at)
                at = core.find(first, at + 1)
        words = _Probe(body, "", [])
        first = held[body]
        at = core.find(first, floor)
        while at != -1:
            if self._word_repeat_start(at):
                words.alive.append(at)
            at = core.find(first, at + 1)
        # A restart from the top: read from the continuation's first non-space.
        top = len(core) - len(core.lstrip())
        if core[top] == first and top not in words.alive and not self._single_unspaced(top):
            words.alive.insert(0, top)
        self._restart, self._restart_probe = top, words
        self._probes = [*probes, words]
        return self._probes

    def _single_unspaced(self, at: int) -> bool:
        """A repeat of one CJK character: too often a natural double (谢谢) to drop."""
        return at == len(self._core) - 1 and _unspaced(self._core[at])

    def _word_repeat_start(self, at: int) -> bool:
        """Instruct: whether a repeat of the partial's tail may start at a word `at`."""
        core = self._core
        ch = core[at]
        if at == 0 or core[at - 1] == "\n" or ch.isspace() or self._single_unspaced(at):
            return False  # line starts are read with the line probe
        if at > self._last_alnum:
            return False  # no letter or digit: a lone "|", ")" or "-" recurs naturally
        prev = core[at - 1]
        if not (
            prev.isspace() or _unspaced(ch) or _unspaced(prev) or (_word(ch) and not _word(prev))
        ):
            return False
        if self._line_mode:
            # On a new line the first word counts only with its indentation: "}" after
            # "  }" is the next closing line, not a repeat.
            line = core.rfind("\n", 0, at) + 1
            return not core[line:at].isspace()
        return True

    def _advance(self, probe: _Probe, text: str) -> None:
        core = self._core
        done, n = probe.checked, len(text)
        if n <= done:
            return
        alive = []
        for start in probe.alive:
            if n >= len(core) - start:
                if text.startswith(core[start + done :], done):
                    self._complete.append((start, probe))
                    continue
            elif core.startswith(text[done:], start + done):
                alive.append(start)
                continue
            if start == self._restart and probe is self._restart_probe:
                self._restart_match = text[: _common_prefix(text, core[start:])]
        probe.alive = alive
        probe.checked = n

    def _abandon(self, end: _End) -> None:
        """No more text will come to settle the repeats still matching: they are not."""
        restart = self._restart_probe
        if restart is not None and self._restart in restart.alive:
            # The continuation re-emits the partial from the top and stops short of its end.
            text = restart.text(self._held)
            if self._instruct and self._diverged(text):
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
        for probe in self._probes or ():
            probe.alive = []

    def _accept(self, start: int, probe: _Probe, after: str | None) -> bool:
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
        repeat = core[start:]
        if not any(ch.isalnum() for ch in repeat):
            # Only symbols ("  }", "- ", "| ---"): natural text may go on with more of them
            # ("`" + "``python", "| --- " + "| --- |"). Whole lines, and a restart of the word
            # cut short ("    @" + "    @items"), are repeats; a run that may go on is not.
            if "\n" in repeat or after in "\r\n" or after.isalnum():
                return True
            if after == repeat[-1]:
                return False
            return not (after.isspace() and self._tail_ws and len(repeat.split()) > 1)
        if not (_word(last) and _word(after)):
            return True
        # The repeat ends inside a longer word of the continuation ("the" + "ater").
        if self._tail_ws:
            return False  # the partial's last word was complete: this is another word
        if probe.at == 0 and not probe.indent:
            return True  # glued on: the model restarts the word it was cut in ("capi"+"tal")
        return len(core[start:].split()) >= 2

    def _diverged(self, matched: str) -> bool:
        """Instruct: whether a restart re-emitted enough of the partial's start to be one."""
        if not self._instruct:
            return False
        weight = len(matched) + sum(1 for ch in matched if _unspaced(ch))
        if self._line_mode:
            return weight >= self._limits.divergence_chars
        words = len(matched.split()) - (0 if matched[-1:].isspace() else 1)
        return weight >= self._limits.min_overlap_chars or words >= 2

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
