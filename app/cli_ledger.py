"""The ledger as the CLI opens it: it always says which database it read (on stderr, so
`--format json` output stays clean), and a read-only command refuses a database that is not
there rather than creating an empty one and reporting nothing."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.config import Settings
from app.ledger.backends import database_exists, open_ledger
from app.ledger.protocol import Ledger

T = TypeVar("T")


class LedgerMissing(Exception):
    """A command that only reads the ledger was pointed at a database that does not exist."""


def with_ledger(
    settings: Settings, work: Callable[[Ledger], Awaitable[T]], *, must_exist: bool
) -> T:
    """Run `work` against the configured ledger, opened for it and closed after.

    `must_exist`: for commands that read, or change what is there (`keys update`): the database
    must exist already (LedgerMissing, and nothing created, if not).
    """
    url = settings.ledger.database_url
    ledger = open_ledger(url)
    print(f"ledger: {ledger.description}", file=sys.stderr)
    if must_exist and not database_exists(url):
        raise LedgerMissing(
            f"there is no ledger at {ledger.description}: nothing was ever recorded there. "
            "Point MAVERA_GATEWAY_DATABASE_URL (or [ledger] database_url) at the gateway's "
            "database"
        )

    async def run() -> T:
        await ledger.open()
        try:
            return await work(ledger)
        finally:
            await ledger.close()

    return asyncio.run(run())
