"""Raw SSE framing for the chaos proxy: split an event stream into its events, bytes untouched.

intact's own decoder (`intact.sse`) parses events into fields; the proxy must forward every
byte as the upstream sent it, so it cuts the stream at blank lines and only peeks into an event
to learn its role (content chunk, finish chunk, usage, [DONE], anything else).
"""

from __future__ import annotations

import enum
import re
from typing import Any

import orjson

from intact.sse import DONE_DATA, SSEDecoder, SSEProtocolError

# An event ends at an empty line: two line ends in a row (LF, CRLF or CR, WHATWG rules).
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")


class EventRole(enum.Enum):
    CONTENT = "content"
    """A chunk with choices and no finish_reason (role, text or tool-call deltas): counted."""
    FINISH = "finish"
    """A chunk carrying a finish_reason."""
    USAGE = "usage"
    """A chunk with no choices (the usage chunk of `stream_options.include_usage`)."""
    DONE = "done"
    OTHER = "other"
    """Comments, error events, anything not an OpenAI chunk."""


class EventFramer:
    """Incremental splitter of an event stream into raw events, with a bound on one event."""

    def __init__(self, max_event_bytes: int = 8 * 1024 * 1024) -> None:
        self._buf = b""
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume bytes; return the events they complete, each with its terminating blank line."""
        # Rescan a few bytes before the new data: a blank line may straddle two reads.
        start = max(0, len(self._buf) - 3)
        buf = self._buf + chunk
        events: list[bytes] = []
        pos = 0
        while True:
            match = _EVENT_END.search(buf, max(pos, start))
            if match is None:
                break
            events.append(buf[pos : match.end()])
            pos = match.end()
            start = pos
        self._buf = buf[pos:]
        if len(self._buf) > self._max:
            raise SSEProtocolError(f"SSE event larger than {self._max} bytes")
        return events

    def rest(self) -> bytes:
        """Bytes of an unterminated last event (forwarded as they are when the stream ends)."""
        rest, self._buf = self._buf, b""
        return rest


def event_role(raw: bytes) -> EventRole:
    """What one raw event is in an OpenAI chat or completions stream."""
    try:
        events = SSEDecoder(max_event_bytes=len(raw) + 1).feed(raw)
    except SSEProtocolError:
        return EventRole.OTHER
    if not events:
        return EventRole.OTHER
    data = events[0].data
    if data.strip() == DONE_DATA:
        return EventRole.DONE
    try:
        payload: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return EventRole.OTHER
    if not isinstance(payload, dict) or "error" in payload:
        return EventRole.OTHER
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return EventRole.OTHER
    if not choices:
        return EventRole.USAGE
    if any(isinstance(c, dict) and c.get("finish_reason") is not None for c in choices):
        return EventRole.FINISH
    return EventRole.CONTENT
