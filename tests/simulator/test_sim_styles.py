"""The simulated model's styles and tokens: text a splicer can be fooled by, cut like BPE."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from typing import Any

import pytest

from intact.simulator.styles import VOCABULARY, paraphrase
from intact.simulator.text import (
    MAX_ANSWER_TOKENS,
    MIN_ANSWER_TOKENS,
    STYLES,
    TEXT_STYLES,
    Variant,
    answer_for,
    parse_model,
    request_variant,
    resolve_style,
)
from intact.simulator.tokenizer import is_cjk, tokenize

ANSWERS_PER_STYLE = 60


def conversation(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def texts(style: str, count: int = ANSWERS_PER_STYLE) -> list[str]:
    return [
        answer_for(conversation(f"q{i}"), variant=Variant(style=style)).text for i in range(count)
    ]


# --- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", TEXT_STYLES)
def test_tokens_join_back_to_the_text_and_none_is_empty(style: str) -> None:
    for i in range(20):
        answer = answer_for(conversation(f"t{i}"), variant=Variant(style=style))
        assert all(answer.tokens)
        assert "".join(answer.tokens) == answer.text
        assert tokenize(answer.text) == list(answer.tokens)


def test_tokenizer_cuts_like_bpe_words_with_their_space_and_whitespace_alone() -> None:
    assert tokenize("Here is the plan.") == ["Here", " is", " the", " plan", "."]
    assert tokenize("def f(x):\n    return None\n") == [
        "def", " f", "(x", "):\n", "   ", " return", " None", "\n",
    ]  # fmt: skip
    assert tokenize("    }\n}\n") == ["   ", " }\n", "}\n"]
    assert tokenize("| 1 | 22 |\n|---|---|") == [
        "|", " ", "1", " |", " ", "22", " |\n", "|", "---", "|", "---", "|",
    ]  # fmt: skip
    assert tokenize("Here's 12345") == ["Here", "'s", " ", "123", "45"]


def test_long_words_are_cut_the_same_way_wherever_they_appear() -> None:
    first = tokenize(" extraordinarily")
    assert len(first) >= 2 and all(2 <= len(piece.strip()) <= 6 for piece in first)
    assert tokenize("It was extraordinarily calm.")[2 : 2 + len(first)] == first
    assert tokenize("So, extraordinarily.")[2 : 2 + len(first)] == first


def test_cjk_is_tokenised_as_single_characters_and_pairs() -> None:
    tokens = tokenize("慢慢地看看花园。はい、いろいろ")
    assert "".join(tokens) == "慢慢地看看花园。はい、いろいろ"
    assert all(1 <= len(token) <= 2 for token in tokens)
    assert "。" in tokens  # punctuation never pairs with a character
    assert is_cjk("慢") and is_cjk("は") and is_cjk("，") and not is_cjk("a")


@pytest.mark.parametrize("style", TEXT_STYLES)
def test_answers_are_answer_sized(style: str) -> None:
    for i in range(30):
        tokens = answer_for(conversation(f"size {i}"), variant=Variant(style=style)).tokens
        assert MIN_ANSWER_TOKENS <= len(tokens) <= 2 * MAX_ANSWER_TOKENS, style
        if style == "prose":
            assert len(tokens) <= MAX_ANSWER_TOKENS


def test_whitespace_and_newlines_are_often_tokens_of_their_own() -> None:
    code_tokens = [t for i in range(20) for t in answer_for(
        conversation(f"w{i}"), variant=Variant(style="code")).tokens]  # fmt: skip
    counts = Counter(code_tokens)
    assert counts["\n"] > 20
    assert sum(n for token, n in counts.items() if token.strip(" ") == "") > 50  # indentation


# --- variants --------------------------------------------------------------------------------


def test_model_name_suffixes_pick_the_style_and_behaviours() -> None:
    assert parse_model("sim-1") == Variant()
    assert parse_model("sim-1", default_style="code") == Variant(style="code")
    assert parse_model("sim-1:table") == Variant(style="table")
    assert parse_model("gpt-4o:cjk:reasoning") == Variant(style="cjk", reasoning=True)
    assert parse_model("sim-2:refusal:mixed") == Variant(style="mixed", refusal=True)
    with pytest.raises(ValueError, match=r"'cod' in model 'sim-1:cod'; allowed after ':': prose"):
        parse_model("sim-1:cod")


def test_response_format_asks_for_json_and_a_schema_names_its_keys() -> None:
    assert request_variant("sim-1", {"type": "json_object"}) == Variant(style="json")
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"properties": {"city": {}, "days": {}}}},
    }
    assert request_variant("sim-1:reasoning", schema) == Variant(
        style="json", reasoning=True, json_keys=("city", "days")
    )
    assert request_variant("sim-1:code", {"type": "text"}) == Variant(style="code")
    answer = answer_for(conversation("forecast"), variant=request_variant("sim-1", schema))
    assert list(json.loads(answer.text)) == ["city", "days"]


def test_mixed_picks_every_style_deterministically_per_conversation() -> None:
    picked = Counter()
    for i in range(100):
        messages = conversation(f"mixed {i}")
        mixed = answer_for(messages, variant=Variant(style="mixed"))
        picked[mixed.kind] += 1
        assert mixed.text == answer_for(messages, variant=Variant(style=mixed.kind)).text
        again = answer_for(messages, variant=Variant(style="mixed"))
        assert again.kind == mixed.kind
    assert set(picked) == set(TEXT_STYLES)
    assert set(STYLES) == {*TEXT_STYLES, "mixed"}
    with pytest.raises(ValueError, match="unknown text style"):
        resolve_style("poetry", b"x")


def test_each_style_gives_its_own_text_for_the_same_conversation() -> None:
    messages = conversation("same question")
    assert len({answer_for(messages, variant=Variant(style=s)).text for s in TEXT_STYLES}) == 5


# --- prose -----------------------------------------------------------------------------------


def test_prose_reads_like_sentences_and_paragraphs() -> None:
    text = "\n\n".join(texts("prose", 40))
    sentences = re.findall(r"[^.?]+[.?]", text)
    assert len(sentences) > 100
    for sentence in sentences:
        words = sentence.split()
        assert 1 <= len(words) <= 22, sentence
        assert words[0][0].isupper(), sentence
    assert "?" in text
    assert "," in text
    assert "\n\n" in text.replace("\n\n", "", 39)  # paragraphs inside answers too


def test_prose_has_natural_doubled_words_and_refrains_but_no_stutters() -> None:
    doubled: Counter[str] = Counter()
    refrains = 0
    for text in texts("prose", 200):
        words = [w.strip(",.?").lower() for w in text.split()]
        for a, b in itertools.pairwise(words):
            if a == b:
                doubled[a] += 1
        refrains += len(re.findall(r"(\b\w+ \w+ \w+), \1\b", text, re.IGNORECASE))
    assert set(doubled) <= {"had", "that", "very", "far"}, doubled
    assert all(doubled[word] >= 3 for word in ("had", "that", "very", "far")), doubled
    assert refrains >= 5


def test_vocabulary_has_hundreds_of_words_that_answers_actually_use() -> None:
    assert len(VOCABULARY) >= 400
    used: set[str] = set()
    for text in texts("prose", 300):
        used.update(w.strip(",.?!").lower() for w in text.split())
    assert len(used) >= 350
    assert used <= VOCABULARY


# --- code, tables, CJK, JSON -----------------------------------------------------------------


def test_code_answers_have_a_fenced_block_with_nested_identical_closing_lines() -> None:
    closings: Counter[str] = Counter()
    repeated_lines = 0
    languages = set()
    for text in texts("code"):
        match = re.search(r"\n```(\w+)\n(.*?)\n```\n", text, re.DOTALL)
        assert match, text
        languages.add(match.group(1))
        lines = match.group(2).split("\n")
        closings.update(line for line in lines if line.strip() in ("}", "end", "</div>"))
        counts = Counter(line for line in lines if line.strip())
        repeated_lines += any(n > 1 for n in counts.values())
    assert languages == {"python", "c", "ruby", "html"}
    assert {"}", "    }", "end", "  end", "</div>", "  </div>"} <= set(closings)
    assert repeated_lines > ANSWERS_PER_STYLE // 2
    assert any("        return None" in text for text in texts("code"))


def test_tables_have_markdown_rows_and_lists_with_repeated_cells() -> None:
    rows = 0
    for text in texts("table"):
        lines = text.split("\n")
        table = [line for line in lines if line.startswith("|")]
        assert any(re.fullmatch(r"\|(---\|)+", line) for line in table)
        assert all(line.endswith("|") for line in table)
        rows += sum(1 for line in table if re.fullmatch(r"\| \d \| \d \|", line))
    assert rows > 0
    every = "\n".join(texts("table"))
    assert re.search(r"^- ", every, re.MULTILINE) and re.search(r"^1\. ", every, re.MULTILINE)


def test_cjk_answers_have_no_spaces_and_repeat_characters_and_phrases() -> None:
    doubled = 0
    for text in texts("cjk"):
        assert " " not in text
        assert sum(is_cjk(c) for c in text) > 0.9 * len(text.replace("\n", ""))
        doubled += len(re.findall(r"(.)\1", text))
    assert doubled > ANSWERS_PER_STYLE
    every = "".join(texts("cjk"))
    assert "一步一步" in every and "。" in every and ("いろいろ" in every or "だんだん" in every)


def test_json_answers_are_json_objects_with_repeated_keys_and_closing_lines() -> None:
    for text in texts("json"):
        value = json.loads(text)
        assert isinstance(value, dict)
        assert text.startswith('{\n  "') and text.endswith("\n}")
    every = "\n".join(texts("json"))
    assert every.count('"id":') > 2 * ANSWERS_PER_STYLE
    assert "\n    }," in every and "\n  ]," in every


# --- paraphrase ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opening", "reworded"),
    [
        ("Here is a short answer.", "Here's a short answer."),
        ("Sure! Here is a C function:", "Sure, here's a C function:"),
        ("The river keeps a secret.", "This river keeps a secret."),
        ("Of course.", "Certainly."),
        ("好的，下面是我的回答。", "好，下面是我的回答。"),
        ("はい、説明します。", "はい。説明します。"),
        ("{\n", "{ "),
        ("Your garden grows.", "Sure! Your garden grows."),
    ],
)
def test_paraphrase_makes_one_small_change_to_the_opening(opening: str, reworded: str) -> None:
    assert paraphrase(opening) == reworded
