"""Keys through the admin API on a running gateway: created (shown once), listed (never the key),
changed with PATCH (taking effect on the next request), revoked; every bad input a 400 in the
OpenAI shape with nothing stored, an unknown client a 404, a config-file client a 409."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from typing import Any

import httpx
import openai
import pytest

from app.auth import key_digest
from tests.conftest import PERSONAS, GatewayFactory, RunningGateway
from tests.e2e.adminapi import ADMIN_KEY, admin, chat, create, error, rejected

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


# --- PATCH /admin/keys/{name} -----------------------------------------------------------------


def _keys(gateway: RunningGateway) -> list[dict[str, Any]]:
    response = admin(gateway, "GET", "/admin/keys")
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def _digests(gateway: RunningGateway) -> list[tuple[Any, ...]]:
    path = gateway.settings.ledger.database_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT name, key_sha256, created_at FROM gateway_keys").fetchall()


def test_patch_applies_to_the_next_request_and_keeps_the_key(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    key = create(gateway, "alice", persona_id=PERSONAS[1])
    chat(gateway, key)
    assert gateway.sim.records[-1].persona_id == PERSONAS[1]
    stored = _digests(gateway)

    response = admin(
        gateway, "PATCH", "/admin/keys/alice", json={"persona_id": PERSONAS[2], "rpm": 1}
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert (changed["name"], changed["persona_id"], changed["rpm"]) == ("alice", PERSONAS[2], 1)
    assert changed["revoked_at"] is None
    assert key not in response.text and "key_sha256" not in changed

    # the very next request: the admin API reloads the keys itself
    chat(gateway, key)
    assert gateway.sim.records[-1].persona_id == PERSONAS[2]
    with pytest.raises(openai.RateLimitError):
        chat(gateway, key)  # rpm 1: the second request within the minute
    assert len(gateway.sim.records) == 2, "the refused request never reached Mavera"
    assert _digests(gateway) == stored, "same key, same creation time"
    [listed] = _keys(gateway)
    assert (listed["persona_id"], listed["rpm"]) == (PERSONAS[2], 1)


def test_patch_null_clears_a_field_back_to_its_default(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    spec = {"persona_id": PERSONAS[1], "credit_budget": 9, "budget_period": "day", "rpm": 5}
    create(gateway, "bob", **spec, weight=3, tags=["x"], allow_persona_override=True)
    cleared = dict.fromkeys([*spec, "weight", "tags", "allow_persona_override"])
    response = admin(gateway, "PATCH", "/admin/keys/bob", json=cleared)
    assert response.status_code == 200, response.text
    [row] = _keys(gateway)
    assert {k: row[k] for k in cleared} == {
        "persona_id": None,
        "credit_budget": None,
        "budget_period": "month",
        "rpm": None,
        "weight": 1,
        "tags": [],
        "allow_persona_override": None,
    }
    assert row["max_concurrent"] is None


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"rpm": "5"}, "rpm"),
        ({"rpm": 0}, "rpm"),
        ({"rpm": 2.5}, "rpm"),
        ({"credit_budget": -1}, "credit_budget"),
        ({"credit_budget": True}, "credit_budget"),
        ({"budget_period": "fortnight"}, "budget_period"),
        ({"allow_persona_override": "no"}, "allow_persona_override"),
        ({"persona_id": ""}, "persona_id"),
        ({"max_concurrent": -1}, "max_concurrent"),
        ({"weight": 0}, "weight"),
        ({"tags": "a,b"}, "tags"),
        ({"tags": ["has space"]}, "tags"),
        ({"tags": [f"t{i}" for i in range(17)]}, "tags"),
        ({"colour": "blue"}, "colour"),
        ({"name": "mallory"}, "name"),
        ({"key_sha256": "0" * 64}, "key_sha256"),
        ({"rpm": 10, "weight": -2}, "weight"),  # a good field does not carry a bad one in
    ],
)
def test_patch_is_validated_and_nothing_is_stored(
    make_gateway: GatewayFactory, patch: dict[str, Any], param: str
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    key = create(gateway, "carol", rpm=60, credit_budget=10)
    before, stored = _keys(gateway), _digests(gateway)
    problem = error(
        admin(gateway, "PATCH", "/admin/keys/carol", json=patch), 400, "invalid_request_error"
    )
    assert problem["param"] == param, problem
    assert param in problem["message"]
    assert _keys(gateway) == before and _digests(gateway) == stored, "nothing is stored"
    actions = [row["action"] for row in admin(gateway, "GET", "/admin/audit").json()["data"]]
    assert actions == ["key.created"]
    assert chat(gateway, key).choices, "the key still works as before"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"", b"null", b'"rpm"'])
def test_patch_body_that_is_not_an_object_is_a_400(
    make_gateway: GatewayFactory, body: bytes
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    create(gateway, "dora", rpm=5)
    before = _keys(gateway)
    response = admin(
        gateway,
        "PATCH",
        "/admin/keys/dora",
        content=body,
        headers={"content-type": "application/json"},
    )
    error(response, 400, "invalid_request_error")
    assert _keys(gateway) == before


def test_patch_and_delete_of_an_unknown_or_revoked_client_are_404s(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    create(gateway, "gone")
    assert admin(gateway, "DELETE", "/admin/keys/gone").status_code == 200
    for name in ("nobody", "gone"):
        for method in ("PATCH", "DELETE"):
            response = admin(gateway, method, f"/admin/keys/{name}", json={"rpm": 5})
            problem = error(response, 404, "key_not_found")
            assert problem["param"] == "name" and name in problem["message"]
    assert [row["action"] for row in admin(gateway, "GET", "/admin/audit").json()["data"]] == [
        "key.revoked",
        "key.created",
    ]


@pytest.mark.parametrize("name", ["bad%20name", "-dash-first", "x" * 65])
def test_a_bad_client_name_in_the_path_is_a_400(make_gateway: GatewayFactory, name: str) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    for method in ("PATCH", "DELETE"):
        response = admin(gateway, method, f"/admin/keys/{name}", json={"rpm": 5})
        assert error(response, 400, "invalid_request_error")["param"] == "name"


def test_a_client_of_the_config_file_is_edited_there(make_gateway: GatewayFactory) -> None:
    team_key = "mgw_team_key_from_the_config_file_0000000000"
    gateway = make_gateway(
        admin={"key": ADMIN_KEY}, clients={"team": {"key_sha256": key_digest(team_key), "rpm": 7}}
    )
    for method, path, body in (
        ("PATCH", "/admin/keys/team", {"rpm": 100}),
        ("DELETE", "/admin/keys/team", None),
        ("POST", "/admin/keys", {"name": "team"}),
    ):
        problem = error(admin(gateway, method, path, json=body), 409, "key_in_config_file")
        assert "config file" in problem["message"] and "[clients.team]" in problem["message"]
    assert _keys(gateway) == []
    assert admin(gateway, "GET", "/admin/audit").json()["data"] == []
    assert chat(gateway, team_key).choices, "the config file's key is untouched"


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
    before, stored = _keys(gateway), _digests(gateway)
    for method, path, body in (
        ("PATCH", "/admin/keys/erin", {"rpm": 500}),
        ("DELETE", "/admin/keys/erin", None),
        ("POST", "/admin/keys", {"name": "frank"}),
    ):
        response = httpx.request(method, gateway.url + path, headers=headers, json=body, timeout=10)
        error(response, 401, "invalid_api_key")
    assert _keys(gateway) == before and _digests(gateway) == stored
    assert [row["action"] for row in admin(gateway, "GET", "/admin/audit").json()["data"]] == [
        "key.created"
    ]
    assert chat(gateway, key).choices
