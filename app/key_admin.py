"""Changes to gateway keys, the same from the admin API and the CLI, each one audited.

Every change is validated by ClientSpec before anything is stored, and its audit entry (who,
when, which client, the fields before and after; never key material) is committed with it.
Keys declared in the config file (`[clients.NAME]`) are the file's: they are not changed here.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Collection, Mapping
from typing import Any

from app.auth import key_digest, new_key
from app.clients import ClientSpec, check_client_name, parse_client_spec
from app.ledger.protocol import AuditEntry, Ledger, StoredKey


class NoActiveKey(LookupError):
    """The client has no active key in the ledger."""


class DeclaredInConfig(Exception):
    """The client's key is declared in the config file, which is where it is changed."""


def cli_actor() -> str:
    """Who makes a change from the shell: `cli:` and the OS user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry, as in some containers
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def api_actor(remote: str | None) -> str:
    """Who makes a change through the admin API: `admin-api@` and the remote address."""
    return f"admin-api@{remote or 'unknown'}"


def _check_editable(name: str, configured: Collection[str]) -> None:
    check_client_name(name)
    if name in configured:
        raise DeclaredInConfig(
            f"client {name!r} is declared in the config file ([clients.{name}]): "
            "edit it there and reload the gateway (SIGHUP)"
        )


def changed_fields(before: ClientSpec | None, after: ClientSpec) -> dict[str, dict[str, Any]]:
    """Each field whose value differs, as JSON values {"before": ..., "after": ...}; for a new
    key (`before` None), each field set to other than its default, with `before` null."""
    old = (before or ClientSpec()).model_dump(mode="json")
    return {
        name: {"before": old[name] if before is not None else None, "after": value}
        for name, value in after.model_dump(mode="json").items()
        if old[name] != value
    }


async def create_key(
    ledger: Ledger, name: str, spec: ClientSpec, actor: str, configured: Collection[str] = ()
) -> str:
    """Store a new key for client `name`, audited; return the plain key, which is never stored."""
    _check_editable(name, configured)
    key = new_key()
    now = time.time()
    entry = AuditEntry(now, actor, "key.created", name, changed_fields(None, spec))
    await ledger.add_key(StoredKey(name, key_digest(key), spec, created_at=now), entry)
    return key


def apply_patch(spec: ClientSpec, patch: Mapping[str, Any]) -> ClientSpec:
    """`spec` with the fields of `patch` replaced, validated as a whole (strict types).

    `null` clears a field: back to its default (no persona, no budget, period `month`, ...).
    A field ClientSpec does not have is refused by name, like any bad value.
    """
    fields = ClientSpec.model_fields
    merged = spec.model_dump()
    for name, value in patch.items():
        if value is None and name in fields:
            value = fields[name].get_default(call_default_factory=True)
        if isinstance(value, list):  # JSON has arrays; strict validation takes tuples for tags
            value = tuple(value)
        merged[name] = value
    return parse_client_spec(merged)


async def update_key(
    ledger: Ledger,
    name: str,
    patch: Mapping[str, Any],
    actor: str,
    configured: Collection[str] = (),
) -> tuple[StoredKey, dict[str, dict[str, Any]]]:
    """Change some settings of the client's active key, audited with the fields that changed;
    the key as stored and those changes. InvalidClientSpec (nothing stored) for a bad patch,
    NoActiveKey if there is no such key."""
    _check_editable(name, configured)
    current = await active_key(ledger, name)
    spec = apply_patch(current.spec, patch)
    changes = changed_fields(current.spec, spec)
    if not changes:
        return current, changes
    entry = AuditEntry(time.time(), actor, "key.updated", name, changes)
    stored = await ledger.update_key(name, spec, entry)
    if stored is None:  # revoked in the meantime
        raise NoActiveKey(f"no active key named {name!r}")
    return stored, changes


async def revoke_key(
    ledger: Ledger, name: str, actor: str, configured: Collection[str] = ()
) -> None:
    """Revoke the client's active key now, audited; NoActiveKey if it has none."""
    _check_editable(name, configured)
    now = time.time()
    if not await ledger.revoke_key(name, now, AuditEntry(now, actor, "key.revoked", name, {})):
        raise NoActiveKey(f"no active key named {name!r}")


async def active_key(ledger: Ledger, name: str) -> StoredKey:
    """The client's active stored key, or NoActiveKey."""
    for key in await ledger.keys(include_revoked=False):
        if key.name == name:
            return key
    raise NoActiveKey(f"no active key named {name!r}")
