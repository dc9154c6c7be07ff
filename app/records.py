"""The usage record: one per request that reached the gateway, and the rules for reading it.

Domain types: imported by the web layer, the ledger, metrics and logs alike; they import nothing
of the gateway's own.
"""

from __future__ import annotations

import itertools
import operator
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

# How a request ended. `gateway_error` is the gateway's own fault and is never booked as the
# client's or Mavera's; `shutdown` is a request cut by a shutdown past its grace period.
Outcome = Literal[
    "ok",
    "client_error",
    "rejected",
    "upstream_error",
    "client_disconnected",
    "gateway_error",
    "shutdown",
]

# Where the persona of a request came from (routing's precedence, first match wins).
PersonaSource = Literal["request", "model", "route", "client", "default", "none"]

GENERATION_ENDPOINTS = ("chat.completions", "responses")

# Ids: a random prefix per process and a counter, as unique as uuid4 across processes and
# restarts for this purpose, without a urandom call per request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def new_id() -> str:
    """A fresh id for a record or a request."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


@dataclass(slots=True)
class UsageRecord:
    """Everything the ledger keeps about one request. Never message content, never keys."""

    endpoint: str
    client: str
    id: str = field(default_factory=lambda: new_id())
    request_id: str = ""
    received_at: float = field(default_factory=time.time)
    first_byte_at: float | None = None
    finished_at: float | None = None
    end_user: str | None = None
    route: str | None = None
    requested_model: str | None = None
    upstream_model: str | None = None
    persona_id: str | None = None
    stream: bool = False
    status: int = 0
    outcome: Outcome = "ok"
    credits_used: int | float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    upstream_request_id: str | None = None
    error_code: str | None = None
    persona_source: PersonaSource | None = None
    # cost tags, comma-joined in order (a tag never holds a comma); None when untagged
    tags: str | None = None
    # credits held for a budget and kept as spent because Mavera never said what it charged
    credits_reserved: float | None = None
    # monotonic start, for latency; not stored
    started: float = field(default_factory=time.perf_counter, repr=False)

    def values(self) -> tuple[Any, ...]:
        """The stored columns' values, in COLUMNS order."""
        return _column_values(self)


COLUMNS: tuple[str, ...] = tuple(
    name for name in UsageRecord.__dataclass_fields__ if name != "started"
)
_column_values = operator.attrgetter(*COLUMNS)


def outcome_for_status(status: int) -> Outcome:
    """The outcome of a request answered with an HTTP status that Mavera chose."""
    if status < 400:
        return "ok"
    if status >= 500:
        return "upstream_error"
    return "client_error"


def cost_unknown(endpoint: str, status: int, outcome: str, credits: object) -> bool:
    """Whether Mavera may have charged for this request without telling us how much.

    True for generation requests with no reported credits that Mavera began to answer (2xx) or
    that were abandoned while Mavera was working on them. Error answers are not billed.
    """
    if credits is not None or endpoint not in GENERATION_ENDPOINTS:
        return False
    return status < 300 or outcome in ("client_disconnected", "shutdown")
