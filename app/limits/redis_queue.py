"""The gateway-wide rate's fair queue in Redis, one queue for every replica.

Start-time fair queueing: a request that cannot go at once registers as a waiter with a ticket,
its client's previous ticket plus 1/weight but never behind the queue's virtual time, so a
client with weight 2 gets two places for every one of a client with weight 1 while both wait,
and a client that was idle starts level with the others instead of with credit saved up. Each
waiter asks Redis (one script, atomic) to admit it if it holds the lowest ticket and the shared
window has room; admitting it moves the virtual time to its ticket. Every ask refreshes the
waiter's heartbeat: a replica that dies leaves waiters that lapse within `WAITER_TTL_S`
instead of blocking the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from app.limits.counters import SharedUnavailable
from app.limits.queue import GATEWAY_WINDOW_KEY, POLL_S, QueueTimeout

if TYPE_CHECKING:
    from app.limits.redis_counters import RedisCounters

WAITER_TTL_S = 2.0  # a waiter not heard of for this long (its replica died) leaves the queue
TICKET_TTL_MS = 600_000  # a client idle this long starts again from the virtual time


class RedisFairQueue:
    """Admits requests under one sliding-window limit shared by every replica, fairly."""

    def __init__(self, counters: RedisCounters, limit: int, window_s: float) -> None:
        self.counters = counters
        self.limit = limit
        self.window_s = window_s
        self._waiting = 0
        keys = counters.key
        self._waiters, self._deadlines = keys("fq", "waiters"), keys("fq", "deadlines")
        self._clock, self._window = keys("fq", "vtime"), keys("window", GATEWAY_WINDOW_KEY)

    def waiting(self) -> int:
        """How many requests of this replica are waiting right now."""
        return self._waiting

    async def _enter(self, client: str, weight: int, waiter: str) -> bool:
        keys = [
            self._waiters,
            self._deadlines,
            self._clock,
            self.counters.key("fq", "ticket", client),
            self._window,
        ]
        args = [self.limit, self.window_s, self.counters.member(), waiter, weight]
        answer = await self.counters.run("fq_enter", keys, [*args, WAITER_TTL_S, TICKET_TTL_MS])
        return bool(answer[0] == "admitted")

    async def admit(
        self,
        client: str,
        weight: int,
        timeout_s: float,
        guard: Callable[[Awaitable[None]], Awaitable[None]] | None = None,
    ) -> None:
        """Return once the request may go upstream; raise QueueTimeout after `timeout_s`.

        `guard` wraps the wait (only a request that has to wait is guarded): it may end the
        wait with its own exception, when the client hangs up.
        """
        waiter = self.counters.member()
        if await self._enter(client, weight, waiter):
            return
        wait = self._wait(client, weight, waiter, timeout_s)
        await (wait if guard is None else guard(wait))

    async def _wait(self, client: str, weight: int, waiter: str, timeout_s: float) -> None:
        """Ask for a place until admitted; leave the queue on a timeout or cancellation."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._waiting += 1
        try:
            while True:
                keys = [self._waiters, self._deadlines, self._clock, self._window]
                args = [self.limit, self.window_s, self.counters.member(), waiter, WAITER_TTL_S]
                state, retry = await self.counters.run("fq_try", keys, args)
                if state == "admitted":
                    return
                if state == "gone":  # its heartbeat lapsed (this replica stalled): join again
                    waiter = self.counters.member()
                    if await self._enter(client, weight, waiter):
                        return
                left = deadline - loop.time()
                if left <= 0:
                    verdict = await self.counters.window_peek(
                        GATEWAY_WINDOW_KEY, self.limit, self.window_s
                    )
                    raise QueueTimeout(verdict)
                pause = min(max(float(retry), 0.001), POLL_S) if state == "full" else POLL_S
                await asyncio.sleep(min(pause, left))
        except BaseException:
            with contextlib.suppress(SharedUnavailable):
                await self.counters.run("fq_leave", [self._waiters, self._deadlines], [waiter])
            raise
        finally:
            self._waiting -= 1

    async def aclose(self) -> None:
        """Nothing runs in the background: each waiter asks for itself."""
