"""The usage record: one per request that reached the gateway, and the ledger interface."""

from __future__ import annotations

import itertools
import operator
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Outcome = Literal["ok", "client_error", "upstream_error", "client_disconnected", "rejected"]
OUTCOMES: tuple[Outcome, ...] = (
    "ok",
    "client_error",
    "upstream_error",
    "client_disconnected",
    "rejected",
)


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
    # monotonic start, for latency; not stored
    started: float = field(default_factory=time.perf_counter, repr=False)

    def mark_first_byte(self) -> None:
        """Note that the first byte of the answer is going to the client now."""
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
            self.ttfb_ms = (time.perf_counter() - self.started) * 1000

    def finish(self, status: int, outcome: Outcome, error_code: str | None = None) -> None:
        """Close the record with how the request ended."""
        self.status = status
        self.outcome = outcome
        self.error_code = error_code
        self.finished_at = time.time()
        self.latency_ms = (time.perf_counter() - self.started) * 1000

    def values(self) -> tuple[Any, ...]:
        """The stored columns' values, in COLUMNS order."""
        return _column_values(self)


COLUMNS: tuple[str, ...] = tuple(
    name for name in UsageRecord.__dataclass_fields__ if name != "started"
)
_column_values = operator.attrgetter(*COLUMNS)


def outcome_for_status(status: int) -> Outcome:
    """The outcome of a request that ended with an HTTP status from upstream or gateway."""
    if status < 400:
        return "ok"
    if status >= 500:
        return "upstream_error"
    return "client_error"


GENERATION_ENDPOINTS = ("chat.completions", "responses")


def cost_unknown(endpoint: str, status: int, outcome: str, credits: object) -> bool:
    """Whether Mavera may have charged for this request without telling us how much.

    True for generation requests with no reported credits that Mavera began to answer (2xx) or
    that were abandoned while Mavera was working on them. Error answers are not billed.
    """
    if credits is not None or endpoint not in GENERATION_ENDPOINTS:
        return False
    return status < 300 or outcome == "client_disconnected"


class Ledger(Protocol):
    """Durable storage of usage records."""

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def write(self, records: list[UsageRecord]) -> None:
        """Store a batch; idempotent on record id, so a retried batch never double-counts."""

    async def ping(self) -> bool:
        """Whether the storage answers now."""

    async def close(self) -> None:
        """Release connections."""
