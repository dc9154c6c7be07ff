"""Gateway keys: created once, stored as digests, revoked for good; and authentication."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from app.auth import KeyStore, key_digest, new_key
from app.clients import LOCAL_CLIENT, Client, ClientSpec, InvalidClientSpec
from app.config import ClientSettings
from app.errors import InvalidApiKey
from app.key_admin import create_key as admin_create_key
from app.ledger.protocol import KeyExists, StoredKey
from app.ledger.sqlite import SqliteLedger

KEY_SHAPE = re.compile(r"^mgw_[A-Za-z0-9_-]{32,}$")


def create_key(ledger: SqliteLedger, name: str, **spec: Any) -> str:
    return asyncio.run(admin_create_key(ledger, name, ClientSpec(**spec), "cli:test"))


def list_keys(ledger: SqliteLedger, *, include_revoked: bool = True) -> list[StoredKey]:
    return asyncio.run(ledger.keys(include_revoked=include_revoked))


def revoke_key(ledger: SqliteLedger, name: str) -> bool:
    return asyncio.run(ledger.revoke_key(name, time.time()))


def stored(ledger: SqliteLedger) -> list[StoredKey]:
    """What the server loads into its KeyStore: the active keys."""
    return list_keys(ledger, include_revoked=False)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- keys in the ledger ---------------------------------------------------------------------


def test_new_key_shape() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(KEY_SHAPE.match(k) for k in keys)


def test_create_key_returns_a_fresh_key_and_stores_its_digest(ledger: SqliteLedger) -> None:
    key = create_key(
        ledger,
        "alice",
        persona_id="p1",
        credit_budget=500,
        rpm=30,
        budget_period="week",
        allow_persona_override=True,
    )
    assert KEY_SHAPE.match(key)
    (row,) = list_keys(ledger)
    assert row.name == "alice"
    assert row.key_sha256 == hashlib.sha256(key.encode()).hexdigest() == key_digest(key)
    assert row.spec == ClientSpec(
        persona_id="p1",
        allow_persona_override=True,
        credit_budget=500,
        budget_period="week",
        rpm=30,
    )
    assert row.revoked_at is None


def test_public_view_has_no_digest(ledger: SqliteLedger) -> None:
    key = create_key(ledger, "alice")
    (row,) = list_keys(ledger)
    shown = row.public()
    assert "key_sha256" not in shown
    assert row.key_sha256 not in str(shown)
    assert key not in str(shown)


def test_plain_key_is_nowhere_in_the_database_files(tmp_path: Path, ledger: SqliteLedger) -> None:
    keys = [create_key(ledger, f"client-{n}") for n in range(3)]
    revoke_key(ledger, "client-0")
    keys.append(create_key(ledger, "client-0"))
    ledger.close_sync()
    files = list(tmp_path.iterdir())  # the database and any WAL / shared-memory files
    assert any(f.name == "ledger.db" for f in files)
    data = b"".join(f.read_bytes() for f in files if f.is_file())
    for key in keys:
        assert key.encode() not in data
        assert key.removeprefix("mgw_").encode() not in data
    ledger.open_sync()  # for the fixture's close


def test_second_active_key_for_a_name_is_refused(ledger: SqliteLedger) -> None:
    create_key(ledger, "alice")
    with pytest.raises(KeyExists, match="alice"):
        create_key(ledger, "alice")
    assert len(list_keys(ledger)) == 1


def test_revoke_then_create_again(ledger: SqliteLedger) -> None:
    first = create_key(ledger, "alice", rpm=10)
    assert revoke_key(ledger, "alice") is True
    assert revoke_key(ledger, "alice") is False  # nothing active left to revoke
    second = create_key(ledger, "alice", rpm=20)
    assert second != first
    (active,) = list_keys(ledger, include_revoked=False)
    assert active.key_sha256 == key_digest(second)
    assert active.spec.rpm == 20


def test_revoke_unknown_name(ledger: SqliteLedger) -> None:
    assert revoke_key(ledger, "nobody") is False


def test_list_keys_with_and_without_revoked(ledger: SqliteLedger) -> None:
    create_key(ledger, "alice")
    create_key(ledger, "bob")
    create_key(ledger, "carol")
    revoke_key(ledger, "bob")
    everyone = list_keys(ledger)
    assert [r.name for r in everyone] == ["alice", "bob", "carol"]  # oldest first
    assert [r.revoked_at is not None for r in everyone] == [False, True, False]
    assert [r.name for r in list_keys(ledger, include_revoked=False)] == ["alice", "carol"]


def test_list_keys_empty(ledger: SqliteLedger) -> None:
    assert list_keys(ledger) == []
    assert list_keys(ledger, include_revoked=False) == []


def test_override_flag_round_trips_as_bool_or_none(ledger: SqliteLedger) -> None:
    create_key(ledger, "yes", allow_persona_override=True)
    create_key(ledger, "no", allow_persona_override=False)
    create_key(ledger, "unset")
    flags = {r.name: r.spec.allow_persona_override for r in list_keys(ledger)}
    assert flags == {"yes": True, "no": False, "unset": None}


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": ""}, {"authorization": "Bearer mgw_whatever"}, {"authorization": "x"}],
)
def test_open_mode_everyone_is_local(headers: dict[str, str]) -> None:
    store = KeyStore({})
    assert store.open_mode is True
    assert store.authenticate(headers) is LOCAL_CLIENT
    assert store.authenticate(headers).name == "local"


def test_configured_client_authenticates() -> None:
    key = new_key()
    store = KeyStore({"alice": ClientSettings(key_sha256=key_digest(key), persona_id="p1", rpm=5)})
    assert store.open_mode is False
    client = store.authenticate(bearer(key))
    assert client == Client("alice", ClientSpec(persona_id="p1", rpm=5))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer "},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Token mgw_x"},
        {"authorization": "Bearer mgw_unknown"},
    ],
)
def test_bad_credentials_are_refused(headers: dict[str, str]) -> None:
    store = KeyStore({"alice": ClientSettings(key_sha256=key_digest(new_key()))})
    with pytest.raises(InvalidApiKey) as caught:
        store.authenticate(headers)
    assert caught.value.status == 401
    assert caught.value.code == "invalid_api_key"


def test_wrong_scheme_with_the_right_key_is_refused() -> None:
    key = new_key()
    store = KeyStore({"alice": ClientSettings(key_sha256=key_digest(key))})
    with pytest.raises(InvalidApiKey, match="missing"):
        store.authenticate({"authorization": f"Basic {key}"})


def test_scheme_is_case_insensitive() -> None:
    key = new_key()
    store = KeyStore({"alice": ClientSettings(key_sha256=key_digest(key))})
    assert store.authenticate({"authorization": f"bearer {key}"}).name == "alice"


def test_stored_keys_authenticate(ledger: SqliteLedger) -> None:
    store = KeyStore({})
    key = create_key(ledger, "bob", persona_id="p-bob")
    store.replace_stored(stored(ledger))
    assert store.open_mode is False
    assert store.authenticate(bearer(key)) == Client("bob", ClientSpec(persona_id="p-bob"))
    with pytest.raises(InvalidApiKey):
        store.authenticate({})


def test_revoked_key_fails_immediately(ledger: SqliteLedger) -> None:
    configured = new_key()
    store = KeyStore({"ops": ClientSettings(key_sha256=key_digest(configured))})
    alice = create_key(ledger, "alice")
    bob = create_key(ledger, "bob")
    store.replace_stored(stored(ledger))
    assert store.authenticate(bearer(alice)).name == "alice"
    revoke_key(ledger, "alice")
    store.replace_stored(stored(ledger))
    with pytest.raises(InvalidApiKey, match="unknown or revoked"):
        store.authenticate(bearer(alice))
    assert store.authenticate(bearer(bob)).name == "bob"
    assert store.authenticate(bearer(configured)).name == "ops"  # config keys stay


def test_revoking_the_last_key_does_not_open_the_gateway(ledger: SqliteLedger) -> None:
    # A gateway that has required keys must not fall back to the keyless local mode, where
    # anyone who can reach it (perhaps on a public address) would spend the Mavera credits.
    store = KeyStore({})
    only = create_key(ledger, "alice")
    store.replace_stored(stored(ledger))
    revoke_key(ledger, "alice")
    store.replace_stored(stored(ledger))
    assert store.open_mode is False
    with pytest.raises(InvalidApiKey):
        store.authenticate(bearer(only))
    with pytest.raises(InvalidApiKey):
        store.authenticate({})


def test_clients_lists_every_key_holder(ledger: SqliteLedger) -> None:
    store = KeyStore({"ops": ClientSettings(key_sha256=key_digest(new_key()))})
    create_key(ledger, "alice")
    store.replace_stored(stored(ledger))
    assert sorted(c.name for c in store.clients()) == ["alice", "ops"]


@pytest.mark.parametrize("name", ["", "has space", "-leading", "a" * 65, "slash/name", "é"])
def test_a_key_for_an_unusable_client_name_is_refused(ledger: SqliteLedger, name: str) -> None:
    with pytest.raises(InvalidClientSpec, match="client name"):
        create_key(ledger, name)
    assert list_keys(ledger) == []


def test_a_stored_row_that_no_longer_validates_is_left_out_loudly(
    ledger: SqliteLedger, no_key_in_logs: Any
) -> None:
    # A row written by an older version without validation (rpm 0) must not make every
    # request of that client fail: the key is ignored, with one error line naming the client.
    # Rows as 0002_gateway_keys had them: the columns 0006_audit added are NULL.
    create_key(ledger, "good")
    old_columns = (
        "name, key_sha256, persona_id, allow_persona_override, credit_budget, budget_period, "
        "rpm, created_at, revoked_at"
    )
    with sqlite3.connect(ledger.path) as db:
        for name, rpm in (("carol", 0), ("dan", 30)):
            db.execute(
                f"INSERT INTO gateway_keys ({old_columns}) "
                "VALUES (?, ?, NULL, NULL, NULL, 'month', ?, 2.0, NULL)",
                (name, key_digest(new_key()), rpm),
            )
    keys = list_keys(ledger)
    assert [k.name for k in keys] == ["dan", "good"]  # oldest first
    assert keys[0].spec == ClientSpec(rpm=30), "an old row reads back with today's defaults"
    assert any("carol" in line and "ignored" in line for line in no_key_in_logs.lines)
