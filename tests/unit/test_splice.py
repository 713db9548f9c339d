"""The splicer: a continuation joins the partial answer with nothing lost and nothing doubled.

Every case runs with the continuation fed whole, one char at a time, and in random pieces.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intact.recovery.splice import ContinuationDiverged, ContinuationSplicer, SpliceLimits

DEFAULT_LIMITS = SpliceLimits()
DIVERGED = "<ContinuationDiverged>"


def splice(
    sent: str,
    pieces: list[str],
    mode: str,
    limits: SpliceLimits = DEFAULT_LIMITS,
) -> str:
    """What the app ends up with; checks the splicer's contract on the way."""
    sp = ContinuationSplicer(sent, limits, mode=mode)
    cont = "".join(pieces)
    bound = limits.max_overlap_chars + min(len(sent.rstrip()), limits.max_overlap_chars)
    forwarded: list[str] = []
    held = 0
    for piece in pieces:
        was_decided = sp.decided
        got = sp.feed(piece)
        if was_decided:
            assert got is piece  # straight through once decided
        if got is None:
            held += len(piece)
            assert held <= bound, "held back more than the bound"
            assert not sp.decided
        else:
            assert sp.decided
            forwarded.append(got)
    forwarded.append(sp.finish())
    assert sp.decided
    # Whatever is dropped is the start of the continuation; the rest is forwarded intact.
    assert "".join(forwarded) == cont[sp.dropped_chars :]
    return sent + "".join(forwarded)


def outcome(sent: str, pieces: list[str], mode: str, limits: SpliceLimits = DEFAULT_LIMITS) -> str:
    try:
        return splice(sent, pieces, mode, limits)
    except ContinuationDiverged:
        return DIVERGED


def chunked(text: str, sizes: list[int]) -> list[str]:
    out, i = [], 0
    for size in sizes:
        if i >= len(text):
            break
        out.append(text[i : i + size])
        i += size
    if i < len(text):
        out.append(text[i:])
    return out


SPLITS: dict[str, Callable[[str], list[str]]] = {"whole": lambda text: [text], "chars": list}

# (partial, continuation, prefill result, instruct result).
# prefill: the model continues its own tokens, so its text is kept, doubles included.
# instruct: the model was shown the partial (without its trailing whitespace); a restatement
# of its tail starts at one of its words or lines, glued to it, and is removed; a
# continuation that opens with the separator goes on from it, so the words after it are the
# text's own, doubles included.
CODE_TAIL = "int main() {\n  if (x) {\n    y();\n  }"
HTML_TAIL = "<div>\n  <div>\n    <p>hi</p>\n  </div>"
RUBY_TAIL = "class A\n  def b\n    1\n  end"
TABLE = "| a | b |\n|---|---|\n| 1 | 2 |"
IF_IF = "if a:\n    return None\nif b:\n"
TOKYO = "东京是日本的首都，也是"
ABOUT = "Let me tell you what the fuss is all about"
PLAN = "Sure! Here is a short plan for the trip. First, we"
PLAN_AGAIN = "Sure! Here's a short plan for the trip. First, we pack."
TEST_CODE = (
    "    def test_create(self):\n"
    "        response = self.client.post('/items', {'name': 'a'})\n"
    "        self.assertEqual(response.status_code, 201)\n"
    "        self.assertEqual(response.json()['name'], 'a')\n"
    "\n"
    "    def test_create_again(self):\n"
    "        response = self.client.post('/items', {'name': 'b'})\n"
    "        self.assertEqual(response.status_code,"
)
TEST_CODE_REST = " 201)\n        self.assertEqual(response.json()['name'], 'b')\n"

