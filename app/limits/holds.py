"""What an admitted request holds (a place, reservations) and the names its limits go by."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.limits.counters import Reservation, Slot, WindowVerdict, reset_duration

GATEWAY = "gateway"  # the subject of the gateway-wide budget


@dataclass(slots=True)
class Hold:
    """One reservation, with the budget it counts against (for messages and alerts)."""

    subject: str  # the client's name, or "gateway"
    budget: float
    period: str
    reservation: Reservation


@dataclass(slots=True)
class Admission:
    """What one admitted request holds until its record closes."""

    client: str
    holds: list[Hold] = field(default_factory=list)
    slot: Slot | None = None
    headers: dict[str, str] = field(default_factory=dict)


def rate_headers(verdict: WindowVerdict) -> dict[str, str]:
    """The OpenAI-style `x-ratelimit-*-requests` headers for a client's window."""
    return {
        "x-ratelimit-limit-requests": str(verdict.limit),
        "x-ratelimit-remaining-requests": str(verdict.remaining),
        "x-ratelimit-reset-requests": reset_duration(verdict.reset_s),
    }


def client_key(name: str) -> str:
    """The counter key of a client's budget, window and slots."""
    return f"client:{name}"
