"""Rate limits and credit budgets, against an injected clock."""

from __future__ import annotations

import calendar

import pytest

from app.clients import Client, ClientSpec
from app.errors import BudgetExceeded, RateLimited
from app.limits import Limits, period_start


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


# Wednesday 2026-11-04 15:30:20 UTC
WEDNESDAY = utc(2026, 11, 4, 15, 30, 20)


# --- period_start ---------------------------------------------------------------------------


def test_period_start_day() -> None:
    assert period_start("day", WEDNESDAY) == utc(2026, 11, 4)


def test_period_start_week_starts_monday() -> None:
    assert period_start("week", WEDNESDAY) == utc(2026, 11, 2)
    monday_morning = utc(2026, 11, 2, 0, 0, 1)
    assert period_start("week", monday_morning) == utc(2026, 11, 2)
    sunday_night = utc(2026, 11, 8, 23, 59, 59)
    assert period_start("week", sunday_night) == utc(2026, 11, 2)


def test_period_start_week_across_month_and_year() -> None:
    assert period_start("week", utc(2027, 1, 1, 12)) == utc(2026, 12, 28)


def test_period_start_month() -> None:
    assert period_start("month", WEDNESDAY) == utc(2026, 11, 1)
    assert period_start("month", utc(2026, 12, 31, 23, 59, 59)) == utc(2026, 12, 1)
    assert period_start("month", utc(2028, 2, 29, 12)) == utc(2028, 2, 1)


def test_period_start_total() -> None:
    assert period_start("total", WEDNESDAY) == 0.0


def test_period_start_exactly_at_the_boundary() -> None:
    midnight = utc(2026, 11, 1)
    assert period_start("day", midnight) == midnight
    assert period_start("month", midnight) == midnight
    assert period_start("day", midnight - 1) == utc(2026, 10, 31)
    assert period_start("month", midnight - 1) == utc(2026, 10, 1)


# --- rate limit -----------------------------------------------------------------------------


def test_rpm_allows_n_then_refuses() -> None:
    clock = Clock(WEDNESDAY)
    limits = Limits(clock)
    client = Client("alice", ClientSpec(rpm=3))
    for _ in range(3):
        limits.admit(client)
    with pytest.raises(RateLimited) as caught:
        limits.admit(client)
    error = caught.value
    assert error.status == 429
    assert error.code == "rate_limit_exceeded"
    assert error.headers == {"retry-after": "60"}
    assert "alice" in error.message


def test_retry_after_counts_down() -> None:
    clock = Clock(WEDNESDAY)
    limits = Limits(clock)
    client = Client("alice", ClientSpec(rpm=2))
    limits.admit(client)
    clock.advance(5)
    limits.admit(client)
    waits = []
    for _ in range(4):
        clock.advance(10)
        with pytest.raises(RateLimited) as caught:
            limits.admit(client)
        waits.append(caught.value.headers["retry-after"])
    # asked at t=15, 25, 35, 45; the oldest request (t=0) leaves the window at t=60
    assert waits == ["45", "35", "25", "15"]


def test_retry_after_is_at_least_one_second() -> None:
    clock = Clock(WEDNESDAY)
    limits = Limits(clock)
    client = Client("alice", ClientSpec(rpm=1))
    limits.admit(client)
    clock.advance(59.9)
    with pytest.raises(RateLimited) as caught:
        limits.admit(client)
    assert caught.value.headers["retry-after"] == "1"


def test_sliding_window_reopens_after_sixty_seconds() -> None:
    clock = Clock(WEDNESDAY)
    limits = Limits(clock)
    client = Client("alice", ClientSpec(rpm=2))
    limits.admit(client)
    clock.advance(30)
    limits.admit(client)
    clock.advance(29)
    with pytest.raises(RateLimited):
        limits.admit(client)
    clock.advance(1)  # t=60: the first request has left the window, the second has not
    limits.admit(client)
    with pytest.raises(RateLimited):
        limits.admit(client)
    clock.advance(30)  # t=90: the second one leaves too
    limits.admit(client)


def test_refused_requests_do_not_fill_the_window() -> None:
    clock = Clock(WEDNESDAY)
    limits = Limits(clock)
    client = Client("alice", ClientSpec(rpm=1))
    limits.admit(client)
    for _ in range(5):
        clock.advance(10)
        with pytest.raises(RateLimited):
            limits.admit(client)
    clock.advance(10)  # t=60
    limits.admit(client)


def test_rate_limits_are_per_client() -> None:
    limits = Limits(Clock(WEDNESDAY))
    alice, bob = Client("alice", ClientSpec(rpm=1)), Client("bob", ClientSpec(rpm=1))
    limits.admit(alice)
    limits.admit(bob)
    with pytest.raises(RateLimited):
        limits.admit(alice)


