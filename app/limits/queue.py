"""The gateway-wide request rate (`[limits] gateway_rpm`), shared fairly when demand exceeds it.

A request is admitted at once while the shared window has room and nobody is waiting. Otherwise
it joins its client's FIFO queue, and one dispatcher hands out each place as the window frees
it, by deficit round robin over the clients that are waiting: each client's turn allows
`weight` requests, so with weights 2 and 1 the admissions go A, A, B, A, A, B. A waiter that
gives up (its wait ran out, or its client hung up and the caller was cancelled) leaves its
queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from app.limits.counters import Counters, WindowVerdict

GATEWAY_WINDOW_KEY = "gateway:rpm"
# The dispatcher looks again at least this often while requests wait: a place may free early
# (another replica's counted request, when counters are shared) and a wait's end is not missed.
POLL_S = 0.05


class QueueTimeout(Exception):
    """The wait for a place in the shared window ran out; carries the window's state."""

    def __init__(self, verdict: WindowVerdict) -> None:
        super().__init__("no place in the gateway's shared rate limit in time")
        self.verdict = verdict


class FairQueue:
    """Admits requests under one shared sliding-window limit, fairly across clients."""

    def __init__(self, counters: Counters, limit: int, window_s: float) -> None:
        self.counters = counters
        self.limit = limit
        self.window_s = window_s
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._order: deque[str] = deque()  # clients with waiters, in round-robin order
        self._weights: dict[str, int] = {}
        self._deficit: dict[str, int] = {}
        self._dispatcher: asyncio.Task[None] | None = None

    def waiting(self) -> int:
        """How many requests are waiting right now."""
        return sum(len(queue) for queue in self._waiting.values())

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
        if not self._order:
            verdict = await self.counters.window_hit(GATEWAY_WINDOW_KEY, self.limit, self.window_s)
            if verdict.allowed:
                return
            if timeout_s <= 0:
                raise QueueTimeout(verdict)
        waiter = asyncio.get_running_loop().create_future()
        self._enqueue(client, weight, waiter)
        try:
            wait = asyncio.wait_for(asyncio.shield(waiter), timeout_s)
            await (wait if guard is None else guard(wait))
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # granted at the last moment
                return
            self._leave(client, waiter)
            peek = await self.counters.window_peek(GATEWAY_WINDOW_KEY, self.limit, self.window_s)
            raise QueueTimeout(peek) from None
        except BaseException:
            self._leave(client, waiter)
            raise

    def _enqueue(self, client: str, weight: int, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.setdefault(client, deque())
        if not queue and client not in self._order:
            self._order.append(client)
        queue.append(waiter)
        self._weights[client] = weight
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.ensure_future(self._dispatch())

    def _leave(self, client: str, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(client)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
        if not waiter.done():
            waiter.cancel()

    def _pick(self) -> asyncio.Future[None] | None:
        """The next waiter by deficit round robin (weight places per turn), or None."""
        while self._order:
            name = self._order[0]
            queue = self._waiting.get(name)
            while queue and queue[0].done():
                queue.popleft()
            if not queue:
                self._order.popleft()
                self._deficit.pop(name, None)
                self._waiting.pop(name, None)
                continue
            if self._deficit.get(name, 0) < 1:  # a new turn
                self._deficit[name] = self._weights.get(name, 1)
            self._deficit[name] -= 1
            waiter = queue.popleft()
            if self._deficit[name] < 1:
                self._order.rotate(-1)
            return waiter
        return None

    async def _dispatch(self) -> None:
        """Hand out places as the window frees them while anyone waits."""
        while self._order:
            verdict = await self.counters.window_hit(GATEWAY_WINDOW_KEY, self.limit, self.window_s)
            if not verdict.allowed:
                await asyncio.sleep(min(max(verdict.retry_s, 0.001), POLL_S))
                continue
            waiter = self._pick()
            if waiter is not None:
                waiter.set_result(None)

    async def aclose(self) -> None:
        """Stop the dispatcher (at shutdown)."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher


class GatewayQueue(Protocol):
    """What admission needs of the gateway-wide rate's queue (in-process or shared)."""

    limit: int

    def waiting(self) -> int:
        """How many requests of this replica are waiting right now."""
        ...

    async def admit(
        self,
        client: str,
        weight: int,
        timeout_s: float,
        guard: Callable[[Awaitable[None]], Awaitable[None]] | None = None,
    ) -> None:
        """Return once the request may go upstream; raise QueueTimeout after `timeout_s`;
        `guard` wraps a wait (it may end it, when the client hangs up)."""
        ...

    async def aclose(self) -> None:
        """Stop what runs in the background (at shutdown)."""
        ...


@runtime_checkable
class SharedQueues(Protocol):
    """Counters shared by replicas that bring a fair queue shared by them too (Redis)."""

    def fair_queue(self, limit: int, window_s: float) -> GatewayQueue:
        """The gateway-wide rate's queue, one for every replica."""
        ...


def gateway_queue(counters: Counters, limit: int, window_s: float) -> GatewayQueue:
    """The queue for `[limits] gateway_rpm`: the counters' shared one, else this process's."""
    if isinstance(counters, SharedQueues):
        return counters.fair_queue(limit, window_s)
    return FairQueue(counters, limit, window_s)
