"""The part of recovery every typed-event API shares: one text answer, continued by a
resume and spliced so the app gets each character once.

Anthropic Messages (``relay.messages``) and OpenAI Responses (``relay.responses``) wrap
their text in different events, but the rules under the events are the same as for chat
completions (``relay.delivery``): the partial answer is what a continuation extends, the
splicer drops the start of the continuation that repeats it, and a chunk counts as one
token. ``TextAnswer`` holds that state; ``SplicedText`` runs one continuation's text
through the splicer. ``ReceivedText`` and ``check_added_text`` serve chat completions too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from intact.config import RecoveryConfig
from intact.recovery.splice import ContinuationDiverged, ContinuationSplicer, SpliceLimits
from intact.relay.sinks import AppSink
from intact.resilience import classify

# A continuation asks for at least this many tokens: OpenAI's floor for max_output_tokens,
# and enough for the splicer to tell a restated tail from new text. intact stops forwarding
# at the app's own limit.
CONTINUATION_MIN_TOKENS = 16

# Modes whose continuation carries the partial text; "prefix" has no meaning outside chat
# completions and is served as "prefill" (the partial as the final assistant turn).
SPLICE_MODES = frozenset({"prefill", "prefix", "instruct"})


class ReceivedText:
    """Text received piece by piece, joined only when it is read."""

    __slots__ = ("chars", "parts", "ws_tail")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.chars = 0
        # Pieces (tokens) that end in whitespace at the end of the text: what a prefill that
        # strips trailing whitespace makes the model generate again.
        self.ws_tail = 0

    def add(self, text: str) -> None:
        if not text:
            return
        parts = self.parts
        parts.append(text)
        if len(parts) >= 32:
            # One small string per token costs ~60 bytes each on a long, slow stream.
            self.parts = ["".join(parts)]
        self.chars += len(text)
        if text.isspace():
            self.ws_tail += 1
        else:
            self.ws_tail = 1 if text[-1].isspace() else 0

    def value(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""


def splice_limits(recovery: RecoveryConfig) -> SpliceLimits:
    """The splicer's bounds from the ``[recovery]`` settings."""
    return SpliceLimits(
        min_overlap_chars=recovery.min_overlap_chars,
        max_overlap_chars=recovery.max_overlap_chars,
        divergence_chars=recovery.divergence_chars,
    )


def splice_mode(mode: str) -> str:
    return "prefill" if mode == "prefix" else mode if mode in SPLICE_MODES else "instruct"


