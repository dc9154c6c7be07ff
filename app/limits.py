"""Per-client rate limits (requests per minute) and credit budgets, kept in this process.

Budgets are checked before a request and charged when it finishes with known credits, so
requests already in flight when a budget runs out may overshoot it by their own cost.
"""

from __future__ import annotations

import calendar
import math
import time
from collections import deque
from collections.abc import Callable

from app.clients import Client
from app.errors import BudgetExceeded, RateLimited

WINDOW_S = 60.0


def period_start(period: str, now: float) -> float:
    """Unix time at which the current budget period began (UTC calendar day/week/month)."""
    if period == "total":
        return 0.0
    day = time.gmtime(now)
    midnight = calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0))
    if period == "day":
        return float(midnight)
    if period == "week":
        return float(midnight - day.tm_wday * 86400)
    return float(calendar.timegm((day.tm_year, day.tm_mon, 1, 0, 0, 0)))


class Limits:
    """Admits or refuses each request for its client; learns what each one spent."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._recent: dict[str, deque[float]] = {}
        self._spent: dict[str, tuple[float, float]] = {}  # client -> (period start, credits)
        self._periods: dict[str, str] = {}  # client -> budget period, learnt at admission

    def load_spent(self, client: str, period: str, period_began: float, credits: float) -> None:
        """Seed a client's spend for the current period (from the ledger, at start)."""
        self._periods[client] = period
        self._spent[client] = (period_began, credits)

    def spent(self, name: str, period: str) -> float:
        """Credits the client has used in its current budget period."""
        began = period_start(period, self._clock())
        recorded_start, credits = self._spent.get(name, (began, 0.0))
        return credits if recorded_start == began else 0.0

    def admit(self, client: Client) -> None:
        """Let the request through, or raise BudgetExceeded / RateLimited."""
        now = self._clock()
        spec = client.spec
        self._periods[client.name] = spec.budget_period
        budget = spec.credit_budget
        if budget is not None and self.spent(client.name, spec.budget_period) >= budget:
            raise BudgetExceeded(
                f"client {client.name!r} has used its {budget} credit budget "
                f"for this {spec.budget_period}"
            )
        if spec.rpm is None:
            return
        recent = self._recent.setdefault(client.name, deque())
        while recent and recent[0] <= now - WINDOW_S:
            recent.popleft()
        if len(recent) >= spec.rpm:
            wait = max(1, math.ceil(recent[0] + WINDOW_S - now))
            raise RateLimited(
                f"client {client.name!r} is over its limit of {spec.rpm} requests per minute; "
                f"retry after {wait} s",
                headers={"retry-after": str(wait)},
            )
        recent.append(now)

    def charge(self, name: str, credits: float) -> None:
        """Add a finished request's credits to the spend of the client admitted under `name`."""
        period = self._periods.get(name, "month")
        began = period_start(period, self._clock())
        self._spent[name] = (began, self.spent(name, period) + credits)
