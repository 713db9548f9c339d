"""The story of one app request: choose an upstream, open a stream, pump it to the app,
decide what happens after a break.

Commit point = the first chunk forwarded to the app (Envoy's "response started", gRPC's
"committed"). Before it, failures are retried invisibly: the app only sees a slower first
token. After it, the only way forward is a resume that continues the partial text, spliced
into the same stream. Every attempt of either kind goes through the same machinery: the
upstream's breaker (fail fast while open), its retry budget (no retry storms), backoff or the
provider's own Retry-After (``resilience.failover``), the concurrency bound, and the
request's deadline. When nothing is left, the app gets an explicit error
(``relay.endings``): an HTTP error before the commit point, an SSE error event after it.
Never a clean close on a partial answer.

The upstream reader (``upstream.stream``) and the app writer (``relay.app_writer``) meet
here and nowhere else: upstream failures arrive as ``UpstreamFailure``, app-side ones as
``AppGone`` / ``AppTooSlow``, so neither party is ever charged for the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import structlog

from intact.clock import SYSTEM_CLOCK, Clock
from intact.config import Config
from intact.errors import AppError, UpstreamResponseError, not_found
from intact.recovery.resume import effective_resume_mode
from intact.relay import endings
from intact.relay.app_writer import AppGone, AppTooSlow
from intact.relay.delivery import AttemptFilter, Delivery
from intact.relay.request import ChatRequest
from intact.relay.sinks import AppSink
from intact.resilience import classify
from intact.resilience.breaker import BreakerPermit, BreakerState, CallOutcome
from intact.resilience.bulkhead import BulkheadSlot
from intact.resilience.classify import FailureKind, UpstreamFailure
from intact.resilience.failover import FailoverPlan
from intact.telemetry.api import (
    AttemptReason,
    AttemptTrace,
    Outcome,
    RequestSummary,
    RequestTrace,
    Telemetry,
)
from intact.upstream.runtime import UpstreamRuntime
from intact.upstream.stream import UpstreamStream

log = structlog.get_logger("intact.relay")

# After the drain deadline: how long cut requests get to write their explicit error.
SHUTDOWN_NOTICE_SECONDS = 2.0

__all__ = ["SHUTDOWN_NOTICE_SECONDS", "Relay", "UpstreamRuntime"]


class _Skip(Exception):
    """prepare(): this upstream cannot take the attempt now; another may."""


class _Ended(Exception):
    """prepare(): the request was ended explicitly."""


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
            except AppGone:
                run.summary.outcome = Outcome.CANCELLED  # the app went away mid-write
                await sink.gone()
            except AppTooSlow:
                await run.app_too_slow()
            except Exception:
                # A bug in intact must still never look like a complete answer.
                log.exception("relay_internal_error")
                await run.fail_internal()
            except asyncio.CancelledError:
                if not run.stopped_for_shutdown:
                    run.summary.outcome = Outcome.CANCELLED  # the app went away
                    await sink.gone()
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
        self.primary = ups[0]
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        total = self.primary.config.stream.total_timeout
        if req.timeout is not None:
            total = min(total, req.timeout)
        self.total_timeout = total
        self.deadline = self.started + total
        self.max_attempts = self.primary.config.retry.max_attempts
        self.plan = FailoverPlan(ups, self.max_attempts, relay.rng)
        self.delivery = self._new_delivery()
        self.base_body = req.upstream_body()
        self.interrupted_at: float | None = None
        self.final_filter: AttemptFilter | None = None
        self.task = asyncio.current_task()
        self.stopped_for_shutdown = False
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

    def _new_delivery(self) -> Delivery:
        req = self.req
        return Delivery(
            self.sink,
            self.relay.config.recovery,
            app_wants_usage=req.app_wants_usage,
            n=req.n,
            token_limit=req.token_limit,
        )

    @property
    def last_failure(self) -> UpstreamFailure | None:
        return self.plan.last_failure

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
            chosen = self.plan.choose(
                resume=reason is AttemptReason.RESUME,
                resume_across=self.relay.config.recovery.resume_across_upstreams,
                passed_over=passed_over,
            )
            if chosen is None:
                if self.skipped is not None:
                    code, message, status, retry_after = self.skipped
                    await self.give_up(code, message, status=status, retry_after=retry_after)
                else:
                    await self.give_up_unavailable()
                return
            up, alternatives = chosen
            if reason is AttemptReason.RESUME:
                if self.delivery.budget_spent():
                    # Interrupted exactly at max_tokens: the answer is complete as it is.
                    await self.complete_at_token_limit()
                    return
                why = self.delivery.why_not_resumable(self.resume_mode(up), self.base_body)
                if why is not None:
                    if not self.sink.reset():
                        await self.give_up("not_resumable", f"stream interrupted and {why}")
                        return
                    # Nothing reached the app (a collected answer): run the request again.
                    self.delivery = self._new_delivery()
                    reason = AttemptReason.RETRY
            try:
                slot, permit = await self.prepare(up, reason, can_skip=alternatives)
            except _Skip:
                passed_over.add(up.name)
                continue
            except _Ended:
                return
            passed_over.clear()
            self.skipped = None
            s.attempts += 1
            self.plan.attempted(up)
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

    def resume_mode(self, up: UpstreamRuntime) -> str:
        """The upstream's resume mode, narrowed by the app's intact-resume header."""
        return effective_resume_mode(up.config.resume, self.req.resume)

    async def prepare(
        self, up: UpstreamRuntime, reason: AttemptReason, *, can_skip: bool
    ) -> tuple[BulkheadSlot, BreakerPermit]:
        """Everything between choosing an upstream and sending: backoff, budget, a stream
        slot and, last, the breaker's permit (taken after any wait, so an upstream whose
        breaker opened meanwhile is not called). Raises _Skip when another upstream should
        be tried instead, _Ended after ending the request explicitly."""

        async def refuse(code: str, message: str, **kw: Any) -> _Skip | _Ended:
            if can_skip:
                self.skipped = (code, message, kw.get("status"), kw.get("retry_after"))
                return _Skip()
            await self.give_up(code, message, **kw)
            return _Ended()

        delay = 0.0
        if reason is AttemptReason.INITIAL:
            if not self.deposited:
                up.budget.deposit()
                self.deposited = True
        else:
            wait = self.plan.delay_before(up, self.loop.time())
            if wait is None:
                raise await refuse(
                    "retry_after_too_long",
                    f"upstream {up.name} asked to wait longer than retry.max_retry_after",
                )
            if self.loop.time() + wait >= self.deadline:
                raise await refuse(
                    "deadline_exceeded", "the next retry would pass the request deadline"
                )
            if not up.budget.try_withdraw():
                self.trace.budget_exhausted(up.name)
                log.warning("retry_budget_exhausted", upstream=up.name)
                raise await refuse(
                    "retry_budget_exhausted", f"retry budget of upstream {up.name} is spent"
                )
            delay = wait
        if delay > 0:
            await self.relay.clock.sleep(delay)
        slot = await up.bulkhead.acquire()
        if slot is None:
            raise await refuse(
                "overloaded",
                f"upstream {up.name} has no free stream slot",
                status=503,
                retry_after=1.0,
            )
        permit = up.breaker.try_acquire()
        if permit is None:
            slot.release()
            raise await refuse(
                "upstream_unavailable",
                f"the circuit breaker of upstream {up.name} is open",
                status=503,
                retry_after=max(1.0, up.breaker.retry_after()),
            )
        return slot, permit

    # -- one attempt ------------------------------------------------------------------

    async def attempt(
        self, up: UpstreamRuntime, reason: AttemptReason, permit: BreakerPermit
    ) -> UpstreamFailure | None:
        """Run one upstream attempt; None on success, else the classified failure.
        AppGone / AppTooSlow propagate: they say nothing about the upstream."""
        d = self.delivery
        mode = self.resume_mode(up)
        resuming = reason is AttemptReason.RESUME and d.answer_chars > 0
        if reason is AttemptReason.RESUME:
            self.summary.resumes += 1
        filt = d.attempt(mode)
        body = d.resume_body(self.base_body, mode, self.relay.config.recovery.instruct_prompt)
        span = self.trace.attempt(
            number=self.summary.attempts,
            reason=reason,
            upstream=up.client.info,
            request_model=self.req.model,
            resume_mode=mode if resuming else None,
            prefix_chars=d.answer_chars if resuming else 0,
        )
        with span:
            try:
                await self.stream(up, orjson.dumps(body), filt, span, permit)
            except UpstreamFailure as failure:
                if failure.breaker_failure:
                    permit.record(CallOutcome.FAILURE)  # a no-op once judged a success...
                    permit.record_late_failure()  # ...then the success becomes a failure
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
            except BaseException:
                # The app left or stopped reading, or intact is stopping: not the upstream's.
                permit.record(CallOutcome.IGNORED)
                span.cancelled(delivered_tokens=filt.tokens_delivered)
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
        """Pump one attempt's events into the filter, one batch per upstream read, with
        the app's backpressure between reads; raise UpstreamFailure if the stream breaks."""
        timeouts = up.config.stream
        headers: dict[str, str] = {}
        span.inject(headers)
        sink = self.sink
        try:
            async with UpstreamStream(
                up.client,
                body,
                headers=headers,
                first_token_timeout=timeouts.first_token_timeout,
                stall_timeout=timeouts.stall_timeout,
                deadline=self.deadline,
            ) as events:
                judged = False
                while (batch := await events.next_batch()) is not None:
                    if not batch:
                        continue
                    if not judged:
                        span.first_chunk()
                    for obj, raw in batch:
                        await filt.on_chunk(obj, raw)
                    if not judged:
                        # The upstream is serving: judge the call now, not at the end.
                        judged = True
                        permit.record(CallOutcome.SUCCESS)
                    if self.interrupted_at is not None and filt.tokens_delivered:
                        self.trace.recovered(
                            upstream=up.name, seconds=self.loop.time() - self.interrupted_at
                        )
                        self.interrupted_at = None
                    await sink.flow()  # the upstream is not read while the app is behind
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
        self.plan.failed(up, failure, self.loop.time())
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
        if filt.tokens_delivered and self.plan.content_upstream is None:
            self.plan.content_upstream = up
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

    async def complete_at_token_limit(self) -> None:
        filt = self.delivery.attempt()
        await filt.synthesize_finish("length")
        self.final_filter = filt
        await self.complete()

    async def final_error(self, failure: UpstreamFailure) -> None:
        """A non-retryable failure: pass it through if we still can, else say so."""
        error, outcome = endings.final_error(
            failure, committed=self.sink.committed, started=self.delivery.started
        )
        self.summary.status = failure.status or 502
        await self._end(error, outcome)

    async def give_up_unavailable(self) -> None:
        ups = self.plan.ups
        waits = [u.breaker.retry_after() for u in ups if u.breaker.state is BreakerState.OPEN]
        await self.give_up(
            "upstream_unavailable",
            "every upstream for this model has an open circuit breaker",
            status=503,
            retry_after=min(waits) if waits else 1.0,
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
        error = endings.give_up(
            code,
            message,
            last=self.last_failure,
            committed=self.sink.committed,
            status=status,
            retry_after=retry_after,
        )
        self.summary.error_code = code
        await self._end(error, Outcome.FAILED)

    async def _end(self, error: AppError | UpstreamResponseError, outcome: Outcome) -> None:
        s = self.summary
        s.outcome = outcome
        s.status = error.status
        if isinstance(error, UpstreamResponseError):
            await self.sink.pass_through(error)
            return
        s.error_code = error.code
        if self.sink.committed:
            await self.sink.send_comment(self._counts_comment())
            log.error(
                "stream_lost",
                code=error.code,
                attempts=s.attempts,
                delivered_chars=self.delivery.content_chars,
                detail=error.message,
            )
        await self.sink.fail(error)

    async def app_too_slow(self) -> None:
        """The app stopped reading: its stream ends with client_too_slow; the upstream is
        already closed. Counted as the app's doing (cancelled), not a failure of intact."""
        s = self.summary
        limits = self.relay.config.server
        error = endings.client_too_slow(limits.app_write_timeout)
        s.outcome = Outcome.CANCELLED
        s.status = error.status
        s.error_code = error.code
        log.warning(
            "app_too_slow",
            delivered_chars=self.delivery.content_chars,
            app_write_timeout=limits.app_write_timeout,
        )
        await self.sink.too_slow(error)

    async def _end_abruptly(self, error: AppError) -> None:
        """End a request the relay loop could not finish (a bug, the drain deadline):
        in-band if the stream started, else an HTTP error; never raises."""
        s = self.summary
        s.outcome = Outcome.FAILED
        s.error_code = error.code
        s.status = error.status
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sink.fail(error), timeout=SHUTDOWN_NOTICE_SECONDS / 2)

    async def fail_internal(self) -> None:
        await self._end_abruptly(
            endings.abrupt(
                500,
                "internal_error",
                "intact hit an internal error while relaying this request",
                "server_error",
                committed=self.sink.committed,
            )
        )

    def stop_for_shutdown(self) -> None:
        """Cancel this request's task because the daemon's drain deadline passed."""
        self.stopped_for_shutdown = True
        if self.task is not None:
            self.task.cancel()

    async def tell_shutdown(self) -> None:
        """The drain deadline cut this request: say so, in-band if the stream started."""
        await self._end_abruptly(
            endings.abrupt(
                503,
                "daemon_shutdown",
                "intact is shutting down and its drain deadline (server.drain_timeout) ended "
                "this request",
                "upstream_unavailable",
                committed=self.sink.committed,
            )
        )

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
