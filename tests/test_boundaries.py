"""The module boundaries hold: read from the source's own imports, so a new arrow fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"
DOMAIN = {"app.records", "app.clients"}
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b")


def modules() -> dict[str, Path]:
    found = {}
    for path in APP.rglob("*.py"):
        parts = path.relative_to(APP.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """The app modules a file imports (`from app.x import y` counts as app.x)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name == "app" or name.startswith("app.")}


# Who may use the transport: app.upstream alone (the alerts' webhook POST goes through its
# `post_once`).
TRANSPORT_USERS = {"app.upstream"}


def test_only_upstream_knows_the_transport() -> None:
    """The transport is the package app.http1; outside it, only TRANSPORT_USERS import it."""
    outside = {n: p for n, p in modules().items() if not n.startswith("app.http1")}
    users = {
        name
        for name, path in outside.items()
        if any(m == "app.http1" or m.startswith("app.http1.") for m in imports_of(path))
    }
    assert users == TRANSPORT_USERS
    for name in TRANSPORT_USERS:
        assert {m for m in imports_of(outside[name]) if m.startswith("app.http1")} == {
            "app.http1"
        }, name


def test_storage_imports_only_storage_and_domain_types() -> None:
    for name, path in modules().items():
        if not name.startswith("app.ledger"):
            continue
        upward = {m for m in imports_of(path) if not m.startswith("app.ledger") and m not in DOMAIN}
        assert not upward, f"{name} imports {upward}"


def test_domain_types_import_nothing_of_ours() -> None:
    for name in DOMAIN:
        assert imports_of(modules()[name]) == set(), name


def test_sql_lives_only_in_the_ledger() -> None:
    for name, path in modules().items():
        if name.startswith("app.ledger"):
            continue
        found = SQL.findall(path.read_text(encoding="utf-8"))
        assert not found, f"{name} holds SQL: {found}"


def test_the_ledger_is_typed_against_its_protocol_outside_storage() -> None:
    for name, path in modules().items():
        if name.startswith("app.ledger"):
            continue
        assert "app.ledger.sqlite" not in imports_of(path), f"{name} uses the SQLite class"
