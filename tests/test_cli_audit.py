"""`mavera-gateway audit`: every key change from the CLI, with the OS user and no key material."""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import time
from pathlib import Path

import pytest

from app.cli import main
from tests.cliruns import audit_json, db_rows, run

DAY = 86400.0
ROOT = Path(__file__).resolve().parents[1]


# --- audit ------------------------------------------------------------------------------------


def test_every_change_is_audited_with_the_os_user_and_no_key_material(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "keys", "create", "alice", "--rpm", "60", "--tags", "a")
    [key] = re.findall(r"mgw_[A-Za-z0-9_\-]+", out)
    run(capsys, "keys", "update", "alice", "--rpm", "90", "--budget", "100")
    run(capsys, "keys", "revoke", "alice")

    revoked, updated, created = audit_json(capsys)
    actor = f"cli:{getpass.getuser()}"
    assert {row["actor"] for row in (revoked, updated, created)} == {actor}
    assert {row["client"] for row in (revoked, updated, created)} == {"alice"}
    assert (created["action"], updated["action"], revoked["action"]) == (
        "key.created",
        "key.updated",
        "key.revoked",
    )
    assert created["changes"] == {
        "rpm": {"before": None, "after": 60},
        "tags": {"before": None, "after": ["a"]},
    }
    assert updated["changes"] == {
        "rpm": {"before": 60, "after": 90},
        "credit_budget": {"before": None, "after": 100},
    }
    assert revoked["changes"] == {}
    assert created["at"] <= updated["at"] <= revoked["at"] <= time.time()

    code, table, _ = run(capsys, "audit")
    assert code == 0
    lines = table.rstrip("\n").split("\n")
    assert lines[0].split() == ["when", "actor", "action", "client", "changes"]
    assert "key.revoked" in lines[2] and "key.created" in lines[4]
    assert "rpm 60 -> 90" in lines[3] and "UTC (just now)" in lines[3]

    dump = "\n".join(map(repr, db_rows(database, "SELECT * FROM admin_audit")))
    digest = hashlib.sha256(key.encode()).hexdigest()
    for secret in (key, key[4:], digest):
        assert secret not in dump and secret not in table


def test_audit_since_and_limit(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a1", "a2", "a3"):
        run(capsys, "keys", "create", name)
    code, out, _ = run(capsys, "audit", "--limit", "2", "--format", "json")
    assert code == 0
    assert [row["client"] for row in json.loads(out)] == ["a3", "a2"]
    code, out, _ = run(capsys, "audit", "--since", "2999-01-01")
    assert code == 0 and "no admin changes" in out


@pytest.mark.parametrize("limit", ["0", "-1", "many"])
def test_audit_limit_must_be_positive(
    database: str, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["audit", "--limit", limit])
    assert exited.value.code == 2
    assert "--limit" in capsys.readouterr().err
