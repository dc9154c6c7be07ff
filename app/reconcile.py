"""Reconciliation: Mavera's bill for its billing period next to the ledger's total for it.

Mavera's `GET /usage` (mavera-api.md section 8) says what the shared key's account spent in the
billing period; the ledger says what the gateway recorded for the same period, all clients
together. A difference is credits spent outside this gateway (another app, Mavera's web app,
another gateway's key) or by requests whose cost Mavera never reported, which are listed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from app.errors import UpstreamUnavailable
from app.ledger.protocol import Ledger
from app.records import new_id
from app.upstream import Upstream

UNKNOWN_COST_LISTED = 20  # the newest unknown-cost requests shown; the count covers them all
# An ISO end time is inclusive to the millisecond (…T23:59:59.999Z); the ledger's range is not.
END_RESOLUTION_S = 0.001


class UpstreamRefused(Exception):
    """Mavera answered `GET /usage` with an error of its own (4xx), passed on as it came."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(
            f"Mavera answered GET /usage with {status}: {body[:300].decode('utf-8', 'replace')}"
        )
        self.status = status
        self.body = body
        self.headers = headers


async def mavera_usage(upstream: Upstream) -> dict[str, Any]:
    """Mavera's usage object; UpstreamRefused or a GatewayError when it cannot be had."""
    reply, content = await upstream.fetch("GET", "usage", {}, new_id())
    if reply.status_code != 200:
        raise UpstreamRefused(reply.status_code, content, reply.headers)
    try:
        usage = orjson.loads(content)
        period, credits = usage["billing_period"], usage["credits"]
        return {
            "start": str(period["start"]),
            "end": str(period["end"]),
            "used": _number(credits["used"]),
            "included": _number(credits.get("included")),
            "remaining": _number(credits.get("remaining")),
        }
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UpstreamUnavailable(
            "Mavera's GET /usage answer has no billing_period and credits.used"
        ) from None


def _number(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(value)
    return value


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def reconcile(upstream: Upstream, ledger: Ledger) -> dict[str, Any]:
    """The reconciliation as `GET /admin/reconcile` answers it (see the README for the shape)."""
    mavera = await mavera_usage(upstream)
    try:
        since, until = _timestamp(mavera["start"]), _timestamp(mavera["end"]) + END_RESOLUTION_S
    except ValueError:
        raise UpstreamUnavailable("Mavera's billing period is not in ISO 8601 time") from None
    totals = await ledger.period_totals(since, until)
    unknown = await ledger.unknown_cost_records(since, until, UNKNOWN_COST_LISTED)
    recorded = _exact(totals.credits)
    difference = _exact(Decimal(str(mavera["used"])) - Decimal(str(recorded)))
    return {
        "billing_period": {"start": mavera["start"], "end": mavera["end"]},
        "mavera": {
            "credits_used": mavera["used"],
            "credits_included": mavera["included"],
            "credits_remaining": mavera["remaining"],
        },
        "ledger": {
            "credits_used": recorded,
            "requests": totals.requests,
            "unknown_cost_requests": totals.unknown_cost,
        },
        "difference": difference,
        "agrees": difference == 0,
        "unknown_cost": unknown,
        "ledger_description": ledger.description,
    }


def _exact(value: Any) -> int | float:
    number = Decimal(str(value))
    return int(number) if number == number.to_integral_value() else float(number)


def verdict(result: dict[str, Any]) -> str:
    """The one sentence that says whether the ledger agrees with Mavera's bill."""
    difference = result["difference"]
    unknown = result["ledger"]["unknown_cost_requests"]
    if difference == 0:
        sentence = (
            f"agrees: Mavera billed {result['mavera']['credits_used']} credits this period "
            f"and the gateway recorded {result['ledger']['credits_used']}"
        )
        if unknown:
            sentence += f" ({unknown} requests of unknown cost apart)"
        return sentence + "."
    if difference > 0:
        return (
            f"Mavera billed {difference} more credits than the gateway recorded: spent outside "
            "this gateway, or by requests with unknown cost"
            + (
                f" ({unknown} in this period, listed below)."
                if unknown
                else " (the ledger has none this period)."
            )
        )
    return (
        f"the gateway recorded {-difference} more credits than Mavera billed: Mavera may not "
        "have counted the latest requests yet, or this ledger also holds another Mavera "
        "account's requests."
    )


def render(result: dict[str, Any], fmt: str) -> str:
    """The reconciliation as text (`table`) or as the JSON the admin API answers."""
    if fmt == "json":
        return json.dumps({**result, "verdict": verdict(result)}, indent=2)
    period, mavera, ledger = result["billing_period"], result["mavera"], result["ledger"]
    lines = [
        f"billing period   {period['start']} .. {period['end']}",
        f"Mavera           {mavera['credits_used']} credits used, "
        f"{_or_dash(mavera['credits_included'])} included, "
        f"{_or_dash(mavera['credits_remaining'])} remaining",
        f"gateway ledger   {ledger['credits_used']} credits over {ledger['requests']} requests, "
        f"{ledger['unknown_cost_requests']} of them of unknown cost",
        f"difference       {result['difference']}",
        "",
        verdict(result),
    ]
    if result["unknown_cost"]:
        lines += ["", "requests with unknown cost (newest first):"]
        lines += [
            f"  {_iso(row['received_at'])}  {row['client']}  {row['request_id']}  "
            f"{row['endpoint']}  status {row['status']}"
            for row in result["unknown_cost"]
        ]
    return "\n".join(lines)


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
