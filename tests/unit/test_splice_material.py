"""The splicer against real text: answers cut at every point and continued the way each mode's
models continue, must come out exactly as the uninterrupted answer.

The material is ordinary model output (code in several languages, Markdown, JSON, prose with
natural doubled words, Chinese), not text generated to suit the splicer.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intact.recovery.splice import ContinuationDiverged, ContinuationSplicer, SpliceLimits

PYTHON = """Here is a loader that skips bad rows:

```python
def load(path):
    with open(path) as f:
        data = json.load(f)
    if not data:
        return None
    if "items" not in data:
        return None
    return [Item(**row) for row in data["items"]]


class Item:
    def __init__(self, name, price):
        self.name = name
        self.price = price
```

It returns `None` when the file has no items.
"""

C = """int main(void) {
    for (int i = 0; i < n; i++) {
        if (a[i] > max) {
            max = a[i];
        }
    }
    printf("%d\\n", max);
    return 0;
}
"""

HTML = """<ul class="menu">
  <li><a href="/">Home</a></li>
  <li>
    <div class="sub">
      <a href="/docs">Docs</a>
    </div>
  </li>
</ul>
"""

RUBY = """class Stack
  def initialize
    @items = []
  end

  def push(item)
    @items.push(item)
  end

  def pop
    @items.pop
  end
end
"""

MARKDOWN = """## Steps

1. Open the box.
2. Take out the manual.
3. Read the manual.

- **Step 1**: unpack
- **Step 2**: plug in

| Size | Price |
| --- | --- |
| 1 | 2 |
| 3 | 4 |
"""

JSON = """{
  "items": [
    {"id": 1, "tags": ["a", "b"]},
    {"id": 2, "tags": []},
    {"id": 3, "tags": ["a"]}
  ],
  "total": 3
}
"""

PROSE = """By the time the train came she had had enough. He said that that was not \
his problem, and that the timetable was clear. It was, in fact, very very clear. \
The trouble was the weather.

The next morning the weather had changed."""

CHINESE = """东京是日本的首都，也是世界上最大的城市之一。东京有很多著名的景点，例如浅草寺和东京塔。

每天都有很多游客来东京。谢谢你的问题！"""

MATERIAL = {
    "python": PYTHON,
    "c": C,
    "html": HTML,
    "ruby": RUBY,
    "markdown": MARKDOWN,
    "json": JSON,
    "prose": PROSE,
    "chinese": CHINESE,
}
LIMITS = SpliceLimits()


def run(sent: str, pieces: list[str], mode: str) -> tuple[str, int]:
    """(what the app ends up with, chars of the continuation dropped)."""
    sp = ContinuationSplicer(sent, LIMITS, mode=mode)
    out = [sent]
    for piece in pieces:
        got = sp.feed(piece)
        if got is not None:
            out.append(got)
    out.append(sp.finish())
    return "".join(out), sp.dropped_chars


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


def cuts(text: str) -> list[int]:
    return list(range(1, len(text)))


# --- prefill: the model continues its own tokens ---------------------------------------------


def prefill_continuation(answer: str, cut: int) -> tuple[str, str]:
    """(partial the app has, what a prefill model sends): it continues from the prompt,
    which is the partial minus trailing whitespace, so it regenerates that whitespace."""
    sent = answer[:cut]
    prompt = ContinuationSplicer(sent, LIMITS, mode="prefill").prompt_text
    return sent, answer[len(prompt) :]


@pytest.mark.parametrize("name", MATERIAL)
def test_prefill_continuation_from_every_cut_is_exact(name: str) -> None:
    answer = MATERIAL[name]
    for cut in cuts(answer):
        sent, cont = prefill_continuation(answer, cut)
        assert run(sent, [cont], "prefill")[0] == answer, f"cut at {cut}"


@pytest.mark.parametrize("name", MATERIAL)
def test_prefill_echo_of_the_whole_partial_from_every_cut_is_dropped(name: str) -> None:
    answer = MATERIAL[name]
    for cut in cuts(answer):
        sent, cont = prefill_continuation(answer, cut)
        if len(sent.strip()) < LIMITS.min_overlap_chars:
            continue  # short partials: see the unit tests
        prompt = answer[: len(answer) - len(cont)]
        assert run(sent, [prompt + cont], "prefill")[0] == answer, f"cut at {cut}"
        # Some servers echo the partial as they were given it, some as it was sent.
        assert run(sent, [sent + answer[cut:]], "prefill")[0] == answer, f"cut at {cut}"


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(MATERIAL)),
    where=st.floats(0, 1),
    sizes=st.lists(st.integers(1, 8), max_size=200),
    echo=st.booleans(),
)
def test_prefill_in_random_pieces(name: str, where: float, sizes: list[int], echo: bool) -> None:
    answer = MATERIAL[name]
    cut = 1 + int(where * (len(answer) - 2))
    sent, cont = prefill_continuation(answer, cut)
    if echo and len(sent.strip()) >= LIMITS.min_overlap_chars:
        cont = answer[: len(answer) - len(cont)] + cont
    assert run(sent, chunked(cont, sizes), "prefill")[0] == answer


# --- instruct: the model is shown the partial and asked to go on -----------------------------


def natural_double(sent: str, dropped: str) -> bool:
    """The text an instruct splice dropped from a continuation that had no repeat: allowed
    only where the answer itself doubles the partial's last words at the cut."""
    return bool(dropped.strip()) and sent.rstrip().endswith(dropped.strip())


