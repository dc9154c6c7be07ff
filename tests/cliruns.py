"""Running `mavera-gateway` in-process for CLI tests, and reading what it stored."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from typing import Any

import pytest

from app.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`mavera-gateway ARGV...`: the exit status, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    """`keys list --format json`, by client name."""
    code, out, err = run(capsys, "keys", "list", "--format", "json")
    assert code == 0, err
    return {row["name"]: row for row in json.loads(out)}


def audit_json(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """`audit --format json`: the audit rows, newest first."""
    code, out, err = run(capsys, "audit", "--format", "json")
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def db_rows(database: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the SQLite ledger at `database`, on a connection of its own."""
    with contextlib.closing(sqlite3.connect(database.removeprefix("sqlite:///"))) as db:
        return db.execute(sql).fetchall()
