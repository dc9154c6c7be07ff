"""Keys through the admin API on a running gateway: created (shown once), listed (never the key),
revoked at once; every bad input a 400 in the OpenAI shape with nothing stored; no admin key, a
401 that changes nothing. (PATCH: test_admin_patch.py.)"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from tests.conftest import PERSONAS, GatewayFactory
from tests.e2e.adminapi import (
    ADMIN_KEY,
    admin,
    audit_actions,
    chat,
    create,
    error,
    key_rows,
    listed_keys,
    rejected,
)

# --- keys through the admin API ---------------------------------------------------------------


def test_admin_created_key_works_is_never_listed_and_revocation_is_immediate(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    response = admin(
        gateway, "POST", "/admin/keys", json={"name": "alice", "persona_id": PERSONAS[1]}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    key = created["key"]
    assert created["name"] == "alice"
    assert key.startswith("mgw_") and len(key) >= 4 + 32

    reply = chat(gateway, key)
    assert reply.choices[0].message.content
    assert gateway.sim.records[-1].persona_id == PERSONAS[1]
    assert gateway.records()[-1]["client"] == "alice"

    listing = admin(gateway, "GET", "/admin/keys")
    assert listing.status_code == 200
    assert [row["name"] for row in listing.json()["data"]] == ["alice"]
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert key not in listing.text and key[4:] not in listing.text
    assert digest not in listing.text
    assert all("key" not in field for row in listing.json()["data"] for field in row)

    revoked = admin(gateway, "DELETE", "/admin/keys/alice")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json() == {"name": "alice", "revoked": True}
    # the very next request, not eventually: the admin API reloads the keys itself
    assert rejected(gateway, key), "a revoked key was still accepted"
    assert gateway.records()[-1]["outcome"] == "rejected"
    error(admin(gateway, "DELETE", "/admin/keys/alice"), 404, "key_not_found")
    listing = admin(gateway, "GET", "/admin/keys").json()["data"]
    assert listing[0]["revoked_at"] is not None


def test_a_key_is_shown_only_once(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    create(gateway, "dup")
    again = admin(gateway, "POST", "/admin/keys", json={"name": "dup"})
    error(again, 400, "invalid_request_error")
    assert "mgw_" not in again.text


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"name": "carol", "rpm": "lots"}, "rpm"),
        ({"name": "carol", "rpm": 0}, "rpm"),
        ({"name": "carol", "rpm": "5"}, "rpm"),
        ({"name": "carol", "credit_budget": -5}, "credit_budget"),
        ({"name": "carol", "credit_budget": 2.5}, "credit_budget"),
        ({"name": "carol", "allow_persona_override": "no"}, "allow_persona_override"),
        ({"name": "carol", "budget_period": "fortnight"}, "budget_period"),
        ({"name": "carol", "persona_id": ""}, "persona_id"),
        ({"name": "carol", "colour": "blue"}, "colour"),
        ({"name": ""}, "name"),
        ({"name": "carol smith"}, "name"),
        ({"rpm": 5}, "name"),
    ],
)
def test_admin_key_settings_are_validated_and_nothing_is_stored(
    make_gateway: GatewayFactory, spec: dict[str, Any], param: str
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    problem = error(admin(gateway, "POST", "/admin/keys", json=spec), 400, "invalid_request_error")
    assert problem["param"] == param, problem
    assert param in problem["message"]
    assert admin(gateway, "GET", "/admin/keys").json()["data"] == [], "nothing is stored"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
def test_admin_key_body_that_is_not_an_object_is_a_400(
    make_gateway: GatewayFactory, body: bytes
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    response = admin(
        gateway, "POST", "/admin/keys", content=body, headers={"content-type": "application/json"}
    )
    error(response, 400, "invalid_request_error")
    assert admin(gateway, "GET", "/admin/keys").json()["data"] == []


def test_create_takes_every_setting(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    spec = {
        "persona_id": PERSONAS[1],
        "allow_persona_override": True,
        "credit_budget": 100,
        "budget_period": "week",
        "rpm": 30,
        "max_concurrent": 2,
        "weight": 4,
        "tags": ["team-a", "exp-1"],
    }
    create(gateway, "full", **spec)
    [row] = admin(gateway, "GET", "/admin/keys").json()["data"]
    assert {k: row[k] for k in spec} == spec


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-admin-key"}, {"authorization": ADMIN_KEY}],
    ids=["none", "wrong", "no-scheme"],
)
def test_changes_without_the_admin_key_are_401s_and_change_nothing(
    make_gateway: GatewayFactory, headers: dict[str, str]
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    key = create(gateway, "erin", rpm=5)
    before, stored = listed_keys(gateway), key_rows(gateway)
    for method, path, body in (
        ("PATCH", "/admin/keys/erin", {"rpm": 500}),
        ("DELETE", "/admin/keys/erin", None),
        ("POST", "/admin/keys", {"name": "frank"}),
    ):
        response = httpx.request(method, gateway.url + path, headers=headers, json=body, timeout=10)
        error(response, 401, "invalid_api_key")
    assert listed_keys(gateway) == before and key_rows(gateway) == stored
    assert audit_actions(gateway) == ["key.created"]
    assert chat(gateway, key).choices
