"""Splice a continuation onto the partial answer the app already has, without overlap.

Models asked to continue sometimes repeat the last words of the partial text first, or start
the whole answer over. The splicer holds back the start of a continuation while it could
still be such a repeat, then drops the repeated part and forwards the rest. It compares with
whitespace runs collapsed (a repeat may re-flow "\\n\\n" into " ") and only considers repeats
that start at a word boundary of the partial text: at the very beginning (a restart) or
within its last ``max_overlap_chars``.

Held text is bounded by the length of the partial answer itself: a candidate repeat can
never be longer than what it repeats.
"""

from __future__ import annotations

from dataclasses import dataclass


class ContinuationDiverged(Exception):
    """The continuation re-emitted earlier text and then departed from it: unspliceable."""


def _collapse(text: str) -> str:
    return " ".join(text.split()) + (" " if text[-1:].isspace() else "") if text else ""


@dataclass(frozen=True, slots=True)
class SpliceLimits:
    min_overlap_chars: int = 8
    max_overlap_chars: int = 2048
    divergence_chars: int = 32


class ContinuationSplicer:
    """Decides, as continuation text streams in, how much of it repeats the partial answer."""

    __slots__ = (
        "_alive",
        "_best",
        "_completed",
        "_decided",
        "_held",
        "_last_word",
        "_limits",
        "_longest_dead",
        "_matched",
        "_norm",
        "_prev_space",
        "_trailing_ws",
        "dropped_chars",
    )

    def __init__(self, sent: str, limits: SpliceLimits = SpliceLimits()) -> None:
        self._limits = limits
        self._norm = _collapse(sent.lstrip())
        self._trailing_ws = sent[len(sent.rstrip()) :]
        # Length of the final word fragment (0 when the partial ends with whitespace).
        self._last_word = 0 if self._norm.endswith(" ") else len(self._norm.rsplit(" ", 1)[-1])
        self._held: list[str] = []
        self._matched = 0  # collapsed continuation chars compared so far
        self._prev_space = True  # so leading whitespace of the continuation is skipped
        self._alive: list[int] | None = None  # candidate start offsets into _norm
        self._completed: list[int] = []  # overlap lengths (collapsed chars) that fully matched
        self._longest_dead = 0
        self._best = 0
        self._decided = not self._norm
        self.dropped_chars = 0

    @property
    def decided(self) -> bool:
        return self._decided

    def feed(self, text: str) -> str | None:
        """Take the next piece of continuation text; return what may be forwarded now, or
        None while the start of the continuation is still held back."""
        if self._decided:
            return text
        self._held.append(text)
        for ch in text:
            if ch.isspace():
                if self._prev_space:
                    continue
                self._prev_space = True
                ch = " "
            else:
                self._prev_space = False
                if self._alive == []:
                    # Matching ended on whitespace; now that its run is over, decide.
                    return self._decide(final=False)
            if self._alive is None:
                self._alive = self._candidates(ch)
            self._advance(ch)
            if not self._alive and ch != " ":
                return self._decide(final=False)
        return None

    def finish(self) -> str:
        """The continuation ended: release whatever is still held."""
        if self._decided:
            return ""
        return self._decide(final=True)

    def _candidates(self, first: str) -> list[int]:
        """Word-boundary offsets of the partial text where a repeat could start."""
        norm = self._norm
        floor = max(0, len(norm) - self._limits.max_overlap_chars)
        starts = [0] if norm[0] == first else []
        i = norm.find(" " + first, floor - 1 if floor else 0)
        while i != -1:
            starts.append(i + 1)
            i = norm.find(" " + first, i + 1)
        return starts

    def _advance(self, ch: str) -> None:
        norm = self._norm
        m = self._matched
        survivors: list[int] = []
        assert self._alive is not None
        for start in self._alive:
            pos = start + m
            if norm[pos] == ch:
                if pos + 1 == len(norm):
                    self._completed.append(m + 1)
                else:
                    survivors.append(start)
            elif m > self._longest_dead:
                self._longest_dead = m
        self._alive = survivors
        self._matched = m + 1

    def _decide(self, *, final: bool) -> str:
        self._decided = True
        held = "".join(self._held)
        self._held = []
        limits = self._limits
        # A tail repeat must be long enough not to be natural text. Two short repeats count
        # at any length: a restart that re-emits all of a short partial answer, and a repeat
        # of the partial's trailing word fragment ("the capi" + "capital"), since a natural
        # continuation never starts by doubling the word it is in the middle of.
        whole = len(self._norm)
        exempt = {whole, self._last_word}
        best = max(
            (n for n in self._completed if n >= limits.min_overlap_chars or n in exempt),
            default=0,
        )
        if best == 0 and final and self._alive and self._matched >= limits.min_overlap_chars:
            # The continuation re-emitted earlier text and stopped there: nothing new.
            self.dropped_chars = len(held)
            return ""
        if best == 0:
            if self._longest_dead >= limits.divergence_chars:
                raise ContinuationDiverged(
                    f"continuation repeated {self._longest_dead} chars of earlier text, "
                    "then departed from it"
                )
            return held
        # Map `best` collapsed chars back onto the raw held text (skipping leading space).
        seen = 0
        prev_space = True
        cut = len(held)
        for idx, ch in enumerate(held):
            if ch.isspace():
                if prev_space:
                    continue
                prev_space = True
            else:
                prev_space = False
            seen += 1
            if seen == best:
                cut = idx + 1
                break
        if prev_space:
            # The overlap ended inside a whitespace run. If the run starts with the partial
            # text's own trailing whitespace, only that much is repeated ("echo?\n" +
            # "\nNext"); otherwise the repeat re-flowed it and owns the whole run.
            run_end = cut
            while run_end < len(held) and held[run_end].isspace():
                run_end += 1
            start = cut - 1
            run = held[start:run_end]
            cut = start + len(self._trailing_ws) if run.startswith(self._trailing_ws) else run_end
        self.dropped_chars = cut
        return held[cut:]
