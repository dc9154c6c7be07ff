"""The embedded SQLite ledger: WAL mode, one connection, writes in `BEGIN IMMEDIATE` batches.

SQLite calls are blocking, so every `Ledger` method runs them on a worker thread. `open_sync`,
`write_sync` and `close_sync` are the blocking forms, for tools that have no event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from app.clients import ClientSpec
from app.ledger import sqlite_keys
from app.ledger.attribution import TAGGED_RECORDS, SqliteAttribution, write_tags
from app.ledger.migrations import MIGRATIONS
from app.ledger.protocol import AuditEntry, ReportGroup, StoredKey, UsageTotals
from app.ledger.report_sql import SQLITE_TOTALS, sqlite_totals
from app.records import COLUMNS, UsageRecord

logger = logging.getLogger("mavera_gateway.ledger")

# How long a statement waits for another connection's write lock before failing; the batched
# writer then keeps the records and retries, so this only bounds one attempt.
BUSY_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 1.0

# One statement per batch: the rows travel as one JSON array. executemany would bind row by row,
# taking the GIL back for each, and under load the event loop starves it (a writer thread
# managed 1,000-1,500 rows/s at 3,000 req/s). A record already stored (a retried batch) is
# skipped; any other constraint still fails loudly.
_INSERT = (
    f"INSERT INTO usage_records ({', '.join(COLUMNS)}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(COLUMNS)))
    + " FROM json_each(?) WHERE true ON CONFLICT (id) DO NOTHING"
)
_GROUP_EXPRESSIONS: dict[ReportGroup, str] = {
    "client": "client",
    "persona": "persona_id",
    "model": "COALESCE(requested_model, upstream_model)",
    "route": "route",
    "endpoint": "endpoint",
    "day": "strftime('%Y-%m-%d', received_at, 'unixepoch')",
    "tag": "record_tags.tag",
    "end_user": "end_user",
}


def sqlite_path(url: str) -> str:
    """The file path of a `sqlite:///path` URL (`sqlite:///:memory:` for a private in-memory db)."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r} (expected sqlite:///path/to/file.db)")
    return url.removeprefix("sqlite:///")


