"""Where the credits go, in SQLite: cost tags, persona names and the totals reconciliation reads.

`SqliteAttribution` is a part of `SqliteLedger` (its base class), kept apart so each file holds
one idea. The statements are plain SQL that PostgreSQL runs too, apart from the `json_each`
that expands a batch of rows into one statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

import orjson

from app.ledger.protocol import PeriodTotals
from app.records import GENERATION_ENDPOINTS, UsageRecord

# The SQL form of app.records.cost_unknown: a generation request with no reported cost that
# Mavera began to answer, or that was abandoned while Mavera worked on it.
UNKNOWN_COST = (
    "credits_used IS NULL AND endpoint IN ("
    + ", ".join(f"'{endpoint}'" for endpoint in GENERATION_ENDPOINTS)
    + ") AND (status < 300 OR outcome IN ('client_disconnected', 'shutdown'))"
)
# What a report groups over: usage_records, joined to record_tags for `tag` (a record with
# several tags appears once per tag, an untagged one once with a NULL tag).
TAGGED_RECORDS = "usage_records LEFT JOIN record_tags ON record_tags.record_id = usage_records.id"
# A batch's (record id, tag) pairs in one statement, as the records themselves are written;
# a pair already stored (a retried batch) is skipped.
_INSERT_TAGS = (
    "INSERT INTO record_tags (record_id, tag) SELECT json_extract(value, '$[0]'), "
    "json_extract(value, '$[1]') FROM json_each(?) WHERE true ON CONFLICT DO NOTHING"
)
_UPSERT_PERSONA = (
    "INSERT INTO personas (id, name, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at"
)
_PERIOD_TOTALS = (
    f"SELECT SUM(credits_used), COUNT(*), COUNT(*) FILTER (WHERE {UNKNOWN_COST}) "
    "FROM usage_records WHERE received_at >= ? AND received_at < ?"
)
_UNKNOWN_COST_RECORDS = (
    "SELECT received_at, client, request_id, status, endpoint FROM usage_records "
    f"WHERE received_at >= ? AND received_at < ? AND {UNKNOWN_COST} "
    "ORDER BY received_at DESC, id LIMIT ?"
)


def tag_pairs(records: Sequence[UsageRecord]) -> list[tuple[str, str]]:
    """The (record id, tag) rows of a batch's tagged records."""
    return [(r.id, tag) for r in records if r.tags for tag in r.tags.split(",")]


def write_tags(db: sqlite3.Connection, records: Sequence[UsageRecord]) -> None:
    """Store the tags of a batch, inside the transaction that stores its records."""
    pairs = tag_pairs(records)
    if pairs:
        db.execute(_INSERT_TAGS, (orjson.dumps(pairs),))


class SqliteAttribution:
    """Persona names and reconciliation totals (the methods of `Ledger` on these).

    `SqliteLedger` provides the connection: `_read` and `_transaction` here only declare it.
    """

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    async def period_totals(self, since: float, until: float) -> PeriodTotals:
        """Known credits, requests and unknown-cost requests received in [since, until)."""
        rows = await asyncio.to_thread(self._read, _PERIOD_TOTALS, (since, until))
        credits, requests, unknown = rows[0]
        if isinstance(credits, float):  # SQLite adds in binary: drop the float noise
            credits = Decimal(format(credits, ".15g"))
        return PeriodTotals(0 if credits is None else credits, requests, unknown)

    async def unknown_cost_records(
        self, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        """The newest `limit` unknown-cost records received in [since, until)."""
        rows = await asyncio.to_thread(self._read, _UNKNOWN_COST_RECORDS, (since, until, limit))
        names = ("received_at", "client", "request_id", "status", "endpoint")
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def store_persona_names(self, names: dict[str, str], at: float) -> None:
        """Remember persona names by id, replacing older names."""

        def store() -> None:
            with self._transaction() as db:
                db.executemany(_UPSERT_PERSONA, [(i, n, at) for i, n in names.items()])

        if names:
            await asyncio.to_thread(store)

    async def persona_names(self) -> dict[str, str]:
        """Every persona name remembered, by id."""
        rows = await asyncio.to_thread(self._read, "SELECT id, name FROM personas")
        return {persona: name for persona, name in rows}
