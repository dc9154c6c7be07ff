"""Counters in Redis, shared by every replica (`[limits] redis_url`; the `[redis]` extra).

Each operation is one Lua script (app.limits.redis_lua), sent by its SHA (EVALSHA), so it is
atomic across replicas. Budgets live in hashes per subject and period, under an *epoch*: a
marker key naming the generation of budget figures. Redis restarted empty has no marker, so the
reservation script answers "not loaded" and one replica rebuilds every budget from the ledger
into a new epoch (the others wait for it, briefly) before any budget is enforced again. A
replica that saw Redis unreachable drops the epoch it knew when Redis is back, so figures that
missed what was served (or settled) meanwhile are rebuilt from the ledger too.

Redis that cannot be reached raises SharedUnavailable at once: short socket timeouts, and after
a failure the next attempt waits `PROBE_S`, so a dead Redis never holds requests for long. What
a request does then is `[limits] on_shared_failure`'s choice (app.limits.admission).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from app.limits.counters import (
    BudgetState,
    Reservation,
    SharedUnavailable,
    Slot,
    WindowVerdict,
)
from app.limits.redis_batch import ScriptBatcher, connect, shown_url
from app.limits.redis_lua import SCRIPTS
from app.limits.redis_queue import RedisFairQueue

logger = logging.getLogger("mavera_gateway.limits")

PROBE_S = 1.0  # after a failure, requests skip Redis this long before one tries again
REBUILD_AFTER_S = 1.0  # an outage at least this long has budgets rebuilt when Redis is back
REBUILD_LOCK_MS = 10_000  # a replica that died rebuilding lets another try after this
REBUILD_WAIT_S = 2.0  # how long a reservation waits for another replica's rebuild
# Budget hashes expire this long after their period began: longer than any calendar period
# (a month, plus a daylight-saving hour), so a period's figures outlive it, then go.
BUDGET_TTL_S = 35 * 86400

Rebuild = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RedisReservation(Reservation):
    """A reservation, with the epoch of the budget figures it was made against."""

    epoch: str = ""


class RedisCounters:
    """Budgets, windows, slots and the gateway's fair queue in one Redis, for every replica."""

    shared = True  # see Counters: calls of the same moment go in one pipeline

    def __init__(
        self, url: str, prefix: str = "mavera-gateway:", rebuild: Rebuild | None = None
    ) -> None:
        self.url = shown_url(url)
        self.prefix = prefix
        self.client = connect(url)
        self._scripts = ScriptBatcher(self.client, SCRIPTS, self.call)
        # Set by the gateway: load every budgeted subject's period spend from the ledger.
        self.rebuild = rebuild
        self.epoch: str | None = None
        self._loading: str | None = None  # the epoch a rebuild under way loads into
        self._rebuilding = asyncio.Lock()
        self.down_since: float | None = None
        self.error = ""
        self._probe_at = 0.0
        self._stale = False  # an outage was seen: drop the epoch once Redis answers again
        self._ids = itertools.count()
        self._replica = secrets.token_hex(4)

    def key(self, *parts: str) -> str:
        """A Redis key under this gateway's prefix."""
        return self.prefix + ":".join(parts)

    def member(self) -> str:
        """A name unique across replicas (window hits, waiters)."""
        return f"{self._replica}-{next(self._ids)}"

    async def run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one of the scripts (with the calls of the same moment, in one pipeline); raise
        SharedUnavailable when Redis cannot be reached."""
        return await self._scripts.run(script, keys, args)

    async def call(self, command: Awaitable[Any]) -> Any:
        """Await one Redis command, keeping track of outages (logged once each)."""
        if self.down_since is not None and time.monotonic() < self._probe_at:
            close = getattr(command, "close", None)
            if close is not None:
                close()  # a coroutine never awaited
            raise SharedUnavailable(self.describe())
        try:
            result = await command
        except (RedisError, OSError) as exc:  # unreachable, timed out, loading, out of memory
            self._failed(exc)
            raise SharedUnavailable(self.describe()) from None
        if self.down_since is not None:
            lasted = time.monotonic() - self.down_since
            # A rebuild forgets every reservation in flight, on every replica: worth it after an
            # outage (unsettled holds, spend served unchecked), not after one slow answer.
            self._stale = lasted >= REBUILD_AFTER_S
            rebuilt = "; budgets are rebuilt from the ledger" if self._stale else ""
            logger.warning("Redis at %s answers again after %.1f s%s", self.url, lasted, rebuilt)
            self.down_since = None
        return result

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._probe_at = now + PROBE_S
        self.error = f"{type(exc).__name__}: {exc}"
        if self.down_since is None:
            self.down_since = now
            logger.error("Redis at %s cannot be reached (%s)", self.url, self.error)

    def describe(self) -> str:
        """Why the counters cannot be used, as /readyz and error messages say it."""
        if self.down_since is None:
            return f"budgets are being rebuilt from the ledger in Redis at {self.url}"
        return f"Redis at {self.url} unreachable for {time.monotonic() - self.down_since:.0f} s"

    async def health(self) -> str | None:
        """See Counters.health: a PING, so /readyz notices an outage (and its end) by itself."""
        try:
            await self.call(self.client.ping())
        except SharedUnavailable as exc:
            return str(exc)
        return None

    async def aclose(self) -> None:
        """See Counters.aclose."""
        await self.client.aclose()
        await self.client.connection_pool.disconnect()

    # Budgets

    def _budget_key(self, epoch: str, key: str, period_id: float) -> str:
        return self.key("budget", epoch, key, str(int(period_id)))

    @staticmethod
    def _expires(period_id: float) -> int:
        return 0 if period_id <= 0 else int(period_id) + BUDGET_TTL_S

    async def _current_epoch(self, fresh: bool = False) -> str:
        """The epoch budgets are counted in now (asked of Redis when `fresh`, else as last
        seen), rebuilding them first if there is none."""
        if self._stale:
            self._stale = False
            if self.epoch is not None:
                await self.run("drop_epoch", [self.key("epoch")], [self.epoch])
            self.epoch = None
        if self.epoch is None or fresh:
            self.epoch = await self.call(self.client.get(self.key("epoch")))
        if self.epoch is None:
            self.epoch = await self._rebuild()
        return self.epoch

    async def _rebuild(self) -> str:
        """Load every budget from the ledger into a new epoch, or wait for another replica's."""
        async with self._rebuilding:
            found: str | None = await self.call(self.client.get(self.key("epoch")))
            if found is not None:
                return found
            epoch = secrets.token_hex(8)
            lock = self.key("rebuilding")
            if await self.call(self.client.set(lock, epoch, nx=True, px=REBUILD_LOCK_MS)):
                self._loading = epoch
                try:
                    if self.rebuild is not None:
                        await self.rebuild()
                except Exception as exc:  # the ledger could not say what was spent
                    await self.call(self.client.delete(lock))
                    why = f"budgets cannot be rebuilt from the ledger: {exc}"
                    raise SharedUnavailable(why) from None
                finally:
                    self._loading = None
                # Only where there is none: another replica may have finished a rebuild between
                # this one's look and its lock, and every replica must count in one epoch.
                marked = await self.call(self.client.set(self.key("epoch"), epoch, nx=True))
                await self.call(self.client.delete(lock))
                if not marked:
                    found = await self.call(self.client.get(self.key("epoch")))
                    if found is None:
                        raise SharedUnavailable(self.describe())
                    return found
                logger.info("budgets rebuilt from the ledger in Redis at %s", self.url)
                return epoch
            deadline = time.monotonic() + REBUILD_WAIT_S
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                found = await self.call(self.client.get(self.key("epoch")))
                if found is not None:
                    return found
            raise SharedUnavailable(self.describe())

    async def reserve(
        self, key: str, period_id: float, amount: float, limit: float
    ) -> Reservation | BudgetState:
        """See Counters.reserve."""
        for _ in range(3):
            epoch = await self._current_epoch()
            keys = [self.key("epoch"), self._budget_key(epoch, key, period_id)]
            args = [epoch, amount, limit, self._expires(period_id)]
            answer = await self.run("reserve", keys, args)
            if answer[0] == "held":
                return RedisReservation(key, period_id, amount, epoch)
            if answer[0] == "refused":
                return BudgetState(float(answer[1]), float(answer[2]))
            self.epoch = answer[1] if answer[0] == "epoch" else None
        raise SharedUnavailable(self.describe())

    async def settle(self, reservation: Reservation, actual: float) -> BudgetState:
        """See Counters.settle: a reservation of an older epoch changes nothing."""
        epoch = reservation.epoch if isinstance(reservation, RedisReservation) else ""
        budget = self._budget_key(epoch, reservation.key, reservation.period_id)
        args = [epoch, reservation.amount, actual]
        spent, held = await self.run("settle", [self.key("epoch"), budget], args)
        return BudgetState(float(spent), float(held))

    async def load(self, key: str, period_id: float, spent: float) -> None:
        """See Counters.load: into the epoch being rebuilt, else the current one (if any)."""
        epoch = self._loading or self.epoch
        if epoch is None:
            epoch = await self.call(self.client.get(self.key("epoch")))
        if epoch is None:
            return  # the first reservation rebuilds every budget, this one included
        budget = self._budget_key(epoch, key, period_id)
        await self.run("load", [budget], [spent, self._expires(period_id)])

    async def budget(self, key: str, period_id: float) -> BudgetState:
        """See Counters.budget, in the epoch Redis holds now (another replica may have rebuilt)."""
        epoch = await self._current_epoch(fresh=True)
        budget = self._budget_key(epoch, key, period_id)
        spent, held = await self.call(self.client.hmget(budget, ["spent", "reserved"]))
        return BudgetState(float(spent or 0), float(held or 0))

    # Windows and slots

    @staticmethod
    def verdict(answer: Sequence[Any], limit: int) -> WindowVerdict:
        """A window script's answer as a WindowVerdict."""
        remaining = max(0, int(float(answer[1])))
        return WindowVerdict(bool(answer[0]), limit, remaining, float(answer[2]), float(answer[3]))

    async def window_hit(self, key: str, limit: int, window_s: float) -> WindowVerdict:
        """See Counters.window_hit: hits are scored by the Redis server's clock."""
        args = [limit, window_s, self.member()]
        answer = await self.run("window", [self.key("window", key)], args)
        return self.verdict(answer, limit)

    async def window_peek(self, key: str, limit: int, window_s: float) -> WindowVerdict:
        """See Counters.window_peek."""
        answer = await self.run("window", [self.key("window", key)], [limit, window_s, ""])
        return self.verdict(answer, limit)

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> Slot | None:
        """See Counters.acquire_slot: the slot lapses `ttl_s` after its last heartbeat."""
        keys = [self.key("slots", key), self.key("slot-tokens")]
        token = await self.run("acquire_slot", keys, [limit, ttl_s])
        return None if token is None else Slot(key, int(token))

    async def refresh_slots(self, slots: Sequence[Slot], ttl_s: float) -> None:
        """See Counters.refresh_slots."""
        if slots:
            keys = [self.key("slots", slot.key) for slot in slots]
            await self.run("refresh_slots", keys, [ttl_s, *(slot.token for slot in slots)])

    async def release_slot(self, slot: Slot) -> None:
        """See Counters.release_slot."""
        await self.call(self.client.zrem(self.key("slots", slot.key), str(slot.token)))

    async def slots_held(self, key: str) -> int:
        """See Counters.slots_held."""
        return int(await self.run("slots_held", [self.key("slots", key)], []))

    def fair_queue(self, limit: int, window_s: float) -> RedisFairQueue:
        """The gateway-wide rate's fair queue, shared by every replica on this Redis."""
        return RedisFairQueue(self, limit, window_s)
