"""Which HTTP headers cross intact, in each direction.

App to upstream: only the headers ``server.forward_headers`` names (the providers'
organisation, project, version and beta headers by default), and the app's credentials only
to an upstream with ``forward_api_key = true``. The listener picks them once per request and
hands them to the upstream client through ``APP_HEADERS``, so the relay in between carries
them without knowing of them. The upstream's own ``headers`` and intact's API key win over
anything the app sent.

Upstream to app (pass-through routes): every header but the hop-by-hop and framing ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from multidict import CIMultiDict, MultiMapping

from intact.config import CREDENTIAL_HEADERS, HOP_BY_HOP_HEADERS

# Dropped from a relayed response besides the hop-by-hop ones: the upstream client decodes
# any compressed body (it asks for identity), so the encoding no longer applies.
_DECODED = frozenset({"content-encoding"})


@dataclass(frozen=True, slots=True)
class AppHeaders:
    """The app headers one request may send upstream: the allow-listed ones, and the app's
    credentials for an upstream that takes them."""

    forwarded: tuple[tuple[str, str], ...] = ()
    credentials: tuple[tuple[str, str], ...] = ()

    @classmethod
    def pick(cls, headers: MultiMapping[str], allow: Iterable[str]) -> AppHeaders:
        """The headers of an app request that ``allow`` names (repeated ones joined)."""
        return cls(forwarded=_present(headers, allow), credentials=_present(headers, _CREDENTIALS))

    def for_upstream(self, *, with_credentials: bool) -> tuple[tuple[str, str], ...]:
        return self.forwarded + self.credentials if with_credentials else self.forwarded


# Header names as they are sent on when an app supplies them.
_CREDENTIALS = tuple(sorted(CREDENTIAL_HEADERS - {"proxy-authorization"}))

NO_APP_HEADERS = AppHeaders()
# The app headers of the request being served (set by the listener around each request).
APP_HEADERS: ContextVar[AppHeaders] = ContextVar("intact_app_headers", default=NO_APP_HEADERS)


def _present(headers: MultiMapping[str], names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, ", ".join(values)) for name in names if (values := headers.getall(name, []))
    )


def relayed_response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """An upstream response's headers as they may go to the app (repeated ones kept)."""
    return CIMultiDict(
        (name, value)
        for name, value in headers.items()
        if name.lower() not in HOP_BY_HOP_HEADERS and name.lower() not in _DECODED
    )
