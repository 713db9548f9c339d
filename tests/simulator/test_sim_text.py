"""The simulated model's answers and continuations: deterministic, and as faithful (or as
quirky) as the request's continuation convention makes a real model."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from typing import Any

import pytest

from intact.simulator import expected_answer
from intact.simulator.styles import paraphrase
from intact.simulator.text import (
    MAX_REPEAT_CHARS,
    TEXT_STYLES,
    Answer,
    Completion,
    ContinuationQuirks,
    Variant,
    answer_for,
    complete,
    continue_answer,
    prompt_tokens,
)
from intact.simulator.tokenizer import tokenize

NO_QUIRKS = ContinuationQuirks()
EVERY_QUIRK = ContinuationQuirks(
    repeat_prob=1.0, restart_prob=1.0, paraphrase_prob=1.0, whitespace_variation_prob=1.0
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        },
    },
}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time"}}


def conversation(text: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": text},
    ]


def continuation(
    answer: Answer,
    partial: str,
    *,
    kind: str = "prefill",
    max_tokens: int | None = None,
    quirks: ContinuationQuirks = NO_QUIRKS,
    seed: int = 0,
    partial_reasoning: str = "",
) -> Completion:
    return continue_answer(
        answer,
        partial,
        kind=kind,
        max_tokens=max_tokens,
        quirks=quirks,
        rng=random.Random(seed),
        partial_reasoning=partial_reasoning,
    )


def prose(text: str) -> Answer:
    return answer_for(conversation(text))


def styled(text: str, style: str, **variant: Any) -> Answer:
    return answer_for(conversation(text), variant=Variant(style=style, **variant))


def boundaries(tokens: tuple[str, ...]) -> list[int]:
    """Every chunk boundary of a stream of these tokens, as a character offset."""
    offsets, at = [0], 0
    for token in tokens:
        at += len(token)
        offsets.append(at)
    return offsets


def fully_inside(tokens: tuple[str, ...], length: int) -> int:
    count, end = 0, 0
    for token in tokens:
        end += len(token)
        if end > length:
            break
        count += 1
    return count


def repeated(rest: Completion) -> str:
    return "".join(rest.tokens[: rest.echoed])


# --- determinism -----------------------------------------------------------------------------


def test_same_conversation_gives_same_text_in_another_process() -> None:
    messages = conversation("Tell me about rivers.")
    script = (
        "import json, sys; from intact.simulator import expected_answer; "
        "from intact.simulator.text import Variant; "
        "print(json.dumps([expected_answer(json.loads(sys.argv[1]), variant=Variant(style=s))"
        ".content for s in ('prose', 'code', 'cjk', 'mixed')]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(messages)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
        timeout=30,
    )
    assert json.loads(out.stdout) == [
        expected_answer(messages, variant=Variant(style=style)).content
        for style in ("prose", "code", "cjk", "mixed")
    ]


def test_different_conversations_give_different_text() -> None:
    assert len({prose(f"question {i}").text for i in range(50)}) == 50


def test_answer_depends_on_every_message_not_just_the_last() -> None:
    a = [{"role": "system", "content": "A"}, {"role": "user", "content": "hi"}]
    b = [{"role": "system", "content": "B"}, {"role": "user", "content": "hi"}]
    assert answer_for(a).text != answer_for(b).text


def test_content_parts_and_plain_strings_are_the_same_conversation() -> None:
    plain = [{"role": "user", "content": "hello there"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    assert answer_for(plain).text == answer_for(parts).text


def test_max_tokens_truncates_with_finish_length() -> None:
    answer = prose("truncate me")
    cut = complete(answer, 5)
    assert cut.tokens == answer.tokens[:5]
    assert cut.finish_reason == "length"
    assert complete(answer, len(answer.tokens)).finish_reason == "stop"
    assert complete(answer, None).tokens == answer.tokens


def test_prompt_tokens_count_content_tokens_plus_three_per_message_and_the_answer() -> None:
    assert prompt_tokens([{"role": "user", "content": "one two, three."}]) == (5 + 3) + 3
    assert prompt_tokens(conversation("a b")) == (4 + 3) + (2 + 3) + 3


def test_a_prefill_counts_exactly_its_partials_tokens_more_than_the_original() -> None:
    answer = prose("count me")
    partial = {"role": "assistant", "content": "".join(answer.tokens[:17])}
    original = prompt_tokens(conversation("count me"))
    assert prompt_tokens([*conversation("count me"), partial], continues_final=True) == (
        original + 17
    )


# --- reasoning and refusals ------------------------------------------------------------------


def test_reasoning_comes_first_and_counts_against_max_tokens() -> None:
    answer = styled("think", "table", reasoning=True)
    assert answer.reasoning and answer.tokens
    assert answer.reasoning_text.startswith(("Okay,", "Let me", "Hmm,"))
    assert answer.text == styled("think", "table").text  # the same answer after thinking
    whole = complete(answer, None)
    assert (whole.reasoning, whole.tokens) == (answer.reasoning, answer.tokens)
    short = complete(answer, len(answer.reasoning) + 3)
    assert short.reasoning == answer.reasoning and short.tokens == answer.tokens[:3]
    assert short.finish_reason == "length"
    thinking_only = complete(answer, 2)
    assert thinking_only.reasoning == answer.reasoning[:2] and thinking_only.tokens == ()


def test_refusal_is_said_in_refusal_not_content() -> None:
    messages = conversation("something forbidden")
    expected = expected_answer(messages, variant=Variant(refusal=True))
    assert expected.content is None
    assert expected.refusal is not None and expected.refusal.startswith(("I'm sorry", "I can't"))
    assert expected.style == "refusal"
    assert complete(answer_for(messages, variant=Variant(refusal=True)), None).refusal


def test_expected_answer_reports_reasoning_and_the_resolved_style() -> None:
    messages = conversation("expect")
    expected = expected_answer(messages, variant=Variant(style="mixed", reasoning=True))
    answer = answer_for(messages, variant=Variant(style="mixed", reasoning=True))
    assert expected.reasoning == answer.reasoning_text
    assert expected.content == answer.text
    assert expected.style == answer.kind in TEXT_STYLES


# --- prefill and prefix: exact, like a model at temperature 0 --------------------------------


@pytest.mark.parametrize("style", TEXT_STYLES)
@pytest.mark.parametrize("kind", ["prefill", "prefix"])
def test_prefill_resumed_at_any_chunk_boundary_reproduces_the_answer_whatever_the_quirks(
    style: str, kind: str
) -> None:
    answer = styled(f"resume {style}", style)
    for at in boundaries(answer.tokens):
        rest = continuation(answer, answer.text[:at], kind=kind, quirks=EVERY_QUIRK, seed=at)
        assert answer.text[:at] + rest.text == answer.text, at
        assert rest.tokens == answer.tokens[fully_inside(answer.tokens, at) :]
        assert rest.echoed == 0 and rest.finish_reason == "stop"


def test_prefill_from_every_character_cut_completes_the_answer() -> None:
    answer = prose("continue from anywhere")
    for cut in range(len(answer.text) + 1):
        rest = continuation(answer, answer.text[:cut])
        assert answer.text[:cut] + rest.text == answer.text, cut


def test_continuation_first_token_is_trimmed_at_a_mid_token_cut() -> None:
    answer = prose("trim")
    cut = len(answer.tokens[0]) + 2  # two characters into the second token
    rest = continuation(answer, answer.text[:cut])
    assert rest.tokens[0] == answer.tokens[1][2:]
    assert rest.tokens[1:] == answer.tokens[2:]


def test_continuation_max_tokens_shrunk_by_tokens_already_generated_matches_uninterrupted() -> None:
    answer = styled("shrink identity", "code")
    for limit in (1, 7, 20, len(answer.tokens) - 1, len(answer.tokens), 500):
        uninterrupted = complete(answer, limit)
        for cut in range(0, len(uninterrupted.text) + 1, 3):
            partial = uninterrupted.text[:cut]
            generated = fully_inside(answer.tokens, cut)
            rest = continuation(answer, partial, max_tokens=limit - generated)
            assert partial + rest.text == uninterrupted.text, (limit, cut)
            assert rest.finish_reason == uninterrupted.finish_reason, (limit, cut)


def test_prefill_echo_quirk_repeats_the_whole_partial_in_the_first_delta() -> None:
    answer = prose("bare assistant message")
    partial = answer.text[:77]
    echo = ContinuationQuirks(prefill_echo_prob=1.0)
    rest = continuation(answer, partial, quirks=echo, max_tokens=2)
    assert rest.tokens[0] == partial and rest.echoed == 1
    assert len(rest.tokens) == 3  # the echo does not count against max_tokens
    assert "".join(continuation(answer, partial, quirks=echo).tokens[1:]) == answer.text[77:]
    assert continuation(answer, partial, kind="instruct", quirks=echo).echoed == 0


def test_resume_during_reasoning_continues_the_reasoning_then_the_whole_answer() -> None:
    answer = styled("think twice", "cjk", reasoning=True)
    for at in boundaries(answer.reasoning)[1:-1:5]:
        rest = continuation(answer, "", partial_reasoning=answer.reasoning_text[:at])
        assert answer.reasoning_text[:at] + rest.reasoning_text == answer.reasoning_text
        assert rest.tokens == answer.tokens


def test_resume_after_content_started_continues_the_content_without_reasoning_again() -> None:
    answer = styled("think once", "prose", reasoning=True)
    rest = continuation(answer, answer.text[:40], partial_reasoning=answer.reasoning_text)
    assert rest.reasoning == ()
    assert answer.text[:40] + rest.text == answer.text
    limited = continuation(answer, answer.text[:40], max_tokens=4)
    assert len(limited.tokens) == 4 and limited.finish_reason == "length"


def test_continuation_of_unknown_text_is_a_fresh_deterministic_one() -> None:
    answer = prose("fresh")
    first = continuation(answer, "Something the model never said", seed=1)
    again = continuation(answer, "Something the model never said", seed=2)
    other = continuation(answer, "Something else entirely", seed=1)
    assert first.text == again.text
    assert first.text != other.text
    assert first.text.startswith(" ")
    assert first.finish_reason == "stop"
    assert not answer.text.startswith(first.text.strip())


def test_empty_partial_gets_the_whole_answer_whatever_the_quirks() -> None:
    answer = prose("empty prefill")
    assert continuation(answer, "", kind="instruct", quirks=EVERY_QUIRK).text == answer.text


# --- instruct: what real models do when asked to continue ------------------------------------


def test_instruct_without_quirks_continues_cleanly() -> None:
    answer = styled("clean", "json")
    for at in boundaries(answer.tokens)[::7]:
        rest = continuation(answer, answer.text[:at], kind="instruct")
        assert answer.text[:at] + rest.text == answer.text


def test_instruct_repeat_repeats_the_last_one_to_several_words() -> None:
    answer = prose("repeat the tail")
    quirks = ContinuationQuirks(repeat_prob=1.0, max_repeat_words=4)
    lengths = set()
    for cut in range(1, len(answer.text), 3):
        partial = answer.text[:cut]
        rest = continuation(answer, partial, kind="instruct", quirks=quirks, seed=cut)
        echoed = repeated(rest)
        assert echoed and partial.endswith(echoed), cut
        start = cut - len(echoed)
        assert start == 0 or partial[start - 1].isspace(), cut
        words = len(echoed.split())
        assert 1 <= words <= 4 or start == 0, cut
        lengths.add(words)
        assert "".join(rest.tokens[rest.echoed :]) == answer.text[cut:]
    assert {1, 2, 3, 4} <= lengths


def test_instruct_repeat_in_code_repeats_the_whole_last_line() -> None:
    answer = styled("repeat a line", "code")
    quirks = ContinuationQuirks(repeat_prob=1.0)
    for at in boundaries(answer.tokens)[1:]:
        partial = answer.text[:at]
        echoed = repeated(continuation(answer, partial, kind="instruct", quirks=quirks))
        assert partial.endswith(echoed) and echoed.strip(), at
        start = at - len(echoed)
        assert start == 0 or partial[start - 1] == "\n", at  # from the start of a line
        lines = echoed.splitlines(keepends=True)
        assert len(lines) == 1 or (len(lines) == 2 and not lines[1].strip()), at


def test_instruct_repeat_in_cjk_repeats_the_last_few_characters() -> None:
    answer = styled("repeat characters", "cjk")
    quirks = ContinuationQuirks(repeat_prob=1.0)
    sizes = set()
    for cut in range(1, len(answer.text)):
        partial = answer.text[:cut]
        echoed = repeated(continuation(answer, partial, kind="instruct", quirks=quirks, seed=cut))
        assert partial.endswith(echoed) and 1 <= len(echoed) <= MAX_REPEAT_CHARS
        sizes.add(len(echoed))
    assert sizes == set(range(1, MAX_REPEAT_CHARS + 1))


def test_whitespace_variation_changes_only_whitespace_of_the_repeated_words() -> None:
    answer = prose("vary whitespace")
    quirks = ContinuationQuirks(repeat_prob=1.0, whitespace_variation_prob=1.0)
    varied = 0
    for cut in range(60, 200):
        partial = answer.text[:cut]
        rest = continuation(answer, partial, kind="instruct", quirks=quirks, seed=cut)
        echoed = repeated(rest)
        words = echoed.split()
        assert words == partial.split()[-len(words) :], cut
        varied += not partial.endswith(echoed)
        assert "".join(rest.tokens[rest.echoed :]) == answer.text[cut:]
    assert varied > 50


@pytest.mark.parametrize("style", TEXT_STYLES)
def test_instruct_restart_starts_the_answer_over_exactly(style: str) -> None:
    answer = styled("restart", style)
    rest = continuation(
        answer, answer.text[:50], kind="instruct", quirks=ContinuationQuirks(restart_prob=1.0)
    )
    assert rest.text == answer.text
    assert rest.echoed == fully_inside(answer.tokens, 50)


@pytest.mark.parametrize("style", TEXT_STYLES)
def test_instruct_paraphrase_rewords_the_opening_then_goes_on_differently(style: str) -> None:
    answer = styled("reword", style)
    rest = continuation(
        answer, answer.text[:60], kind="instruct", quirks=ContinuationQuirks(paraphrase_prob=1.0)
    )
    # It starts like the answer, reworded: "Here is ..." -> "Here's ...", "{\n" -> "{ ".
    assert any(rest.text.startswith(paraphrase(answer.text[:k])) for k in range(2, 30))
    assert rest.text[:30] != answer.text[:30]
    common = next(i for i, (a, b) in enumerate(zip(rest.text, answer.text, strict=False)) if a != b)
    assert answer.text[common:][:40] not in rest.text  # and then it goes on differently
    assert rest.text != answer.text and len(rest.text) > 60


def test_paraphrase_goes_on_in_the_same_language() -> None:
    reword = ContinuationQuirks(paraphrase_prob=1.0)
    for i in range(20):
        code = styled(f"lang {i}", "code")
        rest = continuation(code, code.text[:40], kind="instruct", quirks=reword)
        fence = re.compile(r"```(\w+)")
        assert fence.findall(rest.text)[:1] == fence.findall(code.text)[:1]
        cjk = styled(f"lang {i}", "cjk")
        rest = continuation(cjk, cjk.text[:20], kind="instruct", quirks=reword)
        kana = re.compile(r"[\u3040-\u30ff]")
        assert bool(kana.search(rest.text)) == bool(kana.search(cjk.text)), (cjk.text, rest.text)


def test_quirk_precedence_is_restart_then_paraphrase_then_repeat() -> None:
    answer = prose("precedence")
    partial = answer.text[:80]
    assert continuation(answer, partial, kind="instruct", quirks=EVERY_QUIRK).text == answer.text
    reword = ContinuationQuirks(repeat_prob=1.0, paraphrase_prob=1.0)
    assert not continuation(answer, partial, kind="instruct", quirks=reword).text.startswith(
        answer.text[:10]
    )


def test_instruct_quirks_happen_at_their_configured_rates() -> None:
    answer = prose("rates")
    quirks = ContinuationQuirks(repeat_prob=0.3, restart_prob=0.1, paraphrase_prob=0.1)
    outcomes = {"restart": 0, "paraphrase": 0, "repeat": 0, "clean": 0}
    partial = answer.text[:90]
    for seed in range(1000):
        rest = continuation(answer, partial, kind="instruct", quirks=quirks, seed=seed)
        if rest.text == answer.text:
            outcomes["restart"] += 1
        elif partial + rest.text == answer.text:
            outcomes["clean"] += 1
        elif rest.text.endswith(answer.text[90:]):
            outcomes["repeat"] += 1
        else:
            outcomes["paraphrase"] += 1
    # restart 10%, then paraphrase 10% of the other 90%, then repeat 30% of the remaining 81%.
    assert 70 <= outcomes["restart"] <= 130
    assert 60 <= outcomes["paraphrase"] <= 120
    assert 200 <= outcomes["repeat"] <= 290


def test_echoed_tokens_do_not_count_against_max_tokens() -> None:
    answer = prose("free echoes")
    partial = answer.text[:60]
    generated = fully_inside(answer.tokens, 60)
    restart = continuation(
        answer, partial, kind="instruct", max_tokens=3, quirks=ContinuationQuirks(restart_prob=1.0)
    )
    assert restart.tokens == answer.tokens[: generated + 3]
    repeat = continuation(
        answer, partial, kind="instruct", max_tokens=3, quirks=ContinuationQuirks(repeat_prob=1.0)
    )
    assert len(repeat.tokens) - repeat.echoed == 3


def test_tokens_of_a_continuation_are_tokens_of_its_text() -> None:
    answer = styled("retokenise", "table")
    rest = continuation(answer, answer.text[:100], kind="instruct", quirks=EVERY_QUIRK)
    assert all(rest.tokens) and tokenize(rest.text) == list(rest.tokens)


# --- tool calls ------------------------------------------------------------------------------


def test_tools_offered_get_one_or_two_calls_with_json_object_arguments() -> None:
    counts = set()
    for i in range(40):
        answer = answer_for(conversation(f"weather {i}"), tools=[WEATHER_TOOL, CLOCK_TOOL])
        assert answer.tokens == ()
        counts.add(len(answer.tool_calls))
        for call in answer.tool_calls:
            assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
            assert call.name in ("get_weather", "get_time")
            arguments = json.loads(call.arguments)
            assert isinstance(arguments, dict)
            assert 2 <= len(arguments) <= 4
            assert all(isinstance(v, str | int | float) for v in arguments.values())
            if call.name == "get_weather":
                assert {"city", "unit"} <= set(arguments)
    assert counts == {1, 2}


def test_tool_calls_are_deterministic_and_ignore_the_text_style() -> None:
    messages = conversation("weather")
    one = expected_answer(messages, tools=[WEATHER_TOOL])
    two = expected_answer(messages, tools=[WEATHER_TOOL], variant=Variant(style="code"))
    assert one == two
    assert one.content is None
    assert one.finish_reason == "tool_calls"


def test_tool_result_is_answered_with_text() -> None:
    call = answer_for(conversation("weather"), tools=[WEATHER_TOOL]).tool_calls[0]
    messages = [
        *conversation("weather"),
        {"role": "assistant", "content": None, "tool_calls": [call.as_dict()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    answer = expected_answer(messages, tools=[WEATHER_TOOL])
    assert answer.content
    assert answer.tool_calls == []
    assert answer.finish_reason == "stop"


def test_tool_choice_none_and_named_function_are_honoured() -> None:
    messages = conversation("weather")
    assert expected_answer(messages, tools=[WEATHER_TOOL], tool_choice="none").content
    named = answer_for(
        messages,
        tools=[WEATHER_TOOL, CLOCK_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert [call.name for call in named.tool_calls] == ["get_time"]


def test_answer_text_property_joins_tokens() -> None:
    assert Answer(tokens=("a", " b")).text == "a b"
