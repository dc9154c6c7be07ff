"""Admission of one request: rate limit, concurrency cap, budget reservations, shared rate.

`Limits.admit` runs before a request is forwarded and either refuses it (BudgetExceeded,
RateLimited) or returns an Admission holding what the request took: a place under
`max_concurrent`, reservations of `[limits] budget_reserve_credits` against the client's budget
and the gateway-wide one, and the `x-ratelimit-*` headers for its answer. `Limits.finish`
settles all of it when the request's record closes: each reservation becomes the credits Mavera
reported, stays whole when Mavera may have charged without saying how much (marked in the
record as `credits_reserved`), and is released when nothing reached Mavera.

Concurrency places lapse `SLOT_TTL_S` after their last heartbeat: one task per gateway refreshes
every place its requests hold each `HEARTBEAT_S`, so a replica that dies gives its places back
within the TTL. When shared counters (Redis) cannot be used, `[limits] on_shared_failure` says
what a request that needs them gets: `fail_closed` a 503 limits_unavailable, `fail_open` served
without them (the ledger still records it; budgets are rebuilt from it when Redis is back).

With shared counters a request's checks are made at once (one round trip to Redis), and so are
its settlements; the answer is the one the checks made in turn would give.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

from app.clients import Client
from app.config_sections import LimitsSettings
from app.limits.counters import (
    BudgetState,
    Counters,
    MemoryCounters,
    Reservation,
    SharedUnavailable,
    Slot,
    WindowVerdict,
    each,
)
from app.limits.holds import GATEWAY, Admission, Hold, client_key, rate_headers
from app.limits.periods import period_end, period_start
from app.limits.queue import QueueTimeout, gateway_queue
from app.limits.refusals import (
    over_budget,
    over_concurrency,
    over_gateway_rpm,
    over_rpm,
    unavailable,
)
from app.records import UsageRecord, cost_unknown

logger = logging.getLogger("mavera_gateway.limits")

WINDOW_S = 60.0  # rpm windows, as Mavera counts them
# The shared window counts each request this much longer than Mavera will: the request reaches
# Mavera a moment after the gateway counted it, and that moment varies.
SHARED_MARGIN_S = 0.5
SLOT_TTL_S = 30.0  # a concurrency place lapses this long after its holder's last heartbeat
HEARTBEAT_S = 10.0  # how often a gateway refreshes the places its requests hold

SpendHook = Callable[[str, float, float, str, float], None]
Guard = Callable[[Awaitable[None]], Awaitable[None]]


class Limits:
    """Admits or refuses each request, and settles what admitted requests held."""

    def __init__(
        self,
        settings: LimitsSettings,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.zone = ZoneInfo(settings.timezone)
        self.counters: Counters = counters or MemoryCounters()
        self.clock = clock
        self.window_s = WINDOW_S
        self.on_spend: SpendHook | None = None
        self.queue = (
            gateway_queue(self.counters, settings.gateway_rpm, WINDOW_S + SHARED_MARGIN_S)
            if settings.gateway_rpm is not None
            else None
        )
        self.in_flight: dict[str, int] = {}  # client -> requests admitted and not yet ended
        self.seeded: set[tuple[str, str]] = set()  # (subject, period) seeded from the ledger
        self._admitted: dict[str, Admission] = {}  # record id -> what it holds
        self._pending: deque[tuple[Admission, float | None, bool]] = deque()  # to settle
        self._settler: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._periods: dict[str, tuple[float, float | None]] = {}  # kind -> current bounds

    def period_of(self, period: str) -> tuple[float, float | None]:
        """The start and end (None for `total`) of the current period of this kind."""
        now = self.clock()
        known = self._periods.get(period)
        if known is not None and known[0] <= now and (known[1] is None or now < known[1]):
            return known
        bounds = period_start(period, now, self.zone), period_end(period, now, self.zone)
        self._periods[period] = bounds
        return bounds

    async def admit(
        self, client: Client, record: UsageRecord, guard: Guard | None = None
    ) -> Admission:
        """Let the request through holding its limits, or raise BudgetExceeded / RateLimited
        (or LimitsUnavailable: shared counters out of reach, and `fail_closed`).

        `guard` wraps a wait in the shared queue, so that it ends when the client hangs up.
        """
        try:
            admission = await self._admit(client, guard)
        except SharedUnavailable as exc:
            if self.settings.on_shared_failure == "fail_closed":
                raise unavailable(client.name, exc) from None
            admission = Admission(client.name)  # fail_open: served, and recorded as ever
        self._admitted[record.id] = admission
        self.in_flight[client.name] = self.in_flight.get(client.name, 0) + 1
        return admission

    async def _admit(self, client: Client, guard: Guard | None) -> Admission:
        admission = Admission(client.name)
        await self._take(client, admission)
        if self.queue is not None:
            try:
                timeout_s = self.settings.queue_timeout_ms / 1000
                await self.queue.admit(client.name, client.spec.weight, timeout_s, guard)
            except BaseException as exc:
                await self._release(admission)
                if isinstance(exc, QueueTimeout):
                    limit = self.queue.limit
                    raise over_gateway_rpm(limit, exc.verdict, admission.headers) from None
                raise
        return admission

    async def _take(self, client: Client, admission: Admission) -> None:
        """Make every check (with shared counters at once: one round trip), then refuse as the
        first in order refuses: rpm, max_concurrent, the client's budget, the gateway's. What
        the others took is given back; a refused place or budget leaves its rpm hit counted."""
        spec, key, settings = client.spec, client_key(client.name), self.settings
        budgets: list[tuple[str, float, str]] = []
        if spec.credit_budget is not None:
            budgets.append((client.name, spec.credit_budget, spec.budget_period))
        if settings.gateway_credit_budget is not None:
            budgets.append(
                (GATEWAY, settings.gateway_credit_budget, settings.gateway_budget_period)
            )
        calls: list[Awaitable[object]] = []
        if spec.rpm is not None:
            calls.append(self.counters.window_hit(key, spec.rpm, self.window_s))
        if spec.max_concurrent is not None:
            calls.append(self.counters.acquire_slot(key, spec.max_concurrent, SLOT_TTL_S))
        calls.extend(self._reserve(*budget) for budget in budgets)
        answers = await each(self.counters, calls)  # in process: one after another, nothing between
        refusals: list[object] = []  # each check's failure or refusal (None: passed), in order
        if spec.rpm is not None:
            window = answers.pop(0)
            if isinstance(window, WindowVerdict):
                admission.headers = rate_headers(window)
                window = (
                    None if window.allowed else over_rpm(client.name, window, admission.headers)
                )
            refusals.append(window)
        if spec.max_concurrent is not None:
            place = answers.pop(0)
            if isinstance(place, Slot):
                admission.slot, place = place, None
                if self._heartbeat is None or self._heartbeat.done():
                    self._heartbeat = asyncio.ensure_future(self._beat())
            elif place is None:
                place = over_concurrency(client.name, spec.max_concurrent, admission.headers)
            refusals.append(place)
        for (subject, budget, period), held in zip(budgets, answers, strict=True):
            if isinstance(held, Reservation):
                admission.holds.append(Hold(subject, budget, period, held))
                held = None
            elif isinstance(held, BudgetState):
                ends = self.period_of(period)[1]
                held = over_budget(
                    subject, budget, period, ends, self.zone, held, admission.headers
                )
            refusals.append(held)
        refused = next((r for r in refusals if isinstance(r, BaseException)), None)
        if refused is not None:
            await self._release(admission)
            raise refused

    async def _reserve(self, subject: str, budget: float, period: str) -> Reservation | BudgetState:
        began = self.period_of(period)[0]
        key = GATEWAY if subject == GATEWAY else client_key(subject)
        return await self.counters.reserve(key, began, self.settings.budget_reserve_credits, budget)

    async def _release(self, admission: Admission) -> None:
        calls: list[Awaitable[object]] = [
            self.counters.settle(hold.reservation, 0.0) for hold in admission.holds
        ]
        if admission.slot is not None:
            calls.append(self.counters.release_slot(admission.slot))
        for failed in await each(self.counters, calls):  # unreachable: rebuilt, or lapses, later
            if isinstance(failed, Exception) and not isinstance(failed, SharedUnavailable):
                raise failed

    async def _beat(self) -> None:
        """Refresh the places held by this gateway's requests while any are held."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            slots = [a.slot for a in self._admitted.values() if a.slot is not None]
            if not slots:
                return
            try:
                await self.counters.refresh_slots(slots, SLOT_TTL_S)
            except SharedUnavailable:
                pass  # logged once per outage by the counters; the next beat tries again
            except Exception:
                logger.exception("could not refresh %d concurrency places", len(slots))

    def finish(self, record: UsageRecord) -> None:
        """Settle what the record's request held (called once, as its record closes)."""
        admission = self._admitted.pop(record.id, None)
        if admission is None:
            return
        self.in_flight[admission.client] -= 1
        unknown = cost_unknown(record.endpoint, record.status, record.outcome, record.credits_used)
        if admission.holds and unknown:
            record.credits_reserved = max(h.reservation.amount for h in admission.holds)
        if not admission.holds and admission.slot is None:
            return
        self._pending.append((admission, record.credits_used, unknown))
        if self._settler is None or self._settler.done():  # one task settles a whole batch
            self._settler = asyncio.ensure_future(self._settle_pending())

    async def _settle_pending(self) -> None:
        pending = self._pending
        while pending:
            if not self.counters.shared:
                await self._settle(*pending.popleft())
                continue
            batch = [pending.popleft() for _ in range(len(pending))]  # one round trip for all
            await asyncio.gather(*(self._settle(*each) for each in batch))

    async def _settle(self, admission: Admission, credits: float | None, unknown: bool) -> None:
        holds = admission.holds
        calls: list[Awaitable[object]] = [
            self.counters.settle(
                h.reservation, h.reservation.amount if unknown else float(credits or 0)
            )
            for h in holds
        ]
        if admission.slot is not None:
            calls.append(self.counters.release_slot(admission.slot))
        try:
            answers = await each(self.counters, calls)
            for hold, answer in zip(holds, answers, strict=False):
                if isinstance(answer, BudgetState) and self.on_spend is not None:
                    period_id = hold.reservation.period_id
                    self.on_spend(hold.subject, answer.spent, hold.budget, hold.period, period_id)
            for failed in answers:  # unreachable counters: budgets are rebuilt, slots lapse
                if isinstance(failed, Exception) and not isinstance(failed, SharedUnavailable):
                    raise failed
        except Exception:  # counters that fail must not take the request's task with them
            logger.exception("could not settle the limits of a request of %s", admission.client)

    async def readiness(self) -> tuple[list[str], list[str]]:
        """/readyz's (problems, degraded) from the shared counters: an outage is a problem
        with `fail_closed` (limited clients are refused), only degraded with `fail_open`."""
        trouble = await self.counters.health()
        if trouble is None:
            return [], []
        mode = self.settings.on_shared_failure
        if mode == "fail_closed":
            effect = "requests that need a budget or rate-limit check get 503 limits_unavailable"
            return [f"limits: {trouble}; on_shared_failure = {mode}: {effect}"], []
        effect = "requests are served without shared limits and recorded in the ledger"
        return [], [f"limits: {trouble}; on_shared_failure = {mode}: {effect}"]

    async def drain(self) -> None:
        """Wait for settlements under way (at shutdown), then stop the queue and heartbeat."""
        if self._settler is not None:
            await asyncio.gather(self._settler, return_exceptions=True)
        if self.queue is not None:
            await self.queue.aclose()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await self.counters.aclose()
