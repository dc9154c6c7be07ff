"""The ``GET /usage`` report (mavera-api.md section 8) built from what the simulator billed."""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# What ``credits.included`` reports when the simulator runs without a credit limit.
UNLIMITED_CREDITS = 1_000_000


def billing_month() -> str:
    """The billing period now: the calendar month in UTC, as ``YYYY-MM``."""
    return datetime.now(UTC).strftime("%Y-%m")


@dataclass
class UsageTotals:
    """One billing period's totals over billed generations and answered requests.

    ``credits`` are what the simulator billed for requests; ``elsewhere`` what was spent this
    period without a request to it (``Simulator.spend_elsewhere``). Mavera's ``credits.used``
    is both together.
    """

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    credits: int = 0
    elsewhere: int = 0
    month: str = field(default_factory=billing_month)

    def spent(self) -> int:
        """Every credit used this period, as ``GET /usage`` reports it."""
        return self.credits + self.elsewhere


def _billing_period(now: datetime) -> dict[str, str]:
    """The calendar month containing ``now``, as ISO strings with milliseconds."""
    last_day = calendar.monthrange(now.year, now.month)[1]
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = now.replace(day=last_day, hour=23, minute=59, second=59, microsecond=999000)
    return {
        "start": start.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "end": end.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def _share(used: float, included: float) -> int:
    return round(100 * used / included) if included else 0


def usage_report(totals: UsageTotals, credits: int | None, rpm: int) -> dict[str, Any]:
    """The documented usage object; unlimited credits report ``UNLIMITED_CREDITS`` included."""
    included = credits if credits is not None else UNLIMITED_CREDITS
    used = totals.spent()
    return {
        "object": "usage",
        "billing_period": _billing_period(datetime.now(UTC)),
        "credits": {
            "used": used,
            "included": included,
            "remaining": max(0, included - used),
            "percentage_used": _share(used, included),
        },
        "transcription": {
            "minutes_used": 0,
            "minutes_included": 500,
            "minutes_remaining": 500,
            "percentage_used": 0,
        },
        "storage": {"gb_used": 0, "gb_included": 50, "gb_remaining": 50, "percentage_used": 0},
        "api_requests": {
            "total_requests": totals.requests,
            "total_tokens": totals.prompt_tokens + totals.completion_tokens,
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "credits_used": totals.credits,
            "error_count": totals.errors,
            "avg_latency_ms": 0,
        },
        "rate_limit": {"requests_per_minute": rpm},
        "auto_recharge": {"enabled": False, "threshold": 0, "credits_to_add": 0},
        "limits": {"budget_alert": None, "usage_limit": credits},
    }
