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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import structlog

from intact.clock import SYSTEM_CLOCK, Clock
from intact.config import Config, RouteConfig, parse_target
from intact.errors import AppError, UpstreamResponseError, not_found
from intact.recovery.resume import effective_resume_mode
from intact.relay import endings
from intact.relay.app_writer import AppGone, AppTooSlow
from intact.relay.protocol import Answer, AppRequest, AttemptFeed, UpstreamCall
from intact.relay.sinks import AppSink
from intact.resilience import classify
from intact.resilience.admission import Admission, Refused, take_slot
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
from intact.upstream.runtime import Target, UpstreamRuntime
from intact.upstream.stream import UpstreamStream

log = structlog.get_logger("intact.relay")

# After the drain deadline: how long cut requests get to write their explicit error.
SHUTDOWN_NOTICE_SECONDS = 2.0

__all__ = ["SHUTDOWN_NOTICE_SECONDS", "Relay", "Target", "UpstreamRuntime"]


class Held(Protocol):
    """A request in flight, as drain and reload see it."""

    @property
    def plan(self) -> FailoverPlan[Target]: ...

    def stop_for_shutdown(self) -> None: ...


class _Race:
    """Hedged attempts of one request: the first to produce an event wins, once, and the
    others are cancelled at that moment."""

    __slots__ = ("tasks", "winner")

    def __init__(self) -> None:
        self.winner: Target | None = None
        self.tasks: list[asyncio.Task[UpstreamFailure | None]] = []

    def decided(self) -> bool:
        return self.winner is not None

    def claim(self, target: Target) -> bool:
        if self.winner is None:
            self.winner = target
            me = asyncio.current_task()
            for task in self.tasks:
                if task is not me:
                    task.cancel()
            return True
        return self.winner is target


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
        self._by_name = {u.name: u for u in self.upstreams}
        self._routes: dict[str, RouteConfig] = {r.model: r for r in config.routes}
        self._runs: set[Held] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        """App requests being served now."""
        return len(self._runs)

    def reconfigure(self, config: Config, upstreams: Sequence[UpstreamRuntime]) -> None:
        """A reload: new requests use ``config`` and ``upstreams``; requests in flight keep
        the upstreams they hold and finish on them."""
        self.config = config
        self.upstreams = list(upstreams)
        self._by_name = {u.name: u for u in self.upstreams}
        self._routes = {r.model: r for r in config.routes}

    @contextlib.contextmanager
    def holding(self, run: Held) -> Iterator[None]:
        """Count ``run`` as in flight: drain waits for it (then stops it), and a reload does
        not close the upstreams it holds."""
        self._runs.add(run)
        self._idle.clear()
        try:
            yield
        finally:
            self._runs.discard(run)
            if not self._runs:
                self._idle.set()

    def upstreams_in_use(self) -> set[int]:
        """ids of the upstream runtimes that requests in flight hold."""
        return {id(t.upstream) for run in self._runs for t in run.plan.ups}

    def candidates(self, model: str) -> list[Target]:
        """Where a request for ``model`` may go, in order: its route's targets, else every
        upstream that serves the model (asked for it unchanged)."""
        route = self._routes.get(model)
        if route is not None and route.targets:
            return self.targets(model, route.targets)
        return [Target(u, model, model) for u in self.upstreams if u.serves(model)]

    def targets(self, model: str, specs: Sequence[str]) -> list[Target]:
        out = []
        for spec in specs:
            name, target_model = parse_target(spec)
            out.append(Target(self._by_name[name], target_model or model, model))
        return out

    def route(self, model: str) -> RouteConfig | None:
        return self._routes.get(model)

    async def serve(self, req: AppRequest, sink: AppSink, headers: Mapping[str, str]) -> None:
        """Relay one app request to completion, recovery or an explicit error."""
        for_model = self.candidates(req.model)
        ups = [t for t in for_model if t.upstream.serves_api(req.api)]
        if not ups:
            message = f"The model `{req.model}` is not served by any configured upstream."
            if for_model:
                message = (
                    f"No configured upstream serves the `{req.api}` API for the model "
                    f"`{req.model}` (see the upstreams' `kind` and `apis` settings)."
                )
            await sink.fail(not_found(message, code="model_not_found"))
            return
        trace = self.telemetry.request(
            headers=headers, model=req.model, stream=req.stream, api=req.api
        )
        with trace:
            run = _Run(self, req, sink, trace, ups)
            with self.holding(run):
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
        req: AppRequest,
        sink: AppSink,
        trace: RequestTrace,
        ups: list[Target],
    ) -> None:
        self.relay = relay
        self.req = req
        self.sink = sink
        self.trace = trace
        self.primary = ups[0]
        primary = self.primary.upstream.config
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        total = primary.stream.total_timeout
        if req.timeout is not None:
            total = min(total, req.timeout)
        self.total_timeout = total
        self.deadline = self.started + total
        self.answer_start_timeout = min(total, primary.stream.answer_start_timeout)
        self.answer_deadline = self.started + self.answer_start_timeout
        self.max_attempts = primary.retry.max_attempts
        self.max_hedges = primary.routing.max_hedges
        self.hedges = 0
        self.fallbacks_used: set[str] = set()  # "context" / "policy" chains already tried
        self.plan = FailoverPlan(ups, self.max_attempts, relay.rng)
        self.delivery = self._new_delivery()
        self.base_body = req.upstream_body()
        self.interrupted_at: float | None = None
        self.final_filter: AttemptFeed | None = None
        self.task = asyncio.current_task()
        self.stopped_for_shutdown = False
        self.skipped: tuple[str, str, int | None, float | None] | None = None
        self.admission = Admission(self.loop.time, relay.clock.sleep)
        self.summary = RequestSummary(
            outcome=Outcome.FAILED,
            model=req.model,
            stream=req.stream,
            upstream=self.primary.name,
            attempts=0,
            resumes=0,
            api=req.api,
        )

    def _new_delivery(self) -> Answer:
        return self.req.new_answer(self.sink, self.relay.config.recovery)

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
            if self.loop.time() >= self.attempt_deadline():
                await self.give_up_deadline()
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
                why = self.delivery.why_not_resumable(
                    self.resume_mode(up), self.base_body, up.upstream.name
                )
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
            s.upstream = up.upstream.name
            failure = await self.race(up, reason, slot, permit)
            if failure is None:
                await self.complete()
                return
            if failure.kind is FailureKind.DEADLINE:
                await self.give_up_deadline()
                return
            if not failure.retryable:
                if self.fall_back(failure):
                    passed_over.clear()
                    continue
                await self.final_error(failure)
                return

    def resume_mode(self, up: Target) -> str:
        """The upstream's resume mode, narrowed by the app's intact-resume header."""
        return effective_resume_mode(up.upstream.config.resume, self.req.resume)

    def attempt_deadline(self) -> float:
        """Until the app has its first chunk, stream.answer_start_timeout bounds the wait."""
        if self.delivery.started:
            return self.deadline
        return min(self.deadline, self.answer_deadline)

    async def give_up_deadline(self) -> None:
        if not self.delivery.started and self.answer_deadline < self.deadline:
            await self.give_up(
                "deadline_exceeded",
                f"no answer within stream.answer_start_timeout ({self.answer_start_timeout:g}s)",
            )
            return
        await self.give_up(
            "deadline_exceeded", f"request deadline of {self.total_timeout:g}s reached"
        )

    def fall_back(self, failure: UpstreamFailure) -> bool:
        """A final refusal that a configured fallback chain may answer instead (a larger
        context, another provider's content policy): switch the plan to that chain."""
        route = self.relay.route(self.req.model)
        why = classify.refusal_reason(failure)
        if route is None or why is None or why in self.fallbacks_used or self.delivery.started:
            return False
        specs = route.context_fallbacks if why == "context_length" else route.policy_fallbacks
        if not specs:
            return False
        self.fallbacks_used.add(why)
        targets = [
            t
            for t in self.relay.targets(self.req.model, specs)
            if t.upstream.serves_api(self.req.api)
        ]
        if not targets:
            return False
        self.plan = FailoverPlan(targets, len(targets), self.relay.rng)
        self.max_attempts = max(self.max_attempts, self.summary.attempts + len(targets))
        log.info(
            "fallback",
            reason=why,
            model=self.req.model,
            targets=[t.name for t in targets],
            detail=failure.message,
        )
        return True

    async def prepare(
        self, up: Target, reason: AttemptReason, *, can_skip: bool
    ) -> tuple[BulkheadSlot, BreakerPermit]:
        """Everything between choosing an upstream and sending (``resilience.admission``).
        Raises _Skip when another upstream should be tried instead, _Ended after ending the
        request explicitly."""
        last = self.last_failure
        try:
            await self.admission.before_call(
                up,
                self.plan,
                first=reason is AttemptReason.INITIAL,
                can_skip=can_skip,
                deadline=self.attempt_deadline(),
                # Only when the upstream said nothing of its own to pass on.
                say_rate_limited=last is None or not last.status,
                budget_exhausted=self.trace.budget_exhausted,
            )
            return await take_slot(up)
        except Refused as refused:
            if can_skip:
                self.skipped = (
                    refused.code,
                    refused.message,
                    refused.status,
                    refused.retry_after,
                )
                raise _Skip() from None
            await self.give_up(
                refused.code,
                refused.message,
                status=refused.status,
                retry_after=refused.retry_after,
            )
            raise _Ended() from None

    # -- one attempt, or a race of hedged attempts ---------------------------------------

    async def race(
        self, first: Target, reason: AttemptReason, slot: BulkheadSlot, permit: BreakerPermit
    ) -> UpstreamFailure | None:
        """Run the attempt on ``first``; before the app has anything, hedge it: when it has
        no first event after ``routing.hedge_after``, send the same request to the next
        eligible upstream too. The first to produce an event wins and the others are
        cancelled at once (their upstreams see the connection close)."""
        hedge_after = first.upstream.config.routing.hedge_after
        if (
            reason is AttemptReason.RESUME
            or not hedge_after
            or not self.req.hedgeable
            or self.hedges >= self.max_hedges
            or len(self.plan.ups) < 2
        ):
            try:
                return await self.attempt(first, reason, permit, None)
            finally:
                slot.release()
        race = _Race()
        racers: dict[asyncio.Task[UpstreamFailure | None], tuple[Target, BulkheadSlot]] = {}

        def start(target: Target, why: AttemptReason, sl: BulkheadSlot, pm: BreakerPermit) -> None:
            task = self.loop.create_task(self.attempt(target, why, pm, race))
            racers[task] = (target, sl)
            race.tasks.append(task)

            def settle(_: object) -> None:
                # A racer cancelled before it ran never judged its call: both are no-ops
                # once done.
                pm.release()
                sl.release()

            task.add_done_callback(settle)

        start(first, reason, slot, permit)
        hedge_at = self.loop.time() + hedge_after
        hedged: list[Target] = []
        last: UpstreamFailure | None = None
        try:
            while racers:
                timeout = None
                if race.winner is None and self.hedges < self.max_hedges:
                    timeout = max(0.0, hedge_at - self.loop.time())
                done, _ = await asyncio.wait(
                    racers, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if race.decided():
                        continue  # answered meanwhile: no hedge, wait for the winner
                    hedge = await self.hedge(racers.values())
                    if hedge is None:
                        self.hedges = self.max_hedges  # nowhere to hedge to: stop trying
                        continue
                    target, sl, pm = hedge
                    if race.decided():  # answered while the hedge was admitted
                        sl.release()
                        pm.release()
                        continue
                    self.hedges += 1
                    self.summary.attempts += 1
                    self.plan.attempted(target)
                    log.info("hedge", upstream=target.upstream.name, after=hedge_after)
                    hedged.append(target)
                    start(target, AttemptReason.HEDGE, sl, pm)
                    hedge_at = self.loop.time() + hedge_after
                    continue
                for task in done:
                    target, sl = racers.pop(task)
                    sl.release()
                    if task.cancelled():
                        continue  # a loser
                    result = task.result()  # AppGone / AppTooSlow propagate
                    if race.winner is target:
                        return result
                    last = result  # failed before its first event
            return last
        finally:
            for task in racers:
                task.cancel()
            if racers:
                await asyncio.gather(*racers, return_exceptions=True)
                for _, sl in racers.values():
                    sl.release()
            for target in hedged:
                self.trace.hedge(upstream=target.upstream.name, won=race.winner is target)
            if race.winner is not None:
                self.summary.upstream = race.winner.upstream.name

    async def hedge(self, racing: Any) -> tuple[Target, BulkheadSlot, BreakerPermit] | None:
        """The next eligible target for a hedge, admitted (budget, slot, breaker permit), or
        None. Never an upstream whose breaker is open or that is pacing after 429s."""
        busy = {target.name for target, _ in racing}
        now = self.loop.time()
        for target in self.plan.ups:
            if target.name in busy or target.breaker.state is BreakerState.OPEN:
                continue
            if target.rate_limit.peek(now) or self.summary.attempts >= self.max_attempts:
                continue
            runtime = target.upstream
            if not runtime.budget.try_withdraw():  # a hedge is a retry for the budget
                self.trace.budget_exhausted(runtime.name)
                continue

            try:
                slot, permit = await take_slot(target)
            except Refused:
                continue
            return target, slot, permit
        return None

    async def attempt(
        self, up: Target, reason: AttemptReason, permit: BreakerPermit, race: _Race | None
    ) -> UpstreamFailure | None:
        """Run one upstream attempt; None on success, else the classified failure.
        AppGone / AppTooSlow propagate: they say nothing about the upstream."""
        d = self.delivery
        runtime = up.upstream
        mode = self.resume_mode(up)
        resuming = reason is AttemptReason.RESUME and d.answer_chars > 0
        if reason is AttemptReason.RESUME:
            self.summary.resumes += 1
        call = d.next_call(
            self.base_body,
            mode,
            self.relay.config.recovery.instruct_prompt,
            model=up.model,
            upstream=runtime.name,
        )
        filt = d.attempt(mode)  # after next_call: it may depend on the call prepared
        span = self.trace.attempt(
            number=self.summary.attempts,
            reason=reason,
            upstream=runtime.client.info,
            request_model=up.model,
            resume_mode=mode if resuming else None,
            prefix_chars=d.answer_chars if resuming else 0,
        )
        with span:
            try:
                await self.stream(up, call, filt, span, permit, race)
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
                # The app left or stopped reading, a hedge lost its race, or intact is
                # stopping: not the upstream's doing.
                permit.record(CallOutcome.IGNORED)
                span.cancelled(delivered_tokens=filt.tokens_delivered)
                raise
            permit.record(CallOutcome.SUCCESS)
            input_tokens, output_tokens = filt.token_counts()
            span.succeeded(
                response_id=filt.response_id,
                response_model=filt.response_model,
                finish_reasons=[filt.finish_reason] if filt.finish_reason else [],
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                delivered_tokens=filt.tokens_delivered,
            )
        self.account(up, filt, reason)
        self.final_filter = filt
        self.summary.served_model = up.model
        return None

    async def stream(
        self,
        up: Target,
        call: UpstreamCall,
        filt: AttemptFeed,
        span: AttemptTrace,
        permit: BreakerPermit,
        race: _Race | None,
    ) -> None:
        """Pump one attempt's events into the filter, one batch per upstream read, with
        the app's backpressure between reads; raise UpstreamFailure if the stream breaks."""
        timeouts = up.upstream.config.stream
        headers: dict[str, str] = {}
        span.inject(headers)
        sink = self.sink
        try:
            async with UpstreamStream(
                up.upstream.client,
                call,
                headers=headers,
                first_token_timeout=timeouts.first_token_timeout,
                stall_timeout=timeouts.stall_timeout,
                deadline=self.deadline,
                first_deadline=self.attempt_deadline(),
            ) as events:
                judged = False
                while (batch := await events.next_batch()) is not None:
                    if not batch:
                        continue
                    if not judged and all(filt.preamble(obj) for obj, _ in batch):
                        for obj, raw in batch:
                            await filt.on_chunk(obj, raw)  # held by the feed until content
                        continue
                    if not judged:
                        if race is not None and not race.claim(up):
                            raise asyncio.CancelledError  # another racer answered first
                        span.first_chunk()
                        up.rate_limit.succeeded()
                    for obj, raw in batch:
                        await filt.on_chunk(obj, raw)
                    if not judged:
                        # The upstream is serving: judge the call now, not at the end.
                        judged = True
                        permit.record(CallOutcome.SUCCESS)
                    if self.interrupted_at is not None and filt.tokens_delivered:
                        self.trace.recovered(
                            upstream=up.upstream.name,
                            seconds=self.loop.time() - self.interrupted_at,
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
        up: Target,
        failure: UpstreamFailure,
        filt: AttemptFeed,
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
                upstream=up.upstream.name,
                kind=failure.kind.value,
                status=failure.status,
                attempt=self.summary.attempts,
                reason=reason.value,
                delivered_chars=self.delivery.content_chars,
                detail=failure.message,
            )

    def account(self, up: Target, filt: AttemptFeed, reason: AttemptReason) -> None:
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
        await filt.send_trailer()
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
        try:
            await asyncio.wait_for(self.sink.fail(error), timeout=SHUTDOWN_NOTICE_SECONDS / 2)
        except Exception:
            # The app is behind (or gone): error behind what it has, then end the
            # connection, so the writer is done before the handler returns.
            with contextlib.suppress(Exception):
                await self.sink.abort(error, linger=SHUTDOWN_NOTICE_SECONDS / 2)

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
                messages=self.req.body.get("messages", self.req.body.get("input")),
                completion=self.delivery.content(),
                outcome=s.outcome.value,
            )
        self.trace.finish(s)