class SqliteLedger(SqliteAttribution):
    """Usage records, gateway keys and persona names in one SQLite file."""

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        self.description = f"SQLite file {Path(self.path).resolve()}"
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    # --- connection -------------------------------------------------------------------------

    def open_sync(self) -> None:
        """Connect, switch to WAL and apply pending migrations."""
        if self._connection is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        _enable_wal(connection)
        connection.execute("PRAGMA synchronous=NORMAL")
        self._connection = connection
        self._migrate()  # BEGIN IMMEDIATE: processes opening the file at once migrate in turn

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            done = {row[0] for row in db.execute("SELECT name FROM schema_migrations")}
            for name, statements in MIGRATIONS:
                if name in done:
                    continue
                for statement in statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))

    def _transaction(self) -> _Transaction:
        if self._connection is None:
            raise RuntimeError("ledger is not open")
        return _Transaction(self._connection, self._lock)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._connection is None:
            raise RuntimeError("ledger is not open")
        with self._lock:
            return list(self._connection.execute(sql, params))

    def close_sync(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            with self._lock:
                self._connection.close()
            self._connection = None

    async def open(self) -> None:
        """Connect and migrate, off the event loop."""
        await asyncio.to_thread(self.open_sync)

    async def close(self) -> None:
        """Close, off the event loop."""
        await asyncio.to_thread(self.close_sync)

    async def ping(self) -> bool:
        """Whether the database answers (on its own connection, never queued behind a write)."""
        return await asyncio.to_thread(self._ping)

    def _ping(self) -> bool:
        if self.path == ":memory:":
            return self._connection is not None
        try:
            connection = sqlite3.connect(self.path, timeout=PING_TIMEOUT_S)
            try:
                connection.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()
            finally:
                connection.close()
        except sqlite3.Error:
            return False
        return True

    async def applied_migrations(self) -> list[str]:
        """Names of the migrations this database has had, in order."""
        rows = await asyncio.to_thread(
            self._read, "SELECT name FROM schema_migrations ORDER BY name"
        )
        return [row[0] for row in rows]

    # --- usage records ----------------------------------------------------------------------

    async def write(self, records: list[UsageRecord]) -> None:
        """Store a batch in one transaction; a record already stored is left as it is."""
        await asyncio.to_thread(self.write_sync, records)

    def write_sync(self, records: Sequence[UsageRecord]) -> None:
        """Blocking form of `write`."""
        rows = orjson.dumps([record.values() for record in records])
        with self._transaction() as db:
            db.execute(_INSERT, (rows,))
            write_tags(db, records)

    async def spent_since(self, client: str | None, since: float) -> float:
        """Credits of the client's (None: every client's) requests received since `since`.

        A request whose cost Mavera never reported counts the reservation it kept.
        """
        spent = "COALESCE(SUM(COALESCE(credits_used, credits_reserved)), 0)"
        params: tuple[Any, ...] = (since,)
        sql = f"SELECT {spent} FROM usage_records WHERE received_at >= ?"
        if client is not None:
            sql, params = sql + " AND client = ?", (since, client)
        rows = await asyncio.to_thread(self._read, sql, params)
        return float(rows[0][0])

    async def usage_totals(
        self, since: float, until: float, by: ReportGroup, client: str | None = None
    ) -> list[UsageTotals]:
        """Per group, the totals of the records received in [since, until) (of one client, if
        given), summed in SQL."""
        source = TAGGED_RECORDS if by == "tag" else "usage_records"
        sql = SQLITE_TOTALS.format(
            group=_GROUP_EXPRESSIONS[by], source=source, client=" AND client = ?" if client else ""
        )
        params = (since, until, client) if client else (since, until)
        rows = await asyncio.to_thread(self._read, sql, params)
        return [sqlite_totals(row) for row in rows]

    async def records(
        self, since: float, client: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Whole records received since `since`, newest first, one page."""
        sql = f"SELECT {', '.join(COLUMNS)} FROM usage_records WHERE received_at >= ?"
        params: list[Any] = [since]
        if client is not None:
            sql += " AND client = ?"
            params.append(client)
        sql += " ORDER BY received_at DESC, id LIMIT ? OFFSET ?"
        params += [limit, offset]
        rows = await asyncio.to_thread(self._read, sql, params)
        records = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
        for record in records:
            record["stream"] = bool(record["stream"])
        return records

    # --- gateway keys and their audit ------------------------------------------------------

    async def add_key(self, key: StoredKey, audit: AuditEntry | None = None) -> None:
        """Store a new key (replacing a revoked key of the same name), with its audit entry."""
        await asyncio.to_thread(self._in_transaction, sqlite_keys.insert_key, audit, key)

    async def keys(self, *, include_revoked: bool = True) -> list[StoredKey]:
        """Stored keys, oldest first."""
        sql = f"SELECT {sqlite_keys.KEY_COLUMNS} FROM gateway_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        rows = await asyncio.to_thread(self._read, sql + " ORDER BY created_at")
        return [key for key in map(sqlite_keys.stored_key, rows) if key is not None]

    async def update_key(
        self, name: str, spec: ClientSpec, audit: AuditEntry | None = None
    ) -> StoredKey | None:
        """Replace the settings of the client's active key, with the audit entry; None if none."""
        stored: StoredKey | None = await asyncio.to_thread(
            self._in_transaction, sqlite_keys.update_key, audit, name, spec
        )
        return stored

    async def revoke_key(self, name: str, at: float, audit: AuditEntry | None = None) -> bool:
        """Revoke the client's active key, with the audit entry; False if it had none."""
        revoked: bool = await asyncio.to_thread(
            self._in_transaction, sqlite_keys.revoke_key, audit, name, at
        )
        return revoked

    def _in_transaction(
        self, change: Callable[..., Any], audit: AuditEntry | None, *args: Any
    ) -> Any:
        """`change(db, *args)` and, if it changed something (a truthy result), the audit entry,
        as one commit."""
        with self._transaction() as db:
            result = change(db, *args)
            if audit is not None and result:
                sqlite_keys.insert_audit(db, audit)
        return result

    async def add_audit(self, entry: AuditEntry) -> None:
        """Store one audit entry on its own."""
        await asyncio.to_thread(self._add_audit, entry)

    def _add_audit(self, entry: AuditEntry) -> None:
        with self._transaction() as db:
            sqlite_keys.insert_audit(db, entry)

    async def audit(self, since: float, limit: int) -> list[AuditEntry]:
        """Audit entries since `since`, newest first."""
        rows = await asyncio.to_thread(self._read, sqlite_keys.AUDIT_QUERY, (since, limit))
        return [sqlite_keys.audit_entry(row) for row in rows]


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Switch the file to WAL, waiting out other processes that are opening it too.

    Changing the journal mode does not wait for the busy timeout: when several workers open a
    new file at once, all but one get SQLITE_BUSY at once, so retry until BUSY_TIMEOUT_S.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT` (or `ROLLBACK`) under the connection lock."""

    def __init__(self, connection: sqlite3.Connection, lock: threading.Lock) -> None:
        self.connection = connection
        self.lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.connection

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            self.connection.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self.lock.release()
