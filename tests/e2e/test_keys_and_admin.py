"""Client identity and the admin API on a running gateway: keys created and revoked through the
CLI take effect without a restart, admin auth, usage reports and paging, local mode, and the
refusal to serve an open gateway on a non-loopback address. (Keys through the admin API:
test_admin_keys.py; the audit: test_admin_audit.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.server import KEY_REFRESH_S
from tests.conftest import (
    DEFAULT_PERSONA,
    PERSONAS,
    UPSTREAM_KEY,
    GatewayFactory,
    RunningGateway,
    free_port,
)
from tests.e2e.adminapi import ADMIN, ADMIN_KEY, HI, admin, chat, create, error, rejected
from tests.processes import GatewayProcess, gateway_env

ROOT = Path(__file__).resolve().parents[2]
PICKUP_S = KEY_REFRESH_S + 3  # a refresh interval plus slack


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m app ...` against the test gateway's ledger database."""
    env = gateway_env(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.1)


# --- keys through the CLI, picked up by a running gateway -------------------------------------


def test_cli_revocation_reaches_a_running_gateway(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    bob = create(gateway, "bob")
    carol = create(gateway, "carol")
    assert chat(gateway, bob).choices

    done = _cli(tmp_path, "keys", "revoke", "bob")
    assert done.returncode == 0, done.stderr
    assert "bob" in done.stdout
    _eventually(lambda: rejected(gateway, bob), PICKUP_S, "bob's revoked key still worked")
    assert chat(gateway, carol).choices, "revoking bob must not affect carol"


def test_cli_created_key_is_picked_up_with_its_persona(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    create(gateway, "existing")  # the gateway requires keys from now on
    persona = PERSONAS[2]
    done = _cli(
        tmp_path, "keys", "create", "dave", "--persona", persona, "--budget", "500", "--rpm", "100"
    )
    assert done.returncode == 0, done.stderr
    [key] = [word for word in done.stdout.split() if word.startswith("mgw_")]

    _eventually(lambda: not rejected(gateway, key), PICKUP_S, "the new key was not picked up")
    assert gateway.sim.records[-1].persona_id == persona
    row = gateway.records()[-1]
    assert (row["client"], row["persona_id"], row["outcome"]) == ("dave", persona, "ok")
    [listed] = [
        r for r in admin(gateway, "GET", "/admin/keys").json()["data"] if r["name"] == "dave"
    ]
    assert (listed["credit_budget"], listed["rpm"], listed["persona_id"]) == (500, 100, persona)


def test_cli_update_reaches_a_running_gateway(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    key = create(gateway, "ivy", persona_id=PERSONAS[1])
    chat(gateway, key)
    assert gateway.sim.records[-1].persona_id == PERSONAS[1]

    done = _cli(tmp_path, "keys", "update", "ivy", "--persona", PERSONAS[2])
    assert done.returncode == 0, done.stderr
    assert f'persona_id "{PERSONAS[1]}" -> "{PERSONAS[2]}"' in done.stdout

    def moved() -> bool:
        chat(gateway, key)
        return bool(gateway.sim.records[-1].persona_id == PERSONAS[2])

    _eventually(moved, PICKUP_S, "the new persona was not picked up")


# --- admin authentication ---------------------------------------------------------------------


def test_admin_api_is_off_without_an_admin_key(gateway: RunningGateway) -> None:
    for path in ("/admin/usage", "/admin/usage/records", "/admin/keys"):
        response = httpx.get(gateway.url + path, headers=ADMIN, timeout=10)
        problem = error(response, 404, "admin_disabled")
        assert "MAVERA_GATEWAY_ADMIN_KEY" in problem["message"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-admin-key"}, {"authorization": ADMIN_KEY}],
    ids=["none", "wrong", "no-scheme"],
)
def test_admin_api_rejects_a_wrong_admin_key(
    make_gateway: GatewayFactory, headers: dict[str, str]
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    for method, path in (
        ("GET", "/admin/usage"),
        ("GET", "/admin/usage/records"),
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("DELETE", "/admin/keys/someone"),
        ("PATCH", "/admin/keys/someone"),
        ("GET", "/admin/audit"),
    ):
        response = httpx.request(
            method, gateway.url + path, headers=headers, json={"name": "x"}, timeout=10
        )
        error(response, 401, "invalid_api_key")
        assert ADMIN_KEY not in response.text
    assert admin(gateway, "GET", "/admin/keys").json()["data"] == [], "a key was created"
    assert admin(gateway, "GET", "/admin/audit").json()["data"] == [], "a change was made"


def test_a_gateway_key_is_not_an_admin_key(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    key = create(gateway, "erin")
    response = httpx.get(
        gateway.url + "/admin/keys", headers={"authorization": f"Bearer {key}"}, timeout=10
    )
    error(response, 401, "invalid_api_key")


# --- usage reports ----------------------------------------------------------------------------


def _traffic(gateway: RunningGateway) -> dict[str, str]:
    """A few requests from two clients, including an upstream error; their keys by name."""
    keys = {"frank": create(gateway, "frank"), "grace": create(gateway, "grace")}
    for _ in range(3):
        chat(gateway, keys["frank"])
    list(chat(gateway, keys["frank"], stream=True))
    gateway.client(keys["grace"]).responses.create(model="mavera-1", input="hello")
    with pytest.raises(openai.InternalServerError):
        chat(gateway, keys["grace"], extra_body={"mavera_sim": {"status": 500}})
    with pytest.raises(openai.AuthenticationError):
        chat(gateway, "mgw_not_a_key_of_this_gateway_at_all_000000")
    return keys


def test_admin_usage_totals_match_the_ledger(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    _traffic(gateway)
    rows = gateway.records()

    response = admin(gateway, "GET", "/admin/usage", params={"since": "1h", "by": "client"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["object"] == "list" and report["by"] == "client"
    totals = {entry["client"]: entry for entry in report["data"]}
    assert set(totals) == {row["client"] for row in rows} == {"frank", "grace", "unknown"}
    for client, entry in totals.items():
        mine = [r for r in rows if r["client"] == client]
        assert entry["requests"] == len(mine)
        assert entry["errors"] == sum(1 for r in mine if r["outcome"] != "ok")
        assert entry["credits"] == sum(r["credits_used"] for r in mine if r["credits_used"])
    assert (totals["frank"]["requests"], totals["frank"]["errors"]) == (4, 0)
    assert (totals["grace"]["requests"], totals["grace"]["errors"]) == (2, 1)
    charged = sum(r.credits_charged for r in gateway.sim.records)
    assert sum(entry["credits"] for entry in totals.values()) == charged > 0

    by_endpoint = admin(gateway, "GET", "/admin/usage", params={"since": "1h", "by": "endpoint"})
    assert {e["endpoint"] for e in by_endpoint.json()["data"]} == {"chat.completions", "responses"}
    future = admin(gateway, "GET", "/admin/usage", params={"since": "2999-01-01"})
    assert future.json()["data"] == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "7x"}, "since"),
        ({"by": "colour"}, "by"),
    ],
)
def test_admin_usage_bad_query_is_a_400_in_openai_shape(
    make_gateway: GatewayFactory, params: dict[str, str], param: str
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    for path in ("/admin/usage", "/admin/usage/records") if param == "since" else ("/admin/usage",):
        problem = error(admin(gateway, "GET", path, params=params), 400, "invalid_request_error")
        assert problem["param"] == param
        assert problem["type"] == "invalid_request_error"


def test_admin_usage_records_pages_and_filters(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    _traffic(gateway)
    everything = gateway.records()
    assert len(everything) == 7

    pages: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        response = admin(
            gateway, "GET", "/admin/usage/records", params={"limit": 3, "offset": offset}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= 3
        assert page["has_more"] == (page["next_offset"] is not None)
        pages += page["data"]
        offset = page["next_offset"]
    assert [r["id"] for r in pages] == [r["id"] for r in reversed(everything)], "newest first"
    assert len({r["id"] for r in pages}) == len(everything)
    received = [r["received_at"] for r in pages]
    assert received == sorted(received, reverse=True)

    last = admin(gateway, "GET", "/admin/usage/records", params={"limit": 3, "offset": 6}).json()
    assert (len(last["data"]), last["has_more"], last["next_offset"]) == (1, False, None)
    exact = admin(gateway, "GET", "/admin/usage/records", params={"limit": 7}).json()
    assert (len(exact["data"]), exact["has_more"]) == (7, False)

    grace = admin(gateway, "GET", "/admin/usage/records", params={"client": "grace"}).json()
    assert {r["client"] for r in grace["data"]} == {"grace"}
    assert len(grace["data"]) == 2
    assert sorted(r["outcome"] for r in grace["data"]) == ["ok", "upstream_error"]
    for record in grace["data"]:
        assert isinstance(record["stream"], bool)
    nobody = admin(gateway, "GET", "/admin/usage/records", params={"client": "nobody"}).json()
    assert nobody == {"object": "list", "data": [], "has_more": False, "next_offset": None}

    for bad in ({"limit": "-1"}, {"limit": "many"}, {"limit": "1001"}, {"offset": "x"}):
        error(
            admin(gateway, "GET", "/admin/usage/records", params=bad), 400, "invalid_request_error"
        )


# --- local mode and the exposure check --------------------------------------------------------


def test_local_mode_records_the_openai_user_as_end_user(gateway: RunningGateway) -> None:
    chat(gateway, "anything-goes-locally", user="dev-42")
    gateway.client().responses.create(model="mavera-1", input="hi", user="dev-43")
    chat(gateway, "no-user")
    rows = gateway.records()
    assert [(r["client"], r["end_user"]) for r in rows] == [
        ("local", "dev-42"),
        ("local", "dev-43"),
        ("local", None),
    ]
    assert all(r["persona_id"] == DEFAULT_PERSONA for r in rows)


def _serve_args(port: int, *extra: str) -> list[str]:
    return ["serve", "--host", "0.0.0.0", "--port", str(port), *extra]


def test_open_gateway_on_a_public_address_is_refused(tmp_path: Path) -> None:
    env = gateway_env(tmp_path, MAVERA_API_KEY=UPSTREAM_KEY)
    done = subprocess.run(
        [sys.executable, "-m", "app", *_serve_args(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "keys create" in done.stderr
    assert "--allow-open" in done.stderr
    assert "Traceback" not in done.stderr
    assert UPSTREAM_KEY not in done.stderr + done.stdout


def _start_public(tmp_path: Path, *extra: str) -> GatewayProcess:
    """A gateway on 0.0.0.0 (its upstream is never called here)."""
    env = gateway_env(
        tmp_path, MAVERA_API_KEY=UPSTREAM_KEY, MAVERA_BASE_URL="http://127.0.0.1:9/api/v1"
    )
    port = free_port()
    return GatewayProcess(_serve_args(port, *extra), env, tmp_path / "serve.log", port).start()


def test_open_gateway_on_a_public_address_starts_with_allow_open(tmp_path: Path) -> None:
    process = _start_public(tmp_path, "--allow-open")
    try:
        process.wait_ready()
    finally:
        process.stop()
    assert process.proc is not None and process.proc.returncode == 0, process.log()


def test_a_public_address_is_served_once_a_key_exists(tmp_path: Path) -> None:
    created = _cli(tmp_path, "keys", "create", "henry")
    assert created.returncode == 0, created.stderr
    process = _start_public(tmp_path)
    try:
        process.wait_ready()
        response = httpx.post(
            process.url + "/v1/chat/completions",
            json={"model": "mavera-1", "messages": HI},
            timeout=10,
        )
        error(response, 401, "invalid_api_key")
    finally:
        process.stop()
