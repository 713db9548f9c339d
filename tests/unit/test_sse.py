"""The SSE decoder: events split at any byte decode the same; spec corner cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intact.sse import SSEDecoder, SSEEvent, SSEProtocolError, encode_comment, encode_data


def decode_all(chunks: list[bytes]) -> list[SSEEvent]:
    dec = SSEDecoder()
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    return out


def test_single_event_is_dispatched_on_blank_line() -> None:
    dec = SSEDecoder()
    assert dec.feed(b'data: {"a":1}\n') == []
    assert dec.feed(b"\n") == [SSEEvent(b'{"a":1}')]


def test_multi_line_data_is_joined_with_newline() -> None:
    events = decode_all([b"data: one\ndata: two\ndata:three\n\n"])
    assert events == [SSEEvent(b"one\ntwo\nthree")]


def test_comments_and_keepalives_are_not_events() -> None:
    events = decode_all([b": keep-alive\n\n: OPENROUTER PROCESSING\n\ndata: x\n\n"])
    assert events == [SSEEvent(b"x")]


def test_crlf_and_cr_line_endings() -> None:
    assert decode_all([b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]) == [
        SSEEvent(b"a"),
        SSEEvent(b"b"),
        SSEEvent(b"c"),
    ]


def test_crlf_split_between_reads_is_one_line_end() -> None:
    assert decode_all([b"data: a\r", b"\n\r", b"\n"]) == [SSEEvent(b"a")]


def test_event_id_retry_fields() -> None:
    events = decode_all([b"event: update\nid: 7\nretry: 1500\ndata: x\n\n"])
    assert events == [SSEEvent(b"x", event="update", id="7", retry=1500)]


def test_field_without_space_and_unknown_fields() -> None:
    assert decode_all([b"data:x\nfoo: bar\n\n"]) == [SSEEvent(b"x")]


def test_done_marker_is_an_ordinary_event() -> None:
    assert decode_all([b"data: [DONE]\n\n"]) == [SSEEvent(b"[DONE]")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode_all([b"event: ping\n\n"]) == []


def test_incomplete_event_at_eof_is_not_dispatched() -> None:
    assert decode_all([b"data: partial"]) == []


def test_oversized_event_is_a_protocol_error() -> None:
    dec = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEProtocolError):
        dec.feed(b"data: " + b"x" * 100)


def test_encode_roundtrip_multiline() -> None:
    assert decode_all([encode_data(b"a\nb")]) == [SSEEvent(b"a\nb")]
    assert decode_all([encode_comment("intact attempts=2 resumed=1")]) == []


line_end = st.sampled_from([b"\n", b"\r\n", b"\r"])
payload = st.binary(min_size=0, max_size=40).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"")
)


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        nl = draw(line_end)
        kind = draw(st.integers(0, 3))
        if kind == 0:
            parts.append(b":" + draw(payload) + nl)
        lines = draw(st.lists(payload, min_size=1, max_size=3))
        for line in lines:
            parts.append(b"data: " + line + nl)
        if kind == 1:
            parts.append(b"event: e" + nl)
        parts.append(nl)
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(stream=event_streams(), cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_any_split_of_a_stream_yields_the_same_events(stream: bytes, cuts: list[int]) -> None:
    whole = decode_all([stream])
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert decode_all(pieces) == whole
    assert decode_all([p for piece in pieces for p in (piece, b"")]) == whole


@settings(max_examples=100, deadline=None)
@given(stream=event_streams())
def test_byte_at_a_time_equals_whole(stream: bytes) -> None:
    assert decode_all([stream[i : i + 1] for i in range(len(stream))]) == decode_all([stream])


# -- the fast path ("data: ...\n\n" in one step) against a plain line-by-line reference --


class LineDecoder:
    """The WHATWG rules, one line at a time, nothing clever: the reference the decoder's
    fast path must agree with."""

    def __init__(self) -> None:
        self.buf = b""
        self.skip_lf = False  # the last read ended in CR: a leading LF belongs to it
        self.data: list[bytes] = []
        self.event: str | None = None
        self.id: str | None = None
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self.skip_lf and chunk:
            self.skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        self.buf += chunk
        out: list[SSEEvent] = []
        while True:
            cut = [i for i in (self.buf.find(b"\r"), self.buf.find(b"\n")) if i != -1]
            if not cut:
                return out
            end = min(cut)
            if self.buf[end : end + 1] == b"\r" and end + 1 == len(self.buf):
                self.skip_lf = True  # a CR at the end: an LF may follow in the next read
            step = 2 if self.buf[end : end + 2] == b"\r\n" else 1
            line, self.buf = self.buf[:end], self.buf[end + step :]
            self.line(line, out)

    def line(self, line: bytes, out: list[SSEEvent]) -> None:
        if not line:
            if self.data:
                out.append(SSEEvent(b"\n".join(self.data), self.event, self.id, self.retry))
            self.data, self.event, self.retry = [], None, None
            return
        if line.startswith(b":"):
            return
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self.data.append(value)
        elif name == b"event":
            self.event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\x00" not in value:
            self.id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self.retry = int(value)


field_line = st.one_of(
    payload.map(lambda p: b"data: " + p),
    payload.map(lambda p: b"data:" + p),
    st.just(b"data"),
    payload.map(lambda p: b": " + p),
    st.sampled_from([b"event: update", b"event:", b"id: 7", b"id: 8", b"retry: 1500"]),
    st.sampled_from([b"retry: x", b"foo: bar", b"datax: y", b""]),
)


@st.composite
def mixed_streams(draw: st.DrawFn) -> bytes:
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        parts.append(draw(field_line) + draw(line_end))
    return b"".join(parts)


@settings(max_examples=500, deadline=None)
@given(stream=mixed_streams(), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_decoder_agrees_with_the_line_reference(stream: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    ref = LineDecoder()
    expected = [e for piece in pieces for e in ref.feed(piece)]
    assert decode_all(pieces) == expected
    dec = SSEDecoder()
    assert [d for piece in pieces for d in dec.feed_data(piece)] == [e.data for e in expected]


def test_fast_path_frames_carry_the_last_id() -> None:
    events = decode_all([b"id: 1\ndata: a\n\ndata: b\n\nid: 2\n\ndata: c\n\n"])
    assert events == [SSEEvent(b"a", id="1"), SSEEvent(b"b", id="1"), SSEEvent(b"c", id="2")]


def test_fast_path_respects_a_pending_event_field() -> None:
    assert decode_all([b"event: e\n", b"data: x\n\ndata: y\n\n"]) == [
        SSEEvent(b"x", event="e"),
        SSEEvent(b"y"),
    ]


def test_fast_path_bounds_the_event_size() -> None:
    dec = SSEDecoder(max_event_bytes=8)
    assert dec.feed_data(b"data: 1234567\n\n") == [b"1234567"]
    with pytest.raises(SSEProtocolError):
        dec.feed_data(b"data: 12345678\n\n")


def test_feed_data_is_feed_without_the_event_objects() -> None:
    raw = b"event: x\ndata: 1\n\n: ping\n\ndata: 2\ndata: 3\n\ndata: [DONE]\n\n"
    assert SSEDecoder().feed_data(raw) == [e.data for e in SSEDecoder().feed(raw)]
    assert SSEDecoder().feed_data(raw) == [b"1", b"2\n3", b"[DONE]"]
