"""Errors intact reports to apps, in the OpenAI error shape both official SDKs understand.

Before the first byte of a response an error is an HTTP status with a JSON body; once a stream
has started it can only be an SSE ``data: {"error": ...}`` event, which the SDKs raise as
``APIError``. Either way the app is told; a broken answer never looks complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from intact.sse import encode_data

# Error `type` for a stream that broke after bytes reached the app and could not be recovered.
STREAM_INTERRUPTED = "stream_interrupted"


@dataclass(frozen=True, slots=True)
class AppError:
    """An error for the app: HTTP status and headers if nothing was sent yet, else an event."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    def sse_event(self) -> bytes:
        return encode_data(self.body())


def invalid_request(
    message: str, *, code: str | None = None, param: str | None = None, status: int = 400
) -> AppError:
    return AppError(
        status=status, message=message, type="invalid_request_error", code=code, param=param
    )


def not_found(message: str, code: str = "not_found") -> AppError:
    return AppError(status=404, message=message, type="invalid_request_error", code=code)


@dataclass(frozen=True, slots=True)
class UpstreamResponseError:
    """A final upstream HTTP error passed through to the app unchanged (status, body, headers)."""

    status: int
    body: bytes
    headers: Mapping[str, str]
