"""The one storage interface the rest of the gateway is typed against.

Every backend (SQLite, PostgreSQL) implements `Ledger`; nothing outside `app/ledger/`
writes SQL or knows which backend it talks to. Storage imports only the domain types.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from app.clients import ClientSpec
from app.records import UsageRecord

# What a usage report can be grouped by; each backend maps these to its own expressions.
# A record with several tags is reported under each of them (the record_tags table), one
# without under NULL.
ReportGroup = Literal["client", "persona", "model", "route", "endpoint", "day", "tag", "end_user"]
REPORT_GROUPS: tuple[ReportGroup, ...] = (
    "client",
    "persona",
    "model",
    "route",
    "endpoint",
    "day",
    "tag",
    "end_user",
)


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One gateway key as stored: its client's settings and the key's digest, never the key."""

    name: str
    key_sha256: str
    spec: ClientSpec
    created_at: float
    revoked_at: float | None = None

    def public(self) -> dict[str, Any]:
        """What `keys list` and the admin API show: everything but the digest."""
        return {
            "name": self.name,
            **self.spec.model_dump(),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """One group of a usage report, added up by the database.

    `credits` sums only the requests Mavera reported a cost for; `unknown_credits` counts the
    requests it may have charged for without saying how much (see `app.records.cost_unknown`).
    The percentiles interpolate linearly between closest ranks, over requests with a latency.
    """

    group: Any
    requests: int
    errors: int
    credits: Any
    unknown_credits: int
    input_tokens: int
    output_tokens: int
    p50_ms: float | None
    p95_ms: float | None


# What an audit row records; the changes of a key.updated row are only the fields that changed.
AuditAction = Literal["key.created", "key.updated", "key.revoked"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin change: who made it, when, to which client, what changed.

    Never key material: `changes` maps a ClientSpec field to {"before": ..., "after": ...}
    (JSON values; `before` is null for a created key) and is {} for a revocation.
    """

    at: float
    actor: str  # "admin-api@<remote address>" or "cli:<OS user>"
    action: AuditAction
    client: str
    changes: dict[str, dict[str, Any]]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def public(self) -> dict[str, Any]:
        """What `GET /admin/audit` and `mavera-gateway audit` show: the whole entry."""
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "client": self.client,
            "changes": self.changes,
        }


@dataclass(frozen=True, slots=True)
class PeriodTotals:
    """All clients' records received in a period, for reconciling with Mavera's bill.

    `credits` sums the reported costs (0 when none); `unknown_cost` counts the requests Mavera
    may have charged without saying how much (`app.records.cost_unknown`).
    """

    credits: Any
    requests: int
    unknown_cost: int


class KeyExists(Exception):
    """An active key already has that client name."""


class LedgerUnavailable(Exception):
    """The ledger database cannot be used (unreachable, or its driver missing); says why."""


class Ledger(Protocol):
    """Durable storage of usage records and gateway keys."""

    description: str  # which database this is, for messages ("SQLite file /path/to.db")

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def close(self) -> None:
        """Release connections."""

    async def ping(self) -> bool:
        """Whether the storage answers now."""

    async def write(self, records: list[UsageRecord]) -> None:
        """Store a batch; idempotent on record id, so a retried batch never double-counts.

        A record's `tags` (comma-joined) are stored in its row and, one row per tag, in
        `record_tags(record_id, tag)`, which `usage_totals(by="tag")` joins.
        """

    async def spent_since(self, client: str | None, since: float) -> float:
        """Credits the client's (None: all clients') requests received since `since` have cost.

        Each record counts `credits_used`, or when that is unknown the `credits_reserved` that
        its budget reservation kept (SUM(COALESCE(credits_used, credits_reserved))).
        """

    async def usage_totals(
        self, since: float, until: float, by: ReportGroup, client: str | None = None
    ) -> list[UsageTotals]:
        """Per group, the totals of the records received in [since, until) (of one client, if
        given), summed in SQL."""

    async def records(
        self, since: float, client: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Whole records received since `since`, newest first, one page."""

    async def period_totals(self, since: float, until: float) -> PeriodTotals:
        """Known credits, requests and unknown-cost requests received in [since, until)."""

    async def unknown_cost_records(
        self, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        """The newest `limit` unknown-cost records received in [since, until): `received_at`,
        `client`, `request_id`, `status`, `endpoint`."""

    async def store_persona_names(self, names: dict[str, str], at: float) -> None:
        """Remember persona names by id (from Mavera's list), replacing older names."""

    async def persona_names(self) -> dict[str, str]:
        """Every persona name remembered, by id."""

    async def applied_migrations(self) -> list[str]:
        """Names of the schema migrations this database has had, in order."""

    async def add_key(self, key: StoredKey, audit: AuditEntry | None = None) -> None:
        """Store a new key, and `audit` in the same transaction; KeyExists (and nothing stored)
        if the client already has an active one."""

    async def keys(self, *, include_revoked: bool = True) -> list[StoredKey]:
        """Stored keys, oldest first (rows whose settings no longer validate are left out)."""

    async def update_key(
        self, name: str, spec: ClientSpec, audit: AuditEntry | None = None
    ) -> StoredKey | None:
        """Replace the settings of the client's active key (digest and times unchanged), and
        store `audit` in the same transaction; the key as now stored, or None (and nothing
        stored) if the client has no active key."""

    async def revoke_key(self, name: str, at: float, audit: AuditEntry | None = None) -> bool:
        """Revoke the client's active key, and store `audit` in the same transaction; False
        (and nothing stored) if it had none."""

    async def add_audit(self, entry: AuditEntry) -> None:
        """Store one audit entry on its own."""

    async def audit(self, since: float, limit: int) -> list[AuditEntry]:
        """Audit entries with `at >= since`, newest first, at most `limit` of them."""
