"""What a client has spent and holds right now, and budgets seeded from the ledger."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from app.clients import Client
from app.errors import GatewayError, LimitsUnavailable
from app.limits.admission import Limits
from app.limits.counters import SharedUnavailable
from app.limits.holds import GATEWAY, client_key, rate_headers
from app.limits.periods import iso

SpentSince = Callable[[float], Awaitable[float]]
RATE_LIMIT_HEADER = "x-ratelimit-limit-requests"


async def seed_budget(
    limits: Limits, subject: str, period: str, spent_since: SpentSince
) -> float | None:
    """Start the current period of a budget ("gateway" or a client) from the ledger's figure.

    Once per subject and period kind (later figures come from settlements, not the ledger):
    returns the figure when it was read now, None when the budget was seeded before.
    Shared counters out of reach are seeded later: they rebuild every budget when back.
    """
    seen = limits.seeded
    if (subject, period) in seen:
        return None
    began, _ = limits.period_of(period)
    spent = await spent_since(began)
    key = GATEWAY if subject == GATEWAY else client_key(subject)
    try:
        await limits.counters.load(key, began, spent)
    except SharedUnavailable:
        return None
    seen.add((subject, period))
    return spent


async def current_headers(limits: Limits, client: Client) -> dict[str, str]:
    """The `x-ratelimit-*` headers of a client with an rpm, without counting a request."""
    rpm = client.spec.rpm
    if rpm is None:
        return {}
    try:
        verdict = await limits.counters.window_peek(client_key(client.name), rpm, limits.window_s)
    except SharedUnavailable:
        return {}  # the shared counters are out of reach: the answer goes without them
    return rate_headers(verdict)


async def error_headers(
    limits: Limits, client: Client, error: GatewayError, sent: Mapping[str, str]
) -> dict[str, str]:
    """The `x-ratelimit-*` headers a gateway error answer still lacks (none without an rpm)."""
    if client.spec.rpm is None or RATE_LIMIT_HEADER in sent or RATE_LIMIT_HEADER in error.headers:
        return {}
    return await current_headers(limits, client)


async def spend_report(limits: Limits, client: Client, spent_since: SpentSince) -> dict[str, Any]:
    """The client's budget and limits now: GET /admin/clients/{name}/spend.

    A client with a budget is reported from the live counters (settled and reserved); one
    without is not counted there, so its spend comes from the ledger (`spent_since`).
    """
    spec = client.spec
    began, ends = limits.period_of(spec.budget_period)
    budget = spec.credit_budget
    if budget is None:
        spent, reserved = await spent_since(began), 0.0
        remaining = None
    else:
        try:
            state = await limits.counters.budget(client_key(client.name), began)
        except SharedUnavailable as exc:
            raise LimitsUnavailable(f"the live budget counters cannot be read: {exc}") from None
        spent, reserved = state.spent, state.reserved
        remaining = max(0.0, budget - spent - reserved)
    total = spec.budget_period == "total"
    return {
        "client": client.name,
        "budget": budget,
        "period": spec.budget_period,
        "timezone": limits.settings.timezone,
        "spent": spent,
        "reserved": reserved,
        "remaining": remaining,
        "period_start": None if total else iso(began, limits.zone),
        "resets_at": iso(ends, limits.zone),
        "rpm": spec.rpm,
        "max_concurrent": spec.max_concurrent,
        "in_flight": limits.in_flight.get(client.name, 0),
    }