REPORTED = {
    "doubled-word": ("She had", " had enough.", "She had had enough.", "She had had enough."),
    "doubled-word-restated": (
        "She had",
        "had had enough.",
        "She hadhad had enough.",
        "She had had enough.",
    ),
    "c-closing-braces": (CODE_TAIL, "\n}\n", CODE_TAIL + "\n}\n", CODE_TAIL + "\n}\n"),
    "html-closing-tags": (
        HTML_TAIL,
        "\n</div>\n",
        HTML_TAIL + "\n</div>\n",
        HTML_TAIL + "\n</div>\n",
    ),
    "ruby-end": (RUBY_TAIL, "\nend\n", RUBY_TAIL + "\nend\n", RUBY_TAIL + "\nend\n"),
    "table-rows": (TABLE, "\n| 3 | 4 |", TABLE + "\n| 3 | 4 |", TABLE + "\n| 3 | 4 |"),
    # A model sent "...if b:" (the newline cut from the prompt) sends it again.
    "repeated-line-then-finish": (
        IF_IF,
        "\n    return None\n",
        IF_IF + "    return None\n",
        IF_IF + "    return None\n",
    ),
    # A model that does not send the newline again: the text is still the next line.
    "repeated-line-without-the-newline": (
        IF_IF,
        "    return None\n",
        IF_IF + "    return None\n",
        IF_IF + "    return None\n",
    ),
    "cjk-repeat": (
        TOKYO,
        "也是世界上最大的城市之一。",
        TOKYO + "也是世界上最大的城市之一。",
        TOKYO + "世界上最大的城市之一。",
    ),
    "one-short-word-repeat": (
        ABOUT,
        "about the weather.",
        ABOUT + "about the weather.",
        ABOUT + " the weather.",
    ),
    "one-short-word-repeat-after-space": (
        ABOUT + " ",
        "about the weather.",
        ABOUT + " about the weather.",
        ABOUT + " the weather.",
    ),
    # The separator first: the model goes on from the cut, and "about about" is its text.
    "one-short-word-after-the-separator": (
        ABOUT,
        " about the weather.",
        ABOUT + " about the weather.",
        ABOUT + " about the weather.",
    ),
    # Seen in chaos runs: prefill must never drop a natural double.
    "prefill-doubled-word": (
        "It seems that",
        " that future holds.",
        "It seems that that future holds.",
        "It seems that that future holds.",
    ),
    # The e2e failure: a restated tail with a doubled space inside.
    "restated-tail-with-a-doubled-space": (
        "One answer, whereas no canvas keeps",
        "answer, whereas no canvas  keeps some stone.",
        "One answer, whereas no canvas keepsanswer, whereas no canvas  keeps some stone.",
        "One answer, whereas no canvas keeps some stone.",
    ),
    "paraphrased-restart": (PLAN, PLAN_AGAIN, PLAN + PLAN_AGAIN, DIVERGED),
    "earlier-line-reused": (
        TEST_CODE,
        TEST_CODE_REST,
        TEST_CODE + TEST_CODE_REST,
        TEST_CODE + TEST_CODE_REST,
    ),
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("mode", ["prefill", "prefix", "instruct"])
@pytest.mark.parametrize("case", REPORTED)
def test_reported_failures(case: str, mode: str, split: str) -> None:
    sent, cont, prefill, instruct = REPORTED[case]
    expected = instruct if mode == "instruct" else prefill
    assert outcome(sent, SPLITS[split](cont), mode) == expected


@settings(max_examples=150, deadline=None)
@given(
    case=st.sampled_from(sorted(REPORTED)),
    mode=st.sampled_from(["prefill", "instruct"]),
    sizes=st.lists(st.integers(1, 9), max_size=40),
)
def test_reported_failures_in_random_pieces(case: str, mode: str, sizes: list[int]) -> None:
    sent, cont, prefill, instruct = REPORTED[case]
    expected = instruct if mode == "instruct" else prefill
    assert outcome(sent, chunked(cont, sizes), mode) == expected


NESTED = "fn a() {\n    if x {\n        if y {\n            z();\n        }"
PROSE = "She said that"
LIST = "Steps:\n- open the box\n- take out the"
JSON_TAIL = '{\n  "items": [\n    {"id": 1},\n    {"id": 2}'
ECHO = "The capital of France is"

ADVERSARIAL = {
    # Code: the next closing lines are new, even when one looks like the last.
    "nested-closing-lines": (
        NESTED,
        "\n    }\n}\n",
        NESTED + "\n    }\n}\n",
        NESTED + "\n    }\n}\n",
    ),
    # After the line break the model regenerates, a line like the last is the next one.
    "nested-closing-line-again-after-the-newline": (
        NESTED,
        "\n        }\n    }\n}\n",
        NESTED + "\n        }\n    }\n}\n",
        NESTED + "\n        }\n    }\n}\n",
    ),
    # Glued to the partial, the last line with its indentation is restated.
    "nested-closing-line-restated": (
        NESTED,
        "        }\n    }\n}\n",
        NESTED + "        }\n    }\n}\n",
        NESTED + "\n    }\n}\n",
    ),
    "closing-line-after-newline": ("x {\n  }\n", "\n}\n", "x {\n  }\n}\n", "x {\n  }\n}\n"),
    "json-next-item": (
        JSON_TAIL,
        ',\n    {"id": 3}\n  ]\n}',
        JSON_TAIL + ',\n    {"id": 3}\n  ]\n}',
        JSON_TAIL + ',\n    {"id": 3}\n  ]\n}',
    ),
    "json-item-repeated-inline": (
        JSON_TAIL,
        '    {"id": 2},\n    {"id": 3}\n  ]\n}',
        JSON_TAIL + '    {"id": 2},\n    {"id": 3}\n  ]\n}',
        JSON_TAIL + ',\n    {"id": 3}\n  ]\n}',
    ),
    "json-item-like-the-last-after-the-newline": (
        JSON_TAIL,
        '\n    {"id": 2},\n    {"id": 3}\n  ]}',
        JSON_TAIL + '\n    {"id": 2},\n    {"id": 3}\n  ]}',
        JSON_TAIL + '\n    {"id": 2},\n    {"id": 3}\n  ]}',
    ),
    "json-member-restated": (
        '{\n  "name": "a",\n  "tags": [',
        '"tags": [\n    "b"\n  ]\n}',
        '{\n  "name": "a",\n  "tags": ["tags": [\n    "b"\n  ]\n}',
        '{\n  "name": "a",\n  "tags": [\n    "b"\n  ]\n}',
    ),
    "json-closing-restated": (
        '{\n  "tags": [\n    "b"\n  ],',
        '],\n  "id": 1\n}',
        '{\n  "tags": [\n    "b"\n  ],],\n  "id": 1\n}',
        '{\n  "tags": [\n    "b"\n  ],\n  "id": 1\n}',
    ),
    # Markdown.
    "list-continues": (
        LIST,
        " manual\n- read it\n",
        LIST + " manual\n- read it\n",
        LIST + " manual\n- read it\n",
    ),
    "list-item-repeated": (
        LIST,
        "- take out the manual\n",
        LIST + "- take out the manual\n",
        LIST + " manual\n",
    ),
    "list-item-like-the-first-is-not-a-restart": (
        "- **Step 1**: open the box\n",
        "- **Step 2**: close the box\n",
        "- **Step 1**: open the box\n- **Step 2**: close the box\n",
        "- **Step 1**: open the box\n- **Step 2**: close the box\n",
    ),
    "table-row-after-newline": (
        TABLE + "\n",
        "| 3 | 4 |\n",
        TABLE + "\n| 3 | 4 |\n",
        TABLE + "\n| 3 | 4 |\n",
    ),
    "table-row-restated-after-newline": (
        TABLE + "\n",
        "| 1 | 2 |\n| 3 | 4 |\n",
        TABLE + "\n| 1 | 2 |\n| 3 | 4 |\n",
        TABLE + "\n| 3 | 4 |\n",
    ),
    "table-row-repeated": (
        TABLE,
        "\n| 1 | 2 |\n| 3 | 4 |\n",
        TABLE + "\n| 1 | 2 |\n| 3 | 4 |\n",
        TABLE + "\n| 1 | 2 |\n| 3 | 4 |\n",
    ),
    # "| fresh | 2 | 2 |": the cell after the separator is the row's own.
    "table-cell-repeated": (
        "| a | b | c |\n|---|---|---|\n| fresh | 2 |",
        " 2 |\n",
        "| a | b | c |\n|---|---|---|\n| fresh | 2 | 2 |\n",
        "| a | b | c |\n|---|---|---|\n| fresh | 2 | 2 |\n",
    ),
    "table-cell-restated": (
        "| a | b | c |\n|---|---|---|\n| fresh | 2 | ",
        "2 | 2 |\n",
        "| a | b | c |\n|---|---|---|\n| fresh | 2 | 2 | 2 |\n",
        "| a | b | c |\n|---|---|---|\n| fresh | 2 | 2 |\n",
    ),
    # The header says how many cells the row has: "|" restated, not "| 0 |".
    "table-pipe-restated": (
        "| a | b | c |\n|---|---|---|\n| 2 | 0 |",
        "| 0 |\n| 3 | 2 | 5 |\n",
        "| a | b | c |\n|---|---|---|\n| 2 | 0 || 0 |\n| 3 | 2 | 5 |\n",
        "| a | b | c |\n|---|---|---|\n| 2 | 0 | 0 |\n| 3 | 2 | 5 |\n",
    ),
    "table-separator-restated": (
        "| a | b | c |\n|---",
        "|---|---|---|\n| 1 | 2 | 3 |\n",
        "| a | b | c |\n|---|---|---|---|\n| 1 | 2 | 3 |\n",
        "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n",
    ),
    "table-separator-continues": (
        "| a | b | c |\n|---|---",
        "|---|\n| 1 | 2 | 3 |\n",
        "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n",
        "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n",
    ),
    # Rows that repeat themselves: how many of them the model restated cannot be told.
    "table-repeated-rows-restated": (
        "| a | b |\n|---|---|\n| 1 | 2 |\n| 1 | 2 |",
        "| 1 | 2 |\n| 1 | 2 |\n| 3 | 4 |\n",
        "| a | b |\n|---|---|\n| 1 | 2 |\n| 1 | 2 || 1 | 2 |\n| 1 | 2 |\n| 3 | 4 |\n",
        DIVERGED,
    ),
    # Natural doubles: kept by both modes once the model has sent the separator.
    "that-that": (PROSE, " that was fine.", PROSE + " that was fine.", PROSE + " that was fine."),
    "that-that-restated": (
        PROSE,
        "that that was fine.",
        PROSE + "that that was fine.",
        PROSE + " that was fine.",
    ),
    # Instruct: a space doubling the partial's trailing space is not sent twice.
    "doubled-space": (
        "The capital of ",
        " France.",
        "The capital of France.",
        "The capital of France.",
    ),
    "newline-after-newline": ("Rows:\n", "\n- a\n", "Rows:\n- a\n", "Rows:\n- a\n"),
    # A restatement may be spaced differently within a line.
    "tail-restated-spaced-differently": (
        "Our answer, whereas no canvas keeps",
        "answer, whereas no canvas  keeps some stone.",
        "Our answer, whereas no canvas keepsanswer, whereas no canvas  keeps some stone.",
        "Our answer, whereas no canvas keeps some stone.",
    ),
    "indentation-is-not-spacing": (
        "def f():\n    x = 1",
        "  x = 1\n",
        "def f():\n    x = 1  x = 1\n",
        "def f():\n    x = 1  x = 1\n",
    ),
    # A word that merely starts like the last one is not a repeat of it.
    "longer-word": ("He is in the", " theater.", "He is in the theater.", "He is in the theater."),
    "longer-word-after-space": (
        "He is in the ",
        "theater.",
        "He is in the theater.",
        "He is in the theater.",
    ),
    # Instruct: a model restarting the word it was cut in.
    "word-restart": (
        "It is the capi",
        "capital of France.",
        "It is the capicapital of France.",
        "It is the capital of France.",
    ),
    "words-restart": (
        "Hello there, gener",
        "there, general Kenobi.",
        "Hello there, generthere, general Kenobi.",
        "Hello there, general Kenobi.",
    ),
    # CJK: a restated character looks just like a doubled one (谢|谢); the partial may show
    # which it is, else the resume is tried again.
    "cjk-one-char": ("谢", "谢你。", "谢谢你。", DIVERGED),
    "cjk-double-seen-before": (
        "他们看看故事。我们看",
        "看故事。",
        "他们看看故事。我们看看故事。",
        "他们看看故事。我们看看故事。",
    ),
    # いい in いい質問 says nothing about the い of いろいろ; the continuation shows い
    # going on as いろ, so it restated い.
    "cjk-double-of-another-word": (
        "いい質問ですね。先生はい",
        "いろいろと問題を作ります。",
        "いい質問ですね。先生はいいろいろと問題を作ります。",
        "いい質問ですね。先生はいろいろと問題を作ります。",
    ),
    "cjk-double-shown-by-the-continuation": (
        "我们看",
        "看故事。他们看看花园。",
        "我们看看故事。他们看看花园。",
        "我们看看故事。他们看看花园。",
    ),
    "cjk-double-not-seen-before": ("我们看", "看故事。", "我们看看故事。", DIVERGED),
    "cjk-restated-before-the-double": (
        "我们看",
        "看看故事。",
        "我们看看看故事。",
        "我们看看故事。",
    ),
    "cjk-restated-after-the-double": ("我们看看", "看故事。", "我们看看看故事。", "我们看看故事。"),
    "cjk-restated-character": (
        "学生们喜欢花园。学生",
        "生们需要时间。",
        "学生们喜欢花园。学生生们需要时间。",
        "学生们喜欢花园。学生们需要时间。",
    ),
    "cjk-restated-clause": (
        "小猫喜欢花园，但是需要",
        "但是需要时间。",
        "小猫喜欢花园，但是需要但是需要时间。",
        "小猫喜欢花园，但是需要时间。",
    ),
    # Reworded restarts: retried, then an explicit error.
    "restart-glued-to-a-sentence": (
        "Of course. The lantern was quiet.",
        "Certainly. A river flows.",
        "Of course. The lantern was quiet.Certainly. A river flows.",
        DIVERGED,
    ),
    "restart-glued-to-a-word": (
        "Of course. The lantern was quiet and the painter",
        "Certainly. A river flows.",
        "Of course. The lantern was quiet and the painterCertainly. A river flows.",
        DIVERGED,
    ),
    "restart-with-a-preamble": (
        "The lantern was very quiet. A river flows past",
        "Sure! The lantern was very quiet. Nobody came.",
        "The lantern was very quiet. A river flows pastSure! The lantern was very quiet. "
        "Nobody came.",
        DIVERGED,
    ),
    "restart-reworded-first-words": (
        "Here is the story. The river flows past | 1 |",
        "Here's the story. Nobody came.",
        "Here is the story. The river flows past | 1 |Here's the story. Nobody came.",
        DIVERGED,
    ),
    "restart-reworded-inside-the-first-sentence": (
        "Sure! Here is",
        "Sure, here's a summary table:\n\n| a |",
        "Sure! Here isSure, here's a summary table:\n\n| a |",
        DIVERGED,
    ),
    "restart-laid-out-differently": (
        '{\n  "topic": "river",\n  "items": [\n    {\n      "id": ',
        '{   "topic": "stone",\n  "items": []\n}',
        '{\n  "topic": "river",\n  "items": [\n    {\n      "id": {   "topic": "stone",\n'
        '  "items": []\n}',
        DIVERGED,
    ),
    "cjk-restart-cut-short": (
        "当然可以。小猫喜欢花园。老师",
        "当然。我们需要时间。",
        "当然可以。小猫喜欢花园。老师当然。我们需要时间。",
        DIVERGED,
    ),
    "cjk-restart-reworded": (
        "好的，下面是我的回答。小猫喜欢花园。老师",
        "好，下面是我的回答。我们需要时间。",
        "好的，下面是我的回答。小猫喜欢花园。老师好，下面是我的回答。我们需要时间。",
        DIVERGED,
    ),
    "restart-reworded-inside-the-first-words": (
        "Every anchor",
        "Each anchor reviews the table.",
        "Every anchorEach anchor reviews the table.",
        DIVERGED,
    ),
    "restart-contracted-inside-the-first-sentence": (
        "Here is",
        "Here's how I see it. The river flows.",
        "Here isHere's how I see it. The river flows.",
        DIVERGED,
    ),
    "cjk-restart-reworded-inside-the-first-sentence": (
        "好的，下",
        "好，下面是我的回答。我们需要时间。",
        "好的，下好，下面是我的回答。我们需要时间。",
        DIVERGED,
    ),
    # A reworded restart that happens to start with the partial's last character.
    "cjk-restart-reworded-after-a-double": (
        "好的，下面是我的回答。小猫好好",
        "好，下面是我的回答。我们需要时间。",
        "好的，下面是我的回答。小猫好好好，下面是我的回答。我们需要时间。",
        DIVERGED,
    ),
    "cjk-stop-restated": (
        "はい、説明します。川は道を見ます。",
        "。町は窓を作ります。",
        "はい、説明します。川は道を見ます。。町は窓を作ります。",
        "はい、説明します。川は道を見ます。町は窓を作ります。",
    ),
    "json-quote-restated": (
        '{\n  "name": "a",\n  "',
        '"tags": []\n}',
        '{\n  "name": "a",\n  ""tags": []\n}',
        '{\n  "name": "a",\n  "tags": []\n}',
    ),
    # A row like the one before it, or after it: how much was restated cannot be told.
    "table-row-like-the-one-before": (
        "| a | b |\n|---|---|\n| 4 | soft |\n| 5 | dry |\n| 5 |",
        "| dry |\n| 5 | dry |\n",
        "| a | b |\n|---|---|\n| 4 | soft |\n| 5 | dry |\n| 5 || dry |\n| 5 | dry |\n",
        DIVERGED,
    ),
    "table-row-like-the-one-after": (
        "| a | b |\n|---|---|\n| grand | short |\n| rustic | invisible |\n",
        "|\n| rustic | invisible |\n| careful | dense |\n",
        "| a | b |\n|---|---|\n| grand | short |\n| rustic | invisible |\n|\n"
        "| rustic | invisible |\n| careful | dense |\n",
        DIVERGED,
    ),
    # A new sentence after the separator is text, whatever its first word.
    "new-sentence-after-the-separator": (
        "Of course. The lantern was quiet.",
        " Certainly, it was.",
        "Of course. The lantern was quiet. Certainly, it was.",
        "Of course. The lantern was quiet. Certainly, it was.",
    ),
    "capital-inside-a-word": (
        "The answer is written in Java",
        "Script and runs in a browser.",
        "The answer is written in JavaScript and runs in a browser.",
        "The answer is written in JavaScript and runs in a browser.",
    ),
    # The whole partial again: llama-server's echo (prefill), a restart (instruct).
    "echo": (ECHO, ECHO + " Paris.", ECHO + " Paris.", ECHO + " Paris."),
    "echo-with-trailing-newlines": (
        "Hello world.\n\n",
        "Hello world.\n\nNext.",
        "Hello world.\n\nNext.",
        "Hello world.\n\nNext.",
    ),
    "echo-of-the-stripped-prompt": (
        "Hello world.\n\n",
        "Hello world.\nNext.",
        "Hello world.\n\nNext.",
        "Hello world.\n\nNext.",
    ),
    "echo-then-nothing": (ECHO, ECHO, ECHO, ECHO),
    # Short partials.
    "one-word-partial": ("Sure", ", here it is.", "Sure, here it is.", "Sure, here it is."),
    "one-word-partial-echoed": (
        "Sure",
        "Sure, here it is.",
        "Sure, here it is.",
        "Sure, here it is.",
    ),
    "one-word-partial-restated": ("Cert", "Certainly.", "CertCertainly.", "Certainly."),
    "one-letter-partial-double-letter": ("l", "lama", "llama", "lama"),
    "symbol-partial-followed-by-itself": ("#", "## Title", "### Title", "### Title"),
    "symbols-starting-like-the-last-line": (
        "| a |\n| ---",
        " | --- |\n",
        "| a |\n| --- | --- |\n",
        "| a |\n| --- | --- |\n",
    ),
    "code-fence-cut-inside": ("Code:\n`", "``python\n", "Code:\n```python\n", "Code:\n```python\n"),
    # Partials that are only whitespace.
    "whitespace-partial": ("\n\n", "Hello", "\n\nHello", "\n\nHello"),
    "whitespace-partial-regenerated": ("\n\n", "\n\nHello", "\n\n\n\nHello", "\n\n\n\nHello"),
    # Empty and whitespace-only continuations.
    "empty": ("Hello.", "", "Hello.", "Hello."),
    "whitespace-only": ("Hello.", "\n\n", "Hello.\n\n", "Hello.\n\n"),
    "whitespace-only-regenerated": ("Hello.\n\n", "\n\n", "Hello.\n\n", "Hello.\n\n"),
    "whitespace-only-different": ("Hello.\n\n", "  ", "Hello.\n\n  ", "Hello.\n\n  "),
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("mode", ["prefill", "instruct"])
@pytest.mark.parametrize("case", ADVERSARIAL)
def test_adversarial(case: str, mode: str, split: str) -> None:
    sent, cont, prefill, instruct = ADVERSARIAL[case]
    expected = instruct if mode == "instruct" else prefill
    assert outcome(sent, SPLITS[split](cont), mode) == expected


@settings(max_examples=150, deadline=None)
@given(
    case=st.sampled_from(sorted(ADVERSARIAL)),
    mode=st.sampled_from(["prefill", "instruct"]),
    sizes=st.lists(st.integers(1, 9), max_size=40),
)
def test_adversarial_in_random_pieces(case: str, mode: str, sizes: list[int]) -> None:
    sent, cont, prefill, instruct = ADVERSARIAL[case]
    expected = instruct if mode == "instruct" else prefill
    assert outcome(sent, chunked(cont, sizes), mode) == expected


# Cases of the previous splicer that still hold (instruct) and what prefill makes of them.
EARLIER = {
    "plain": (
        "The quick brown",
        " fox jumps.",
        "The quick brown fox jumps.",
        "The quick brown fox jumps.",
    ),
    "tail-repeat": (
        "The quick brown fox",
        "quick brown fox jumps.",
        "The quick brown foxquick brown fox jumps.",
        "The quick brown fox jumps.",
    ),
    "tail-repeat-two-words": (
        "one two three",
        "two three four",
        "one two threetwo three four",
        "one two three four",
    ),
    # After the separator the words are the text's own: a refrain, a doubled word.
    "words-again-after-the-separator": (
        "one two three",
        " two three four",
        "one two three two three four",
        "one two three two three four",
    ),
    "trailing-word": ("So I", "I think so.", "So II think so.", "So I think so."),
    "short-tail-repeat": (
        "He said no to it",
        "to it.",
        "He said no to itto it.",
        "He said no to it.",
    ),
    "restart-that-departs": (
        "The answer depends on three separate factors that we consider",
        "The answer depends on three separate factors, namely cost.",
        "The answer depends on three separate factors that we considerThe answer depends on "
        "three separate factors, namely cost.",
        DIVERGED,
    ),
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("mode", ["prefill", "instruct"])
@pytest.mark.parametrize("case", EARLIER)
def test_earlier_cases(case: str, mode: str, split: str) -> None:
    sent, cont, prefill, instruct = EARLIER[case]
    expected = instruct if mode == "instruct" else prefill
    assert outcome(sent, SPLITS[split](cont), mode) == expected


# --- the prompt and the whitespace at the seam ------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "sent", "prompt"),
    [
        ("prefill", "Hello.\n\n", "Hello."),
        ("prefix", "One two ", "One two"),
        ("prefill", "Hello.", "Hello."),
        ("prefill", " \n\n", " \n\n"),  # stripping would leave nothing
        ("prefill", "", ""),
        ("instruct", "Hello.\n\n", "Hello."),
        ("instruct", "| 1 | ", "| 1 |"),
    ],
)
def test_prompt_text_is_the_partial_without_its_trailing_whitespace(
    mode: str, sent: str, prompt: str
) -> None:
    assert ContinuationSplicer(sent, mode=mode).prompt_text == prompt


@pytest.mark.parametrize(
    ("sent", "cont", "expected"),
    [
        ("a\n\n", "\n\nb", "a\n\nb"),  # regenerated exactly: dropped
        ("a\n", "\n\nb", "a\n\nb"),  # one more newline than was cut: that one is kept
        ("a\n\n", "\nb", "a\n\nb"),  # less than was cut: all of it is already there
        ("a\n\n", "b", "a\n\nb"),  # none regenerated: nothing dropped
        ("a ", " b", "a b"),
        ("a ", "\tb", "a \tb"),  # different whitespace is the model's own
    ],
)
@pytest.mark.parametrize("split", SPLITS)
def test_prefill_whitespace_regenerated_after_the_cut_is_not_sent_twice(
    sent: str, cont: str, expected: str, split: str
) -> None:
    assert splice(sent, SPLITS[split](cont), "prefill") == expected


def test_whitespace_only_continuation_is_held_no_longer_than_the_bound() -> None:
    # Each space could still be the start of whitespace the partial ends with (prefill) or
    # lead a repeat (instruct): held, but only up to max_overlap_chars + len("Hello").
    limits = SpliceLimits(max_overlap_chars=16)
    for mode in ("prefill", "instruct"):
        sp = ContinuationSplicer("Hello" + " " * 100, limits, mode=mode)
        released = [sp.feed(" ") for _ in range(200)]
        assert sp.decided
        assert released[: 16 + 5] == [None] * 21
        assert None not in released[21:]
    assert splice("Hello", [" "] * 200, "instruct", limits) == "Hello" + " " * 200


# --- instruct: repeats, restarts, windows ----------------------------------------------------


def test_instruct_restart_reaching_the_cut_is_dropped_and_the_rest_forwarded() -> None:
    sent = "Step one: open the box. Step two"
    for split in SPLITS.values():
        assert splice(sent, split(sent + ": close it."), "instruct") == sent + ": close it."


def test_instruct_restart_that_stops_before_the_cut_cannot_be_placed() -> None:
    sent = "The answer depends on three separate factors that we consider"
    with pytest.raises(ContinuationDiverged):
        splice(sent, ["The answer depends on three separate"], "instruct")
    # prefill never restarts: it is text (however unlikely).
    assert splice(sent, ["The answer"], "prefill") == sent + "The answer"


def test_instruct_restart_sharing_only_a_word_with_the_start_is_text() -> None:
    sent = "The box is open. Then"
    assert splice(sent, [" The lid comes off."], "instruct") == sent + " The lid comes off."


def test_instruct_fragment_of_the_tail_at_the_end_is_kept() -> None:
    # Not a repeat reaching the end of the partial, not a restart: natural text is kept.
    assert splice("The cat sat on the mat", ["on th"], "instruct") == "The cat sat on the maton th"


def test_instruct_tail_repeats_start_within_max_overlap_chars() -> None:
    sent = "alpha beta gamma " + "x" * 100 + " delta epsilon"
    limits = SpliceLimits(max_overlap_chars=20)
    assert splice(sent, ["gamma zeta"], "instruct", limits) == sent + "gamma zeta"
    assert splice(sent, ["delta epsilon zeta"], "instruct", limits) == sent + " zeta"


def test_instruct_prefers_the_longest_repeat() -> None:
    sent = "ha ha"
    assert splice(sent, ["ha ha ha!"], "instruct") == "ha ha ha!"


def test_instruct_repeat_of_the_last_line_with_its_indentation() -> None:
    sent = "a = 1\n  b = 2\n"
    assert splice(sent, ["  b = 2\n  c = 3\n"], "instruct") == "a = 1\n  b = 2\n  c = 3\n"
    # Same text after the line break the model sends again: the next line.
    assert splice(sent, ["\nb = 2\n"], "instruct") == sent + "b = 2\n"
    assert splice(sent, ["\n  b = 2\n"], "instruct") == sent + "  b = 2\n"


def test_instruct_paraphrase_at_a_line_start_needs_divergence_chars() -> None:
    sent = "```python\nimport os\n```\n\nAnd the test:\n"
    # A second code block starts like the first: natural, not a restart.
    assert (
        splice(sent, ["```python\ndef test():\n"], "instruct") == sent + "```python\ndef test():\n"
    )
    long_start = "The configuration file is read once at start-up and then"
    with pytest.raises(ContinuationDiverged):
        splice(long_start + " kept.\n", [long_start[:40] + " reloaded on SIGHUP."], "instruct")


# --- echo of a long partial, bounds, bookkeeping ----------------------------------------------


def test_prefill_echo_of_a_long_partial_in_one_delta_is_dropped() -> None:
    limits = SpliceLimits(max_overlap_chars=64)
    sent = "word " * 100 + "end"
    assert splice(sent, [sent + " more."], "prefill", limits) == sent + " more."


def test_prefill_echo_longer_than_the_bound_in_pieces_is_diverged() -> None:
    # Too long to hold back until the echo is known to be whole; an explicit error beats
    # a doubled answer.
    limits = SpliceLimits(max_overlap_chars=64)
    sent = "word " * 100 + "end"
    with pytest.raises(ContinuationDiverged):
        splice(sent, chunked(sent + " more.", [4] * 200), "prefill", limits)


def test_dropped_chars_counts_the_dropped_start_of_the_continuation() -> None:
    sp = ContinuationSplicer("The quick brown", mode="instruct")
    assert sp.feed("quick") is None
    assert sp.feed(" brown") is None
    assert sp.feed(" fox") == " fox"
    assert sp.dropped_chars == len("quick brown")
    assert sp.finish() == ""


def test_decided_splicer_passes_text_straight_through() -> None:
    sp = ContinuationSplicer("Hello", mode="prefill")
    assert sp.feed(" world") == " world"
    assert sp.decided
    piece = "".join(["!"] * 3)
    assert sp.feed(piece) is piece
    assert sp.dropped_chars == 0


@pytest.mark.parametrize("mode", ["prefill", "instruct"])
def test_empty_partial_is_decided_from_the_start(mode: str) -> None:
    sp = ContinuationSplicer("", mode=mode)
    assert sp.decided
    assert sp.feed("Hello") == "Hello"


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="restart"):
        ContinuationSplicer("x", mode="restart")


def test_a_short_cjk_sentence_arriving_alone_is_not_judged_before_what_follows() -> None:
    """ "东京。" as its own piece, after a partial that opened with 东京: a restart or the
    answer going on ("东京。谢谢…")? Only what follows tells (found by hypothesis)."""
    sent = "东京是日本的首都，也是世界上最大的城市之一。\n\n每天都有很多游客来"
    splicer = ContinuationSplicer(sent, SpliceLimits(), mode="instruct")
    out = [splicer.feed("东京。"), splicer.feed("谢谢你的问题！"), splicer.finish()]
    assert "".join(piece or "" for piece in out) == "东京。谢谢你的问题！"


def test_prefill_drops_the_echo_of_a_partial_that_ends_in_a_symbol() -> None:
    """llama-server's Messages and Responses endpoints echo a prefill before going on: "1. **"
    comes back as "1. **Code" (found on the real model)."""
    splicer = ContinuationSplicer("1. **", SpliceLimits(), mode="prefill")
    out = [splicer.feed(p) for p in ["1. **Code", " Bre", "akers"]] + [splicer.finish()]
    assert "".join(piece or "" for piece in out) == "Code Breakers"


def test_instruct_refuses_a_new_sentence_glued_to_a_word_cut_in_mid_sentence() -> None:
    """ "…the human perception of" + "The sky blue is a beautiful sight, …" is a new text, not
    the rest of the sentence (found on the real model)."""
    sent = (
        "The answer to this question lies in the intricate dance of atmospheric molecules "
        "and the human perception of"
    )
    pieces = ["The", " sky", " blue", " is", " a", " beautiful", " sight", ",", " but", " it"]
    pieces += [" is", " not", " a", " physical", " phenomenon", "."]
    splicer = ContinuationSplicer(sent, SpliceLimits(), mode="instruct")

    def splice_all() -> None:
        for piece in pieces:
            splicer.feed(piece)
        splicer.finish()

    with pytest.raises(ContinuationDiverged):
        splice_all()
    going_on = ContinuationSplicer("The waves of the", SpliceLimits(), mode="instruct")
    assert (going_on.feed(" sea, calm and wide.") or "") + going_on.finish() == (
        " sea, calm and wide."
    )
