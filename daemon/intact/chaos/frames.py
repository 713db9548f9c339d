"""Raw SSE framing for the chaos proxy: split an event stream into its events, bytes untouched.

intact's own decoder (`intact.sse`) parses events into fields; the proxy must forward every
byte as the upstream sent it, so it cuts the stream at blank lines and only peeks into an event
to learn its role in its API's stream (`Api`): a counted event, the finish event, usage,
the end marker, or anything else.
"""

from __future__ import annotations

import enum
import re
from typing import Any, Literal

import orjson

from intact.sse import DONE_DATA, SSEDecoder, SSEProtocolError

# An event ends at an empty line: two line ends in a row (LF, CRLF or CR, WHATWG rules).
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")


Api = Literal["chat", "messages", "responses"]
"""The streams the proxy faults: chat and text completions, Anthropic Messages
(`POST .../messages`) and OpenAI Responses (`POST .../responses`)."""


def api_of(path: str) -> Api | None:
    """The API a POST to `path` is a generation request of (None: not faulted)."""
    if path.endswith(("/chat/completions", "/completions")):
        return "chat"
    if path.endswith("/messages"):
        return "messages"
    if path.endswith("/responses"):
        return "responses"
    return None


class EventRole(enum.Enum):
    CONTENT = "content"
    """A counted event. Chat: a chunk with choices and no finish_reason (role, text or
    tool-call deltas). Messages: every event before message_delta (message_start, block
    starts, deltas, block stops, pings). Responses: every event before response.completed
    (response.created and .in_progress, items and parts added, deltas, their .done events)."""
    FINISH = "finish"
    """Chat: a chunk carrying a finish_reason. Messages: message_delta. Responses:
    response.completed or response.incomplete."""
    USAGE = "usage"
    """Chat: a chunk with no choices (the usage chunk of `stream_options.include_usage`)."""
    DONE = "done"
    """Chat: data: [DONE]. Messages: message_stop."""
    OTHER = "other"
    """Comments, error events (and Responses' response.failed), anything unrecognised."""


_MESSAGES_ROLES = {"message_delta": EventRole.FINISH, "message_stop": EventRole.DONE}
_RESPONSES_ROLES = {
    "response.completed": EventRole.FINISH,
    "response.incomplete": EventRole.FINISH,
    "response.failed": EventRole.OTHER,
}


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


def event_payload(raw: bytes) -> tuple[str | None, Any]:
    """(the event's name, its data parsed as JSON) of one raw event; the data is DONE_DATA
    for [DONE] and None for no data or data that is not JSON."""
    try:
        events = SSEDecoder(max_event_bytes=len(raw) + 1).feed(raw)
    except SSEProtocolError:
        return None, None
    if not events:
        return None, None
    event = events[0]
    if event.data.strip() == DONE_DATA:
        return event.event, DONE_DATA
    try:
        return event.event, orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return event.event, None


def event_role(raw: bytes, api: Api = "chat") -> EventRole:
    """What one raw event is in a stream of `api`."""
    name, payload = event_payload(raw)
    if payload == DONE_DATA:
        return EventRole.DONE if api == "chat" else EventRole.OTHER
    if not isinstance(payload, dict):
        return EventRole.OTHER
    if api == "chat":
        return EventRole.OTHER if "error" in payload else _chat_role(payload)
    kind = payload.get("type", name)
    if not isinstance(kind, str) or kind == "error":
        return EventRole.OTHER
    roles = _MESSAGES_ROLES if api == "messages" else _RESPONSES_ROLES
    return roles.get(kind, EventRole.CONTENT)


def _chat_role(payload: dict[str, Any]) -> EventRole:
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return EventRole.OTHER
    if not choices:
        return EventRole.USAGE
    if any(isinstance(c, dict) and c.get("finish_reason") is not None for c in choices):
        return EventRole.FINISH
    return EventRole.CONTENT


def sequence_number(raw: bytes) -> int | None:
    """A Responses event's sequence_number, if it has one (llama.cpp's have none)."""
    _, payload = event_payload(raw)
    number = payload.get("sequence_number") if isinstance(payload, dict) else None
    return number if isinstance(number, int) and not isinstance(number, bool) else None
