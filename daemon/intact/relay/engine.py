"""The attempt loop: one app request through retries, resumes, breakers, budget and failover.

Commit point = the first chunk forwarded to the app (Envoy's "response started", gRPC's
"committed"). Before it, failures are retried invisibly: the app only sees a slower first
token. After it, the only way forward is a resume that continues the partial text, spliced
into the same stream. Every attempt of either kind goes through the same machinery: the
upstream's breaker (fail fast while open), its retry budget (no retry storms), backoff or the
provider's own Retry-After, the concurrency bound, and the request's deadline. When nothing
is left, the app gets an explicit error: an HTTP error before the commit point, an SSE error
event after it. Never a clean close on a partial answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import structlog

from intact.clock import SYSTEM_CLOCK, Clock
from intact.config import Config, UpstreamConfig
from intact.errors import STREAM_INTERRUPTED, AppError, UpstreamResponseError, not_found
from intact.recovery.resume import resume_request
from intact.relay.delivery import AttemptFilter, Delivery
from intact.relay.request import ChatRequest
from intact.relay.sinks import AppSink
from intact.relay.watchdog import Watchdog
from intact.resilience import classify
from intact.resilience.backoff import BackoffPolicy, BackoffSchedule
from intact.resilience.breaker import BreakerPermit, BreakerState, CallOutcome, CircuitBreaker
from intact.resilience.budget import RetryBudget
from intact.resilience.bulkhead import Bulkhead, BulkheadSlot
from intact.resilience.classify import FailureKind, UpstreamFailure
from intact.sse import DONE_DATA, SSEDecoder, SSEProtocolError
from intact.telemetry.api import (
    AttemptReason,
    AttemptTrace,
    Outcome,
    RequestSummary,
    RequestTrace,
    Telemetry,
)
from intact.upstream.client import UpstreamClient

log = structlog.get_logger("intact.relay")

# prepare() asks the loop to try another upstream instead.
_SKIP = object()

# After the drain deadline: how long cut requests get to write their explicit error.
SHUTDOWN_NOTICE_SECONDS = 2.0

# Failure kinds that mean "too slow" rather than "broken" when every attempt is spent.
_TIMEOUT_KINDS = frozenset(
    {FailureKind.FIRST_TOKEN_TIMEOUT, FailureKind.STALL, FailureKind.DEADLINE, FailureKind.HTTP_408}
)


@dataclass(eq=False)
class UpstreamRuntime:
    """Everything intact keeps per upstream for the daemon's life."""

    config: UpstreamConfig
    client: UpstreamClient
    breaker: CircuitBreaker
    budget: RetryBudget
    bulkhead: Bulkhead
    backoff: BackoffPolicy

    @property
    def name(self) -> str:
        return self.config.name

    def serves(self, model: str) -> bool:
        return not self.config.models or model in self.config.models

    @classmethod
    def build(
        cls,
        config: UpstreamConfig,
        telemetry: Telemetry,
        *,
        clock: Clock = SYSTEM_CLOCK,
        environ: dict[str, str] | None = None,
    ) -> UpstreamRuntime:
        return cls(
            config=config,
            client=UpstreamClient(config, environ=environ),
            breaker=CircuitBreaker(
                config.name, config.breaker, clock=clock, on_transition=telemetry.breaker_transition
            ),
            budget=RetryBudget.from_config(config.retry, clock=clock),
            bulkhead=Bulkhead.from_config(config),
            backoff=BackoffPolicy.from_config(config.retry),
        )


