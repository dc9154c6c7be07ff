"""PATCH /admin/keys/{name} on a running gateway: it applies to the next request with the same
key, null clears a field, every bad field is a 400 with nothing stored, an unknown or revoked
client a 404, a bad name a 400, a client of the config file a 409."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from app.auth import key_digest
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
)


def test_patch_applies_to_the_next_request_and_keeps_the_key(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    key = create(gateway, "alice", persona_id=PERSONAS[1])
    chat(gateway, key)
    assert gateway.sim.records[-1].persona_id == PERSONAS[1]
    stored = key_rows(gateway)

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
    assert key_rows(gateway) == stored, "same key, same creation time"
    [listed] = listed_keys(gateway)
    assert (listed["persona_id"], listed["rpm"]) == (PERSONAS[2], 1)


def test_patch_null_clears_a_field_back_to_its_default(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    spec = {"persona_id": PERSONAS[1], "credit_budget": 9, "budget_period": "day", "rpm": 5}
    create(gateway, "bob", **spec, weight=3, tags=["x"], allow_persona_override=True)
    cleared = dict.fromkeys([*spec, "weight", "tags", "allow_persona_override"])
    response = admin(gateway, "PATCH", "/admin/keys/bob", json=cleared)
    assert response.status_code == 200, response.text
    [row] = listed_keys(gateway)
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
    before, stored = listed_keys(gateway), key_rows(gateway)
    problem = error(
        admin(gateway, "PATCH", "/admin/keys/carol", json=patch), 400, "invalid_request_error"
    )
    assert problem["param"] == param, problem
    assert param in problem["message"]
    assert listed_keys(gateway) == before and key_rows(gateway) == stored, "nothing is stored"
    actions = audit_actions(gateway)
    assert actions == ["key.created"]
    assert chat(gateway, key).choices, "the key still works as before"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"", b"null", b'"rpm"'])
def test_patch_body_that_is_not_an_object_is_a_400(
    make_gateway: GatewayFactory, body: bytes
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    create(gateway, "dora", rpm=5)
    before = listed_keys(gateway)
    response = admin(
        gateway,
        "PATCH",
        "/admin/keys/dora",
        content=body,
        headers={"content-type": "application/json"},
    )
    error(response, 400, "invalid_request_error")
    assert listed_keys(gateway) == before


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
    assert audit_actions(gateway) == [
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
    assert listed_keys(gateway) == []
    assert admin(gateway, "GET", "/admin/audit").json()["data"] == []
    assert chat(gateway, team_key).choices, "the config file's key is untouched"