def test_no_rpm_means_no_limit() -> None:
    limits = Limits(Clock(WEDNESDAY))
    client = Client("alice")
    for _ in range(1000):
        limits.admit(client)


# --- budgets --------------------------------------------------------------------------------


def test_budget_charged_up_to_limit_then_refused() -> None:
    limits = Limits(Clock(WEDNESDAY))
    client = Client("alice", ClientSpec(credit_budget=10, budget_period="day"))
    limits.admit(client)
    limits.charge("alice", 4)
    limits.admit(client)
    limits.charge("alice", 5.5)
    assert limits.spent("alice", "day") == 9.5
    limits.admit(client)  # 9.5 < 10: still allowed
    limits.charge("alice", 0.5)
    assert limits.spent("alice", "day") == 10
    with pytest.raises(BudgetExceeded) as caught:
        limits.admit(client)
    error = caught.value
    assert error.status == 402
    assert error.code == "budget_exceeded"
    assert "alice" in error.message and "10" in error.message


def test_overshoot_from_in_flight_requests_is_counted() -> None:
    limits = Limits(Clock(WEDNESDAY))
    client = Client("alice", ClientSpec(credit_budget=10))
    limits.admit(client)
    limits.admit(client)
    limits.charge("alice", 8)
    limits.charge("alice", 8)
    assert limits.spent("alice", "month") == 16
    with pytest.raises(BudgetExceeded):
        limits.admit(client)


def test_zero_budget_refuses_at_once() -> None:
    limits = Limits(Clock(WEDNESDAY))
    with pytest.raises(BudgetExceeded):
        limits.admit(Client("alice", ClientSpec(credit_budget=0)))


def test_no_budget_means_unlimited_spend() -> None:
    limits = Limits(Clock(WEDNESDAY))
    client = Client("alice")
    limits.admit(client)
    limits.charge("alice", 1_000_000)
    limits.admit(client)


@pytest.mark.parametrize(
    ("period", "to_next"),
    [
        ("day", utc(2026, 11, 5) - WEDNESDAY),
        ("week", utc(2026, 11, 9) - WEDNESDAY),
        ("month", utc(2026, 12, 1) - WEDNESDAY),
    ],
)
def test_new_period_resets_the_budget(period: str, to_next: float) -> None:
    clock = Clock(WEDNESDAY)
    limits = Limits(clock)
    client = Client("alice", ClientSpec(credit_budget=5, budget_period=period))
    limits.admit(client)
    limits.charge("alice", 5)
    clock.advance(to_next - 1)
    with pytest.raises(BudgetExceeded):
        limits.admit(client)
    clock.advance(1)
    assert limits.spent("alice", period) == 0
    limits.admit(client)
    limits.charge("alice", 2)
    assert limits.spent("alice", period) == 2


def test_total_budget_never_resets() -> None:
    clock = Clock(WEDNESDAY)
    limits = Limits(clock)
    client = Client("alice", ClientSpec(credit_budget=5, budget_period="total"))
    limits.admit(client)
    limits.charge("alice", 5)
    clock.advance(400 * 86400)
    with pytest.raises(BudgetExceeded):
        limits.admit(client)


def test_load_spent_seeds_the_current_period() -> None:
    limits = Limits(Clock(WEDNESDAY))
    began = period_start("month", WEDNESDAY)
    limits.load_spent("alice", "month", began, 99)
    assert limits.spent("alice", "month") == 99
    client = Client("alice", ClientSpec(credit_budget=100))
    limits.admit(client)
    limits.charge("alice", 1)
    with pytest.raises(BudgetExceeded):
        limits.admit(client)


def test_load_spent_for_an_earlier_period_counts_nothing() -> None:
    limits = Limits(Clock(WEDNESDAY))
    limits.load_spent("alice", "day", period_start("day", WEDNESDAY) - 86400, 99)
    assert limits.spent("alice", "day") == 0
    limits.admit(Client("alice", ClientSpec(credit_budget=10, budget_period="day")))


def test_charge_before_admission_uses_the_seeded_period() -> None:
    limits = Limits(Clock(WEDNESDAY))
    limits.load_spent("alice", "day", period_start("day", WEDNESDAY), 3)
    limits.charge("alice", 2)
    assert limits.spent("alice", "day") == 5


def test_budgets_are_per_client() -> None:
    limits = Limits(Clock(WEDNESDAY))
    alice = Client("alice", ClientSpec(credit_budget=1))
    bob = Client("bob", ClientSpec(credit_budget=1))
    limits.admit(alice)
    limits.charge("alice", 1)
    with pytest.raises(BudgetExceeded):
        limits.admit(alice)
    limits.admit(bob)
