"""The splicer: continuation text is joined onto the partial answer without overlap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intact.recovery.splice import ContinuationDiverged, ContinuationSplicer, SpliceLimits
from intact.simulator import expected_answer

DEFAULT_LIMITS = SpliceLimits()


def splice(sent: str, pieces: list[str], limits: SpliceLimits = DEFAULT_LIMITS) -> str:
    sp = ContinuationSplicer(sent, limits)
    out = [sent]
    for piece in pieces:
        got = sp.feed(piece)
        if got:
            out.append(got)
    out.append(sp.finish())
    return "".join(out)


def test_plain_continuation_passes_through() -> None:
    assert splice("The quick brown", [" fox", " jumps."]) == "The quick brown fox jumps."


def test_repeated_tail_is_dropped() -> None:
    assert (
        splice("The quick brown fox", ["quick brown", " fox jumps."])
        == "The quick brown fox jumps."
    )


def test_repeat_of_a_word_cut_in_half_is_dropped() -> None:
    assert (
        splice("Hello there, gener", ["there, gener", "al Kenobi."])
        == "Hello there, general Kenobi."
    )


def test_repeat_with_different_whitespace_is_dropped() -> None:
    sent = "First paragraph ends.\n\nSecond starts"
    assert splice(sent, ["ends. Second starts", " here."]) == sent + " here."


def test_restart_from_the_beginning_is_dropped() -> None:
    sent = "Step one: open the box. Step two"
    assert splice(sent, [sent[:10], sent[10:], ": close it."]) == sent + ": close it."


def test_repeat_of_a_short_trailing_word_fragment_is_dropped() -> None:
    # An instruct-style model restarts the word it was cut in: "capi" + "capital".
    assert splice("It is the capi", ["capital of France."]) == "It is the capital of France."
    assert splice("So I", [" I think so."]) == "So I think so."


def test_short_coincidental_overlap_is_kept() -> None:
    # "to it" is shorter than min_overlap_chars and more than the trailing word: it cannot be
    # told from natural text, so it is kept.
    assert splice("He said no to it", ["to it."]) == "He said no to itto it."


def test_repeat_after_a_leading_space_is_dropped() -> None:
    assert splice("one two three", [" two three", " four"]) == "one two three four"


def test_restart_that_departs_from_sent_text_is_diverged() -> None:
    sent = "The answer depends on three separate factors that we consider"
    with pytest.raises(ContinuationDiverged):
        splice(sent, ["The answer depends on three separate factors, namely cost."])


def test_continuation_that_stops_inside_a_repeat_adds_nothing() -> None:
    sent = "The answer depends on three separate factors that we consider"
    assert splice(sent, ["The answer depends on three separate"]) == sent


def test_overlap_only_within_max_overlap_window_or_from_start() -> None:
    sent = "alpha beta gamma " + "x" * 100 + " delta epsilon"
    limits = SpliceLimits(min_overlap_chars=8, max_overlap_chars=20)
    # "gamma ..." starts too far back to be a tail repeat, and it is not the start.
    out = splice(sent, ["gamma zeta"], limits)
    assert out == sent + "gamma zeta"


def test_short_held_text_is_released_when_the_stream_ends() -> None:
    assert splice("The cat sat on the mat", ["on th"]) == "The cat sat on the maton th"


def test_empty_sent_text_passes_everything() -> None:
    assert splice("", ["Hello", " world"]) == "Hello world"


def _answers() -> st.SearchStrategy[str]:
    words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=3, max_size=30)
    return words.map(lambda w: expected_answer([{"role": "user", "content": w}]).content or "")


def _chunks(text: str, sizes: list[int]) -> list[str]:
    out, i = [], 0
    for size in sizes:
        if i >= len(text):
            break
        out.append(text[i : i + size])
        i += size
    if i < len(text):
        out.append(text[i:])
    return out


def _boundaries(text: str, lo: int, hi: int) -> list[int]:
    return [j for j in range(lo, hi) if j == 0 or (text[j - 1].isspace() and not text[j].isspace())]


@settings(max_examples=400, deadline=None)
@given(
    answer=_answers(),
    cut=st.floats(0.02, 0.98),
    sizes=st.lists(st.integers(1, 12), max_size=60),
    behaviour=st.sampled_from(["none", "repeat", "restart", "repeat_ws", "repeat_word"]),
    pick=st.integers(0, 10**6),
)
def test_spliced_text_equals_the_answer(
    answer: str, cut: float, sizes: list[int], behaviour: str, pick: int
) -> None:
    """Against the simulator's prose: whatever the model repeats, the app gets the answer."""
    k = max(1, int(len(answer) * cut))
    sent, rest = answer[:k], answer[k:]
    if behaviour == "none":
        cont = rest
    elif behaviour == "restart":
        cont = answer
    elif behaviour == "repeat_word":
        # An instruct-style model restarts the word it was cut in.
        fragment = "" if sent[-1].isspace() else sent.split()[-1]
        cont = fragment + rest
    else:
        starts = [j for j in _boundaries(sent, max(0, k - 40), k) if k - j >= 10] or [0]
        j = starts[pick % len(starts)]
        tail = sent[j:]
        if behaviour == "repeat_ws":
            # Re-flow whitespace inside the repeat (not at its very end, where a varied
            # run is indistinguishable from new whitespace).
            body, end = tail.rstrip(), tail[len(tail.rstrip()) :]
            tail = body.replace("\n\n", " ").replace(" ", "  ", 1) + end
        cont = tail + rest
    assert splice(sent, _chunks(cont, sizes)) == answer
