"""The errors a refused request gets: which limit refused it, and when to retry."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from app.errors import BudgetExceeded, LimitsUnavailable, RateLimited
from app.limits.counters import BudgetState, WindowVerdict, whole_seconds
from app.limits.holds import GATEWAY
from app.limits.periods import iso


def over_rpm(client: str, verdict: WindowVerdict, headers: dict[str, str]) -> RateLimited:
    """The 429 of a client over its `rpm` (the window's limit)."""
    wait = whole_seconds(verdict.retry_s)
    return RateLimited(
        f"client {client!r} is over its limit of {verdict.limit} requests per minute; "
        f"retry after {wait} s",
        headers={"retry-after": str(wait), **headers},
    )


def over_concurrency(client: str, max_concurrent: int, headers: dict[str, str]) -> RateLimited:
    """The 429 of a client with `max_concurrent` requests already in flight."""
    return RateLimited(
        f"client {client!r} already has {max_concurrent} requests in flight (its "
        "max_concurrent); retry when one of them ends",
        headers={"retry-after": "1", **headers},
    )


def over_budget(
    subject: str,
    budget: float,
    period: str,
    ends: float | None,
    zone: ZoneInfo,
    state: BudgetState,
    headers: dict[str, str],
) -> BudgetExceeded:
    """The 402 of a request whose client's (or, `subject` GATEWAY, the gateway-wide) budget is used
    up for the period that ends at `ends` (None: never)."""
    resets = "it never resets (period total)" if ends is None else f"it resets at {iso(ends, zone)}"
    what = (
        f"the gateway's shared budget of {budget:g} credits (all clients together) is "
        f"used up for this {period}"
        if subject == GATEWAY
        else f"client {subject!r} has used its budget of {budget:g} credits for this {period}"
    )
    return BudgetExceeded(
        f"{what} ({state.spent:g} spent, {state.reserved:g} reserved by requests in flight); "
        f"{resets}",
        headers={"x-should-retry": "false", **headers},
    )


def over_gateway_rpm(limit: int, verdict: WindowVerdict, headers: dict[str, str]) -> RateLimited:
    """The 429 of a request that waited in the `gateway_rpm` queue for too long."""
    wait = whole_seconds(verdict.retry_s)
    return RateLimited(
        f"the gateway's shared limit of {limit} requests per minute (all clients together, "
        f"the Mavera key's own limit) is reached; retry after {wait} s",
        headers={"retry-after": str(wait), **headers},
    )


def unavailable(client: str, why: object) -> LimitsUnavailable:
    """The 503 of a limited client's request while the shared counters cannot be used and
    `on_shared_failure` is `fail_closed`."""
    return LimitsUnavailable(
        f"the gateway cannot check client {client!r}'s budget and rate limits right now "
        f"({why}); it refuses such requests until it can (on_shared_failure = fail_closed)",
        headers={"retry-after": "1"},
    )
