"""RedisCounters against the real Redis: two instances stand for two replicas sharing it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from app.limits.counters import BudgetState, Reservation, SharedUnavailable
from app.limits.periods import period_start
from app.limits.queue import QueueTimeout
from app.limits.redis_batch import ScriptBatcher, connect
from app.limits.redis_counters import RedisCounters
from tests.conftest import REDIS_URL, free_port

pytestmark = pytest.mark.anyio

DAY = period_start("day", time.time())  # budget keys expire after their period: a real one
Replicas = Callable[..., Awaitable[list[RedisCounters]]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def replicas(redis_prefix: str) -> AsyncIterator[Replicas]:
    """Start RedisCounters sharing the test's prefix, each with its own connections."""
    opened: list[RedisCounters] = []

    async def start(count: int = 2, **options: object) -> list[RedisCounters]:
        made = [RedisCounters(REDIS_URL, redis_prefix, **options) for _ in range(count)]  # type: ignore[arg-type]
        opened.extend(made)
        return made

    yield start
    for counters in opened:
        await counters.aclose()


async def _flush(prefix: str) -> None:
    """What a Redis restarted empty looks like, for this test's keys only."""
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_reservations_from_two_replicas_never_overrun_the_budget(replicas: Replicas) -> None:
    one, two = await replicas()
    results = await asyncio.gather(
        *(c.reserve("client:alice", DAY, 5.0, 42.0) for c in [one, two] * 40)
    )
    held = [r for r in results if isinstance(r, Reservation)]
    assert len(held) == 9  # 8 x 5 = 40 < 42 lets a ninth start; never a tenth
    assert await one.budget("client:alice", DAY) == BudgetState(0.0, 45.0)
    for reservation in held:
        await two.settle(reservation, 3.5)
    assert await one.budget("client:alice", DAY) == BudgetState(31.5, 0.0)
    assert await two.budget("client:alice", DAY + 86400) == BudgetState(0.0, 0.0)  # another period


async def test_load_sets_only_a_budget_nobody_counts_in(replicas: Replicas) -> None:
    one, two = await replicas()
    reservation = await one.reserve("gateway", 0.0, 5.0, 100.0)
    assert isinstance(reservation, Reservation)
    await two.load("gateway", 0.0, 60.0)  # a replica starting later: must not overwrite
    await one.settle(reservation, 2.0)
    assert await two.budget("gateway", 0.0) == BudgetState(2.0, 0.0)


async def test_redis_restarted_empty_rebuilds_budgets_from_the_loader_first(
    replicas: Replicas, redis_prefix: str
) -> None:
    ledger_spent = {"client:alice": 0.0}
    rebuilds: list[str] = []
    one: RedisCounters
    two: RedisCounters

    async def rebuild() -> None:
        rebuilds.append("rebuild")
        for counters in (one, two):
            if counters._loading is not None:  # the one rebuilding loads
                await counters.load("client:alice", DAY, ledger_spent["client:alice"])

    one, two = await replicas(rebuild=rebuild)
    first = await one.reserve("client:alice", DAY, 5.0, 20.0)
    assert isinstance(first, Reservation)
    await one.settle(first, 5.0)
    ledger_spent["client:alice"] = 18.0  # what the ledger says by the time Redis empties
    await _flush(redis_prefix)

    refused = await two.reserve("client:alice", DAY, 5.0, 20.0)
    assert isinstance(refused, Reservation)  # 18 < 20: one more may start
    await one.settle(first, 5.0)  # a reservation of the old epoch changes nothing
    assert await one.budget("client:alice", DAY) == BudgetState(18.0, 5.0)
    assert await one.reserve("client:alice", DAY, 5.0, 20.0) == BudgetState(18.0, 5.0)
    assert len(rebuilds) == 2  # once at the first reservation ever, once after the flush


async def test_windows_count_both_replicas_hits_together(replicas: Replicas) -> None:
    one, two = await replicas()
    verdicts = await asyncio.gather(*(c.window_hit("client:bob", 7, 60.0) for c in [one, two] * 10))
    assert sum(v.allowed for v in verdicts) == 7
    refused = [v for v in verdicts if not v.allowed]
    assert all(v.remaining == 0 and 59 < v.retry_s <= 60 for v in refused)
    peek = await one.window_peek("client:bob", 7, 60.0)
    assert (peek.allowed, peek.remaining) == (False, 0)


