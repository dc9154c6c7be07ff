"""Gateway keys as both backends read them back: a row of `gateway_keys` to a StoredKey."""

from __future__ import annotations

import logging
from typing import Any

from app.clients import InvalidClientSpec, parse_client_spec
from app.ledger.protocol import StoredKey

logger = logging.getLogger("mavera_gateway.ledger")


def stored_key(row: tuple[Any, ...]) -> StoredKey | None:
    """A gateway_keys row as a StoredKey; None (logged) if its settings no longer validate."""
    name, digest, persona, override, budget, period, rpm, created, revoked = row
    settings = {
        "persona_id": persona,
        "allow_persona_override": None if override is None else bool(override),
        "credit_budget": budget,
        "budget_period": period,
        "rpm": rpm,
    }
    try:
        spec = parse_client_spec(settings)
    except InvalidClientSpec as exc:
        logger.error("the stored key of client %r is ignored: %s", name, exc)
        return None
    return StoredKey(name, digest, spec, created, revoked)
