"""The embedded SQLite ledger: WAL mode, one connection, writes in `BEGIN IMMEDIATE` batches.

SQLite calls are blocking, so the async methods run them on a worker thread; the CLI calls the
blocking ones directly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from app.ledger.keys import KeyRow
from app.ledger.migrations import MIGRATIONS
from app.ledger.records import COLUMNS, UsageRecord

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


def sqlite_path(url: str) -> str:
    """The file path of a `sqlite:///path` URL (`sqlite:///:memory:` for a private in-memory db)."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r} (expected sqlite:///path/to/file.db)")
    return url.removeprefix("sqlite:///")


class SqliteLedger:
    """Usage records and gateway keys in one SQLite file."""

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
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
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        self._connection = connection
        self._migrate()

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

    def applied_migrations(self) -> list[str]:
        """Names of the migrations this database has had, in order."""
        with self._transaction() as db:
            return [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY name")]

    def close_sync(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            with self._lock:
                self._connection.close()
            self._connection = None

    # --- Ledger protocol --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and migrate, off the event loop."""
        await asyncio.to_thread(self.open_sync)

    async def write(self, records: list[UsageRecord]) -> None:
        """Store a batch in one transaction; a record already stored is left as it is."""
        await asyncio.to_thread(self.write_sync, records)

    def write_sync(self, records: Sequence[UsageRecord]) -> None:
        """Blocking form of `write`."""
        rows = orjson.dumps([record.values() for record in records])
        with self._transaction() as db:
            db.execute(_INSERT, (rows,))

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

    async def close(self) -> None:
        """Close, off the event loop."""
        await asyncio.to_thread(self.close_sync)

    # --- queries ----------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (written with `?` placeholders)."""
        if self._connection is None:
            raise RuntimeError("ledger is not open")
        with self._lock:
            return list(self._connection.execute(sql, params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement; the number of rows it changed."""
        with self._transaction() as db:
            return db.execute(sql, params).rowcount

    def insert_key(self, row: KeyRow) -> None:
        """Store a new gateway key (replacing a revoked key of the same name)."""
        with self._transaction() as db:
            db.execute(
                "DELETE FROM gateway_keys WHERE name = ? AND revoked_at IS NOT NULL", (row.name,)
            )
            db.execute(
                "INSERT INTO gateway_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row.as_tuple()
            )


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
