"""Helpers for tests of the admin API: the admin key, requests with it, the error shape."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import httpx
import openai

from tests.conftest import RunningGateway

ADMIN_KEY = "admin-key-for-tests-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
HI = [{"role": "user", "content": "hi"}]


def admin(gateway: RunningGateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to the gateway with the admin key."""
    headers = {**ADMIN, **kwargs.pop("headers", {})}
    return httpx.request(method, gateway.url + path, headers=headers, timeout=10, **kwargs)


def create(gateway: RunningGateway, name: str, **spec: Any) -> str:
    """A new client key made through POST /admin/keys."""
    response = admin(gateway, "POST", "/admin/keys", json={"name": name, **spec})
    assert response.status_code == 201, response.text
    key = response.json()["key"]
    assert isinstance(key, str)
    return key


def chat(gateway: RunningGateway, key: str, **extra: Any) -> Any:
    """One chat completion through the OpenAI SDK with a client key."""
    return gateway.client(key).chat.completions.create(model="mavera-1", messages=HI, **extra)


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The OpenAI-shape error of a response that must have `status` and `code`."""
    assert response.status_code == status, response.text
    detail = response.json()["error"]
    assert set(detail) == {"message", "type", "param", "code"}
    assert detail["code"] == code
    assert detail["message"]
    return dict(detail)


def rejected(gateway: RunningGateway, key: str) -> bool:
    """Whether the gateway refuses a client key now (401 invalid_api_key)."""
    try:
        chat(gateway, key)
    except openai.AuthenticationError as exc:
        assert exc.code == "invalid_api_key"
        return True
    return False


def listed_keys(gateway: RunningGateway) -> list[dict[str, Any]]:
    """GET /admin/keys: every stored key's client and settings."""
    response = admin(gateway, "GET", "/admin/keys")
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def key_rows(gateway: RunningGateway) -> list[tuple[Any, ...]]:
    """(name, key_sha256, created_at) of every key row in the ledger, read directly."""
    path = gateway.settings.ledger.database_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT name, key_sha256, created_at FROM gateway_keys").fetchall()


def audit_actions(gateway: RunningGateway) -> list[str]:
    """The actions of GET /admin/audit, newest first."""
    return [row["action"] for row in admin(gateway, "GET", "/admin/audit").json()["data"]]
