"""Choose the ledger storage a database URL names."""

from __future__ import annotations

from pathlib import Path

from app.ledger.protocol import Ledger, LedgerUnavailable
from app.ledger.sqlite import SqliteLedger, sqlite_path

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_ledger(database_url: str) -> Ledger:
    """The ledger a database URL names (not yet connected)."""
    if database_url.startswith("sqlite:///"):
        return SqliteLedger(database_url)
    if database_url.startswith(POSTGRES_SCHEMES):
        try:  # the driver is an optional extra: the embedded SQLite default does without it
            from app.ledger.postgres import PostgresLedger
        except ImportError as exc:
            raise LedgerUnavailable(
                "a postgresql:// ledger needs the PostgreSQL driver: "
                f"pip install 'mavera-gateway[postgres]' ({exc})"
            ) from None
        return PostgresLedger(database_url)
    raise ValueError(
        f"unsupported ledger database URL {database_url.split(':', 1)[0]!r}: "
        "use sqlite:///path or postgresql://user@host:port/db"
    )


def database_exists(database_url: str) -> bool:
    """Whether the database a URL names is there already: opening a missing SQLite file would
    create an empty one, which a command that only reads must not mistake for "no usage"."""
    if database_url.startswith("sqlite:///"):
        path = sqlite_path(database_url)
        return path == ":memory:" or Path(path).is_file()
    return True
