"""Gateway keys kept in the ledger database: created by `keys create`, revoked by `keys revoke`."""

from __future__ import annotations

import time
from dataclasses import astuple, dataclass
from typing import Any, Protocol

from app.auth import key_digest, new_key
from app.routing import Client


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One stored key: its owner's settings and the key's digest, never the key."""

    name: str
    key_sha256: str
    persona_id: str | None
    allow_persona_override: bool | None
    credit_budget: int | None
    budget_period: str
    rpm: int | None
    created_at: float
    revoked_at: float | None = None

    def as_tuple(self) -> tuple[Any, ...]:
        """Column values in table order."""
        return astuple(self)

    def client(self) -> Client:
        """The Client this key authenticates as."""
        return Client(
            name=self.name,
            persona_id=self.persona_id,
            allow_persona_override=self.allow_persona_override,
            credit_budget=self.credit_budget,
            budget_period=self.budget_period,
            rpm=self.rpm,
        )

    def public(self) -> dict[str, Any]:
        """What `keys list` and the admin API show (no digest)."""
        return {
            "name": self.name,
            "persona_id": self.persona_id,
            "allow_persona_override": self.allow_persona_override,
            "credit_budget": self.credit_budget,
            "budget_period": self.budget_period,
            "rpm": self.rpm,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


class KeyStorage(Protocol):
    """The part of a ledger that keeps keys."""

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...
    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int: ...
    def insert_key(self, row: KeyRow) -> None: ...


class KeyExists(Exception):
    """An active key already has that name."""


def create_key(
    storage: KeyStorage,
    name: str,
    *,
    persona_id: str | None = None,
    credit_budget: int | None = None,
    rpm: int | None = None,
    budget_period: str = "month",
    allow_persona_override: bool | None = None,
) -> str:
    """Create a key for client `name`; return the plain key, which is never stored."""
    if any(row.name == name for row in list_keys(storage, include_revoked=False)):
        raise KeyExists(f"client {name!r} already has an active key; revoke it first")
    key = new_key()
    storage.insert_key(
        KeyRow(
            name=name,
            key_sha256=key_digest(key),
            persona_id=persona_id,
            allow_persona_override=allow_persona_override,
            credit_budget=credit_budget,
            budget_period=budget_period,
            rpm=rpm,
            created_at=time.time(),
        )
    )
    return key


def list_keys(storage: KeyStorage, *, include_revoked: bool = True) -> list[KeyRow]:
    """Stored keys, oldest first."""
    sql = "SELECT * FROM gateway_keys"
    if not include_revoked:
        sql += " WHERE revoked_at IS NULL"
    rows = storage.query(sql + " ORDER BY created_at")
    return [_row(values) for values in rows]


def revoke_key(storage: KeyStorage, name: str) -> bool:
    """Revoke client `name`'s key; False if it had no active key."""
    changed = storage.execute(
        "UPDATE gateway_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
        (time.time(), name),
    )
    return changed > 0


def _row(values: tuple[Any, ...]) -> KeyRow:
    (name, digest, persona, override, budget, period, rpm, created, revoked) = values
    return KeyRow(
        name,
        digest,
        persona,
        None if override is None else bool(override),
        budget,
        period,
        rpm,
        created,
        revoked,
    )
