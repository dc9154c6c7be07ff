"""The SQL of gateway keys and the admin audit table, for the SQLite ledger.

Blocking functions over a connection the caller holds (inside `SqliteLedger`'s transaction or
lock), so that a key change and its audit entry commit together.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import orjson

from app.clients import ClientSpec, InvalidClientSpec, parse_client_spec
from app.ledger.protocol import AuditEntry, KeyExists, StoredKey

logger = logging.getLogger("mavera_gateway.ledger")

SPEC_COLUMNS = (
    "persona_id",
    "allow_persona_override",
    "credit_budget",
    "budget_period",
    "rpm",
    "max_concurrent",
    "weight",
    "tags",
)
KEY_COLUMNS = ", ".join(("name", "key_sha256", *SPEC_COLUMNS, "created_at", "revoked_at"))
_AUDIT_COLUMNS = "id, at, actor, action, client, changes"


def spec_values(spec: ClientSpec) -> tuple[Any, ...]:
    """A ClientSpec as the values of its `gateway_keys` columns (both backends store it so)."""
    values = spec.model_dump()
    values["tags"] = orjson.dumps(list(spec.tags)).decode()
    return tuple(values[column] for column in SPEC_COLUMNS)


def insert_key(db: sqlite3.Connection, key: StoredKey) -> bool:
    """Store a new key (replacing a revoked key of the same name); KeyExists if one is active."""
    active = db.execute(
        "SELECT 1 FROM gateway_keys WHERE name = ? AND revoked_at IS NULL", (key.name,)
    ).fetchone()
    if active:
        raise KeyExists(f"client {key.name!r} already has an active key; revoke it first")
    db.execute("DELETE FROM gateway_keys WHERE name = ? AND revoked_at IS NOT NULL", (key.name,))
    db.execute(
        f"INSERT INTO gateway_keys ({KEY_COLUMNS}) VALUES ({', '.join('?' * 12)})",
        (key.name, key.key_sha256, *spec_values(key.spec), key.created_at, key.revoked_at),
    )
    return True


def update_key(db: sqlite3.Connection, name: str, spec: ClientSpec) -> StoredKey | None:
    """Replace the settings of the client's active key; the stored key, or None if none."""
    assignments = ", ".join(f"{column} = ?" for column in SPEC_COLUMNS)
    changed = db.execute(
        f"UPDATE gateway_keys SET {assignments} WHERE name = ? AND revoked_at IS NULL",
        (*spec_values(spec), name),
    ).rowcount
    if changed <= 0:
        return None
    row = db.execute(
        f"SELECT {KEY_COLUMNS} FROM gateway_keys WHERE name = ? AND revoked_at IS NULL", (name,)
    ).fetchone()
    return stored_key(row)


def revoke_key(db: sqlite3.Connection, name: str, at: float) -> bool:
    """Revoke the client's active key; False if it had none."""
    changed = db.execute(
        "UPDATE gateway_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (at, name)
    ).rowcount
    return bool(changed > 0)


def stored_key(row: tuple[Any, ...]) -> StoredKey | None:
    """A `gateway_keys` row as a StoredKey; None (logged) if its settings no longer validate."""
    name, digest, *settings, created, revoked = row
    values = dict(zip(SPEC_COLUMNS, settings, strict=True))
    if values["allow_persona_override"] is not None:
        values["allow_persona_override"] = bool(values["allow_persona_override"])
    # columns added by 0006_audit are NULL in rows stored before it: the ClientSpec defaults
    values["tags"] = tuple(orjson.loads(values["tags"])) if values["tags"] else ()
    if values["weight"] is None:
        del values["weight"]
    try:
        spec = parse_client_spec(values)
    except InvalidClientSpec as exc:
        logger.error("the stored key of client %r is ignored: %s", name, exc)
        return None
    return StoredKey(name, digest, spec, created, revoked)


def insert_audit(db: sqlite3.Connection, entry: AuditEntry) -> None:
    """Store one audit entry."""
    db.execute(
        f"INSERT INTO admin_audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (
            entry.id,
            entry.at,
            entry.actor,
            entry.action,
            entry.client,
            orjson.dumps(entry.changes).decode(),
        ),
    )


AUDIT_QUERY = (
    f"SELECT {_AUDIT_COLUMNS} FROM admin_audit WHERE at >= ? ORDER BY at DESC, id DESC LIMIT ?"
)


def audit_entry(row: tuple[Any, ...]) -> AuditEntry:
    """An `admin_audit` row as an AuditEntry."""
    id_, at, actor, action, client, changes = row
    return AuditEntry(at, actor, action, client, orjson.loads(changes), id=id_)
