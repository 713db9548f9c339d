"""The upstream side: one long-lived aiohttp session per provider endpoint.

The session (keep-alive pool, bounded connections) lives as long as the daemon; the API key
is read from the environment once and injected per request; it is never logged and never
appears in an error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import orjson
import structlog
import yarl
from multidict import CIMultiDict

from intact import __version__
from intact.config import ANTHROPIC_VERSION, UpstreamConfig
from intact.resilience import classify
from intact.resilience.classify import UpstreamFailure
from intact.telemetry.api import UpstreamInfo
from intact.upstream.headers import APP_HEADERS, relayed_response_headers

# Error bodies are read to pass them through to the app; a bound keeps a broken proxy from
# streaming megabytes into memory.
MAX_ERROR_BODY = 64 * 1024
USER_AGENT = f"intact/{__version__}"
# Identity encoding: a compressed event stream may be buffered by the provider or a proxy
# until a compression block fills, which reads as a stall.
CHAT_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "text/event-stream",
    "Accept-Encoding": "identity",
}
# A relayed request carries the app's own Content-Type and Accept.
RELAY_HEADERS = {"Accept-Encoding": "identity"}

log = structlog.get_logger("intact.upstream")


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One attempt's HTTP request (``path`` relative to base_url, ``query`` encoded)."""

    path: str
    body: bytes | None
    method: str = "POST"
    query: str = ""
    # Headers the API itself needs (Messages: anthropic-version); the app's own win.
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # orjson.dumps returns bytes with room to spare (about 4 KiB for a 100-byte body),
        # and the body lives as long as the attempt: keep an exact-size copy (~35 MB at
        # 10,000 open streams).
        if self.body is not None:
            object.__setattr__(self, "body", bytes(memoryview(self.body)))


