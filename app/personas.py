"""Persona names for reports: read from Mavera's persona list, remembered in the ledger.

Reports run offline (the CLI reads only the ledger), so the names Mavera lists are stored there
whenever the gateway reads the list: once at start, and at every `GET /v1/personas` that went
upstream. Both happen off the request path; a failure costs only the names, and is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from app.ledger.protocol import Ledger
from app.records import new_id
from app.upstream import Upstream

logger = logging.getLogger("mavera_gateway.personas")

CLOSE_WAIT_S = 2.0  # how long shutdown waits for a store in progress
LIST_PARAMS = {"limit": "100"}  # the most Mavera lists at once


def names_in(content: bytes) -> dict[str, str]:
    """Persona names by id from a `GET /personas` body; entries without both are skipped."""
    try:
        listing: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return {}
    return {
        item["id"]: item["name"]
        for item in data
        if isinstance(item, dict)
        and isinstance(item.get("id"), str)
        and isinstance(item.get("name"), str)
    }


class PersonaNames:
    """Stores persona names from persona lists in the ledger, in background tasks."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._tasks: set[asyncio.Task[None]] = set()

    def remember(self, content: bytes) -> None:
        """Store the names of a persona list body, in the background."""
        self._spawn(self._store(names_in(content)))

    def refresh(self, upstream: Upstream) -> None:
        """Read Mavera's persona list and store its names, in the background."""
        self._spawn(self._fetch(upstream))

    async def settled(self) -> None:
        """Return once every store started so far has finished."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Let a store in progress finish (bounded), then stop."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=CLOSE_WAIT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work, name="persona-names")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, upstream: Upstream) -> None:
        try:
            reply, content = await upstream.fetch(
                "GET", "personas", {}, new_id(), params=LIST_PARAMS
            )
        except Exception as exc:  # the names can wait for the next list; the gateway cannot
            logger.warning("could not read Mavera's persona list for persona names: %s", exc)
            return
        if reply.status_code != 200:
            logger.warning("Mavera's persona list answered %d: no persona names", reply.status_code)
            return
        await self._store(names_in(content))

    async def _store(self, names: dict[str, str]) -> None:
        try:
            await self.ledger.store_persona_names(names, time.time())
        except Exception as exc:  # a ledger hiccup: the names are stored at the next list
            logger.warning("could not store persona names in the ledger: %s", exc)
