"""Counters, budget periods, admission and the fair queue, without a server (injected clocks)."""

from __future__ import annotations

import asyncio
import calendar
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from app.clients import Client, ClientSpec
from app.config_sections import LimitsSettings
from app.errors import BudgetExceeded, RateLimited
from app.limits import Limits, MemoryCounters, period_end, period_start
from app.limits.counters import BudgetState, Reservation, reset_duration, whole_seconds
from app.limits.queue import FairQueue, QueueTimeout
from app.limits.spend import seed_budget, spend_report
from app.records import UsageRecord


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def utc(*parts: int) -> float:
    """Unix time of a UTC calendar moment (year, month, day[, hour, minute, second])."""
    fields = (*parts, 0, 0, 0)[:6]
    return float(calendar.timegm(fields))


WEDNESDAY = utc(2026, 11, 4, 15, 30, 20)  # Wednesday 2026-11-04 15:30:20 UTC
BERLIN = ZoneInfo("Europe/Berlin")


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


# --- periods --------------------------------------------------------------------------------


def test_periods_in_utc() -> None:
    assert period_start("day", WEDNESDAY) == utc(2026, 11, 4)
    assert period_end("day", WEDNESDAY) == utc(2026, 11, 5)
    assert period_start("week", WEDNESDAY) == utc(2026, 11, 2)  # Monday
    assert period_end("week", WEDNESDAY) == utc(2026, 11, 9)
    assert period_start("week", utc(2027, 1, 1, 12)) == utc(2026, 12, 28)
    assert period_start("month", WEDNESDAY) == utc(2026, 11, 1)
    assert period_end("month", utc(2026, 12, 31, 23, 59, 59)) == utc(2027, 1, 1)
    assert period_start("total", WEDNESDAY) == 0.0
    assert period_end("total", WEDNESDAY) is None
    midnight = utc(2026, 11, 1)
    assert period_start("day", midnight) == midnight
    assert period_start("day", midnight - 1) == utc(2026, 10, 31)


def test_periods_in_a_time_zone_begin_at_local_midnight() -> None:
    # 23:30 UTC on 2026-11-04 is already 00:30 on the 5th in Berlin (UTC+1 in November)
    late = utc(2026, 11, 4, 23, 30)
    began = datetime.fromtimestamp(period_start("day", late, BERLIN), BERLIN)
    assert (began.day, began.hour, began.utcoffset().total_seconds()) == (5, 0, 3600)  # type: ignore[union-attr]
    # the month of March 2026 has a daylight-saving change: it still ends at local midnight
    end = datetime.fromtimestamp(period_end("month", utc(2026, 3, 15), BERLIN) or 0, BERLIN)
    assert (end.month, end.day, end.hour, end.utcoffset().total_seconds()) == (4, 1, 0, 7200)  # type: ignore[union-attr]


def test_reset_duration_in_openai_format() -> None:
    assert reset_duration(0.017) == "17ms"
    assert reset_duration(1) == "1s"
    assert reset_duration(1.5) == "1.5s"
    assert reset_duration(360) == "6m0s"
    assert reset_duration(59.9999) == "60s"
    assert whole_seconds(0.1) == 1 and whole_seconds(4.2) == 5


# --- counters -------------------------------------------------------------------------------


def test_reserve_admits_while_spent_plus_reserved_is_below_the_limit() -> None:
    async def scenario() -> None:
        counters = MemoryCounters()
        first = await counters.reserve("k", 1.0, 5, 12)
        second = await counters.reserve("k", 1.0, 5, 12)
        third = await counters.reserve("k", 1.0, 5, 12)  # 10 < 12: still admitted
        assert all(isinstance(r, Reservation) for r in (first, second, third))
        assert await counters.reserve("k", 1.0, 5, 12) == BudgetState(0, 15)
        assert isinstance(first, Reservation)
        assert await counters.settle(first, 2) == BudgetState(2, 10)
        assert isinstance(second, Reservation)
        await counters.settle(second, 0)  # released
        assert await counters.budget("k", 1.0) == BudgetState(2, 5)
        assert isinstance(await counters.reserve("k", 1.0, 5, 12), Reservation)

    run(scenario())


def test_a_new_period_counts_from_zero_and_old_reservations_do_not_touch_it() -> None:
    async def scenario() -> None:
        counters = MemoryCounters()
        old = await counters.reserve("k", 1.0, 5, 5)
        assert isinstance(old, Reservation)
        assert isinstance(await counters.reserve("k", 2.0, 5, 5), Reservation)
        await counters.settle(old, 5)
        assert await counters.budget("k", 2.0) == BudgetState(0, 5)

    run(scenario())


def test_load_seeds_a_period_only_once() -> None:
    async def scenario() -> None:
        counters = MemoryCounters()
        await counters.load("k", 1.0, 30)
        await counters.load("k", 1.0, 0)  # a later seed does not overwrite what is counted
        assert await counters.budget("k", 1.0) == BudgetState(30, 0)

    run(scenario())