class Relay:
    """Serves app requests over a fixed, ordered set of upstreams."""

    def __init__(
        self,
        config: Config,
        upstreams: Sequence[UpstreamRuntime],
        telemetry: Telemetry,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.upstreams = list(upstreams)
        self.telemetry = telemetry
        self.clock = clock
        self.rng = rng or random.Random()
        self.draining = False  # the daemon is stopping: no new requests
        self._runs: set[_Run] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        """App requests being served now."""
        return len(self._runs)

    def candidates(self, model: str) -> list[UpstreamRuntime]:
        return [u for u in self.upstreams if u.serves(model)]

    async def serve(self, req: ChatRequest, sink: AppSink, headers: Mapping[str, str]) -> None:
        """Relay one app request to completion, recovery or an explicit error."""
        ups = self.candidates(req.model)
        if not ups:
            await sink.fail(
                not_found(
                    f"The model `{req.model}` is not served by any configured upstream.",
                    code="model_not_found",
                )
            )
            return
        trace = self.telemetry.request(headers=headers, model=req.model, stream=req.stream)
        with trace:
            run = _Run(self, req, sink, trace, ups)
            self._runs.add(run)
            self._idle.clear()
            try:
                await run.run()
            except Exception:
                # A bug in intact must still never look like a complete answer.
                log.exception("relay_internal_error")
                await run.fail_internal()
            except asyncio.CancelledError:
                if not run.stopped_for_shutdown:
                    run.summary.outcome = Outcome.CANCELLED  # the app went away
                    raise
                # Our own cancellation at the drain deadline: tell the app, end normally.
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                await run.tell_shutdown()
            finally:
                self._runs.discard(run)
                if not self._runs:
                    self._idle.set()
                run.finish()

    async def drain(self, grace: float) -> None:
        """Stop taking requests; let streams run for ``grace`` seconds, then end the rest
        with an explicit error (in-band for streams that started, 503 for the others)."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for run in list(self._runs):
            run.stop_for_shutdown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), SHUTDOWN_NOTICE_SECONDS)


@dataclass
class _Failure:
    failure: UpstreamFailure
    upstream: UpstreamRuntime


@dataclass
class _Stats:
    per_upstream_attempts: Counter[str] = field(default_factory=Counter)
    schedules: dict[str, BackoffSchedule] = field(default_factory=dict)


class _Run:
    """The state of one app request while it is being served."""

    def __init__(
        self,
        relay: Relay,
        req: ChatRequest,
        sink: AppSink,
        trace: RequestTrace,
        ups: list[UpstreamRuntime],
    ) -> None:
        self.relay = relay
        self.req = req
        self.sink = sink
        self.trace = trace
        self.ups = ups
        self.primary = ups[0]
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        total = self.primary.config.stream.total_timeout
        if req.timeout is not None:
            total = min(total, req.timeout)
        self.total_timeout = total
        self.deadline = self.started + total
        self.max_attempts = self.primary.config.retry.max_attempts
        # Stick to an upstream for its share of attempts before failing over.
        self.share = max(1, self.max_attempts // len(ups))
        self.delivery = Delivery(
            sink,
            relay.config.recovery,
            app_wants_usage=req.app_wants_usage,
            n=req.n,
            token_limit=req.token_limit,
        )
        self.base_body = req.upstream_body()
        self.stats = _Stats()
        self.last: _Failure | None = None
        self.content_upstream: UpstreamRuntime | None = None
        self.interrupted_at: float | None = None
        self.final_filter: AttemptFilter | None = None
        self.task = asyncio.current_task()
        self.stopped_for_shutdown = False
        self.not_before: dict[str, float] = {}  # provider push-back, per upstream
        self.skipped: tuple[str, str, int | None, float | None] | None = None
        self.deposited = False
        self.summary = RequestSummary(
            outcome=Outcome.FAILED,
            model=req.model,
            stream=req.stream,
            upstream=self.primary.name,
            attempts=0,
            resumes=0,
        )

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        s = self.summary
        passed_over: set[str] = set()  # upstreams skipped for this attempt (wait, budget, slot)
        while True:
            if s.attempts >= self.max_attempts:
                await self.give_up(
                    "attempts_exhausted", f"all {s.attempts} upstream attempts failed"
                )
                return
            if self.loop.time() >= self.deadline:
                await self.give_up(
                    "deadline_exceeded", f"request deadline of {self.total_timeout:g}s reached"
                )
                return
            reason = (
                AttemptReason.INITIAL
                if s.attempts == 0
                else AttemptReason.RESUME
                if self.delivery.started
                else AttemptReason.RETRY
            )
            chosen = self.choose(reason, passed_over)
            if chosen is None:
                if self.skipped is not None:
                    code, message, status, retry_after = self.skipped
                    await self.give_up(code, message, status=status, retry_after=retry_after)
                else:
                    await self.give_up_unavailable()
                return
            up, alternatives = chosen
            if reason is AttemptReason.RESUME and self.delivery.budget_spent():
                # Interrupted exactly at max_tokens: the answer is complete as it is.
                await self.complete_at_token_limit()
                return
            prepared = await self.prepare(up, reason, can_skip=alternatives)
            if prepared is None:
                return
            if prepared is _SKIP:
                passed_over.add(up.name)
                continue
            assert isinstance(prepared, tuple)
            slot, permit = prepared
            passed_over.clear()
            self.skipped = None
            s.attempts += 1
            self.stats.per_upstream_attempts[up.name] += 1
            s.upstream = up.name
            try:
                failure = await self.attempt(up, reason, permit)
            finally:
                slot.release()
            if failure is None:
                await self.complete()
                return
            if failure.kind is FailureKind.DEADLINE:
                await self.give_up(
                    "deadline_exceeded", f"request deadline of {self.total_timeout:g}s reached"
                )
                return
            if not failure.retryable:
                await self.final_error(failure)
                return

    async def prepare(
        self, up: UpstreamRuntime, reason: AttemptReason, *, can_skip: bool
    ) -> tuple[BulkheadSlot, BreakerPermit] | object | None:
        """Everything between choosing an upstream and sending: resumability, backoff,
        budget, a stream slot and, last, the breaker's permit (taken after any wait, so an
        upstream whose breaker opened meanwhile is not called). Returns None after ending
        the request explicitly, or _SKIP when another upstream should be tried instead."""

        async def refuse(code: str, message: str, **kw: Any) -> object | None:
            if can_skip:
                self.skipped = (code, message, kw.get("status"), kw.get("retry_after"))
                return _SKIP
            await self.give_up(code, message, **kw)
            return None

        if reason is AttemptReason.RESUME:
            why = self.delivery.why_not_resumable(up.config.resume)
            if why is not None:
                await self.give_up("not_resumable", f"stream interrupted and {why}")
                return None
        delay = 0.0
        if reason is AttemptReason.INITIAL:
            if not self.deposited:
                up.budget.deposit()
                self.deposited = True
        else:
            wait = self.delay_before(up)
            if wait is None:
                return await refuse(
                    "retry_after_too_long",
                    f"upstream {up.name} asked to wait longer than retry.max_retry_after",
                )
            if self.loop.time() + wait >= self.deadline:
                return await refuse(
                    "deadline_exceeded", "the next retry would pass the request deadline"
                )
            if not up.budget.try_withdraw():
                self.trace.budget_exhausted(up.name)
                log.warning("retry_budget_exhausted", upstream=up.name)
                return await refuse(
                    "retry_budget_exhausted", f"retry budget of upstream {up.name} is spent"
                )
            delay = wait
        if delay > 0:
            await self.relay.clock.sleep(delay)
        slot = await up.bulkhead.acquire()
        if slot is None:
            return await refuse(
                "overloaded",
                f"upstream {up.name} has no free stream slot",
                status=503,
                retry_after=1.0,
            )
        permit = up.breaker.try_acquire()
        if permit is None:
            slot.release()
            return await refuse(
                "upstream_unavailable",
                f"the circuit breaker of upstream {up.name} is open",
                status=503,
                retry_after=max(1.0, up.breaker.retry_after()),
            )
        return slot, permit

    def choose(
        self, reason: AttemptReason, passed_over: set[str]
    ) -> tuple[UpstreamRuntime, bool] | None:
        """Pick the upstream for the next attempt (one whose breaker is not open), and say
        whether another upstream could be tried if this one has to be passed over."""
        if (
            reason is AttemptReason.RESUME
            and self.content_upstream is not None
            and not self.relay.config.recovery.resume_across_upstreams
        ):
            order = [self.content_upstream]
        elif self.last is not None:
            # Stay on the upstream that just failed for its share of attempts, then move on.
            current = self.last.upstream
            start = self.ups.index(current)
            if self.stats.per_upstream_attempts[current.name] >= self.share:
                start += 1
            order = [self.ups[(start + i) % len(self.ups)] for i in range(len(self.ups))]
        else:
            order = self.ups
        usable = [
            u for u in order
            if u.name not in passed_over and u.breaker.state is not BreakerState.OPEN
        ]  # fmt: skip
        if not usable:
            return None
        return usable[0], len(usable) > 1

    def delay_before(self, up: UpstreamRuntime) -> float | None:
        """Seconds to wait before the next attempt on ``up``: what the upstream asked for
        (Retry-After and friends), else backoff after its own failure, else nothing.
        None if it asks for longer than ``max_retry_after``."""
        now = self.loop.time()
        not_before = self.not_before.get(up.name)
        if not_before is not None:
            wait = not_before - now
            if wait > up.config.retry.max_retry_after:
                return None
            if wait > 0:
                return wait
        last = self.last
        if last is None or last.upstream is not up or last.failure.pushback is not None:
            return 0.0  # failing over: the other upstream did not ask us to wait
        schedule = self.stats.schedules.get(up.name)
        if schedule is None:
            schedule = up.backoff.schedule(self.relay.rng)
            self.stats.schedules[up.name] = schedule
        return schedule.next_delay()

    # -- one attempt ------------------------------------------------------------------

    async def attempt(
        self, up: UpstreamRuntime, reason: AttemptReason, permit: BreakerPermit
    ) -> UpstreamFailure | None:
        """Run one upstream attempt; None on success, else the classified failure."""
        d = self.delivery
        resuming = reason is AttemptReason.RESUME and d.content_chars > 0
        if reason is AttemptReason.RESUME:
            self.summary.resumes += 1
        filt = d.attempt()
        body = self.base_body
        if d.started:
            body = resume_request(
                self.base_body,
                d.content(),
                mode=up.config.resume,
                generated_tokens=d.tokens_delivered,
                instruct_prompt=self.relay.config.recovery.instruct_prompt,
            )
        span = self.trace.attempt(
            number=self.summary.attempts,
            reason=reason,
            upstream=up.client.info,
            request_model=self.req.model,
            resume_mode=up.config.resume if resuming else None,
            prefix_chars=d.content_chars if resuming else 0,
        )
        with span:
            try:
                await self.stream(up, orjson.dumps(body), filt, span, permit)
            except UpstreamFailure as failure:
                if failure.breaker_failure:
                    permit.record(CallOutcome.FAILURE)  # a no-op once judged a success...
                    permit.record_late_failure()  # ...then it counts as a mid-stream drop
                else:
                    permit.record(CallOutcome.IGNORED)
                span.failed(
                    failure,
                    response_id=filt.response_id,
                    response_model=filt.response_model,
                    delivered_tokens=filt.tokens_delivered,
                )
                self.note_failure(up, failure, filt, reason)
                return failure
            except asyncio.CancelledError:
                permit.record(CallOutcome.IGNORED)
                span.cancelled(delivered_tokens=filt.tokens_delivered)
                raise
            except BaseException:
                permit.record(CallOutcome.IGNORED)
                raise
            permit.record(CallOutcome.SUCCESS)
            usage = filt.usage or {}
            span.succeeded(
                response_id=filt.response_id,
                response_model=filt.response_model,
                finish_reasons=[filt.finish_reason] if filt.finish_reason else [],
                input_tokens=usage.get("prompt_tokens"),
                output_tokens=usage.get("completion_tokens"),
                delivered_tokens=filt.tokens_delivered,
            )
        self.account(up, filt, reason)
        self.final_filter = filt
        return None

    async def stream(
        self,
        up: UpstreamRuntime,
        body: bytes,
        filt: AttemptFilter,
        span: AttemptTrace,
        permit: BreakerPermit,
    ) -> None:
        """Read one attempt's SSE stream into the filter; raise UpstreamFailure if it breaks."""
        timeouts = up.config.stream
        headers: dict[str, str] = {}
        span.inject(headers)
        try:
            with Watchdog(
                first_token=timeouts.first_token_timeout,
                stall=timeouts.stall_timeout,
                deadline=self.deadline,
            ) as watchdog:
                resp = await up.client.open_stream(body, headers=headers)
                clean = False
                try:
                    decoder = SSEDecoder()
                    got_first = False
                    judged = False
                    done = False
                    async for data in resp.content.iter_any():
                        for event in decoder.feed(data):
                            if event.data == DONE_DATA:
                                done = True
                                break
                            if not got_first:
                                got_first = True
                                watchdog.first_event()
                                span.first_chunk()
                            try:
                                obj = orjson.loads(event.data)
                            except orjson.JSONDecodeError:
                                raise classify.protocol_error("event data is not JSON") from None
                            if not isinstance(obj, dict):
                                raise classify.protocol_error("event data is not a JSON object")
                            await filt.on_chunk(obj, event.data)
                            if not judged:
                                # The upstream is serving: judge the call now, not at the end.
                                judged = True
                                permit.record(CallOutcome.SUCCESS)
                            if self.interrupted_at is not None and filt.tokens_delivered:
                                self.trace.recovered(
                                    upstream=up.name, seconds=self.loop.time() - self.interrupted_at
                                )
                                self.interrupted_at = None
                        # Time spent writing to a slow app is not upstream silence.
                        watchdog.progress()
                        if done:
                            break
                    clean = True
                except (
                    aiohttp.ClientPayloadError,
                    aiohttp.ClientConnectionError,
                    ConnectionError,
                ) as exc:
                    raise classify.from_exception(exc, before_response=False) from None
                except SSEProtocolError as exc:
                    raise classify.protocol_error(str(exc)) from None
                finally:
                    if clean and done:
                        resp.release()
                    else:
                        resp.close()
        except UpstreamFailure:
            if not filt.finished:
                raise
            # The finish_reason arrived: the answer is whole, only the usage chunk or
            # [DONE] was lost. Completing beats resuming onto a finished answer.
        if not filt.finished:
            raise classify.truncated()
        await filt.on_stream_end()

    # -- bookkeeping ------------------------------------------------------------------

    def note_failure(
        self,
        up: UpstreamRuntime,
        failure: UpstreamFailure,
        filt: AttemptFilter,
        reason: AttemptReason,
    ) -> None:
        self.last = _Failure(failure, up)
        if failure.pushback is not None:
            self.not_before[up.name] = self.loop.time() + failure.pushback
        if failure.kind is not FailureKind.HTTP_4XX:
            self.summary.interruptions.append(failure.kind)
            if self.interrupted_at is None:
                self.interrupted_at = self.loop.time()
        self.account(up, filt, reason)
        if failure.retryable:
            log.warning(
                "upstream_interrupted",
                upstream=up.name,
                kind=failure.kind.value,
                status=failure.status,
                attempt=self.summary.attempts,
                reason=reason.value,
                delivered_chars=self.delivery.content_chars,
                detail=failure.message,
            )

    def account(self, up: UpstreamRuntime, filt: AttemptFilter, reason: AttemptReason) -> None:
        if filt.tokens_delivered and self.content_upstream is None:
            self.content_upstream = up
        if reason is AttemptReason.RESUME:
            self.summary.recovered_tokens += filt.tokens_delivered

    # -- endings ----------------------------------------------------------------------

    def _counts_comment(self) -> str:
        s = self.summary
        return f"intact attempts={s.attempts} resumed={s.resumes}"

    async def complete(self) -> None:
        s = self.summary
        filt = self.final_filter
        assert filt is not None
        usage = filt.usage_chunk()
        if usage is not None:
            await self.sink.send_chunk(usage[0], usage[1])
        if s.attempts > 1:
            await self.sink.send_comment(self._counts_comment())
        await self.sink.finish(
            {"intact-attempts": str(s.attempts), "intact-resumed": str(s.resumes)}
        )
        s.outcome = Outcome.RECOVERED if s.interruptions else Outcome.COMPLETED
        s.completion_tokens = self.delivery.tokens_delivered

    async def fail_internal(self) -> None:
        await self._end_abruptly(
            500, "internal_error", "intact hit an internal error while relaying this request",
            "server_error",
        )  # fmt: skip

    async def _end_abruptly(
        self, status: int, code: str, message: str, http_type: str, retry_after: bool = False
    ) -> None:
        """End a request the relay loop could not finish (a bug, the drain deadline):
        in-band if the stream started, else an HTTP error; never raises."""
        s = self.summary
        s.outcome = Outcome.FAILED
        s.error_code = code
        s.status = status
        committed = self.sink.committed
        error = AppError(
            status=status,
            message=message,
            type=STREAM_INTERRUPTED if committed else http_type,
            code=code,
            headers={"Retry-After": "1"} if retry_after and not committed else {},
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sink.fail(error), timeout=SHUTDOWN_NOTICE_SECONDS / 2)

    def stop_for_shutdown(self) -> None:
        """Cancel this request's task because the daemon's drain deadline passed."""
        self.stopped_for_shutdown = True
        if self.task is not None:
            self.task.cancel()

    async def tell_shutdown(self) -> None:
        """The drain deadline cut this request: say so, in-band if the stream started."""
        await self._end_abruptly(
            503,
            "daemon_shutdown",
            "intact is shutting down and its drain deadline (server.drain_timeout) ended this "
            "request",
            "upstream_unavailable",
            retry_after=True,
        )

    async def complete_at_token_limit(self) -> None:
        filt = self.delivery.attempt()
        await filt.synthesize_finish("length")
        self.final_filter = filt
        await self.complete()

    async def final_error(self, failure: UpstreamFailure) -> None:
        """A non-retryable failure: pass it through if we still can, else say so in-band."""
        s = self.summary
        s.status = failure.status or 502
        if not self.sink.committed and failure.status is not None:
            s.outcome = Outcome.REJECTED if failure.status < 500 else Outcome.FAILED
            await self.sink.pass_through(_passable(failure))
            return
        s.outcome = Outcome.FAILED
        if self.sink.committed:
            # The stream broke and the upstream refused to continue it (e.g. no prefill).
            await self._fail(
                AppError(
                    status=502,
                    message=failure.message,
                    type=STREAM_INTERRUPTED,
                    code="resume_rejected",
                )
            )
            return
        await self._fail(
            AppError(
                status=502, message=failure.message, type="upstream_error", code=failure.kind.value
            )
        )

    async def give_up_unavailable(self) -> None:
        waits = [u.breaker.retry_after() for u in self.ups if u.breaker.state is BreakerState.OPEN]
        retry_after = min(waits) if waits else 1.0
        await self.give_up(
            "upstream_unavailable",
            "every upstream for this model has an open circuit breaker",
            status=503,
            retry_after=retry_after,
        )

    async def give_up(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Out of attempts, budget, time or upstreams: end with an explicit error."""
        s = self.summary
        s.outcome = Outcome.FAILED
        s.error_code = code
        last = self.last.failure if self.last else None
        if last is not None:
            message = f"{message}; last failure: {last.message}"
        if not self.sink.committed:
            if last is not None and last.status is not None and status is None:
                # Give the app what the upstream said (e.g. 429 with its Retry-After).
                s.status = last.status
                await self.sink.pass_through(_passable(last))
                return
            if status is None:
                status = (
                    504
                    if (last is not None and last.kind in _TIMEOUT_KINDS)
                    or code == "deadline_exceeded"
                    else 502
                )
            s.status = status
            headers = (
                {"Retry-After": str(max(1, math.ceil(retry_after)))}
                if retry_after is not None
                else {}
            )
            await self.sink.fail(
                AppError(
                    status=status,
                    message=message,
                    type="upstream_unavailable" if status == 503 else "upstream_error",
                    code=code,
                    headers=headers,
                )
            )
            return
        await self._fail(AppError(status=502, message=message, type=STREAM_INTERRUPTED, code=code))

    async def _fail(self, error: AppError) -> None:
        self.summary.status = error.status
        self.summary.error_code = error.code
        if self.sink.committed:
            await self.sink.send_comment(self._counts_comment())
            log.error(
                "stream_lost",
                code=error.code,
                attempts=self.summary.attempts,
                delivered_chars=self.delivery.content_chars,
                detail=error.message,
            )
        await self.sink.fail(error)

    def finish(self) -> None:
        s = self.summary
        s.duration = self.loop.time() - self.started
        if s.outcome is not Outcome.CANCELLED and not s.completion_tokens:
            s.completion_tokens = self.delivery.tokens_delivered
        if self.relay.config.telemetry.log_content:
            # Opt-in only (telemetry.log_content): prompts and answers can hold user data.
            log.info(
                "request_content",
                messages=self.req.body.get("messages"),
                completion=self.delivery.content(),
                outcome=s.outcome.value,
            )
        self.trace.finish(s)


def _passable(failure: UpstreamFailure) -> UpstreamResponseError:
    """The upstream's own error response, made safe to hand to the app."""
    body = failure.body
    try:
        payload: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    if not (isinstance(payload, dict) and "error" in payload):
        text = body.decode("utf-8", "replace")[:500] if body else failure.message
        body = AppError(
            status=failure.status or 502,
            message=text,
            type="upstream_error",
            code=failure.kind.value,
        ).body()
    keep = {
        k: v
        for k, v in failure.headers.items()
        if k.lower() in ("retry-after", "retry-after-ms", "x-request-id")
        or k.lower().startswith("x-ratelimit-")
    }
    return UpstreamResponseError(status=failure.status or 502, body=body, headers=keep)
