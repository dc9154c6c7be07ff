"""The audit of admin changes on a running gateway: every key created, changed or revoked,
through the admin API or the CLI, is a row saying who, when and what changed (never key material),
readable newest first at GET /admin/audit."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayFactory, RunningGateway
from tests.e2e.adminapi import ADMIN_KEY, admin, create, error
from tests.processes import gateway_env

ROOT = Path(__file__).resolve().parents[2]


def _audit(gateway: RunningGateway, **params: Any) -> list[dict[str, Any]]:
    response = admin(gateway, "GET", "/admin/audit", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    rows: list[dict[str, Any]] = body["data"]
    return rows


def _audit_table(gateway: RunningGateway) -> str:
    path = gateway.settings.ledger.database_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        return "\n".join(map(repr, db.execute("SELECT * FROM admin_audit").fetchall()))


def test_api_changes_are_audited_newest_first_without_key_material(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    began = time.time()
    key = create(gateway, "alice", rpm=60, tags=["team-a"])
    patched = admin(gateway, "PATCH", "/admin/keys/alice", json={"rpm": 120, "weight": 2})
    assert patched.status_code == 200, patched.text
    # an update that changes nothing is not a change
    same = admin(gateway, "PATCH", "/admin/keys/alice", json={"rpm": 120})
    assert same.status_code == 200
    assert admin(gateway, "DELETE", "/admin/keys/alice").status_code == 200

    response = admin(gateway, "GET", "/admin/audit")
    revoked, updated, created = response.json()["data"]
    for row in (revoked, updated, created):
        assert set(row) == {"id", "at", "actor", "action", "client", "changes"}
        assert row["actor"] == "admin-api@127.0.0.1"
        assert row["client"] == "alice"
        assert began <= row["at"] <= time.time()
    assert [r["action"] for r in (created, updated, revoked)] == [
        "key.created",
        "key.updated",
        "key.revoked",
    ]
    assert created["at"] <= updated["at"] <= revoked["at"]
    assert created["changes"] == {
        "rpm": {"before": None, "after": 60},
        "tags": {"before": None, "after": ["team-a"]},
    }
    assert updated["changes"] == {
        "rpm": {"before": 60, "after": 120},
        "weight": {"before": 1, "after": 2},
    }
    assert revoked["changes"] == {}

    digest = hashlib.sha256(key.encode()).hexdigest()
    table = _audit_table(gateway)
    for secret in (key, key[4:], digest):
        assert secret not in response.text
        assert secret not in table


def test_cli_changes_are_audited_with_the_os_user(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    create(gateway, "bob")
    env = gateway_env(tmp_path)
    for args in (["keys", "update", "bob", "--rpm", "9"], ["keys", "revoke", "bob"]):
        done = subprocess.run(
            [sys.executable, "-m", "app", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
    revoked, updated, created = _audit(gateway)
    user = getpass.getuser()
    assert (revoked["actor"], updated["actor"]) == (f"cli:{user}", f"cli:{user}")
    assert created["actor"] == "admin-api@127.0.0.1"
    assert updated["changes"] == {"rpm": {"before": None, "after": 9}}
    assert revoked["action"] == "key.revoked"


def test_refused_changes_leave_no_audit_row(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    create(gateway, "carol")
    attempts = [
        ("POST", "/admin/keys", {"name": "carol"}),  # already has a key
        ("POST", "/admin/keys", {"name": "dan", "rpm": 0}),
        ("PATCH", "/admin/keys/carol", {"rpm": "fast"}),
        ("PATCH", "/admin/keys/nobody", {"rpm": 5}),
        ("DELETE", "/admin/keys/nobody", None),
    ]
    for method, path, body in attempts:
        assert admin(gateway, method, path, json=body).status_code in (400, 404)
    assert [row["action"] for row in _audit(gateway)] == ["key.created"]


def test_audit_since_and_limit(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    for name in ("a1", "a2", "a3"):
        create(gateway, name)
    assert [row["client"] for row in _audit(gateway, limit=2)] == ["a3", "a2"]
    assert _audit(gateway, since="2999-01-01") == []
    assert len(_audit(gateway, since="1h")) == 3


@pytest.mark.parametrize(
    ("params", "param"),
    [({"since": "yesterday"}, "since"), ({"limit": 0}, "limit"), ({"limit": "all"}, "limit")],
)
def test_audit_bad_query_is_a_400(
    make_gateway: GatewayFactory, params: dict[str, Any], param: str
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    response = admin(gateway, "GET", "/admin/audit", params=params)
    assert error(response, 400, "invalid_request_error")["param"] == param
