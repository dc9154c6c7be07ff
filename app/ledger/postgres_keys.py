"""Gateway keys and the admin audit table in PostgreSQL: `PostgresKeys`, a part of
`PostgresLedger` (its base class). A key change and its audit entry commit together.

The columns and the row-to-StoredKey reading are those of the SQLite ledger (`sqlite_keys`).
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from app.clients import ClientSpec
from app.ledger.protocol import AuditEntry, KeyExists, StoredKey
from app.ledger.sqlite_keys import KEY_COLUMNS, SPEC_COLUMNS, audit_entry, spec_values, stored_key

_AUDIT_COLUMNS = "id, at, actor, action, client, changes"
_INSERT_KEY = (
    f"INSERT INTO gateway_keys ({KEY_COLUMNS}) VALUES ({', '.join(['%s'] * 12)}) "
    "ON CONFLICT (name) DO NOTHING RETURNING name"
)
_UPDATE_KEY = (
    f"UPDATE gateway_keys SET {', '.join(f'{column} = %s' for column in SPEC_COLUMNS)} "
    f"WHERE name = %s AND revoked_at IS NULL RETURNING {KEY_COLUMNS}"
)


async def _insert_audit(db: psycopg.AsyncConnection[Any], entry: AuditEntry | None) -> None:
    if entry is None:
        return
    await db.execute(
        f"INSERT INTO admin_audit ({_AUDIT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
        (
            entry.id,
            entry.at,
            entry.actor,
            entry.action,
            entry.client,
            orjson.dumps(entry.changes).decode(),
        ),
    )


class PostgresKeys:
    """The key and audit methods of `Ledger`; `PostgresLedger` provides the pool."""

    def _connected(self) -> AsyncConnectionPool:
        raise NotImplementedError

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def add_key(self, key: StoredKey, audit: AuditEntry | None = None) -> None:
        """Store a new key (replacing a revoked key of the same name), with its audit entry."""
        refusal = f"client {key.name!r} already has an active key; revoke it first"
        values = (key.name, key.key_sha256, *spec_values(key.spec), key.created_at, key.revoked_at)
        try:
            async with self._connected().connection() as db, db.transaction():
                await db.execute(
                    "DELETE FROM gateway_keys WHERE name = %s AND revoked_at IS NOT NULL",
                    (key.name,),
                )
                inserted = await db.execute(_INSERT_KEY, values)
                if await inserted.fetchone() is None:
                    raise KeyExists(refusal)
                await _insert_audit(db, audit)
        except pg_errors.UniqueViolation:  # the same digest twice: never in practice
            raise KeyExists(refusal) from None

    async def keys(self, *, include_revoked: bool = True) -> list[StoredKey]:
        """Stored keys, oldest first."""
        sql = f"SELECT {KEY_COLUMNS} FROM gateway_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        rows = await self._read(sql + " ORDER BY created_at")
        return [key for key in map(stored_key, rows) if key is not None]

    async def update_key(
        self, name: str, spec: ClientSpec, audit: AuditEntry | None = None
    ) -> StoredKey | None:
        """Replace the settings of the client's active key, with the audit entry; None if none."""
        async with self._connected().connection() as db, db.transaction():
            cursor = await db.execute(_UPDATE_KEY, (*spec_values(spec), name))
            row = await cursor.fetchone()
            if row is None:
                return None
            await _insert_audit(db, audit)
        return stored_key(row)

    async def revoke_key(self, name: str, at: float, audit: AuditEntry | None = None) -> bool:
        """Revoke the client's active key, with the audit entry; False if it had none."""
        async with self._connected().connection() as db, db.transaction():
            cursor = await db.execute(
                "UPDATE gateway_keys SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL",
                (at, name),
            )
            if cursor.rowcount <= 0:
                return False
            await _insert_audit(db, audit)
        return True

    async def add_audit(self, entry: AuditEntry) -> None:
        """Store one audit entry on its own."""
        async with self._connected().connection() as db:
            await _insert_audit(db, entry)

    async def audit(self, since: float, limit: int) -> list[AuditEntry]:
        """Audit entries with `at >= since`, newest first, at most `limit` of them."""
        rows = await self._read(
            f"SELECT {_AUDIT_COLUMNS} FROM admin_audit WHERE at >= %s "
            "ORDER BY at DESC, id DESC LIMIT %s",
            (since, limit),
        )
        return [audit_entry(row) for row in rows]
