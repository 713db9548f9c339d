"""Server-sent events codec: an incremental decoder for upstream bytes and the encoders intact
writes to apps.

Upstream bytes arrive split at arbitrary points (TCP segments, proxies, gzip blocks), so the
decoder keeps the unterminated tail between reads and yields each event as soon as its blank
line arrives: no batching, no re-scanning of bytes already seen. It follows the WHATWG
event-stream rules: CRLF, LF or CR line ends, multi-line ``data:``, comments, ``event``,
``id`` and ``retry`` fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DONE_DATA = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


class SSEProtocolError(Exception):
    """The upstream sent something that cannot be an event stream (e.g. an endless line)."""


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event; ``data`` is the data lines joined with LF, still bytes."""

    data: bytes
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental event-stream decoder with a bound on one event's size."""

    __slots__ = (
        "_data", "_event", "_id", "_max", "_pending_cr", "_retry", "_size", "_tail", "_tail_len",
    )  # fmt: skip

    def __init__(self, max_event_bytes: int = 8 * 1024 * 1024) -> None:
        # The unterminated tail, in pieces: a long line arriving in many reads is joined
        # once, when its end arrives, not re-copied and re-scanned on every read.
        self._tail: list[bytes] = []
        self._tail_len = 0
        self._data: list[bytes] = []
        self._size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._max = max_event_bytes
        # A CR ended the previous read: if the next read starts with LF it belongs to it.
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume bytes; return the events completed by them, in order."""
        out: list[SSEEvent] = []
        self._feed(chunk, out, False)
        return out

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """``feed`` for a reader that needs only each event's data: the same events, as
        their ``data`` (no event objects are made)."""
        out: list[bytes] = []
        self._feed(chunk, out, True)
        return out

    def _feed(self, chunk: bytes, events: list[Any], data_only: bool) -> None:
        if not chunk:
            return
        if self._pending_cr:
            self._pending_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        # (bytes.find is quicker than ``in`` for one byte.)
        if self._tail and chunk.find(b"\n") == -1 and chunk.find(b"\r") == -1:
            self._tail.append(chunk)  # still inside the same line
            self._tail_len += len(chunk)
            if self._tail_len + self._size > self._max:
                raise SSEProtocolError(f"SSE event larger than {self._max} bytes")
            return
        buf = b"".join((*self._tail, chunk)) if self._tail else chunk
        pos = 0
        end = len(buf)
        if buf.find(b"\r") != -1:
            pos = self._lines_cr(buf, events, data_only)
        else:
            find = buf.find
            # Nothing of an event pending: a "data: <payload>\n\n" frame, the common one,
            # is then dispatched in one step (no line objects, no field parsing).
            clean = not self._data and self._event is None and self._retry is None
            while pos < end:
                nl = find(b"\n", pos)
                if nl == -1:
                    break
                if clean and nl + 1 < end and buf[nl + 1] == 0x0A and buf.startswith(b"data:", pos):
                    start = pos + 6 if buf[pos + 5] == 0x20 else pos + 5
                    if nl - start >= self._max:
                        raise SSEProtocolError(f"SSE event larger than {self._max} bytes")
                    data = buf[start:nl]
                    events.append(data if data_only else SSEEvent(data, None, self._id))
                    pos = nl + 2
                    continue
                self._line(buf[pos:nl], events, data_only)
                clean = not self._data and self._event is None and self._retry is None
                pos = nl + 1
        self._tail = [buf[pos:]] if pos < end else []
        self._tail_len = end - pos
        if self._tail_len + self._size > self._max:
            raise SSEProtocolError(f"SSE event larger than {self._max} bytes")

    def _lines_cr(self, buf: bytes, events: list[Any], data_only: bool) -> int:
        """Line by line, any line end (CR, LF, CRLF); returns where the unterminated tail
        starts."""
        pos = 0
        end = len(buf)
        while pos < end:
            nl = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos, nl if nl != -1 else end)
            if cr != -1:
                line = buf[pos:cr]
                if cr + 1 < end:
                    pos = cr + 2 if buf[cr + 1] == 0x0A else cr + 1
                else:
                    pos = end
                    self._pending_cr = True
                self._line(line, events, data_only)
                continue
            if nl == -1:
                break
            self._line(buf[pos:nl], events, data_only)
            pos = nl + 1
        return pos

    def _line(self, line: bytes, events: list[Any], data_only: bool) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(
                    data if data_only else SSEEvent(data, self._event, self._id, self._retry)
                )
            self._data = []
            self._size = 0
            self._event = None
            self._retry = None
            return
        if line[0] == 0x3A:  # ":" comment / keep-alive
            return
        colon = line.find(b":")
        if colon == -1:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:
                raise SSEProtocolError(f"SSE event larger than {self._max} bytes")
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)


def encode_data(data: bytes) -> bytes:
    """Frame a payload as one SSE event (multi-line payloads become several data lines)."""
    if data.find(b"\n") != -1 or data.find(b"\r") != -1:
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return b"".join(b"data: " + part + b"\n" for part in lines) + b"\n"
    return b"".join((b"data: ", data, b"\n\n"))  # (one copy; + would make two)


def encode_comment(text: str) -> bytes:
    """An SSE comment line: clients ignore it, humans and curl users can read it."""
    return b": " + text.replace("\n", " ").encode() + b"\n\n"
