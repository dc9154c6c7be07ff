"""Which ledger the CLI reads: it says so on stderr, refuses a file that is not there, and by
default uses the per-user data directory whatever the current directory; `--version`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cliruns import run

DAY = 86400.0
ROOT = Path(__file__).resolve().parents[1]


# --- which database ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["keys", "list", "--format", "json"],
        ["keys", "create", "zed"],
        ["keys", "update", "alice", "--rpm", "7"],
        ["keys", "revoke", "alice"],
        ["audit", "--format", "json"],
    ],
)
def test_every_ledger_command_says_which_database_on_stderr(
    database: str, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    run(capsys, "keys", "create", "alice")
    code, out, err = run(capsys, *command)
    assert code == 0, err
    path = Path(database.removeprefix("sqlite:///")).resolve()
    assert f"ledger: SQLite file {path}" in err.splitlines()
    assert "ledger:" not in out
    if "json" in command:
        json.loads(out)


@pytest.mark.parametrize(
    "command",
    [["keys", "list"], ["keys", "update", "a", "--rpm", "1"], ["keys", "revoke", "a"], ["audit"]],
)
def test_commands_that_need_a_ledger_refuse_a_missing_file(
    database: str, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    path = Path(database.removeprefix("sqlite:///"))
    code, out, err = run(capsys, *command)
    assert code == 1
    assert out == ""
    assert f"there is no ledger at SQLite file {path}" in err
    assert not path.exists()


def _cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_default_ledger_does_not_depend_on_the_current_directory(tmp_path: Path) -> None:
    data_home = tmp_path / "data-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAVERA_")}
    env["XDG_DATA_HOME"] = str(data_home)
    env["PYTHONPATH"] = str(ROOT)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    expected = data_home / "mavera-gateway" / "mavera-gateway.db"

    missing = _cli(here, env, "usage")
    assert missing.returncode == 1
    assert f"there is no ledger at SQLite file {expected}" in missing.stderr
    assert not expected.exists()

    created = _cli(here, env, "keys", "create", "alice")
    assert created.returncode == 0, created.stderr
    assert f"ledger: SQLite file {expected}" in created.stderr
    assert expected.is_file(), "created on first use"
    found = _cli(there, env, "keys", "list", "--format", "json")
    assert found.returncode == 0, found.stderr
    assert [row["name"] for row in json.loads(found.stdout)] == ["alice"]
    assert f"ledger: SQLite file {expected}" in found.stderr
    assert list(here.iterdir()) == list(there.iterdir()) == [], "nothing written to the cwd"
    usage = _cli(there, env, "usage")
    assert usage.returncode == 0 and "no requests in this period" in usage.stdout


def test_version_from_the_console(tmp_path: Path) -> None:
    done = _cli(tmp_path, dict(os.environ), "--version")
    assert done.returncode == 0
    assert re.fullmatch(r"mavera-gateway \d+\.\d+\.\d+\S*\n", done.stdout), done.stdout
