"""`[limits] on_shared_failure` when Redis cannot be reached: fail_closed refuses the requests
that need a budget or rate-limit check (503 limits_unavailable) and serves the rest; fail_open
serves and records everything, and once Redis is back the budgets are rebuilt from the ledger.
/readyz says why either way."""

from __future__ import annotations

import time
from typing import Any

import httpx

from app.auth import key_digest
from tests.conftest import GatewayFactory, RunningGateway, free_port
from tests.tcp_relay import TcpRelay

KEYS = {"alice": "mgw_alice_failure_key_0123456789abcdefghij", "bob": "mgw_bob_failure_key_0123"}
BUDGET = 40
RESERVE = 5
COSTLY = [{"role": "user", "content": " ".join(["word"] * 200)}]  # 5 credits each


def _gateway(make_gateway: GatewayFactory, redis_url: str, **limits: Any) -> RunningGateway:
    return make_gateway(
        clients={
            "alice": {"key_sha256": key_digest(KEYS["alice"]), "credit_budget": BUDGET},
            "bob": {"key_sha256": key_digest(KEYS["bob"])},  # no budget, no limits
        },
        limits={"redis_url": redis_url, "budget_reserve_credits": RESERVE, **limits},
    )


def _post(gateway: RunningGateway, name: str) -> httpx.Response:
    body = {"model": "mavera-1", "messages": COSTLY}
    headers = {"authorization": f"Bearer {KEYS[name]}"}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_fail_closed_refuses_limited_clients_and_serves_the_others(
    make_gateway: GatewayFactory,
) -> None:
    port = free_port()  # nothing listens there
    gateway = _gateway(make_gateway, f"redis://127.0.0.1:{port}/0")

    refused = _post(gateway, "alice")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "limits_unavailable" and "fail_closed" in error["message"]
    assert _post(gateway, "bob").status_code == 200
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 503
    (problem,) = ready.json()["problems"]
    assert problem.startswith(f"limits: Redis at redis://127.0.0.1:{port}/0 unreachable")
    assert "fail_closed" in problem
    rows = {row["client"]: row for row in gateway.records()}
    assert (rows["alice"]["status"], rows["alice"]["outcome"]) == (503, "rejected")
    assert rows["alice"]["error_code"] == "limits_unavailable"
    assert gateway.sim.total_credits_charged() == RESERVE  # bob's only


def test_fail_open_serves_records_and_rebuilds_budgets_when_redis_is_back(
    make_gateway: GatewayFactory, redis_prefix: str, no_key_in_logs: Any
) -> None:
    relay = TcpRelay(free_port(), 6379)
    relay.start()
    url = f"redis://127.0.0.1:{relay.port}/0"
    gateway = _gateway(make_gateway, url, redis_prefix=redis_prefix, on_shared_failure="fail_open")
    assert [_post(gateway, "alice").status_code for _ in range(4)] == [200] * 4  # 20 credits

    relay.cut()
    assert [_post(gateway, "alice").status_code for _ in range(4)] == [200] * 4  # unchecked
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200  # still serving everyone
    (degraded,) = ready.json()["degraded"]
    assert "unreachable" in degraded and "fail_open" in degraded
    outage = [line for line in no_key_in_logs.lines if "cannot be reached" in line]
    assert len(outage) == 1  # once per outage, not per request
    gateway.flush()
    assert sum(float(r["credits_used"]) for r in gateway.records()) == BUDGET  # 8 x 5

    relay.start()
    deadline = time.monotonic() + 10
    while httpx.get(gateway.url + "/readyz").json()["degraded"]:
        assert time.monotonic() < deadline, "/readyz never saw Redis back"
        time.sleep(0.2)
    over = _post(gateway, "alice")  # the ledger's 40 credits, rebuilt into Redis
    assert over.status_code == 402, over.text
    assert over.json()["error"]["code"] == "budget_exceeded"
    assert _post(gateway, "bob").status_code == 200
    relay.cut()
