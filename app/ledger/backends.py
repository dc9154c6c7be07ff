"""Choose the ledger storage a database URL names."""

from __future__ import annotations

from app.ledger.protocol import Ledger
from app.ledger.sqlite import SqliteLedger


def open_ledger(database_url: str) -> Ledger:
    """The ledger a database URL names (not yet connected)."""
    if database_url.startswith("sqlite:///"):
        return SqliteLedger(database_url)
    raise ValueError(
        f"unsupported ledger database URL {database_url.split(':', 1)[0]!r}: use sqlite:///path"
    )
