"""Gets usage records off the request path and into the ledger, in batches.

`submit` only appends to an in-memory buffer. A background task writes a batch when it is full
or when the flush interval passes. A failed batch stays at the front of the buffer and is retried
with backoff, so a database outage delays records but loses none, until the buffer is full:
then the oldest records are dropped, counted, logged loudly, and `/readyz` reports it.

With `strict`, `submit` hands back a future that resolves once the record is committed (True)
or dropped (False), and wakes the drain at once: records that arrive while one batch is being
written go together in the next (group commit), so throughput holds while each waits for at
most about two writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from app.ledger.protocol import Ledger
from app.records import UsageRecord

logger = logging.getLogger("mavera_gateway.ledger")

RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


def _ignore() -> None:
    pass


class LedgerWriter:
    """A bounded buffer of records and the task that drains it into a Ledger.

    `on_write_failure` and `on_drop` are called once per failed batch and per dropped record,
    so whoever watches (metrics) can count them without storage knowing about it.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        batch_size: int,
        flush_interval_s: float,
        max_buffer: int,
        on_write_failure: Callable[[], None] = _ignore,
        on_drop: Callable[[], None] = _ignore,
        strict: bool = False,
    ) -> None:
        self.ledger = ledger
        self.strict = strict
        self._waiters: dict[str, asyncio.Future[bool]] = {}  # record id -> committed?
        self.on_write_failure = on_write_failure
        self.on_drop = on_drop
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self._buffer: deque[UsageRecord] = deque()
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failing_since: float | None = None

    def depth(self) -> int:
        """Records waiting to be written."""
        return len(self._buffer) + self._in_flight

    def problems(self) -> list[str]:
        """What is wrong with getting records stored, for /readyz; empty when all is well."""
        found = []
        if self.failing_since is not None:
            found.append(f"ledger writes failing; {self.depth()} records buffered")
        if self.dropped:
            found.append(f"ledger buffer overflowed: {self.dropped} records dropped")
        return found

    def submit(self, record: UsageRecord) -> asyncio.Future[bool] | None:
        """Queue one finished record. Never blocks, never raises.

        In strict mode: the future of its commit (True) or loss (False); else None.
        """
        self._buffer.append(record)
        self._trim()
        if self.strict:
            future = asyncio.get_running_loop().create_future()
            self._waiters[record.id] = future
            self._wake.set()
            return future
        if len(self._buffer) >= self.batch_size:
            self._wake.set()
        return None

    def _trim(self) -> None:
        """Drop the oldest waiting records while more than `max_buffer` are held."""
        while self.depth() > self.max_buffer and self._buffer:
            self._settle(self._buffer.popleft(), False)
            self.dropped += 1
            self.on_drop()
            logger.error(
                "LEDGER BUFFER FULL (%d records): dropped the oldest record; %d dropped so far. "
                "The ledger database has been failing; fix it to stop losing usage records.",
                self.max_buffer,
                self.dropped,
            )

    def _settle(self, record: UsageRecord, committed: bool) -> None:
        future = self._waiters.pop(record.id, None) if self._waiters else None
        if future is not None and not future.done():
            future.set_result(committed)

    def start(self) -> None:
        """Start the background drain."""
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            while self._buffer:
                if await self._write_batch():
                    delay = RETRY_MIN_S
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _write_batch(self) -> bool:
        batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
        self._in_flight = len(batch)
        try:
            await self.ledger.write(batch)
        except asyncio.CancelledError:
            # close() cancelled the drain mid-write: the write may never run, so keep the batch
            # for close() to write again (idempotent on record id if it did run)
            self._buffer.extendleft(reversed(batch))
            raise
        except Exception as exc:  # any storage failure: keep the records and retry later
            self._in_flight = 0
            self._buffer.extendleft(reversed(batch))
            self._trim()  # what arrived during the write may have pushed past the bound
            self.on_write_failure()
            if self.failing_since is None:
                self.failing_since = time.time()
            logger.error("ledger write failed (%d records kept for retry): %s", self.depth(), exc)
            return False
        finally:
            self._in_flight = 0
        if self._waiters:
            for record in batch:
                self._settle(record, True)
        if self.failing_since is not None:
            logger.warning("ledger writes recovered after %.1f s", time.time() - self.failing_since)
            self.failing_since = None
        return True

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop the drain and write what is left, retrying for up to `timeout_s`."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        deadline = time.monotonic() + timeout_s
        while self._buffer:
            if not await self._write_batch():
                if time.monotonic() > deadline:
                    logger.error(
                        "shutting down with %d unwritten ledger records", len(self._buffer)
                    )
                    break
                await asyncio.sleep(RETRY_MIN_S)
        for record in self._buffer:
            self._settle(record, False)
