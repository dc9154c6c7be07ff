"""The counter interface that budgets and rate limits are kept behind, and its in-process form.

Every method is one atomic step on shared state: a Redis implementation does each with one Lua
script (read, decide and write together), so several replicas can share counters without a
race between checking a limit and counting against it. Keys are opaque strings chosen by the
caller (`client:NAME`, `gateway`); budgets are further split by `period_id`, the Unix start of
the calendar period, so a new period starts from zero without anyone resetting it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


class SharedUnavailable(Exception):
    """The shared counters cannot be used right now (unreachable, or being rebuilt)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """Credits held against one budget for one request until it is settled."""

    key: str
    period_id: float
    amount: float


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A budget's counters for one period: credits settled, and credits still reserved."""

    spent: float
    reserved: float


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    """The outcome of a sliding-window check.

    `remaining` is what is left in the window after this request (if it was counted);
    `retry_s` is how long until the oldest counted request leaves the window (the next free
    place); `reset_s` how long until the window is empty again (its initial state).
    """

    allowed: bool
    limit: int
    remaining: int
    retry_s: float
    reset_s: float


@dataclass(frozen=True, slots=True)
class Slot:
    """One place held under a concurrency limit, until released."""

    key: str
    token: int


class Counters(Protocol):
    """Budget, sliding-window and concurrency counters; each call is atomic on its own.

    `shared` is True for counters kept outside the process (Redis): calls made at the same
    moment then cost one round trip, so admission makes its independent calls together. In
    process a call costs next to nothing, and admission makes them one after another.
    """

    shared: bool

    async def reserve(
        self, key: str, period_id: float, amount: float, limit: float
    ) -> Reservation | BudgetState:
        """Hold `amount` against the budget `limit` of `key` in period `period_id`.

        Atomically: if spent + reserved < limit, add `amount` to reserved and return the
        Reservation; otherwise change nothing and return the BudgetState that refused it.
        """
        ...

    async def settle(self, reservation: Reservation, actual: float) -> BudgetState:
        """Turn a reservation into `actual` credits spent (0 releases it), in its own period.

        Atomically: reserved -= amount, spent += actual. A reservation of a period that has
        since ended changes nothing. Returns the period's state afterwards.
        """
        ...

    async def load(self, key: str, period_id: float, spent: float) -> None:
        """Start a period's spent credits at `spent` (the ledger's figure, at start).

        Atomically, and only if nobody counts in that period yet: a replica that starts later
        must not overwrite what the others have counted since.
        """
        ...

    async def budget(self, key: str, period_id: float) -> BudgetState:
        """The budget's counters for the period (zeros for a period nobody counted in)."""
        ...

    async def window_hit(self, key: str, limit: int, window_s: float) -> WindowVerdict:
        """Count one request in the sliding window of `key` unless `limit` are already in it.

        Atomically drops hits older than `window_s`, then counts this one if there is room.
        A refused request is not counted.
        """
        ...

    async def window_peek(self, key: str, limit: int, window_s: float) -> WindowVerdict:
        """The window's state without counting anything (`allowed` says whether one would be)."""
        ...

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> Slot | None:
        """Take one of `limit` places of `key`, or None when all are taken.

        A slot neither released nor refreshed within `ttl_s` (a replica that died holding it)
        lapses.
        """
        ...

    async def refresh_slots(self, slots: Sequence[Slot], ttl_s: float) -> None:
        """Heartbeat: each slot still held now lapses `ttl_s` from now instead."""
        ...

    async def release_slot(self, slot: Slot) -> None:
        """Give a place back; releasing twice or after it lapsed changes nothing."""
        ...

    async def slots_held(self, key: str) -> int:
        """How many places of `key` are held right now."""
        ...

    async def health(self) -> str | None:
        """None while the counters can be used, else why not (for /readyz)."""
        ...

    async def aclose(self) -> None:
        """Let go of connections (at shutdown)."""
        ...


