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
