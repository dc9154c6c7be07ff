"""Where the credits go, in PostgreSQL: cost tags, persona names and the reconciliation totals.

`PostgresAttribution` is a part of `PostgresLedger` (its base class), as `SqliteAttribution` is
of `SqliteLedger`; the SQL is that of `app.ledger.attribution` with psycopg's placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from app.ledger.attribution import UNKNOWN_COST, tag_pairs
from app.ledger.protocol import PeriodTotals
from app.records import UsageRecord

# A batch's (record id, tag) pairs in one statement; a pair already stored is skipped.
_INSERT_TAGS = (
    "INSERT INTO record_tags (record_id, tag) SELECT pair->>0, pair->>1 "
    "FROM json_array_elements(%s::json) AS pair ON CONFLICT DO NOTHING"
)
_UPSERT_PERSONA = (
    "INSERT INTO personas (id, name, updated_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at"
)
_PERIOD_TOTALS = (
    f"SELECT SUM(credits_used), COUNT(*), COUNT(*) FILTER (WHERE {UNKNOWN_COST}) "
    "FROM usage_records WHERE received_at >= %s AND received_at < %s"
)
_UNKNOWN_COST_RECORDS = (
    "SELECT received_at, client, request_id, status, endpoint FROM usage_records "
    f"WHERE received_at >= %s AND received_at < %s AND {UNKNOWN_COST} "
    "ORDER BY received_at DESC, id LIMIT %s"
)


async def write_tags(db: psycopg.AsyncConnection[Any], records: Sequence[UsageRecord]) -> None:
    """Store the tags of a batch, inside the transaction that stores its records."""
    pairs = tag_pairs(records)
    if pairs:
        await db.execute(_INSERT_TAGS, (orjson.dumps(pairs).decode(),))


class PostgresAttribution:
    """Persona names and reconciliation totals (the methods of `Ledger` on these).

    `PostgresLedger` provides the pool and `_read`; here they are only declared.
    """

    def _connected(self) -> AsyncConnectionPool:
        raise NotImplementedError

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def period_totals(self, since: float, until: float) -> PeriodTotals:
        """Known credits, requests and unknown-cost requests received in [since, until)."""
        ((credits, requests, unknown),) = await self._read(_PERIOD_TOTALS, (since, until))
        return PeriodTotals(0 if credits is None else credits, requests, unknown)

    async def unknown_cost_records(
        self, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        """The newest `limit` unknown-cost records received in [since, until)."""
        rows = await self._read(_UNKNOWN_COST_RECORDS, (since, until, limit))
        names = ("received_at", "client", "request_id", "status", "endpoint")
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def store_persona_names(self, names: dict[str, str], at: float) -> None:
        """Remember persona names by id, replacing older names."""
        if not names:
            return
        async with self._connected().connection() as db, db.transaction():
            async with db.cursor() as cursor:
                await cursor.executemany(_UPSERT_PERSONA, [(i, n, at) for i, n in names.items()])

    async def persona_names(self) -> dict[str, str]:
        """Every persona name remembered, by id."""
        rows = await self._read("SELECT id, name FROM personas")
        return {persona: name for persona, name in rows}
