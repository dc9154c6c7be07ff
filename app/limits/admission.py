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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from app.clients import Client
from app.config import LimitsSettings
from app.errors import BudgetExceeded, LimitsUnavailable, RateLimited
from app.limits.counters import (
    Counters,
    MemoryCounters,
    Reservation,
    SharedUnavailable,
    Slot,
    WindowVerdict,
    reset_duration,
    whole_seconds,
)
from app.limits.periods import iso, period_end, period_start
from app.limits.queue import QueueTimeout, gateway_queue
from app.records import UsageRecord, cost_unknown

logger = logging.getLogger("mavera_gateway.limits")

WINDOW_S = 60.0  # rpm windows, as Mavera counts them
# The shared window counts each request this much longer than Mavera will: the request reaches
# Mavera a moment after the gateway counted it, and that moment varies.
SHARED_MARGIN_S = 0.5
SLOT_TTL_S = 30.0  # a concurrency place lapses this long after its holder's last heartbeat
HEARTBEAT_S = 10.0  # how often a gateway refreshes the places its requests hold
GATEWAY = "gateway"

SpendHook = Callable[[str, float, float, str, float], None]
Guard = Callable[[Awaitable[None]], Awaitable[None]]


@dataclass(slots=True)
class Hold:
    """One reservation, with the budget it counts against (for messages and alerts)."""

    subject: str  # the client's name, or "gateway"
    budget: float
    period: str
    reservation: Reservation


@dataclass(slots=True)
class Admission:
    """What one admitted request holds until its record closes."""

    client: str
    holds: list[Hold] = field(default_factory=list)
    slot: Slot | None = None
    headers: dict[str, str] = field(default_factory=dict)


def rate_headers(verdict: WindowVerdict) -> dict[str, str]:
    """The OpenAI-style `x-ratelimit-*-requests` headers for a client's window."""
    return {
        "x-ratelimit-limit-requests": str(verdict.limit),
        "x-ratelimit-remaining-requests": str(verdict.remaining),
        "x-ratelimit-reset-requests": reset_duration(verdict.reset_s),
    }


def client_key(name: str) -> str:
    """The counter key of a client's budget, window and slots."""
    return f"client:{name}"


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
                raise LimitsUnavailable(
                    f"the gateway cannot check client {client.name!r}'s budget and rate limits "
                    f"right now ({exc}); it refuses such requests until it can "
                    "(on_shared_failure = fail_closed)",
                    headers={"retry-after": "1"},
                ) from None
            admission = Admission(client.name)  # fail_open: served, and recorded as ever
        self._admitted[record.id] = admission
        self.in_flight[client.name] = self.in_flight.get(client.name, 0) + 1
        return admission

    async def _admit(self, client: Client, guard: Guard | None) -> Admission:
        spec = client.spec
        admission = Admission(client.name)
        if spec.rpm is not None:
            verdict = await self.counters.window_hit(
                client_key(client.name), spec.rpm, self.window_s
            )
            admission.headers = rate_headers(verdict)
            if not verdict.allowed:
                wait = whole_seconds(verdict.retry_s)
                raise RateLimited(
                    f"client {client.name!r} is over its limit of {spec.rpm} requests per "
                    f"minute; retry after {wait} s",
                    headers={"retry-after": str(wait), **admission.headers},
                )
        try:
            await self._take(client, admission, guard)
        except BaseException:
            await self._release(admission)
            raise
        return admission

    async def _take(self, client: Client, admission: Admission, guard: Guard | None) -> None:
        spec = client.spec
        if spec.max_concurrent is not None:
            admission.slot = await self.counters.acquire_slot(
                client_key(client.name), spec.max_concurrent, SLOT_TTL_S
            )
            if self._heartbeat is None or self._heartbeat.done():
                self._heartbeat = asyncio.ensure_future(self._beat())
            if admission.slot is None:
                raise RateLimited(
                    f"client {client.name!r} already has {spec.max_concurrent} requests in "
                    "flight (its max_concurrent); retry when one of them ends",
                    headers={"retry-after": "1", **admission.headers},
                )
        if spec.credit_budget is not None:
            await self._reserve(client.name, spec.credit_budget, spec.budget_period, admission)
        gateway_budget = self.settings.gateway_credit_budget
        if gateway_budget is not None:
            period = self.settings.gateway_budget_period
            await self._reserve(GATEWAY, gateway_budget, period, admission)
        if self.queue is not None:
            try:
                timeout_s = self.settings.queue_timeout_ms / 1000
                await self.queue.admit(client.name, spec.weight, timeout_s, guard)
            except QueueTimeout as exc:
                wait = whole_seconds(exc.verdict.retry_s)
                raise RateLimited(
                    f"the gateway's shared limit of {self.queue.limit} requests per minute "
                    f"(all clients together, the Mavera key's own limit) is reached; retry "
                    f"after {wait} s",
                    headers={"retry-after": str(wait), **admission.headers},
                ) from None

    async def _reserve(self, subject: str, budget: float, period: str, into: Admission) -> None:
        began, ends = self.period_of(period)
        key = GATEWAY if subject == GATEWAY else client_key(subject)
        amount = self.settings.budget_reserve_credits
        held = await self.counters.reserve(key, began, amount, budget)
        if isinstance(held, Reservation):
            into.holds.append(Hold(subject, budget, period, held))
            return
        resets = (
            "it never resets (period total)"
            if ends is None
            else f"it resets at {iso(ends, self.zone)}"
        )
        what = (
            f"the gateway's shared budget of {budget:g} credits (all clients together) is "
            f"used up for this {period}"
            if subject == GATEWAY
            else f"client {subject!r} has used its budget of {budget:g} credits for this {period}"
        )
        raise BudgetExceeded(
            f"{what} ({held.spent:g} spent, {held.reserved:g} reserved by requests in flight); "
            f"{resets}",
            headers={"x-should-retry": "false", **into.headers},
        )

    async def _release(self, admission: Admission) -> None:
        with contextlib.suppress(SharedUnavailable):  # unreachable: rebuilt, or lapses, later
            for hold in admission.holds:
                await self.counters.settle(hold.reservation, 0.0)
            if admission.slot is not None:
                await self.counters.release_slot(admission.slot)

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
            await self._settle(*pending.popleft())

    async def _settle(self, admission: Admission, credits: float | None, unknown: bool) -> None:
        try:
            if admission.slot is not None:
                await self.counters.release_slot(admission.slot)
            for hold in admission.holds:
                reservation = hold.reservation
                actual = reservation.amount if unknown else float(credits or 0)
                state = await self.counters.settle(reservation, actual)
                if self.on_spend is not None:
                    self.on_spend(
                        hold.subject, state.spent, hold.budget, hold.period, reservation.period_id
                    )
        except SharedUnavailable:
            pass  # logged once per outage; budgets are rebuilt from the ledger, slots lapse
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