def test_sliding_window_counts_admitted_hits_only() -> None:
    async def scenario() -> None:
        clock = Clock(100.0)
        counters = MemoryCounters(clock)
        first = await counters.window_hit("k", 2, 60)
        assert (first.allowed, first.remaining, first.reset_s) == (True, 1, 60)
        clock.advance(10)
        second = await counters.window_hit("k", 2, 60)
        assert (second.allowed, second.remaining, second.reset_s) == (True, 0, 60)
        clock.advance(20)
        refused = await counters.window_hit("k", 2, 60)
        assert (refused.allowed, refused.remaining, refused.retry_s) == (False, 0, 30)
        assert refused.reset_s == 40  # the window is empty once the newest hit is 60 s old
        clock.advance(30)  # t=60 after the first: it leaves the window
        assert (await counters.window_peek("k", 2, 60)).remaining == 1
        assert (await counters.window_hit("k", 2, 60)).allowed

    run(scenario())


def test_slots_are_limited_released_and_lapse() -> None:
    async def scenario() -> None:
        clock = Clock(0.0)
        counters = MemoryCounters(clock)
        one = await counters.acquire_slot("k", 2, 100)
        two = await counters.acquire_slot("k", 2, 10)
        assert one is not None and two is not None
        assert await counters.acquire_slot("k", 2, 100) is None
        await counters.release_slot(one)
        await counters.release_slot(one)  # twice: nothing more
        assert await counters.slots_held("k") == 1
        clock.advance(11)  # `two` was never released: it lapses
        assert await counters.slots_held("k") == 0

    run(scenario())


# --- admission ------------------------------------------------------------------------------


def _limits(**settings: object) -> Limits:
    return Limits(LimitsSettings(**settings), clock=lambda: WEDNESDAY)  # type: ignore[arg-type]


def _record(client: str, credits: float | None, status: int = 200) -> UsageRecord:
    outcome = "ok" if status < 400 else "upstream_error"
    return UsageRecord(
        endpoint="chat.completions", client=client, status=status, outcome=outcome,
        credits_used=credits,
    )  # fmt: skip


async def _finish(limits: Limits, record: UsageRecord) -> None:
    limits.finish(record)
    await limits.drain()


def test_concurrent_admissions_cannot_overspend_by_more_than_one_reservation() -> None:
    async def scenario() -> None:
        limits = _limits(budget_reserve_credits=5)
        alice = Client("alice", ClientSpec(credit_budget=12, budget_period="day"))
        admitted = []
        for _ in range(10):
            record = _record("alice", 5)
            try:
                await limits.admit(alice, record)
            except BudgetExceeded as exc:
                assert exc.headers["x-should-retry"] == "false"
                assert "'alice'" in exc.message and "day" in exc.message
                assert "2026-11-05T00:00:00+00:00" in exc.message
                continue
            admitted.append(record)
        assert len(admitted) == 3  # 0, 5, 10 < 12
        for record in admitted:
            await _finish(limits, record)
        report = await spend_report(limits, alice, _no_ledger)
        assert (report["spent"], report["reserved"], report["remaining"]) == (15, 0, 0)
        assert report["spent"] <= 12 + 5

    run(scenario())


async def _no_ledger(since: float) -> float:
    raise AssertionError("a budgeted client is reported from its counters")


def test_unknown_cost_keeps_the_reservation_and_marks_the_record() -> None:
    async def scenario() -> None:
        limits = _limits(budget_reserve_credits=4)
        alice = Client("alice", ClientSpec(credit_budget=100))
        kept, released = _record("alice", None), _record("alice", None, status=503)
        await limits.admit(alice, kept)
        await limits.admit(alice, released)
        await _finish(limits, kept)
        await _finish(limits, released)
        assert (kept.credits_reserved, released.credits_reserved) == (4, None)
        report = await spend_report(limits, alice, _no_ledger)
        assert (report["spent"], report["reserved"]) == (4, 0)

    run(scenario())


def test_gateway_budget_is_shared_by_all_clients_and_alerts_each_settlement() -> None:
    async def scenario() -> None:
        limits = _limits(gateway_credit_budget=6, gateway_budget_period="week")
        seen: list[tuple[str, float, float, str, float]] = []
        limits.on_spend = lambda *args: seen.append(args)
        first = _record("alice", 3)
        await limits.admit(Client("alice"), first)
        await limits.admit(Client("bob"), _record("bob", 3))  # 0 + 5 < 6
        with pytest.raises(BudgetExceeded) as caught:
            await limits.admit(Client("carol"), _record("carol", 3))
        assert "gateway's shared budget" in caught.value.message
        await _finish(limits, first)
        assert seen == [("gateway", 3, 6, "week", utc(2026, 11, 2))]

    run(scenario())