class UpstreamClient:
    """HTTP client for one OpenAI-compatible upstream."""

    def __init__(self, config: UpstreamConfig, *, environ: dict[str, str] | None = None) -> None:
        self.config = config
        self._environ = os.environ if environ is None else environ
        self._api_key = ""
        self.load_api_key()
        self._session: aiohttp.ClientSession | None = None
        self._base = config.base_url.rstrip("/")
        # Anthropic's API wants its version on every call; an app's own (forwarded) wins.
        version = {"anthropic-version": ANTHROPIC_VERSION} if config.kind == "anthropic" else {}
        self._stream_headers: Mapping[str, str] = {**CHAT_HEADERS, **version}
        self._relay_headers: Mapping[str, str] = {**RELAY_HEADERS, **version}
        parts = urlsplit(self._base)
        default_port = 443 if parts.scheme == "https" else 80
        self.info = UpstreamInfo(
            name=config.name,
            provider=config.provider,
            address=parts.hostname or "",
            port=parts.port or default_port,
        )

    @property
    def has_api_key(self) -> bool:
        return bool(self._api_key)

    def load_api_key(self) -> None:
        """(Re-)read the key: from ``api_key_file`` if set, else ``api_key_env``. A file
        that cannot be read keeps the key already loaded (and says so, without the key)."""
        config = self.config
        if config.api_key_file:
            try:
                with open(config.api_key_file, encoding="utf-8") as fh:
                    self._api_key = fh.read().strip()
            except OSError as exc:
                log.warning("api_key_file_unreadable", upstream=config.name, error=exc.strerror)
            return
        env = self._environ
        self._api_key = env.get(config.api_key_env, "") if config.api_key_env else ""

    async def start(self) -> None:
        """Create the session; must run inside the daemon's event loop."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self.config.max_concurrent_streams + 8,
            keepalive_timeout=30.0,
            ttl_dns_cache=60,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.config.stream.connect_timeout,
            sock_connect=self.config.stream.connect_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=True,
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(
        self, extra: Mapping[str, str] | None, defaults: Mapping[str, str] = CHAT_HEADERS
    ) -> CIMultiDict[str]:
        """A request's headers, later ones winning: ``defaults``, intact's API key, the
        app's forwarded headers (and its credentials where ``forward_api_key``), this
        upstream's ``headers``, then the call's own ``extra``."""
        headers = CIMultiDict(defaults)
        app = APP_HEADERS.get()
        with_credentials = self.config.forward_api_key
        if self._api_key and not (with_credentials and app.credentials):
            name = self.config.api_key_header
            bearer = name.lower() == "authorization"
            headers[name] = f"Bearer {self._api_key}" if bearer else self._api_key
        for layer in (app.for_upstream(with_credentials=with_credentials), self.config.headers):
            for name, value in dict(layer).items():
                headers[name] = value
        for name, value in (extra or {}).items():
            headers[name] = value
        return headers

    def _url(self, path: str, query: str = "") -> yarl.URL:
        """base_url + ``path`` with ``query`` (both already percent-encoded) and this
        upstream's ``query`` parameters, which replace the app's of the same name."""
        extra = self.config.query
        if extra:
            kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in extra]
            query = urlencode([*kept, *extra.items()])
        return yarl.URL(self._base + path + ("?" + query if query else ""), encoded=True)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"upstream {self.config.name} is not started")
        return self._session

    async def open_stream(
        self,
        body: bytes | None,
        *,
        path: str = "/chat/completions",
        method: str = "POST",
        query: str = "",
        headers: dict[str, str] | None = None,
        api_headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one attempt (POST ``path`` by default) and return the 200 event stream with
        its body unread.

        Raises UpstreamFailure for connection problems and non-200 statuses (after reading
        a bounded error body so it can be passed through).
        """
        try:
            resp = await self.session.request(
                method,
                self._url(path, query),
                data=body,
                headers=self._headers(
                    headers,
                    {**self._stream_headers, **api_headers}
                    if api_headers
                    else self._stream_headers,
                ),
            )
        except aiohttp.ClientError as exc:
            raise classify.from_exception(exc, before_response=True) from None
        if resp.status == 200:
            ctype = resp.headers.get("Content-Type", "")
            if "text/event-stream" in ctype:
                return resp
            try:
                raw = await _read_bounded(resp)
            except aiohttp.ClientError as exc:  # a proxy page cut mid-body
                raise classify.from_exception(exc, before_response=True) from None
            finally:
                resp.close()
            raise _non_stream_200(raw, ctype)
        try:
            raw = await _read_bounded(resp)
        except aiohttp.ClientError:
            raw = b""
        finally:
            resp.close()
        raise classify.from_status(resp.status, relayed_response_headers(resp.headers), raw)

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send any request to ``path`` (relative to base_url; ``path`` and ``query`` still
        percent-encoded) and return the response, body unread, unless its status is one to
        retry.

        Raises UpstreamFailure for connection problems and retryable statuses (408, 429,
        5xx; after reading a bounded error body so it can be passed through).
        """
        try:
            resp = await self.session.request(
                method,
                self._url(path, query),
                data=body or None,
                headers=self._headers(headers, self._relay_headers),
            )
        except aiohttp.ClientError as exc:
            raise classify.from_exception(exc, before_response=True) from None
        if resp.status not in classify.RETRYABLE_STATUSES and resp.status < 500:
            return resp
        try:
            raw = await _read_bounded(resp)
        except aiohttp.ClientError:
            raw = b""
        finally:
            resp.close()
        raise classify.from_status(resp.status, relayed_response_headers(resp.headers), raw)

    async def list_models(self, time_limit: float) -> dict[str, Any]:
        """GET /models; raises UpstreamFailure on any problem."""
        try:
            async with self.session.get(
                self._url("/models"),
                headers=self._headers({"Accept": "application/json"}),
                timeout=aiohttp.ClientTimeout(total=time_limit),
            ) as resp:
                raw = await _read_bounded(resp, limit=8 * 1024 * 1024)
                if resp.status != 200:
                    raise classify.from_status(resp.status, dict(resp.headers), raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise classify.from_exception(exc, before_response=True) from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise classify.protocol_error("models list is not JSON") from None
        if not isinstance(data, dict):
            raise classify.protocol_error("models list is not an object")
        return data


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int = MAX_ERROR_BODY) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _non_stream_200(raw: bytes, ctype: str) -> UpstreamFailure:
    """A 200 that is not an event stream: an error object or a proxy page, never a stream."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and "error" in payload:
        return classify.from_error_event(payload)
    return classify.protocol_error(f"expected text/event-stream, got {ctype or 'no content type'}")