async def test_slots_are_shared_lapse_without_heartbeat_and_stay_with_one(
    replicas: Replicas,
) -> None:
    one, two = await replicas()
    held = [await c.acquire_slot("client:carol", 2, 0.5) for c in (one, two)]
    assert all(held)
    assert await one.acquire_slot("client:carol", 2, 0.5) is None
    assert await two.slots_held("client:carol") == 2
    for _ in range(4):  # the first replica keeps its slot alive; the second has "died"
        await asyncio.sleep(0.2)
        await one.refresh_slots([held[0]], 0.5)  # type: ignore[list-item]
    assert await two.slots_held("client:carol") == 1
    await one.release_slot(held[0])  # type: ignore[arg-type]
    assert await one.slots_held("client:carol") == 0


async def test_the_shared_fair_queue_shares_by_weight_across_replicas(replicas: Replicas) -> None:
    one, two = await replicas()
    queues = [one.fair_queue(4, 0.6), two.fair_queue(4, 0.6)]
    order: list[str] = []

    async def ask(queue_index: int, client: str, weight: int) -> None:
        await queues[queue_index].admit(client, weight, 10.0)
        order.append(client)

    await asyncio.gather(*(queues[0].admit("filler", 1, 1.0) for _ in range(4)))
    waiting = [ask(0, "heavy", 2) for _ in range(8)] + [ask(1, "light", 1) for _ in range(4)]
    await asyncio.gather(*waiting)
    shares = Counter(order[:9])
    assert shares["heavy"] == 6 and shares["light"] == 3, order


async def test_a_waiter_gives_up_at_its_timeout(replicas: Replicas) -> None:
    (one,) = await replicas(1)
    queue = one.fair_queue(1, 30.0)
    await queue.admit("a", 1, 1.0)
    with pytest.raises(QueueTimeout) as refused:
        await queue.admit("b", 1, 0.2)
    assert not refused.value.verdict.allowed and queue.waiting() == 0


async def test_unreachable_redis_fails_fast_and_says_so() -> None:
    counters = RedisCounters(f"redis://:secret@127.0.0.1:{free_port()}/0", "x:")
    with pytest.raises(SharedUnavailable) as failed:
        await counters.window_hit("client:dan", 5, 60.0)
    assert "unreachable" in str(failed.value) and "secret" not in str(failed.value)
    with pytest.raises(SharedUnavailable):  # skipped for a moment: no new connection attempt
        await counters.reserve("client:dan", 0.0, 5.0, 10.0)
    health = await counters.health()
    assert health is not None and "127.0.0.1" in health and "secret" not in health
    await counters.aclose()


_WITHOUT_REDIS = """
import sys
sys.modules["redis"] = None  # as if the [redis] extra were not installed
from app.config import ConfigError
from app.config_sections import LimitsSettings
from app.server import create_app, open_counters
print(type(open_counters(LimitsSettings(), None)).__name__)
try:
    open_counters(LimitsSettings(redis_url="redis://127.0.0.1:6379/0"), None)
except ConfigError as exc:
    print(exc)
"""


def test_in_process_counters_need_no_redis_and_a_redis_url_names_the_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_REDIS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "MemoryCounters"
    assert "pip install 'mavera-gateway[redis]'" in done.stdout


async def test_scripts_redis_does_not_know_are_loaded_and_the_calls_sent_again(
    redis_prefix: str,
) -> None:
    # a script text of this test's own: Redis has never seen it, as after a restart
    fresh = {"add": f"-- {redis_prefix}\nreturn tonumber(ARGV[1]) + 1"}
    client = connect(REDIS_URL)
    counters = RedisCounters(REDIS_URL, redis_prefix)
    batcher = ScriptBatcher(client, fresh, counters.call)
    results = await asyncio.gather(*(batcher.run("add", [], [n]) for n in range(5)))
    assert results == [1, 2, 3, 4, 5]
    assert await batcher.run("add", [], [41]) == 42  # alone, now that Redis knows it
    await client.aclose()
    await client.connection_pool.disconnect()
    await counters.aclose()
