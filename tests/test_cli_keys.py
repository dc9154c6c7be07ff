"""`mavera-gateway keys create|list|update|revoke`, in-process against a SQLite file: every
setting, every bad flag (exit 2, nothing stored), human times, config-file clients."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path

import pytest

from app.auth import key_digest, new_key
from app.clients import ClientSpec
from app.ledger.protocol import StoredKey
from app.ledger.sqlite import SqliteLedger
from tests.cliruns import audit_json, db_rows, listed, run

DAY = 86400.0
ROOT = Path(__file__).resolve().parents[1]


# --- create and list ----------------------------------------------------------------------------


def test_keys_create_prints_the_key_once_and_list_never_shows_it(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "keys", "create", "alice", "--persona", "clx_a", "--rpm", "60")
    assert code == 0, err
    keys = re.findall(r"mgw_[A-Za-z0-9_\-]+", out)
    assert len(keys) == 1 and len(keys[0]) >= 4 + 32
    assert out.count(keys[0]) == 1
    key = keys[0]

    code, out, err = run(capsys, "keys", "list")
    assert code == 0, err
    assert "alice" in out and "clx_a" in out
    assert key not in out and key[4:] not in out
    assert hashlib.sha256(key.encode()).hexdigest() not in out
    assert "mgw_" not in out

    code, _, err = run(capsys, "keys", "create", "alice")
    assert code == 2
    assert "alice" in err and "already has an active key" in err


def test_keys_create_takes_every_setting(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--persona", "clx_a", "--budget", "500", "--period", "week", "--rpm", "60"]
    flags += ["--max-concurrent", "4", "--weight", "3", "--tags", "team-a, exp-1"]
    code, _, err = run(capsys, "keys", "create", "alice", *flags, "--allow-override")
    assert code == 0, err
    alice = listed(capsys)["alice"]
    assert {k: v for k, v in alice.items() if k not in ("created_at", "revoked_at")} == {
        "name": "alice",
        "persona_id": "clx_a",
        "credit_budget": 500,
        "budget_period": "week",
        "rpm": 60,
        "max_concurrent": 4,
        "weight": 3,
        "tags": ["team-a", "exp-1"],
        "allow_persona_override": True,
    }
    assert alice["revoked_at"] is None and abs(alice["created_at"] - time.time()) < 60


def test_keys_list_table_has_human_times(
    database: str, ledger: SqliteLedger, capsys: pytest.CaptureFixture[str]
) -> None:
    created = time.time() - 3 * DAY
    spec = ClientSpec(credit_budget=500, budget_period="day", tags=("a", "b"))
    asyncio.run(ledger.add_key(StoredKey("old", key_digest(new_key()), spec, created)))
    asyncio.run(ledger.revoke_key("old", time.time() - 2 * 3600))
    assert run(capsys, "keys", "create", "new")[0] == 0

    code, out, err = run(capsys, "keys", "list")
    assert code == 0, err
    header, rule, old, new = out.rstrip("\n").split("\n")
    assert header.split()[0] == "name" and "created" in header and "revoked" in header
    assert set(rule.replace(" ", "")) == {"-"}
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(created))
    assert f"{stamp} UTC (3 days ago)" in old
    assert "UTC (2 hours ago)" in old
    assert "500/day" in old and "a,b" in old
    assert "UTC (just now)" in new
    assert str(int(created)) not in out, "no Unix timestamps in the table"


def test_keys_list_when_there_are_none(
    database: str, ledger: SqliteLedger, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    assert "keys create" in out
    assert run(capsys, "keys", "list", "--format", "json")[1].strip() == "[]"


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--rpm", "0"], "rpm"),
        (["--rpm", "-3"], "rpm"),
        (["--rpm", "lots"], "rpm"),
        (["--budget", "-5"], "credit_budget"),
        (["--budget", "2.5"], "credit_budget"),
        (["--persona", ""], "persona_id"),
        (["--period", "fortnight"], "budget_period"),
        (["--max-concurrent", "0"], "max_concurrent"),
        (["--weight", "0"], "weight"),
        (["--tags", "has space"], "tags"),
    ],
)
def test_keys_create_validates_the_settings_and_stores_nothing(
    database: str, capsys: pytest.CaptureFixture[str], flags: list[str], field: str
) -> None:
    code, out, err = run(capsys, "keys", "create", "carol", *flags)
    assert code == 2
    assert "created key" not in out and "mgw_" not in out
    assert field in err and "invalid client settings" in err
    assert run(capsys, "keys", "list")[1].startswith("no keys yet")
    assert audit_json(capsys) == []


def test_keys_create_refuses_an_unusable_name(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "keys", "create", "carol smith")
    assert code == 2
    assert "client name 'carol smith' is not valid" in err
    assert run(capsys, "keys", "list")[1].startswith("no keys yet")


# --- update -----------------------------------------------------------------------------------


def test_keys_update_changes_only_the_given_fields_and_keeps_the_key(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keys", "create", "alice", "--persona", "clx_a", "--budget", "500", "--rpm", "60")
    [(digest_before,)] = db_rows(database, "SELECT key_sha256 FROM gateway_keys")

    code, out, err = run(
        capsys, "keys", "update", "alice", "--rpm", "120", "--tags", "a,b", "--no-allow-override"
    )
    assert code == 0, err
    assert "rpm 60 -> 120" in out
    alice = listed(capsys)["alice"]
    assert (alice["rpm"], alice["tags"], alice["allow_persona_override"]) == (
        120,
        ["a", "b"],
        False,
    )
    assert (alice["persona_id"], alice["credit_budget"]) == ("clx_a", 500), "others unchanged"
    assert db_rows(database, "SELECT key_sha256 FROM gateway_keys") == [(digest_before,)]


def test_keys_update_none_clears_a_field(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--persona", "clx_a", "--budget", "500", "--period", "day", "--tags", "x"]
    run(capsys, "keys", "create", "alice", *flags, "--weight", "5", "--allow-override")
    code, _, err = run(
        capsys, "keys", "update", "alice", "--persona", "none", "--budget", "none",
        "--period", "none", "--tags", "none", "--weight", "none", "--default-override",
    )  # fmt: skip
    assert code == 0, err
    alice = listed(capsys)["alice"]
    assert alice["persona_id"] is None and alice["credit_budget"] is None
    assert (alice["budget_period"], alice["tags"], alice["weight"]) == ("month", [], 1)
    assert alice["allow_persona_override"] is None


def test_keys_update_with_nothing_new_changes_nothing(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keys", "create", "alice", "--rpm", "60")
    code, out, _ = run(capsys, "keys", "update", "alice", "--rpm", "60")
    assert code == 0 and "nothing to change" in out
    assert [row["action"] for row in audit_json(capsys)] == ["key.created"]


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--rpm", "0"], "rpm"),
        (["--rpm", "x"], "rpm"),
        (["--budget", "-1"], "credit_budget"),
        (["--period", "year"], "budget_period"),
        (["--tags", ",".join(f"t{i}" for i in range(17))], "tags"),
    ],
)
def test_keys_update_validates_and_stores_nothing(
    database: str, capsys: pytest.CaptureFixture[str], flags: list[str], field: str
) -> None:
    run(capsys, "keys", "create", "alice", "--rpm", "60", "--budget", "10")
    before = listed(capsys)
    code, out, err = run(capsys, "keys", "update", "alice", "--weight", "2", *flags)
    assert code == 2
    assert out == ""
    assert field in err and "invalid client settings" in err
    assert listed(capsys) == before, "not even the valid --weight was stored"
    assert [row["action"] for row in audit_json(capsys)] == ["key.created"]


def test_keys_update_and_revoke_of_an_unknown_client_fail(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "keys", "create", "alice")
    for command in (["update", "nobody", "--rpm", "5"], ["revoke", "nobody"]):
        code, out, err = run(capsys, "keys", *command)
        assert code == 1
        assert out == ""
        assert "no active key named 'nobody'" in err


def test_a_client_of_the_config_file_is_edited_there(
    database: str, ledger: SqliteLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[clients.team]\nkey_sha256 = "{"0" * 64}"\nrpm = 10\n')
    for command in (["update", "team", "--rpm", "5"], ["revoke", "team"], ["create", "team"]):
        code, out, err = run(capsys, "keys", *command, "--config", str(config))
        assert code == 2, command
        assert "declared in the config file" in err and "[clients.team]" in err
        assert "mgw_" not in out
    assert run(capsys, "keys", "list", "--format", "json")[1].strip() == "[]"


# --- revoke -----------------------------------------------------------------------------------


def test_keys_revoke(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keys", "create", "bob")[0] == 0
    code, out, _ = run(capsys, "keys", "revoke", "bob")
    assert code == 0 and "bob" in out
    assert listed(capsys)["bob"]["revoked_at"] is not None
    code, out, err = run(capsys, "keys", "revoke", "bob")
    assert code == 1
    assert "no active key named 'bob'" in err
