"""The PostgreSQL ledger: a small psycopg 3 connection pool, shared by every replica.

Migrations run in one transaction under a transaction-scoped advisory lock, so replicas that
start together apply each migration exactly once. A batch of records is one INSERT of a JSON
array expanded by `json_populate_recordset` (one round trip, one statement text whatever the
batch size), skipping ids already stored, as the SQLite ledger does. Reports add up in SQL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from app.ledger.attribution import TAGGED_RECORDS
from app.ledger.migrations import MIGRATIONS
from app.ledger.postgres_attribution import PostgresAttribution, write_tags
from app.ledger.postgres_keys import PostgresKeys
from app.ledger.protocol import (
    LedgerUnavailable,
    ReportGroup,
    UsageTotals,
)
from app.ledger.report_sql import TOTALS
from app.records import COLUMNS, UsageRecord

logger = logging.getLogger("mavera_gateway.ledger")

POOL_MAX = 4  # the writer, budget and key reads, a report, /readyz: never more at once
CONNECT_TIMEOUT_S = 10.0  # to connect, or to get a connection of the pool
PING_TIMEOUT_S = 1.0
# pg_advisory_xact_lock key: the same in every replica, unlikely to collide with other apps'
MIGRATION_LOCK = 0x6D61766572616C67  # "maveralg"

_INSERT = (
    f"INSERT INTO usage_records ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} "
    "FROM json_populate_recordset(NULL::usage_records, %s::json) ON CONFLICT (id) DO NOTHING"
)
_GROUP_EXPRESSIONS: dict[ReportGroup, str] = {
    "client": "client",
    "persona": "persona_id",
    "model": "COALESCE(requested_model, upstream_model)",
    "route": "route",
    "endpoint": "endpoint",
    "day": "to_char(to_timestamp(received_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "tag": "record_tags.tag",
    "end_user": "end_user",
}
# percentile_cont interpolates linearly between closest ranks, as the SQLite ledger does
_TOTALS_SQL = (
    f"SELECT {{group}}, {TOTALS}, "
    "percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY latency_ms) "
    "FROM {source} WHERE received_at >= %s AND received_at < %s{client} GROUP BY 1"
)
# A report is not JIT-compiled: on 10 M rows compiling cost 0.07-1.9 s and saved less
# (docs/scaling.md has the plans).
REPORT_SETTINGS = ("SET LOCAL jit = off",)


def totals_sql(by: ReportGroup, one_client: bool = False) -> str:
    """The report query `usage_totals` runs (parameters: since, until, and the client if
    `one_client`); bench/ EXPLAINs it."""
    source = TAGGED_RECORDS if by == "tag" else "usage_records"
    client = " AND client = %s" if one_client else ""
    return _TOTALS_SQL.format(group=_GROUP_EXPRESSIONS[by], source=source, client=client)


def describe(url: str) -> str:
    """`PostgreSQL database host:port/db` for a connection URL, never with its password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "PostgreSQL database (unreadable URL)"
    host = params.get("host") or "localhost"
    return f"PostgreSQL database {host}:{params.get('port') or 5432}/{params.get('dbname', '')}"


class PostgresLedger(PostgresKeys, PostgresAttribution):
    """Usage records, gateway keys, the admin audit and persona names in a PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.description = describe(url)
        self._pool: AsyncConnectionPool | None = None

    # --- connection -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the pool and apply pending migrations."""
        if self._pool is not None:
            return
        try:  # once directly, so that a failure says why rather than "pool timeout"
            probe = await psycopg.AsyncConnection.connect(
                self.url, connect_timeout=int(CONNECT_TIMEOUT_S)
            )
        except psycopg.OperationalError as exc:
            raise LedgerUnavailable(f"cannot connect to the {self.description}: {exc}") from None
        await probe.close()
        pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=POOL_MAX,
            kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT_S)},
            timeout=CONNECT_TIMEOUT_S,  # a call waits this long for a connection, then fails
            open=False,
            name="mavera-ledger",
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            await self._migrate(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    @staticmethod
    async def _migrate(pool: AsyncConnectionPool) -> None:
        async with pool.connection() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            cursor = await db.execute("SELECT name FROM schema_migrations")
            done = {row[0] for row in await cursor.fetchall()}
            for name, statements in MIGRATIONS:
                if name in done:
                    continue
                for statement in statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s)", (name, time.time())
                )
                logger.info("ledger migration %s applied", name)

    def _connected(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise RuntimeError("ledger is not open")
        return self._pool

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self._connected().connection() as db:
            cursor = await db.execute(sql, params)
            return await cursor.fetchall()

    async def close(self) -> None:
        """Close every connection of the pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> bool:
        """Whether the database answers within a second."""
        if self._pool is None:
            return False
        try:
            await asyncio.wait_for(self._read("SELECT 1"), PING_TIMEOUT_S)
        except (TimeoutError, psycopg.Error):
            return False
        return True

    async def applied_migrations(self) -> list[str]:
        """Names of the migrations this database has had, in order."""
        rows = await self._read("SELECT name FROM schema_migrations ORDER BY name")
        return [row[0] for row in rows]

    # --- usage records ----------------------------------------------------------------------

    async def write(self, records: list[UsageRecord]) -> None:
        """Store a batch and its tags in one transaction; a record already stored is left be."""
        rows = orjson.dumps([dict(zip(COLUMNS, r.values(), strict=True)) for r in records])
        async with self._connected().connection() as db, db.transaction():
            await db.execute(_INSERT, (rows.decode(),))
            await write_tags(db, records)

    async def spent_since(self, client: str | None, since: float) -> float:
        """Credits of the client's (None: every client's) requests received since `since`.

        A request whose cost Mavera never reported counts the reservation it kept.
        """
        sql = (
            "SELECT COALESCE(SUM(COALESCE(credits_used, credits_reserved)), 0) "
            "FROM usage_records WHERE received_at >= %s"
        )
        if client is None:
            rows = await self._read(sql, (since,))
        else:
            rows = await self._read(sql + " AND client = %s", (since, client))
        return float(rows[0][0])

    async def usage_totals(
        self, since: float, until: float, by: ReportGroup, client: str | None = None
    ) -> list[UsageTotals]:
        """Per group, the totals of the records received in [since, until) (of one client, if
        given), summed in SQL."""
        params = (since, until, client) if client else (since, until)
        async with self._connected().connection() as db, db.transaction():
            for setting in REPORT_SETTINGS:
                await db.execute(setting)
            cursor = await db.execute(totals_sql(by, one_client=bool(client)), params)
            rows = await cursor.fetchall()
        return [_totals(row) for row in rows]

    async def records(
        self, since: float, client: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Whole records received since `since`, newest first, one page."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM usage_records WHERE received_at >= %s"
        params: list[Any] = [since]
        if client is not None:
            sql += " AND client = %s"
            params.append(client)
        sql += " ORDER BY received_at DESC, id LIMIT %s OFFSET %s"
        rows = await self._read(sql, (*params, limit, offset))
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]


def _totals(row: tuple[Any, ...]) -> UsageTotals:
    group, requests, errors, credits, unknown, input_tokens, output_tokens, percentiles = row
    p50, p95 = percentiles or (None, None)
    return UsageTotals(
        group, requests, errors, credits or 0, unknown, input_tokens, output_tokens, p50, p95
    )
