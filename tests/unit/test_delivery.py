"""Every field of a chunk survives a resume, or the stream is refused as not resumable.

The Delivery is driven directly, chunk by chunk, with an in-memory sink standing for the
app: attempt 1 breaks (the test simply stops feeding it), attempt 2 is the continuation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from intact.config import RecoveryConfig
from intact.errors import AppError, UpstreamResponseError
from intact.relay.delivery import AttemptFilter, Delivery, trim_logprobs
from intact.relay.sinks import CompletionSink
from intact.resilience.classify import FailureKind, UpstreamFailure

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class AppSeen:
    """An in-memory AppSink: what the app received, chunk by chunk."""

    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []
        self.raw: list[bytes | None] = []
        self.comments: list[str] = []
        self.finished = False

    @property
    def committed(self) -> bool:
        return bool(self.chunks)

    async def send_chunk(self, chunk: Mapping[str, Any], raw: bytes | None) -> None:
        self.raw.append(raw)
        self.chunks.append(
            orjson.loads(raw) if raw is not None else orjson.loads(orjson.dumps(chunk))
        )

    async def send_comment(self, text: str) -> None:
        self.comments.append(text)

    async def flow(self) -> None:
        return None

    def reset(self) -> bool:
        return not self.chunks

    async def finish(self, headers: Mapping[str, str]) -> None:
        self.finished = True

    async def fail(self, error: AppError) -> None:
        raise AssertionError(f"unexpected fail: {error}")

    async def too_slow(self, error: AppError) -> None:
        raise AssertionError("unexpected too_slow")

    async def gone(self) -> None:
        return None

    async def pass_through(self, error: UpstreamResponseError) -> None:
        raise AssertionError("unexpected pass_through")

    def choices(self) -> list[dict[str, Any]]:
        return [c["choices"][0] for c in self.chunks if c.get("choices")]

    def text(self, field: str) -> str:
        return "".join(ch["delta"].get(field) or "" for ch in self.choices())

    def finishes(self) -> list[str]:
        return [ch["finish_reason"] for ch in self.choices() if ch.get("finish_reason")]

    def logprob_tokens(self, field: str = "content") -> list[str]:
        return [
            entry["token"]
            for ch in self.choices()
            if ch.get("logprobs")
            for entry in ch["logprobs"].get(field) or ()
        ]


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
    cid: str = "chatcmpl-1",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish}
        ],
    }
    if usage is not None:
        obj["usage"] = usage
    return obj


def usage_chunk(usage: dict[str, Any], cid: str = "chatcmpl-1") -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [], "usage": usage}  # fmt: skip


def lp(*tokens: str) -> dict[str, Any]:
    """A chunk's logprobs object for these tokens."""
    entries = [{"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []}
               for t in tokens]  # fmt: skip
    return {"content": entries, "refusal": None}


async def feed(filt: AttemptFilter, *objs: dict[str, Any]) -> None:
    for obj in objs:
        await filt.on_chunk(obj, orjson.dumps(obj))


def delivery(sink: Any = None, **kw: Any) -> tuple[Delivery, Any]:
    sink = AppSeen() if sink is None else sink
    kw.setdefault("app_wants_usage", False)
    return Delivery(sink, RecoveryConfig(), **kw), sink


ROLE = chunk({"role": "assistant", "content": ""})


# --- content --------------------------------------------------------------------------------


async def test_first_attempt_chunks_go_to_the_app_byte_for_byte() -> None:
    d, app = delivery()
    objs = [ROLE, chunk({"content": "Hello"}), chunk({"content": " world"})]
    await feed(d.attempt("prefill"), *objs)
    assert app.raw == [orjson.dumps(o) for o in objs]
    assert d.content() == "Hello world"
    assert d.tokens_delivered == 2


async def test_instruct_continuation_repeating_the_tail_is_spliced_on_once() -> None:
    d, app = delivery()
    await feed(d.attempt("instruct"), ROLE, chunk({"content": "The quick brown"}))
    cont = d.attempt("instruct")
    await feed(
        cont,
        chunk({"role": "assistant", "content": ""}, cid="chatcmpl-2"),
        chunk({"content": "quick brown"}, cid="chatcmpl-2"),
        chunk({"content": " fox."}, cid="chatcmpl-2"),
        chunk(finish="stop", cid="chatcmpl-2"),
    )
    assert app.text("content") == "The quick brown fox."
    assert {c["id"] for c in app.chunks} == {"chatcmpl-1"}
    assert sum(1 for ch in app.choices() if ch["delta"].get("role")) == 1
    assert app.finishes() == ["stop"]


async def test_prefill_whitespace_cut_from_the_prompt_is_not_sent_twice() -> None:
    d, app = delivery()
    await feed(d.attempt("prefill"), ROLE, chunk({"content": "One two "}))
    assert d.resume_body(BASE, "prefill", "go on")["messages"][-1]["content"] == "One two"
    await feed(
        d.attempt("prefill"),
        chunk({"content": " three"}, cid="c2"),
        chunk(finish="stop", cid="c2"),
    )
    assert app.text("content") == "One two three"


# --- reasoning ------------------------------------------------------------------------------


async def test_reasoning_then_content_resumes_from_the_content_and_drops_new_reasoning() -> None:
    d, app = delivery()
    await feed(
        d.attempt("prefill"),
        ROLE,
        chunk({"reasoning_content": "Add them."}),
        chunk({"reasoning_content": " 40 plus 2."}),
        chunk({"content": "The answer is"}),
        chunk({"content": " forty"}),
    )
    assert d.why_not_resumable("prefill", BASE) is None
    body = d.resume_body(BASE, "prefill", "go on")
    assert body["messages"][-1] == {"role": "assistant", "content": "The answer is forty"}
    await feed(
        d.attempt("prefill"),
        chunk({"reasoning_content": "Thinking again."}, cid="c2"),
        chunk({"content": " two."}, cid="c2"),
        chunk(finish="stop", cid="c2"),
    )
    assert app.text("reasoning_content") == "Add them. 40 plus 2."
    assert app.text("content") == "The answer is forty two."
    assert app.finishes() == ["stop"]


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("mode", ["prefill", "prefix", "instruct", "restart"])
async def test_break_during_reasoning_is_not_resumable(key: str, mode: str) -> None:
    d, _ = delivery()
    await feed(d.attempt(mode), ROLE, chunk({key: "First, consider"}))
    why = d.why_not_resumable(mode, BASE)
    assert why is not None and "reasoning" in why


async def test_continuation_that_only_reasons_and_finishes_is_diverged() -> None:
    d, app = delivery()
    await feed(d.attempt("prefill"), ROLE, chunk({"content": "The answer is"}))
    cont = d.attempt("prefill")
    await feed(cont, chunk({"reasoning": " forty two"}, cid="c2"))
    with pytest.raises(UpstreamFailure) as failure:
        await feed(cont, chunk(finish="stop", cid="c2"))
    assert failure.value.kind is FailureKind.DIVERGED and failure.value.retryable
    assert app.finishes() == []  # the answer was not closed where it broke
    assert app.text("reasoning") == ""


async def test_rerun_after_only_the_role_reached_the_app_forwards_its_reasoning() -> None:
    d, app = delivery()
    await feed(d.attempt("prefill"), ROLE)
    assert d.why_not_resumable("prefill", BASE) is None
    assert d.resume_body(BASE, "prefill", "go on") == BASE  # the original request again
    await feed(
        d.attempt("prefill"),
        chunk({"role": "assistant", "content": ""}, cid="c2"),
        chunk({"reasoning_content": "Hmm."}, cid="c2"),
        chunk({"content": "Yes."}, cid="c2"),
        chunk(finish="stop", cid="c2"),
    )
    assert app.text("reasoning_content") == "Hmm."
    assert app.text("content") == "Yes."


# --- refusal --------------------------------------------------------------------------------


async def test_interrupted_refusal_resumes_from_the_refusal_without_duplicating_it() -> None:
    d, app = delivery()
    await feed(
        d.attempt("instruct"),
        ROLE,
        chunk({"refusal": "I'm sorry,"}),
        chunk({"refusal": " I cannot"}),
    )
    assert d.why_not_resumable("instruct", BASE) is None
    body = d.resume_body(BASE, "instruct", "go on")
    assert body["messages"][-2:] == [
        {"role": "assistant", "content": "I'm sorry, I cannot"},
        {"role": "user", "content": "go on"},
    ]
    # The continuation starts over, and in the content field.
    await feed(
        d.attempt("instruct"),
        chunk({"content": "I'm sorry,"}, cid="c2"),
        chunk({"content": " I cannot"}, cid="c2"),
        chunk({"content": " help with that."}, cid="c2"),
        chunk(finish="stop", cid="c2"),
    )
    assert app.text("refusal") == "I'm sorry, I cannot help with that."
    assert app.text("content") == ""


async def test_refusal_continued_in_the_refusal_field_stays_a_refusal() -> None:
    d, app = delivery()
    await feed(d.attempt("instruct"), ROLE, chunk({"refusal": "I can't help"}))
    await feed(
        d.attempt("instruct"),
        chunk({"refusal": " with that."}, cid="c2"),
        chunk(finish="stop", cid="c2"),
    )
    assert app.text("refusal") == "I can't help with that."


# --- logprobs -------------------------------------------------------------------------------


async def test_continuation_logprobs_are_forwarded_minus_the_dropped_repeat() -> None:
    d, app = delivery()
    await feed(
        d.attempt("instruct"),
        ROLE,
        chunk({"content": "The quick"}, logprobs=lp("The", " quick")),
        chunk({"content": " brown fox"}, logprobs=lp(" brown", " fox")),
    )
    await feed(
        d.attempt("instruct"),
        chunk({"content": "quick"}, logprobs=lp("quick"), cid="c2"),
        chunk({"content": " brown fox"}, logprobs=lp(" brown", " fox"), cid="c2"),
        chunk({"content": " jumps"}, logprobs=lp(" jumps"), cid="c2"),
        chunk({"content": "."}, logprobs=lp("."), cid="c2"),
        chunk(finish="stop", cid="c2"),
    )
    assert app.text("content") == "The quick brown fox jumps."
    assert app.logprob_tokens() == ["The", " quick", " brown", " fox", " jumps", "."]


async def test_logprobs_of_a_continued_refusal_are_refusal_logprobs() -> None:
    d, app = delivery()
    await feed(d.attempt("instruct"), ROLE, chunk({"refusal": "I can't"}, logprobs=None))
    await feed(
        d.attempt("instruct"),
        chunk({"content": " do that."}, logprobs=lp(" do", " that."), cid="c2"),
        chunk(finish="stop", cid="c2"),
    )
    assert app.logprob_tokens("refusal") == [" do", " that."]
    assert app.logprob_tokens("content") == []


def test_trim_drops_entries_inside_the_repeat_and_keeps_one_that_straddles_it() -> None:
    entries = [{"token": t} for t in ["quick", " bro", "wn fox", " jumps"]]
    assert [e["token"] for e in trim_logprobs(entries, 9)] == ["wn fox", " jumps"]
    assert trim_logprobs(entries, 0) == entries


# --- tool calls and audio -------------------------------------------------------------------


async def test_audio_answer_is_not_resumable() -> None:
    d, _ = delivery()
    await feed(
        d.attempt("prefill"),
        ROLE,
        chunk({"audio": {"id": "a1", "transcript": "Hel", "data": "AA"}}),
    )
    assert d.why_not_resumable("prefill", BASE) == "an audio answer cannot be continued"


async def test_tool_call_the_app_has_is_not_sent_again_by_the_continuation() -> None:
    d, app = delivery()

    def call(index: int, args: str, *, head: bool = True) -> dict[str, Any]:
        fn = {"name": f"f{index}", "arguments": args} if head else {"arguments": args}
        return {"index": index, "id": f"call_{index}", "type": "function", "function": fn}

    # Call 0 is released complete when call 1 starts; call 1 is cut in half.
    await feed(
        d.attempt("prefill"),
        ROLE,
        chunk({"tool_calls": [call(0, '{"a": 1}')]}),
        chunk({"tool_calls": [call(1, '{"b"')]}),
    )
    assert d.why_not_resumable("prefill", BASE) is None
    await feed(
        d.attempt("prefill"),
        chunk({"tool_calls": [call(0, '{"a":1}')]}, cid="c2"),  # JSON-equal: the same call
        chunk({"tool_calls": [call(1, '{"b": 2}')]}, cid="c2"),
        chunk(finish="tool_calls", cid="c2"),
    )
    sent = [tc for ch in app.choices() for tc in ch["delta"].get("tool_calls") or ()]
    assert [(tc["index"], tc["function"]["arguments"]) for tc in sent] == [
        (0, '{"a": 1}'),
        (1, '{"b": 2}'),
    ]
    assert app.finishes() == ["tool_calls"]


# --- what cannot be resumed -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["json_object", "json_schema"])
async def test_json_answer_cannot_be_continued_by_instruction(kind: str) -> None:
    d, _ = delivery()
    body = {**BASE, "response_format": {"type": kind}}
    await feed(d.attempt("instruct"), ROLE)
    assert d.why_not_resumable("instruct", body) is None  # only the role: a re-run is fine
    await feed(d.attempt("instruct"), chunk({"content": '{"a": '}))
    assert d.why_not_resumable("instruct", body) == (
        "a JSON answer cannot be continued by instruction"
    )
    assert "response_format" in (d.why_not_resumable("prefill", body) or "")
    assert d.why_not_resumable("instruct", {**BASE, "response_format": {"type": "text"}}) is None


async def test_resume_off_refuses_after_the_commit_point_only() -> None:
    d, _ = delivery()
    assert d.why_not_resumable("off", BASE) is None
    await feed(d.attempt("off"), ROLE, chunk({"content": "Hi"}))
    assert "off" in (d.why_not_resumable("off", BASE) or "")


# --- the continuation request ---------------------------------------------------------------


async def test_resume_body_sends_the_partial_without_trailing_whitespace_in_prefill() -> None:
    d, _ = delivery()
    await feed(d.attempt("prefill"), ROLE, chunk({"content": "One two "}))
    body = d.resume_body({**BASE, "max_tokens": 10}, "prefill", "go on")
    assert body["messages"][-1] == {"role": "assistant", "content": "One two"}
    assert body["continue_final_message"] is True
    # 1 token delivered, but the model spends one regenerating the stripped whitespace.
    assert body["max_tokens"] == 10
    # instruct sends it stripped too: a model that goes on sends the separator first.
    instruct = d.resume_body(BASE, "instruct", "go on")
    assert instruct["messages"][-2]["content"] == "One two"


# --- usage ----------------------------------------------------------------------------------


async def test_usage_after_a_resume_comes_from_the_upstream_reports() -> None:
    d, app = delivery(app_wants_usage=True)
    await feed(
        d.attempt("instruct"),
        ROLE,
        chunk({"reasoning_content": "Think"}),
        chunk({"reasoning_content": " more"}),
        chunk({"content": "Alpha"}),
        chunk({"content": " beta"}),
        chunk({"content": " gamma"}),
        chunk({"content": " delta"}),
    )
    cont = d.attempt("instruct")
    await feed(
        cont,
        chunk({"content": "gamma delta"}, cid="c2"),  # a restatement glued on: dropped
        chunk({"content": " epsilon"}, cid="c2"),
        chunk({"content": " zeta"}, cid="c2"),
        chunk(finish="stop", cid="c2"),
        usage_chunk(
            {
                "prompt_tokens": 30,
                "completion_tokens": 3,
                "total_tokens": 33,
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            cid="c2",
        ),
    )
    assert app.text("content") == "Alpha beta gamma delta epsilon zeta"
    out = cont.usage_chunk()
    assert out is not None and out[1] is None
    assert out[0]["id"] == "chatcmpl-1"
    # prompt: 30 minus the 4 chunks of partial answer the continuation carried;
    # completion: 6 chunks delivered by attempt 1 + 3 reported - 1 dropped repeat.
    assert out[0]["usage"] == {
        "prompt_tokens": 26,
        "completion_tokens": 8,
        "total_tokens": 34,
        "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
    }


async def test_usage_prefers_the_original_requests_own_prompt_count() -> None:
    d, _ = delivery(app_wants_usage=True)
    running = {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}
    await feed(d.attempt("prefill"), ROLE, chunk({"content": "Hello"}, usage=running))
    cont = d.attempt("prefill")
    await feed(
        cont,
        chunk({"content": " there"}, cid="c2"),
        chunk(finish="stop", cid="c2"),
        usage_chunk({"prompt_tokens": 27, "completion_tokens": 1, "total_tokens": 28}, cid="c2"),
    )
    out = cont.usage_chunk()
    assert out is not None
    assert out[0]["usage"] == {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}


async def test_usage_does_not_count_reasoning_a_continuation_redid() -> None:
    d, _ = delivery(app_wants_usage=True)
    await feed(d.attempt("prefill"), ROLE, chunk({"reasoning": "Hm"}), chunk({"content": "So"}))
    cont = d.attempt("prefill")
    await feed(
        cont,
        chunk({"reasoning": "Again"}, cid="c2"),
        chunk({"reasoning": " again"}, cid="c2"),
        chunk({"content": " yes."}, cid="c2"),
        chunk(finish="stop", cid="c2"),
        usage_chunk(
            {
                "prompt_tokens": 9,
                "completion_tokens": 5,
                "total_tokens": 14,
                "completion_tokens_details": {"reasoning_tokens": 4},
            },
            cid="c2",
        ),
    )
    out = cont.usage_chunk()
    assert out is not None
    usage = out[0]["usage"]
    # attempt 1: 2 chunks (1 of reasoning); attempt 2: 5 reported - 4 reasoning dropped.
    assert usage["completion_tokens"] == 3
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 1}


async def test_usage_of_an_answer_made_by_one_attempt_is_its_own_report_unchanged() -> None:
    d, _ = delivery(app_wants_usage=True)
    filt = d.attempt("prefill")
    report = usage_chunk({"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})
    await feed(filt, ROLE, chunk({"content": "Hi"}), chunk(finish="stop"), report)
    assert filt.usage_chunk() == (report, orjson.dumps(report))


# --- non-streaming --------------------------------------------------------------------------


async def test_non_stream_response_carries_every_logprob_after_a_resume() -> None:
    sink = CompletionSink()
    d, _ = delivery(sink)
    await feed(
        d.attempt("prefill"), ROLE, chunk({"content": "The quick"}, logprobs=lp("The", " quick"))
    )
    await feed(
        d.attempt("prefill"),
        chunk({"content": " brown"}, logprobs=lp(" brown"), cid="c2"),
        chunk(finish="stop", cid="c2"),
    )
    choice = sink.completion()["choices"][0]
    assert choice["message"]["content"] == "The quick brown"
    assert [e["token"] for e in choice["logprobs"]["content"]] == ["The", " quick", " brown"]
    assert choice["logprobs"]["refusal"] is None


async def test_non_stream_response_without_logprobs_has_null_logprobs() -> None:
    sink = CompletionSink()
    d, _ = delivery(sink)
    await feed(d.attempt("prefill"), ROLE, chunk({"content": "Hi"}), chunk(finish="stop"))
    assert sink.completion()["choices"][0]["logprobs"] is None


async def test_non_stream_response_keeps_reasoning_refusal_and_audio() -> None:
    sink = CompletionSink()
    d, _ = delivery(sink)
    await feed(
        d.attempt("prefill"),
        ROLE,
        chunk({"reasoning_content": "Think"}),
        chunk({"reasoning_content": " hard"}),
        chunk({"audio": {"id": "a1", "transcript": "Hel", "data": "AA"}}),
        chunk({"audio": {"id": "a1", "transcript": "lo", "data": "BB", "expires_at": 9}}),
        chunk(finish="stop"),
    )
    message = sink.completion()["choices"][0]["message"]
    assert message["reasoning_content"] == "Think hard"
    assert message["audio"] == {"id": "a1", "transcript": "Hello", "data": "AABB", "expires_at": 9}
    assert message["content"] is None

    refusing = CompletionSink()
    d, _ = delivery(refusing)
    await feed(d.attempt("instruct"), ROLE, chunk({"refusal": "I can't"}))
    await feed(d.attempt("instruct"), chunk({"content": " help."}, cid="c2"), chunk(finish="stop"))
    message = refusing.completion()["choices"][0]["message"]
    assert (message["content"], message["refusal"]) == (None, "I can't help.")