class MemoryCounters:
    """Counters in this process: exact, and shared by nobody else (one replica)."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._budgets: dict[str, tuple[float, float, float]] = {}  # key -> (period, spent, held)
        self._windows: dict[str, deque[float]] = {}
        self._slots: dict[str, dict[int, float]] = {}  # key -> token -> lapses at
        self._tokens = 0

    def _state(self, key: str, period_id: float) -> tuple[float, float]:
        found = self._budgets.get(key)
        if found is None or found[0] != period_id:
            return 0.0, 0.0
        return found[1], found[2]

    async def reserve(
        self, key: str, period_id: float, amount: float, limit: float
    ) -> Reservation | BudgetState:
        """See Counters.reserve."""
        spent, held = self._state(key, period_id)
        if spent + held >= limit:
            return BudgetState(spent, held)
        self._budgets[key] = (period_id, spent, held + amount)
        return Reservation(key, period_id, amount)

    async def settle(self, reservation: Reservation, actual: float) -> BudgetState:
        """See Counters.settle."""
        key, period_id = reservation.key, reservation.period_id
        found = self._budgets.get(key)
        if found is None or found[0] != period_id:
            return BudgetState(*self._state(key, period_id))
        spent, held = found[1] + actual, max(0.0, found[2] - reservation.amount)
        self._budgets[key] = (period_id, spent, held)
        return BudgetState(spent, held)

    async def load(self, key: str, period_id: float, spent: float) -> None:
        """See Counters.load."""
        found = self._budgets.get(key)
        if found is None or found[0] != period_id:
            self._budgets[key] = (period_id, spent, 0.0)

    async def budget(self, key: str, period_id: float) -> BudgetState:
        """See Counters.budget."""
        return BudgetState(*self._state(key, period_id))

    def _window(self, key: str, window_s: float) -> tuple[deque[float], float]:
        now = self._clock()
        hits = self._windows.setdefault(key, deque())
        while hits and hits[0] <= now - window_s:
            hits.popleft()
        return hits, now

    @staticmethod
    def _verdict(
        allowed: bool, hits: deque[float], limit: int, window_s: float, now: float
    ) -> WindowVerdict:
        retry = hits[0] + window_s - now if len(hits) >= limit else 0.0
        reset = hits[-1] + window_s - now if hits else 0.0
        return WindowVerdict(allowed, limit, max(0, limit - len(hits)), retry, reset)

    async def window_hit(self, key: str, limit: int, window_s: float) -> WindowVerdict:
        """See Counters.window_hit."""
        hits, now = self._window(key, window_s)
        if len(hits) >= limit:
            return self._verdict(False, hits, limit, window_s, now)
        hits.append(now)
        return self._verdict(True, hits, limit, window_s, now)

    async def window_peek(self, key: str, limit: int, window_s: float) -> WindowVerdict:
        """See Counters.window_peek."""
        hits, now = self._window(key, window_s)
        return self._verdict(len(hits) < limit, hits, limit, window_s, now)

    def _held(self, key: str) -> dict[int, float]:
        """The key's places, lapsed ones dropped."""
        held = self._slots.setdefault(key, {})
        now = self._clock()
        for token in [t for t, lapses in held.items() if lapses <= now]:
            del held[token]
        return held

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> Slot | None:
        """See Counters.acquire_slot."""
        held = self._slots.setdefault(key, {})
        if len(held) >= limit:  # full: only then is it worth looking for lapsed places
            held = self._held(key)
        if len(held) >= limit:
            return None
        self._tokens += 1
        held[self._tokens] = self._clock() + ttl_s
        return Slot(key, self._tokens)

    async def refresh_slots(self, slots: Sequence[Slot], ttl_s: float) -> None:
        """See Counters.refresh_slots."""
        lapses = self._clock() + ttl_s
        for slot in slots:
            held = self._held(slot.key)
            if slot.token in held:
                held[slot.token] = lapses

    async def release_slot(self, slot: Slot) -> None:
        """See Counters.release_slot."""
        self._slots.get(slot.key, {}).pop(slot.token, None)

    async def slots_held(self, key: str) -> int:
        """See Counters.slots_held."""
        return len(self._held(key))

    async def health(self) -> str | None:
        """See Counters.health: in-process counters are always there."""
        return None

    async def aclose(self) -> None:
        """See Counters.aclose: nothing to let go of."""


async def each(counters: Counters, calls: Sequence[Awaitable[T]]) -> list[T | BaseException]:
    """Every call's answer or failure, in order: made at once with `shared` counters (one
    round trip), else one after another (a task each would cost more than it saves)."""
    if counters.shared:
        return await asyncio.gather(*calls, return_exceptions=True)
    answers: list[T | BaseException] = []
    for call in calls:
        try:
            answers.append(await call)
        except Exception as exc:
            answers.append(exc)
    return answers


def whole_seconds(seconds: float) -> int:
    """A wait as Retry-After gives it: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))


def reset_duration(seconds: float) -> str:
    """A wait in OpenAI's x-ratelimit-reset-* format: `17ms`, `1s`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"