def test_rpm_refusal_has_retry_after_and_rate_headers() -> None:
    async def scenario() -> None:
        limits = _limits()
        alice = Client("alice", ClientSpec(rpm=2))
        one = await limits.admit(alice, _record("alice", 1))
        two = await limits.admit(alice, _record("alice", 1))
        assert [a.headers["x-ratelimit-remaining-requests"] for a in (one, two)] == ["1", "0"]
        assert one.headers["x-ratelimit-limit-requests"] == "2"
        with pytest.raises(RateLimited) as caught:
            await limits.admit(alice, _record("alice", 1))
        headers = caught.value.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-ratelimit-remaining-requests"] == "0"

    run(scenario())


def test_max_concurrent_holds_a_place_until_the_record_closes() -> None:
    async def scenario() -> None:
        limits = _limits()
        alice = Client("alice", ClientSpec(max_concurrent=1))
        first = _record("alice", 1)
        await limits.admit(alice, first)
        with pytest.raises(RateLimited) as caught:
            await limits.admit(alice, _record("alice", 1))
        assert caught.value.headers["retry-after"] == "1"
        assert "max_concurrent" in caught.value.message
        await _finish(limits, first)
        await limits.admit(alice, _record("alice", 1))

    run(scenario())


def test_a_refused_budget_releases_the_place_already_taken() -> None:
    async def scenario() -> None:
        limits = _limits()
        alice = Client("alice", ClientSpec(max_concurrent=1, credit_budget=0))
        for _ in range(3):
            with pytest.raises(BudgetExceeded):
                await limits.admit(alice, _record("alice", 1))
        assert await limits.counters.slots_held("client:alice") == 0

    run(scenario())


def test_seeding_starts_the_period_from_the_ledger_once() -> None:
    async def scenario() -> None:
        limits = _limits()
        asked: list[float] = []

        async def ledger(since: float) -> float:
            asked.append(since)
            return 9.0

        await seed_budget(limits, "alice", "month", ledger)
        await seed_budget(limits, "alice", "month", ledger)
        assert asked == [utc(2026, 11, 1)]
        alice = Client("alice", ClientSpec(credit_budget=10))
        report = await spend_report(limits, alice, _no_ledger)
        assert (report["spent"], report["remaining"]) == (9, 1)
        assert report["period_start"] == "2026-11-01T00:00:00+00:00"
        assert report["resets_at"] == "2026-12-01T00:00:00+00:00"

    run(scenario())


# --- fair queue -----------------------------------------------------------------------------


async def _drain_queue(weights: dict[str, int], per_client: int, limit: int) -> list[str]:
    """Fill the window, queue `per_client` requests per client, free one place at a time."""
    clock = Clock(0.0)
    counters = MemoryCounters(clock)
    queue = FairQueue(counters, limit, 60)
    for _ in range(limit):
        await queue.admit("warm", 1, 0)
    order: list[str] = []

    async def one(name: str) -> None:
        await queue.admit(name, weights[name], 3600)
        order.append(name)

    tasks = [asyncio.ensure_future(one(n)) for _ in range(per_client) for n in weights]
    await asyncio.sleep(0)
    assert queue.waiting() == per_client * len(weights)
    while len(order) < len(tasks):
        clock.advance(60)  # the whole window frees: `limit` more go
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    await queue.aclose()
    return order


def test_fair_queue_alternates_between_clients() -> None:
    order = asyncio.run(_drain_queue({"a": 1, "b": 1}, 6, 2))
    assert order == ["a", "b"] * 6


def test_fair_queue_honours_weights() -> None:
    order = asyncio.run(_drain_queue({"a": 2, "b": 1}, 6, 3))
    assert order[:9] == ["a", "a", "b"] * 3


def test_fair_queue_times_out_and_a_leaver_leaves_the_queue() -> None:
    async def scenario() -> None:
        counters = MemoryCounters(Clock(0.0))
        queue = FairQueue(counters, 1, 60)
        await queue.admit("a", 1, 0)
        with pytest.raises(QueueTimeout) as caught:
            await queue.admit("a", 1, 0.05)
        assert caught.value.verdict.retry_s == 60
        waiting = asyncio.ensure_future(queue.admit("b", 1, 3600))
        await asyncio.sleep(0)
        assert queue.waiting() == 1
        waiting.cancel()  # its client hung up
        await asyncio.gather(waiting, return_exceptions=True)
        assert queue.waiting() == 0
        await queue.aclose()

    asyncio.run(scenario())


def test_a_place_refreshed_by_its_heartbeat_outlives_its_ttl_and_lapses_without() -> None:
    clock = Clock(1000.0)
    counters = MemoryCounters(clock)
    kept = run(counters.acquire_slot("client:a", 2, 30.0))
    dropped = run(counters.acquire_slot("client:a", 2, 30.0))
    assert kept is not None and dropped is not None
    for _ in range(3):
        clock.advance(20.0)  # 60 s in all: twice the TTL
        run(counters.refresh_slots([kept], 30.0))  # type: ignore[list-item]
    assert run(counters.slots_held("client:a")) == 1  # the other lapsed: nobody refreshed it
    clock.advance(31.0)
    assert run(counters.slots_held("client:a")) == 0
