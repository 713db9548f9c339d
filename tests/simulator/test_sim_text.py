"""The simulated model's words: deterministic prose, tokens, tool calls and continuations."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from intact.simulator import expected_answer
from intact.simulator.text import (
    MAX_ANSWER_TOKENS,
    MIN_ANSWER_TOKENS,
    REPEAT_MAX_CHARS,
    REPEAT_MIN_CHARS,
    VOCABULARY,
    Answer,
    Completion,
    ContinuationQuirks,
    answer_for,
    complete,
    continue_answer,
    prompt_tokens,
)

NO_QUIRKS = ContinuationQuirks()
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
    messages: list[dict[str, Any]],
    partial: str,
    *,
    max_tokens: int | None = None,
    quirks: ContinuationQuirks = NO_QUIRKS,
    seed: int = 0,
) -> Completion:
    return continue_answer(
        messages,
        answer_for(messages),
        partial,
        max_tokens=max_tokens,
        quirks=quirks,
        rng=random.Random(seed),
    )


def fully_inside(tokens: tuple[str, ...], length: int) -> int:
    count, end = 0, 0
    for token in tokens:
        end += len(token)
        if end > length:
            break
        count += 1
    return count


# --- determinism -----------------------------------------------------------------------------


def test_same_conversation_gives_same_text_in_another_process() -> None:
    messages = conversation("Tell me about rivers.")
    script = (
        "import json, sys; from intact.simulator import expected_answer; "
        "print(json.dumps(expected_answer(json.loads(sys.argv[1])).content))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(messages)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
        timeout=30,
    )
    assert json.loads(out.stdout) == expected_answer(messages).content


def test_different_conversations_give_different_text() -> None:
    texts = {answer_for(conversation(f"question {i}")).text for i in range(50)}
    assert len(texts) == 50


def test_answer_depends_on_every_message_not_just_the_last() -> None:
    a = [{"role": "system", "content": "A"}, {"role": "user", "content": "hi"}]
    b = [{"role": "system", "content": "B"}, {"role": "user", "content": "hi"}]
    assert answer_for(a).text != answer_for(b).text


def test_content_parts_and_plain_strings_are_the_same_conversation() -> None:
    plain = [{"role": "user", "content": "hello there"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    assert answer_for(plain).text == answer_for(parts).text


# --- prose and tokens ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_answer_is_between_30_and_250_tokens(text: str) -> None:
    assert MIN_ANSWER_TOKENS <= len(answer_for(conversation(text)).tokens) <= MAX_ANSWER_TOKENS


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_tokens_are_words_with_leading_whitespace_and_long_words_split_in_two(text: str) -> None:
    tokens = answer_for(conversation(text)).tokens
    assert not tokens[0][0].isspace()
    words: list[list[str]] = []
    for i, token in enumerate(tokens):
        body = token.lstrip(" \n")
        assert body
        assert not any(c.isspace() for c in body)
        if i == 0 or token[0].isspace():
            assert i == 0 or token[: len(token) - len(body)] in (" ", "\n\n")
            words.append([token])
        else:
            words[-1].append(token)  # the second half of a long word
    for pieces in words:
        letters = len("".join(pieces).strip().rstrip(",.?"))
        if letters > 7:
            assert len(pieces) == 2
            assert len(pieces[0].strip()) == (letters + 1) // 2
        else:
            assert len(pieces) == 1


def test_prose_reads_like_sentences_and_paragraphs() -> None:
    text = "\n\n".join(answer_for(conversation(f"essay {i}")).text for i in range(40))
    sentences = re.findall(r"[^.?]+[.?]", text)
    assert len(sentences) > 100
    for sentence in sentences:
        words = sentence.split()
        assert 6 <= len(words) <= 20, sentence
        assert words[0][0].isupper(), sentence
    assert "?" in text
    assert "," in text
    assert "\n\n" in text.replace("\n\n", "", 39)  # paragraphs inside answers too


def test_prose_never_repeats_a_word_or_phrase_immediately() -> None:
    for i in range(200):
        words = [w.strip(",.?").lower() for w in answer_for(conversation(str(i))).text.split()]
        for j in range(1, len(words)):
            assert words[j] != words[j - 1], " ".join(words[j - 3 : j + 2])
            if j >= 3:
                assert words[j - 1 : j + 1] != words[j - 3 : j - 1]


def test_vocabulary_has_hundreds_of_words_that_answers_actually_use() -> None:
    assert len(VOCABULARY) >= 400
    used: set[str] = set()
    for i in range(300):
        used.update(w.strip(",.?").lower() for w in answer_for(conversation(str(i))).text.split())
    assert len(used) >= 350
    assert used <= VOCABULARY


def test_max_tokens_truncates_with_finish_length() -> None:
    answer = answer_for(conversation("truncate me"))
    cut = complete(answer, 5)
    assert cut.tokens == answer.tokens[:5]
    assert cut.finish_reason == "length"
    assert complete(answer, len(answer.tokens)).finish_reason == "stop"
    assert complete(answer, None).tokens == answer.tokens


def test_prompt_tokens_count_words_plus_three_per_message() -> None:
    assert prompt_tokens([{"role": "user", "content": "one two three"}]) == 6
    assert prompt_tokens(conversation("a b")) == (3 + 3) + (2 + 3)


# --- continuations ---------------------------------------------------------------------------


def test_continuation_from_every_cut_completes_the_answer() -> None:
    messages = conversation("continue from anywhere")
    full = answer_for(messages).text
    for cut in range(len(full) + 1):
        rest = continuation(messages, full[:cut])
        assert full[:cut] + rest.text == full, cut
        assert rest.finish_reason == "stop"
        assert rest.echoed == 0


def test_continuation_first_token_is_trimmed_at_a_mid_token_cut() -> None:
    messages = conversation("trim")
    answer = answer_for(messages)
    cut = len(answer.tokens[0]) + 2  # two characters into the second token
    rest = continuation(messages, answer.text[:cut])
    assert rest.tokens[0] == answer.tokens[1][2:]
    assert rest.tokens[1:] == answer.tokens[2:]


def test_continuation_max_tokens_shrunk_by_tokens_already_generated_matches_uninterrupted() -> None:
    messages = conversation("shrink identity")
    answer = answer_for(messages)
    for limit in (1, 7, 20, len(answer.tokens) - 1, len(answer.tokens), 500):
        uninterrupted = complete(answer, limit)
        for cut in range(len(uninterrupted.text) + 1):
            partial = uninterrupted.text[:cut]
            generated = fully_inside(answer.tokens, cut)
            rest = continuation(messages, partial, max_tokens=limit - generated)
            assert partial + rest.text == uninterrupted.text, (limit, cut)
            assert rest.finish_reason == uninterrupted.finish_reason, (limit, cut)


def test_continuation_of_unknown_text_is_a_fresh_deterministic_one() -> None:
    messages = conversation("fresh")
    first = continuation(messages, "Something the model never said", seed=1)
    again = continuation(messages, "Something the model never said", seed=2)
    other = continuation(messages, "Something else entirely", seed=1)
    assert first.text == again.text
    assert first.text != other.text
    assert first.text.startswith(" ")
    assert first.finish_reason == "stop"
    assert not answer_for(messages).text.startswith(first.text.strip())


def test_repeat_quirk_repeats_ten_to_forty_chars_of_the_tail_from_a_word_boundary() -> None:
    messages = conversation("repeat the tail")
    full = answer_for(messages).text
    always_repeat = ContinuationQuirks(repeat_prob=1.0)
    for cut in range(1, min(len(full), 300)):
        partial = full[:cut]
        rest = continuation(messages, partial, quirks=always_repeat, seed=cut)
        echoed = "".join(rest.tokens[: rest.echoed])
        assert partial.endswith(echoed), cut
        start = len(partial) - len(echoed)
        assert start == 0 or partial[start - 1].isspace(), cut
        if len(partial) >= REPEAT_MIN_CHARS:
            assert len(echoed) >= REPEAT_MIN_CHARS, cut
        else:
            assert echoed == partial
        words_fit = any(
            REPEAT_MIN_CHARS <= len(partial) - m.end() <= REPEAT_MAX_CHARS
            for m in re.finditer(r"\s+", partial)
        )
        if words_fit:
            assert len(echoed) <= REPEAT_MAX_CHARS, cut
        assert "".join(rest.tokens[rest.echoed :]) == full[cut:]


def test_whitespace_variation_changes_only_whitespace_of_the_repeated_tail() -> None:
    messages = conversation("vary whitespace")
    full = answer_for(messages).text
    quirks = ContinuationQuirks(repeat_prob=1.0, whitespace_variation_prob=1.0)
    for cut in range(60, 200):
        partial = full[:cut]
        rest = continuation(messages, partial, quirks=quirks, seed=cut)
        echoed = "".join(rest.tokens[: rest.echoed])
        words = echoed.split()
        assert words == partial.split()[-len(words) :], cut
        if len(words) >= 2:
            assert not partial.endswith(echoed), cut
        assert "".join(rest.tokens[rest.echoed :]) == full[cut:]


def test_restart_quirk_starts_the_answer_over() -> None:
    messages = conversation("restart")
    answer = answer_for(messages)
    partial = answer.text[:50]
    rest = continuation(messages, partial, quirks=ContinuationQuirks(restart_prob=1.0))
    assert rest.text == answer.text
    assert rest.echoed == fully_inside(answer.tokens, 50)


def test_echoed_tokens_do_not_count_against_max_tokens() -> None:
    messages = conversation("free echoes")
    answer = answer_for(messages)
    partial = answer.text[:60]
    generated = fully_inside(answer.tokens, 60)
    restart = continuation(
        messages, partial, max_tokens=3, quirks=ContinuationQuirks(restart_prob=1.0)
    )
    assert restart.tokens == answer.tokens[: generated + 3]
    repeat = continuation(
        messages, partial, max_tokens=3, quirks=ContinuationQuirks(repeat_prob=1.0)
    )
    assert len(repeat.tokens) - repeat.echoed == 3


def test_empty_partial_gets_the_whole_answer_whatever_the_quirks() -> None:
    messages = conversation("empty prefill")
    quirks = ContinuationQuirks(repeat_prob=1.0, restart_prob=1.0)
    assert continuation(messages, "", quirks=quirks).text == answer_for(messages).text


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


def test_tool_calls_are_deterministic() -> None:
    messages = conversation("weather")
    one = expected_answer(messages, tools=[WEATHER_TOOL])
    two = expected_answer(messages, tools=[WEATHER_TOOL])
    assert one == two
    assert one.content is None
    assert one.finish_reason == "tool_calls"


def test_tool_result_is_answered_with_prose() -> None:
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
