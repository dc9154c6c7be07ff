"""Gateway keys: created once, stored as digests, revoked for good; and authentication."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path
from typing import Any

import pytest

from app.auth import KeyStore, key_digest, new_key
from app.clients import LOCAL_CLIENT, Client, ClientSpec, InvalidClientSpec
from app.config_sections import ClientSettings
from app.errors import InvalidApiKey
from app.key_admin import create_key as admin_create_key
from app.ledger.postgres import PostgresLedger
from app.ledger.protocol import AuditEntry, KeyExists, StoredKey
from tests.conftest import LedgerUnderTest, raw_query

KEY_SHAPE = re.compile(r"^mgw_[A-Za-z0-9_-]{32,}$")


def create_key(store: LedgerUnderTest, name: str, **spec: Any) -> str:
    key: str = store.run(admin_create_key(store.ledger, name, ClientSpec(**spec), "cli:test"))
    return key


def list_keys(store: LedgerUnderTest, *, include_revoked: bool = True) -> list[StoredKey]:
    keys: list[StoredKey] = store.run(store.ledger.keys(include_revoked=include_revoked))
    return keys


def revoke_key(store: LedgerUnderTest, name: str) -> bool:
    revoked: bool = store.run(store.ledger.revoke_key(name, time.time()))
    return revoked


def stored(store: LedgerUnderTest) -> list[StoredKey]:
    """What the server loads into its KeyStore: the active keys."""
    return list_keys(store, include_revoked=False)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- keys in the ledger ---------------------------------------------------------------------


def test_new_key_shape() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(KEY_SHAPE.match(k) for k in keys)


def test_create_key_returns_a_fresh_key_and_stores_its_digest(store: LedgerUnderTest) -> None:
    key = create_key(
        store,
        "alice",
        persona_id="p1",
        credit_budget=500,
        rpm=30,
        budget_period="week",
        allow_persona_override=True,
    )
    assert KEY_SHAPE.match(key)
    (row,) = list_keys(store)
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


def test_public_view_has_no_digest(store: LedgerUnderTest) -> None:
    key = create_key(store, "alice")
    (row,) = list_keys(store)
    shown = row.public()
    assert "key_sha256" not in shown
    assert row.key_sha256 not in str(shown)
    assert key not in str(shown)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_plain_key_is_nowhere_in_the_database_files(tmp_path: Path, store: LedgerUnderTest) -> None:
    keys = [create_key(store, f"client-{n}") for n in range(3)]
    revoke_key(store, "client-0")
    keys.append(create_key(store, "client-0"))
    store.run(store.ledger.close())
    files = list(tmp_path.iterdir())  # the database and any WAL / shared-memory files
    assert any(f.name == "ledger.db" for f in files)
    data = b"".join(f.read_bytes() for f in files if f.is_file())
    for key in keys:
        assert key.encode() not in data
        assert key.removeprefix("mgw_").encode() not in data


def test_second_active_key_for_a_name_is_refused(store: LedgerUnderTest) -> None:
    create_key(store, "alice")
    with pytest.raises(KeyExists, match="alice"):
        create_key(store, "alice")
    assert len(list_keys(store)) == 1


def test_revoke_then_create_again(store: LedgerUnderTest) -> None:
    first = create_key(store, "alice", rpm=10)
    assert revoke_key(store, "alice") is True
    assert revoke_key(store, "alice") is False  # nothing active left to revoke
    second = create_key(store, "alice", rpm=20)
    assert second != first
    (active,) = list_keys(store, include_revoked=False)
    assert active.key_sha256 == key_digest(second)
    assert active.spec.rpm == 20


def test_revoke_unknown_name(store: LedgerUnderTest) -> None:
    assert revoke_key(store, "nobody") is False


def test_list_keys_with_and_without_revoked(store: LedgerUnderTest) -> None:
    create_key(store, "alice")
    create_key(store, "bob")
    create_key(store, "carol")
    revoke_key(store, "bob")
    everyone = list_keys(store)
    assert [r.name for r in everyone] == ["alice", "bob", "carol"]  # oldest first
    assert [r.revoked_at is not None for r in everyone] == [False, True, False]
    assert [r.name for r in list_keys(store, include_revoked=False)] == ["alice", "carol"]


def test_list_keys_empty(store: LedgerUnderTest) -> None:
    assert list_keys(store) == []
    assert list_keys(store, include_revoked=False) == []


def test_override_flag_round_trips_as_bool_or_none(store: LedgerUnderTest) -> None:
    create_key(store, "yes", allow_persona_override=True)
    create_key(store, "no", allow_persona_override=False)
    create_key(store, "unset")
    flags = {r.name: r.spec.allow_persona_override for r in list_keys(store)}
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


def test_stored_keys_authenticate(store: LedgerUnderTest) -> None:
    keystore = KeyStore({})
    key = create_key(store, "bob", persona_id="p-bob")
    keystore.replace_stored(stored(store))
    assert keystore.open_mode is False
    assert keystore.authenticate(bearer(key)) == Client("bob", ClientSpec(persona_id="p-bob"))
    with pytest.raises(InvalidApiKey):
        keystore.authenticate({})


def test_revoked_key_fails_immediately(store: LedgerUnderTest) -> None:
    configured = new_key()
    keystore = KeyStore({"ops": ClientSettings(key_sha256=key_digest(configured))})
    alice = create_key(store, "alice")
    bob = create_key(store, "bob")
    keystore.replace_stored(stored(store))
    assert keystore.authenticate(bearer(alice)).name == "alice"
    revoke_key(store, "alice")
    keystore.replace_stored(stored(store))
    with pytest.raises(InvalidApiKey, match="unknown or revoked"):
        keystore.authenticate(bearer(alice))
    assert keystore.authenticate(bearer(bob)).name == "bob"
    assert keystore.authenticate(bearer(configured)).name == "ops"  # config keys stay


def test_revoking_the_last_key_does_not_open_the_gateway(store: LedgerUnderTest) -> None:
    # A gateway that has required keys must not fall back to the keyless local mode, where
    # anyone who can reach it (perhaps on a public address) would spend the Mavera credits.
    keystore = KeyStore({})
    only = create_key(store, "alice")
    keystore.replace_stored(stored(store))
    revoke_key(store, "alice")
    keystore.replace_stored(stored(store))
    assert keystore.open_mode is False
    with pytest.raises(InvalidApiKey):
        keystore.authenticate(bearer(only))
    with pytest.raises(InvalidApiKey):
        keystore.authenticate({})


def test_clients_lists_every_key_holder(store: LedgerUnderTest) -> None:
    keystore = KeyStore({"ops": ClientSettings(key_sha256=key_digest(new_key()))})
    create_key(store, "alice")
    keystore.replace_stored(stored(store))
    assert sorted(c.name for c in keystore.clients()) == ["alice", "ops"]


@pytest.mark.parametrize("name", ["", "has space", "-leading", "a" * 65, "slash/name", "é"])
def test_a_key_for_an_unusable_client_name_is_refused(store: LedgerUnderTest, name: str) -> None:
    with pytest.raises(InvalidClientSpec, match="client name"):
        create_key(store, name)
    assert list_keys(store) == []


def test_a_stored_row_that_no_longer_validates_is_left_out_loudly(
    store: LedgerUnderTest, no_key_in_logs: Any
) -> None:
    # A row written by an older version without validation (rpm 0) must not make every
    # request of that client fail: the key is ignored, with one error line naming the client.
    # Rows as 0002_gateway_keys had them: the columns 0006_audit added are NULL.
    create_key(store, "good")
    old_columns = (
        "name, key_sha256, persona_id, allow_persona_override, credit_budget, budget_period, "
        "rpm, created_at, revoked_at"
    )
    for name, rpm in (("carol", 0), ("dan", 30)):
        store.query(
            f"INSERT INTO gateway_keys ({old_columns}) VALUES "
            f"('{name}', '{key_digest(new_key())}', NULL, NULL, NULL, 'month', {rpm}, 2.0, NULL)"
        )
    keys = list_keys(store)
    assert [k.name for k in keys] == ["dan", "good"]  # oldest first
    assert keys[0].spec == ClientSpec(rpm=30), "an old row reads back with today's defaults"
    assert any("carol" in line and "ignored" in line for line in no_key_in_logs.lines)


def test_replicas_creating_the_same_client_at_once_store_one_key(postgres_url: str) -> None:
    async def race() -> list[str | BaseException]:
        ledgers = [PostgresLedger(postgres_url) for _ in range(4)]
        for ledger in ledgers:
            await ledger.open()
        try:
            return await asyncio.gather(
                *(
                    admin_create_key(ledger, "alice", ClientSpec(), "cli:test")
                    for ledger in ledgers
                ),
                return_exceptions=True,
            )
        finally:
            for ledger in ledgers:
                await ledger.close()

    outcomes = asyncio.run(race())
    created = [key for key in outcomes if isinstance(key, str)]
    assert len(created) == 1
    assert all(isinstance(o, KeyExists) for o in outcomes if not isinstance(o, str))
    (digest,) = raw_query(postgres_url, "SELECT key_sha256 FROM gateway_keys")
    assert digest == (key_digest(created[0]),)


def test_key_updates_and_revocations_are_audited_in_the_same_commit(store: LedgerUnderTest) -> None:
    create_key(store, "alice", rpm=10, tags=("team-a",))
    created = AuditEntry(1.0, "cli:test", "key.created", "bob", {})
    updated = AuditEntry(
        2.0, "cli:test", "key.updated", "alice", {"rpm": {"before": 10, "after": 20}}
    )
    stored = store.run(
        store.ledger.update_key("alice", ClientSpec(rpm=20, tags=("team-a",)), updated)
    )
    assert stored is not None and stored.spec == ClientSpec(rpm=20, tags=("team-a",))
    assert store.run(store.ledger.update_key("nobody", ClientSpec(), created)) is None
    revoked = AuditEntry(3.0, "cli:test", "key.revoked", "alice", {})
    assert store.run(store.ledger.revoke_key("alice", 3.0, revoked)) is True
    assert store.run(store.ledger.revoke_key("alice", 4.0, revoked)) is False
    assert store.run(store.ledger.update_key("alice", ClientSpec(rpm=30), created)) is None
    store.run(store.ledger.add_audit(created))
    entries = store.run(store.ledger.audit(1.5, 10))
    assert [(e.action, e.client, e.changes) for e in entries][1:] == [
        ("key.revoked", "alice", {}),
        ("key.updated", "alice", {"rpm": {"before": 10, "after": 20}}),
    ]  # newest first (the key's creation, audited now, comes first); no-ops are not recorded
    assert entries[0].action == "key.created" and len(entries) == 3
    assert [e.id for e in store.run(store.ledger.audit(0, 10))][-1] == created.id
