"""Every other ``/v1/`` route, relayed to the upstream that serves it without being read.

Embeddings, legacy completions, audio, images, files, models by id, moderations and whatever
else a provider offers under ``/v1/``: the upstream is chosen by the body's ``model`` when
the body is JSON (the same routes and ``models`` lists as chat, a route's model rewrite
included), else it is the first upstream. The request goes out unchanged and the response
comes back unchanged, headers included (minus hop-by-hop ones).

Before the first byte reaches the app, a failure (connect error, reset, 408/429/5xx) is
retried with the pieces chat attempts use: ``FailoverPlan`` (which upstream next, backoff,
the upstream's 429 pacing and Retry-After), the retry budget, the bulkhead and the breaker.
After it, the body streams through chunk by chunk as the upstream sends it and nothing can
be taken back: a break ends the app's connection abruptly, so its HTTP client raises rather
than taking a short body for a whole one. The legacy completions stream is held to its
``[DONE]`` end marker the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from intact.errors import UpstreamResponseError, not_found
from intact.relay import endings
from intact.relay.app_writer import AppGone, AppTooSlow, AppWriter
from intact.relay.engine import Relay
from intact.relay.sinks import json_response
from intact.resilience import classify
from intact.resilience.admission import Admission, Refused, take_slot
from intact.resilience.breaker import BreakerPermit, BreakerState, CallOutcome
from intact.resilience.bulkhead import BulkheadSlot
from intact.resilience.classify import FailureKind, UpstreamFailure
from intact.resilience.failover import FailoverPlan
from intact.telemetry.api import Outcome, PassthroughSummary, PassthroughTelemetry
from intact.upstream.headers import relayed_response_headers
from intact.upstream.runtime import Target

log = structlog.get_logger("intact.passthrough")

API_PREFIX = "/v1"
# Routes intact answers itself, with the methods they take; others get 405 there.
OWN_ROUTES: Mapping[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("POST",),
    "/v1/messages": ("POST",),
    "/v1/responses": ("POST",),
    "/v1/models": ("GET",),
}
# The `endpoint` label: a route's first segment when it is one of these, else "other".
ENDPOINTS = frozenset(
    {
        "audio",
        "batches",
        "completions",
        "embeddings",
        "files",
        "fine_tuning",
        "images",
        "messages",
        "models",
        "moderations",
        "rerank",
        "responses",
        "uploads",
        "vector_stores",
    }
)
OTHER_ENDPOINT = "other"
# Event streams that announce their own end: a clean close before the marker is a cut.
END_MARKERS: Mapping[str, bytes] = {"completions": b"data: [DONE]"}
# App request headers that describe the body and what the app accepts back; every other
# app header goes upstream only if server.forward_headers names it.
_BODY_HEADERS = ("Content-Type", "Accept")
ATTEMPTS_HEADER = "intact-attempts"


@dataclass(frozen=True, slots=True)
class RelayedRequest:
    """An app request as it will be relayed: path and query still percent-encoded."""

    method: str
    path: str  # below /v1, e.g. "/embeddings"
    query: str
    body: bytes
    headers: Mapping[str, str]  # the app's Content-Type and Accept
    model: str | None = None  # the JSON body's model, if it names one
    document: Mapping[str, Any] | None = None  # the parsed JSON body, when it has a model

    @classmethod
    def from_app(cls, request: web.Request, body: bytes) -> RelayedRequest:
        url = request.rel_url
        headers = {name: request.headers[name] for name in _BODY_HEADERS if name in request.headers}
        model: str | None = None
        document: dict[str, Any] | None = None
        if body and request.content_type == "application/json":
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None  # the upstream answers it as it would answer the app
            if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
                model, document = parsed["model"] or None, parsed
        return cls(
            method=request.method,
            path=url.raw_path.removeprefix(API_PREFIX),
            query=url.raw_query_string,
            body=body,
            headers=headers,
            model=model,
            document=document,
        )

    @property
    def endpoint(self) -> str:
        first = self.path.lstrip("/").partition("/")[0]
        return first if first in ENDPOINTS else OTHER_ENDPOINT

    def body_for(self, target: Target) -> bytes:
        """The body as ``target`` gets it: unchanged unless a route rewrites the model."""
        if self.document is None or not target.model or target.model == self.model:
            return self.body
        return orjson.dumps({**self.document, "model": target.model})


async def relay_passthrough(
    relay: Relay, request: web.Request, req: RelayedRequest
) -> web.StreamResponse:
    """Serve one pass-through request to its end (relayed, an HTTP error, or cut)."""
    # The API family the route belongs to picks the upstreams: /v1/messages/... goes to
    # Anthropic upstreams, /v1/responses/... to those serving Responses, the rest to chat's.
    api = req.endpoint if req.endpoint in ("messages", "responses") else "chat"
    if req.model is not None:
        targets = [t for t in relay.candidates(req.model) if t.upstream.serves_api(api)]
        if not targets:
            error = not_found(
                f"The model `{req.model}` is not served by any configured upstream.",
                code="model_not_found",
            )
            return json_response(error.status, error.body(), error.headers)
    else:
        family = [u for u in relay.upstreams if u.serves_api(api)] or relay.upstreams
        targets = [Target(family[0], "", "")]
    return await _PassthroughRun(relay, request, req, targets).serve()


class _PassthroughRun:
    """One pass-through request while it is being served."""

    def __init__(
        self, relay: Relay, request: web.Request, req: RelayedRequest, targets: list[Target]
    ) -> None:
        self.relay = relay
        self.request = request
        self.req = req
        self.loop = asyncio.get_running_loop()
        primary = targets[0].upstream.config
        self.total_timeout = primary.stream.total_timeout
        self.deadline = self.loop.time() + self.total_timeout
        self.plan = FailoverPlan(targets, primary.retry.max_attempts, relay.rng)
        self.admission = Admission(self.loop.time, relay.clock.sleep)
        self.task = asyncio.current_task()
        self.cut = False  # intact ended the app's connection itself
        self.summary = PassthroughSummary(
            method=req.method,
            path=API_PREFIX + req.path,
            endpoint=req.endpoint,
            upstream=targets[0].upstream.name,
            model=req.model,
            outcome=Outcome.FAILED,
            attempts=0,
            status=502,
        )

    def stop_for_shutdown(self) -> None:
        """The daemon's drain deadline passed: stop (the app sees its connection end)."""
        if self.task is not None:
            self.task.cancel()

    async def serve(self) -> web.StreamResponse:
        started = time.monotonic()
        try:
            with self.relay.holding(self):
                return await self.run()
        except asyncio.CancelledError:
            if not self.cut:
                self.summary.outcome = Outcome.CANCELLED  # the app went away
            raise
        finally:
            self.summary.duration = time.monotonic() - started
            telemetry = self.relay.telemetry
            if isinstance(telemetry, PassthroughTelemetry):
                telemetry.passthrough_done(self.summary)

    async def run(self) -> web.StreamResponse:
        s = self.summary
        plan = self.plan
        passed_over: set[str] = set()  # upstreams that refused this attempt
        refusal: Refused | None = None
        while True:
            if s.attempts >= plan.max_attempts:
                return self.give_up(
                    "attempts_exhausted", f"all {s.attempts} upstream attempts failed"
                )
            chosen = plan.choose(resume=False, resume_across=False, passed_over=passed_over)
            if chosen is None:
                if refusal is not None:
                    return self.give_up_refused(refusal)
                return self.give_up_unavailable()
            target, alternatives = chosen
            try:
                slot, permit = await self.admit(target, can_skip=alternatives)
            except Refused as refused:
                if not alternatives:
                    return self.give_up_refused(refused)
                refusal = refused
                passed_over.add(target.name)
                continue
            passed_over.clear()
            refusal = None
            s.attempts += 1
            s.upstream = target.upstream.name
            plan.attempted(target)
            try:
                response = await self.attempt(target, permit)
            finally:
                slot.release()
            if isinstance(response, web.StreamResponse):
                return response
            failure = response
            plan.failed(target, failure, self.loop.time())
            s.interruptions.append(failure.kind)
            if failure.kind is FailureKind.DEADLINE:
                return self.give_up(
                    "deadline_exceeded", f"request deadline of {self.total_timeout:g}s reached"
                )
            log.warning(
                "upstream_interrupted",
                api="passthrough",
                upstream=target.upstream.name,
                kind=failure.kind.value,
                status=failure.status,
                attempt=s.attempts,
                detail=failure.message,
            )

    async def admit(self, target: Target, *, can_skip: bool) -> tuple[BulkheadSlot, BreakerPermit]:
        """What a chat attempt goes through before sending (``resilience.admission``).
        Raises Refused."""
        await self.admission.before_call(
            target,
            self.plan,
            first=self.summary.attempts == 0,
            can_skip=can_skip,
            deadline=self.deadline,
        )
        return await take_slot(target)

    async def attempt(
        self, target: Target, permit: BreakerPermit
    ) -> web.StreamResponse | UpstreamFailure:
        """Send the request; once the upstream's first body bytes (or its empty body's end)
        are in, relay the response and return it, else return why the attempt failed."""
        req = self.req
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout_at(self.deadline):
                resp = await target.upstream.client.request(
                    req.method,
                    req.path,
                    query=req.query,
                    body=req.body_for(target),
                    headers=req.headers,
                )
                first = await resp.content.readany()
        except (UpstreamFailure, aiohttp.ClientError, TimeoutError) as exc:
            if resp is not None:
                resp.close()
            failure = _failure(exc, self.total_timeout)
            permit.record(CallOutcome.FAILURE if failure.breaker_failure else CallOutcome.IGNORED)
            return failure
        except BaseException:
            if resp is not None:
                resp.close()
            permit.record(CallOutcome.IGNORED)  # the app left: nobody's failure
            raise
        try:
            return await self.relay_response(target, resp, first, permit)
        finally:
            resp.close()

    async def relay_response(
        self, target: Target, resp: aiohttp.ClientResponse, first: bytes, permit: BreakerPermit
    ) -> web.StreamResponse:
        """Commit: the upstream's status and headers to the app, then its body as it comes."""
        s = self.summary
        s.status = resp.status
        if resp.status < 400:
            permit.record(CallOutcome.SUCCESS)
            target.rate_limit.succeeded()
            s.outcome = Outcome.RECOVERED if s.interruptions else Outcome.COMPLETED
        else:
            permit.record(CallOutcome.IGNORED)  # a final 4xx says nothing of its health
            s.outcome = Outcome.REJECTED
        out = web.StreamResponse(
            status=resp.status, reason=resp.reason, headers=relayed_response_headers(resp.headers)
        )
        if resp.content_length is not None and "Content-Encoding" not in resp.headers:
            out.content_length = resp.content_length
        out.headers[ATTEMPTS_HEADER] = str(s.attempts)
        try:
            await out.prepare(self.request)
        except (ConnectionError, RuntimeError):
            s.outcome = Outcome.CANCELLED
            return out
        limits = self.relay.config.server
        writer = AppWriter(
            self.request,
            out,
            max_buffer_bytes=limits.max_app_buffer_bytes,
            write_timeout=limits.app_write_timeout,
            linger=limits.slow_app_linger,
        )
        is_sse = resp.content_type == "text/event-stream"
        marker = END_MARKERS.get(self.req.endpoint) if is_sse else None
        tail = b""
        stall = target.upstream.config.stream.stall_timeout
        chunk = first
        try:
            while chunk:
                s.response_bytes += len(chunk)
                writer.put(chunk)
                if marker is not None:
                    tail = (tail + chunk)[-64:]
                await writer.room()
                chunk = await self.next_chunk(resp, stall)
            if marker is not None and not tail.rstrip().endswith(marker):
                raise UpstreamFailure(
                    FailureKind.TRUNCATED,
                    f"upstream ended the stream before its {marker.decode()}",
                    retryable=True,
                    breaker_failure=True,
                )
            await writer.close()
        except UpstreamFailure as failure:
            permit.record_late_failure()
            s.outcome = Outcome.FAILED
            s.error_code = failure.kind.value
            s.interruptions.append(failure.kind)
            log.error(
                "stream_lost",
                api="passthrough",
                upstream=target.upstream.name,
                kind=failure.kind.value,
                delivered_bytes=s.response_bytes,
                detail=failure.message,
            )
            await self.cut_app(writer)
        except AppTooSlow:
            s.outcome = Outcome.CANCELLED
            s.error_code = "client_too_slow"
            await self.cut_app(writer)
        except AppGone:
            s.outcome = Outcome.CANCELLED
            await writer.cancel()
        except asyncio.CancelledError:
            s.outcome = Outcome.CANCELLED  # the app went away
            await writer.cancel()
            raise
        return out

    async def next_chunk(self, resp: aiohttp.ClientResponse, stall: float) -> bytes:
        """The upstream's next body bytes (b"" at its end); UpstreamFailure on a break, a
        stall or the request's deadline."""
        left = self.deadline - self.loop.time()
        try:
            async with asyncio.timeout(min(stall, left)):
                return await resp.content.readany()
        except TimeoutError:
            if left <= stall:
                raise classify.timeout_failure(FailureKind.DEADLINE, self.total_timeout) from None
            raise classify.timeout_failure(FailureKind.STALL, stall) from None
        except aiohttp.ClientError as exc:
            raise classify.from_exception(exc, before_response=False) from None

    async def cut_app(self, writer: AppWriter) -> None:
        """End the app's response abruptly (bytes went out, no error can follow them): its
        HTTP client sees a broken response, never a short one that looks complete."""
        self.cut = True
        await writer.cancel()
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    # -- endings before the first byte -----------------------------------------------------

    def give_up(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> web.Response:
        """Out of attempts, budget, time or upstreams: an explicit HTTP error (the last
        upstream error itself when there is one to pass on)."""
        ending = endings.give_up(
            code,
            message,
            last=self.plan.last_failure,
            committed=False,
            status=status,
            retry_after=retry_after,
        )
        s = self.summary
        s.outcome = Outcome.FAILED
        s.status = ending.status
        s.error_code = code
        headers = {**ending.headers, ATTEMPTS_HEADER: str(s.attempts)}
        body = ending.body if isinstance(ending, UpstreamResponseError) else ending.body()
        return json_response(ending.status, body, headers)

    def give_up_refused(self, refused: Refused) -> web.Response:
        return self.give_up(
            refused.code, refused.message, status=refused.status, retry_after=refused.retry_after
        )

    def give_up_unavailable(self) -> web.Response:
        ups = self.plan.ups
        waits = [u.breaker.retry_after() for u in ups if u.breaker.state is BreakerState.OPEN]
        return self.give_up(
            "upstream_unavailable",
            "every upstream for this request has an open circuit breaker",
            status=503,
            retry_after=min(waits) if waits else 1.0,
        )


def _failure(exc: BaseException, total_timeout: float) -> UpstreamFailure:
    """What went wrong before the first body byte, classified."""
    if isinstance(exc, UpstreamFailure):
        return exc
    if isinstance(exc, aiohttp.ClientError):
        return classify.from_exception(exc, before_response=True)
    return classify.timeout_failure(FailureKind.DEADLINE, total_timeout)


__all__ = ["OWN_ROUTES", "RelayedRequest", "relay_passthrough"]
