"""Budgets on a running gateway: reservations under concurrency, 402s the SDK does not retry,
the gateway-wide budget, and the reservation kept when Mavera never said what it charged."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import openai
import pytest

from app.auth import key_digest
from tests.conftest import UPSTREAM_KEY, GatewayFactory, RunningGateway

ALICE_KEY = "mgw_alice_budget_key_0123456789abcdefghij"
BOB_KEY = "mgw_bob_budget_key_0123456789abcdefghijkl"
ADMIN_KEY = "admin-key-for-budget-tests-0123456789"
RESERVE = 5
# 200 words in: the simulator bills 1 credit per started 40 tokens, capped at 5, so each of these
# costs exactly one reservation.
COSTLY = [{"role": "user", "content": " ".join(["word"] * 200)}]
REQUESTS = 300


def _clients(**alice: Any) -> dict[str, Any]:
    return {
        "alice": {"key_sha256": key_digest(ALICE_KEY), **alice},
        "bob": {"key_sha256": key_digest(BOB_KEY)},
    }


def _spend(gateway: RunningGateway, name: str) -> dict[str, Any]:
    reply = httpx.get(
        f"{gateway.url}/admin/clients/{name}/spend",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


async def _hammer(url: str, key: str, count: int) -> list[int]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "mavera-1", "messages": COSTLY}
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def one() -> int:
            reply = await http.post(url + "/v1/chat/completions", json=body, headers=headers)
            return reply.status_code

        return list(await asyncio.gather(*(one() for _ in range(count))))


def test_hundreds_of_concurrent_requests_settle_at_most_budget_plus_one_reservation(
    make_gateway: GatewayFactory,
) -> None:
    budget = 40
    gateway = make_gateway(
        clients=_clients(credit_budget=budget, budget_period="day"),
        limits={"budget_reserve_credits": RESERVE},
        admin={"key": ADMIN_KEY},
    )
    statuses = asyncio.run(_hammer(gateway.url, ALICE_KEY, REQUESTS))

    counts = Counter(statuses)
    assert set(counts) <= {200, 402}, counts
    charged = gateway.sim.total_credits_charged()
    assert charged == counts[200] * RESERVE  # every served request cost one reservation
    assert budget <= charged <= budget + RESERVE
    rows = gateway.records()
    assert len(rows) == REQUESTS
    assert sum(float(r["credits_used"] or 0) for r in rows) == charged
    usage = httpx.get(
        str(gateway.settings.upstream.base_url).rstrip("/") + "/usage",
        headers={"authorization": f"Bearer {UPSTREAM_KEY}"},
    ).json()
    assert usage["credits"]["used"] == charged
    spend = _spend(gateway, "alice")
    assert (spend["spent"], spend["reserved"], spend["remaining"]) == (charged, 0, 0)


def test_the_sdk_gives_up_at_once_on_budget_exceeded(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(clients=_clients(credit_budget=1, budget_period="week"))
    client = gateway.client(ALICE_KEY, max_retries=2)  # the SDK's default
    client.chat.completions.create(model="mavera-1", messages=COSTLY)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="mavera-1", messages=COSTLY)
    error = caught.value
    assert (error.status_code, error.code) == (402, "budget_exceeded")
    assert error.response.headers["x-should-retry"] == "false"
    assert "'alice'" in error.message and "week" in error.message
    assert "resets at" in error.message and "T00:00:00+00:00" in error.message
    assert len(gateway.records()) == 2  # one request for the refused call, not three
    assert len(gateway.sim.records) == 1


def test_the_gateway_wide_budget_is_shared_by_all_clients(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(
        clients=_clients(),
        limits={"gateway_credit_budget": RESERVE, "gateway_budget_period": "month"},
    )
    gateway.client(ALICE_KEY).chat.completions.create(model="mavera-1", messages=COSTLY)
    for key in (BOB_KEY, ALICE_KEY):
        with pytest.raises(openai.APIStatusError) as caught:
            gateway.client(key).chat.completions.create(model="mavera-1", messages=COSTLY)
        assert (caught.value.status_code, caught.value.code) == (402, "budget_exceeded")
        assert "gateway's shared budget" in caught.value.message
    assert len(gateway.sim.records) == 1


def test_unknown_cost_keeps_the_reservation_in_the_ledger_and_after_a_restart(
    make_gateway: GatewayFactory,
) -> None:
    settings: dict[str, Any] = {
        "clients": _clients(credit_budget=100, budget_period="total"),
        "limits": {"budget_reserve_credits": 4},
        "admin": {"key": ADMIN_KEY},
    }
    gateway = make_gateway(**settings)
    body = {
        "model": "mavera-1",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "mavera_sim": {"hang_after": 1},
    }
    headers = {"authorization": f"Bearer {ALICE_KEY}"}
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers=headers
    ) as reply:
        for _ in reply.iter_raw():
            break  # leave mid-stream: Mavera never reports what it charged
    gateway.flush()
    [row] = gateway.records()
    assert (row["outcome"], row["credits_used"], row["credits_reserved"]) == (
        "client_disconnected",
        None,
        4,
    )
    assert _spend(gateway, "alice")["spent"] == 4
    again = make_gateway(**settings)  # the same ledger, seeded at start
    spend = _spend(again, "alice")
    assert (spend["spent"], spend["remaining"], spend["period_start"]) == (4, 96, None)