@pytest.mark.parametrize("name", MATERIAL)
def test_instruct_exact_continuation_from_every_cut(name: str) -> None:
    answer = MATERIAL[name]
    doubles = []
    for cut in cuts(answer):
        sent, cont = answer[:cut], answer[cut:]
        got, dropped = run(sent, [cont], "instruct")
        if got != answer:
            assert got == sent + cont[dropped:]
            assert natural_double(sent, cont[:dropped]), f"cut at {cut}: {got[cut - 20 :]!r}"
            doubles.append(cont[:dropped])
    # Only a few cuts land in a doubled word: "had| had", "that| that", "very| very".
    assert len(doubles) <= 12, doubles


def repeat_starts(sent: str) -> list[int]:
    """Where an instruct model may start repeating the partial: the start of one of its last
    words or lines. The first word of an indented line comes with its indentation."""
    core = sent.rstrip()
    starts = []
    for j in range(max(0, len(core) - 60), len(core)):
        if j and not (sent[j - 1].isspace() and not sent[j].isspace()):
            continue
        line = core.rfind("\n", 0, j) + 1
        if core[line:j].isspace():
            j = line
        if any(ch.isalnum() for ch in core[j:]) or j == line:
            starts.append(j)
    return sorted(set(starts))


def kept_on_purpose(sent: str, start: int, after: str) -> bool:
    """Repeats the splicer keeps because natural text looks just like them (see splice.py):
    one CJK character (每 + 每天 as 谢 + 谢你), and symbols that natural text may go on with
    ("`" + "``python", "#" + "## Title", "| --- " + "| --- |")."""
    repeat = sent.rstrip()[start:]
    if len(repeat) == 1 and "\u4e00" <= repeat <= "\u9fff":
        return True
    if any(ch.isalnum() for ch in repeat) or "\n" in repeat or after in "\r\n" or after.isalnum():
        return False
    spaced = after.isspace() and sent[-1].isspace() and len(repeat.split()) > 1
    return after == repeat[-1] or spaced


@pytest.mark.parametrize("name", MATERIAL)
def test_instruct_repeat_of_the_last_words_or_lines_is_dropped(name: str) -> None:
    answer = MATERIAL[name]
    for cut in cuts(answer):
        sent, rest = answer[:cut], answer[cut:]
        after = answer[len(sent.rstrip())]
        for j in repeat_starts(sent):
            if kept_on_purpose(sent, j, after):
                continue
            cont = sent[j:] + rest
            got, dropped = run(sent, [cont], "instruct")
            assert got == answer or natural_double(sent, rest[: dropped - len(sent) + j]), (
                f"cut at {cut}, repeat from {j}: {got[cut - 20 :]!r}"
            )


@pytest.mark.parametrize("name", MATERIAL)
def test_instruct_restart_from_the_top_is_dropped(name: str) -> None:
    answer = MATERIAL[name]
    for cut in cuts(answer):
        sent = answer[:cut]
        if kept_on_purpose(sent, 0, answer[len(sent.rstrip())]):
            continue
        try:
            got, _ = run(sent, [answer], "instruct")
        except ContinuationDiverged as exc:
            raise AssertionError(f"cut at {cut}") from exc
        assert got == answer, f"cut at {cut}"


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(MATERIAL)),
    where=st.floats(0, 1),
    sizes=st.lists(st.integers(1, 8), max_size=200),
    behaviour=st.sampled_from(["exact", "repeat", "restart"]),
    pick=st.integers(0, 10**6),
)
def test_instruct_in_random_pieces(
    name: str, where: float, sizes: list[int], behaviour: str, pick: int
) -> None:
    answer = MATERIAL[name]
    cut = 1 + int(where * (len(answer) - 2))
    sent, rest = answer[:cut], answer[cut:]
    whole = {"exact": rest, "restart": answer}.get(behaviour)
    if whole is None:
        starts = repeat_starts(sent) or [0]
        whole = sent[starts[pick % len(starts)] :] + rest
    expected = run(sent, [whole], "instruct")[0]
    # Fed in pieces, the splice comes out as when fed whole.
    assert run(sent, chunked(whole, sizes), "instruct")[0] == expected