class TextAnswer:
    """What the app has of one text answer: its text, the tokens it took, and the limits
    that decide whether it can still be continued."""

    def __init__(self, sink: AppSink, recovery: RecoveryConfig, token_limit: int | None) -> None:
        self.sink = sink
        self.recovery = recovery
        self.token_limit = token_limit
        self.text = ReceivedText()
        self.tokens_delivered = 0  # events of every kind the app got that carry a token
        self.answer_tokens = 0  # of which answer text
        self.reasoning_sent = False  # thinking / reasoning reached the app
        self.limits = splice_limits(recovery)

    @property
    def answer_chars(self) -> int:
        return self.text.chars

    @property
    def content_chars(self) -> int:
        return self.text.chars

    def content(self) -> str:
        return self.text.value()

    def record_text(self, text: str, tokens: int = 1) -> None:
        self.text.add(text)
        self.tokens_delivered += tokens
        self.answer_tokens += tokens

    def budget_spent(self) -> bool:
        limit = self.token_limit
        return limit is not None and self.tokens_delivered >= limit

    def common_refusal(self, mode: str, *, answer_started: bool) -> str | None:
        """Why no API could continue this answer in ``mode`` (None: it can be)."""
        if mode == "off":
            return (
                "resuming is off for this request (intact-resume: off, or a resume mode "
                "its upstream does not support)"
            )
        if self.text.chars > self.recovery.max_partial_chars:
            return "the partial answer exceeds recovery.max_partial_chars"
        if mode == "restart" and answer_started:
            return "resume mode 'restart' cannot continue an answer the app already has"
        return None

    def continuation(
        self, base_body: Mapping[str, Any], mode: str, instruct_prompt: str, limit_key: str
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The turns a continuation in ``mode`` adds (the partial as the assistant's, then,
        in ``instruct``, the instruction as the user's) and its output limit: what the app's
        ``limit_key`` has left, at least CONTINUATION_MIN_TOKENS (None: the app set none)."""
        sent, generated = self.continuation_prompt(mode)
        turns: list[dict[str, Any]] = [{"role": "assistant", "content": sent}]
        if splice_mode(mode) == "instruct":
            turns.append({"role": "user", "content": instruct_prompt})
        limit = max_tokens_after(base_body, limit_key, generated)
        return turns, None if limit is None else max(limit, CONTINUATION_MIN_TOKENS)

    def continuation_prompt(self, mode: str) -> tuple[str, int]:
        """(the partial text a continuation in ``mode`` carries, the tokens already
        generated that its output budget loses)."""
        partial = self.content()
        sent = ContinuationSplicer(partial, self.limits, mode=splice_mode(mode)).prompt_text
        generated = self.tokens_delivered
        if len(sent) < len(partial):
            generated = max(0, generated - self.text.ws_tail)  # stripped whitespace, again
        return sent, generated


class SplicedText:
    """One continuation's text, spliced onto the partial answer the app has."""

    __slots__ = ("_held_pieces", "dropped_pieces", "mode", "piece_ends", "splicer")

    def __init__(self, answer: TextAnswer, mode: str) -> None:
        self.mode = splice_mode(mode)
        self.splicer = ContinuationSplicer(answer.content(), answer.limits, mode=self.mode)
        self._held_pieces: list[int] = []  # lengths of the pieces held back
        self.dropped_pieces = 0  # pieces wholly inside the dropped repeat
        # Where each token of the last release ends in the released text (one per piece):
        # a release of held pieces is several tokens, and may be cut to an output budget.
        self.piece_ends: list[int] = []

    @property
    def decided(self) -> bool:
        return self.splicer.decided

    def feed(self, text: str) -> tuple[str, int]:
        """(text to forward now, tokens it stands for); raises UpstreamFailure on
        divergence."""
        splicer = self.splicer
        if splicer.decided:
            self.piece_ends = [len(text)]
            return text, 1
        self._held_pieces.append(len(text))
        try:
            released = splicer.feed(text)
        except ContinuationDiverged as exc:
            raise classify.diverged(str(exc)) from None
        if released is None:
            return "", 0
        return released, self._release()

    def finish(self) -> tuple[str, int]:
        """The continuation ended: what is still held, and its tokens."""
        if self.splicer.decided:
            return "", 0
        try:
            tail = self.splicer.finish()
        except ContinuationDiverged as exc:
            raise classify.diverged(str(exc)) from None
        return tail, self._release()

    def _release(self) -> int:
        end = 0
        tokens = 0
        dropped = self.splicer.dropped_chars
        self.piece_ends = []
        for length in self._held_pieces:
            end += length
            if end > dropped:
                tokens += 1
                self.piece_ends.append(end - dropped)  # the released text is held[dropped:]
            else:
                self.dropped_pieces += 1
        self._held_pieces = []
        return tokens

    def first_tokens(self, text: str, tokens: int, room: int) -> tuple[str, int]:
        """The first `room` tokens of the last release (`text`, `tokens`)."""
        if tokens <= room or len(self.piece_ends) != tokens:
            return text, tokens
        return (text[: self.piece_ends[room - 1]] if room > 0 else ""), max(0, room)


def max_tokens_after(body: Mapping[str, Any], key: str, generated: int) -> int | None:
    """A continuation's output limit: the app's ``key`` less what was already generated."""
    limit = body.get(key)
    if isinstance(limit, int) and not isinstance(limit, bool) and generated:
        return max(1, limit - generated)
    return None


# How a finished text may end: a sentence, a clause in brackets or quotes, markup, a line.
_FINISHED_ENDS = tuple(".!?。！？…)]}\"'`*>|")


def looks_finished(partial: str) -> bool:
    """Whether the partial answer ends where a whole answer could (a sentence's end, a
    closing fence or bracket, a line), not inside a sentence ("…the dance of")."""
    end = partial.rstrip(" \t")
    return not end or end.endswith("\n") or end.endswith(_FINISHED_ENDS)


def check_added_text(
    mode: str, new_tokens: int, partial: str, *, length_stop: bool, budget_left: bool
) -> None:
    """A continuation that ends without adding a token to the answer. At a length limit the
    app's budget has not reached, it spent its tokens restating; in ``instruct``, after a
    partial that stops inside a sentence, the model restated the partial and stopped (seen on
    a real model). Ending there would close the answer where it broke, as if whole: raise a
    divergence instead (retried, then an explicit error). After a partial that looks
    finished, or a prefill whose echo is all it sends, the partial was the whole answer and
    only its ending was lost: that ends cleanly."""
    if new_tokens:
        return
    if length_stop and budget_left:
        raise classify.diverged("the continuation spent its tokens restating the partial answer")
    if splice_mode(mode) == "instruct" and not looks_finished(partial):
        raise classify.diverged(
            "the continuation only restated the partial answer, which stops mid-sentence"
        )
