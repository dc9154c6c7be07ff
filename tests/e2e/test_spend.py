"""GET /admin/clients/{name}/spend: what a client has spent, holds and may still spend."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
import openai
import pytest

from app.auth import key_digest
from tests.conftest import REDIS_URL, GatewayFactory, RunningGateway

ADMIN_KEY = "admin-key-for-spend-tests-0123456789"
ALICE_KEY = "mgw_alice_spend_key_0123456789abcdefghijk"
BOB_KEY = "mgw_bob_spend_key_0123456789abcdefghijklm"
CAROL_KEY = "mgw_carol_spend_key_0123456789abcdefghij"
COSTLY = [{"role": "user", "content": " ".join(["word"] * 200)}]  # 5 credits each
FIELDS = {
    "client", "budget", "period", "timezone", "spent", "reserved", "remaining",
    "period_start", "resets_at", "rpm", "max_concurrent", "in_flight",
}  # fmt: skip


def _start(make_gateway: GatewayFactory) -> RunningGateway:
    return make_gateway(
        clients={
            "alice": {
                "key_sha256": key_digest(ALICE_KEY),
                "credit_budget": 100,
                "budget_period": "day",
                "rpm": 50,
                "max_concurrent": 3,
            },
            "bob": {"key_sha256": key_digest(BOB_KEY)},
        },
        limits={"timezone": "America/New_York", "budget_reserve_credits": 5},
        admin={"key": ADMIN_KEY},
    )


def _spend(gateway: RunningGateway, name: str, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{gateway.url}/admin/clients/{name}/spend", headers=headers)


def _json(gateway: RunningGateway, name: str) -> dict[str, Any]:
    reply = _spend(gateway, name)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    assert set(data) == FIELDS
    return data


def test_spend_before_and_after_requests(make_gateway: GatewayFactory) -> None:
    gateway = _start(make_gateway)
    before = _json(gateway, "alice")
    assert before["client"] == "alice"
    assert (before["budget"], before["period"], before["timezone"]) == (
        100,
        "day",
        "America/New_York",
    )
    assert (before["spent"], before["reserved"], before["remaining"]) == (0, 0, 100)
    assert (before["rpm"], before["max_concurrent"], before["in_flight"]) == (50, 3, 0)
    began = datetime.fromisoformat(before["period_start"])
    resets = datetime.fromisoformat(before["resets_at"])
    assert (began.hour, began.minute) == (0, 0) and began.utcoffset() is not None
    assert began.utcoffset().total_seconds() in (-5 * 3600, -4 * 3600)  # type: ignore[union-attr]
    assert 23 * 3600 <= (resets - began).total_seconds() <= 25 * 3600
    client = gateway.client(ALICE_KEY)
    for _ in range(2):
        client.chat.completions.create(model="mavera-1", messages=COSTLY)
    gateway.flush()
    after = _json(gateway, "alice")
    assert (after["spent"], after["reserved"], after["remaining"]) == (10, 0, 90)


def test_spend_of_a_client_without_budget_comes_from_the_ledger(
    make_gateway: GatewayFactory,
) -> None:
    gateway = _start(make_gateway)
    gateway.client(BOB_KEY).chat.completions.create(model="mavera-1", messages=COSTLY)
    gateway.flush()
    bob = _json(gateway, "bob")
    assert (bob["budget"], bob["remaining"], bob["spent"], bob["rpm"]) == (None, None, 5, None)


def test_spend_during_an_open_stream_shows_the_reservation(make_gateway: GatewayFactory) -> None:
    gateway = _start(make_gateway)
    body = {
        "model": "mavera-1",
        "stream": True,
        "messages": COSTLY,
        "mavera_sim": {"hang_after": 1},  # open until the client leaves
    }
    headers = {"authorization": f"Bearer {ALICE_KEY}"}
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers=headers
    ) as s:
        chunks = s.iter_raw()
        next(chunks)
        during = _json(gateway, "alice")
        assert (during["reserved"], during["in_flight"], during["remaining"]) == (5, 1, 95)
    deadline = time.monotonic() + 5
    while _json(gateway, "alice")["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    after = _json(gateway, "alice")
    # the client left before Mavera reported a cost: the reservation is kept as spent
    assert (after["reserved"], after["spent"], after["in_flight"]) == (0, 5, 0)


def test_spend_needs_the_admin_key_and_a_known_client(make_gateway: GatewayFactory) -> None:
    gateway = _start(make_gateway)
    for key in (None, "wrong-admin-key", ALICE_KEY):
        refused = _spend(gateway, "alice", key)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert "spent" not in refused.text
    unknown = _spend(gateway, "carol")
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert (error["code"], error["type"], error["param"]) == (
        "client_not_found",
        "invalid_request_error",
        "name",
    )
    assert "carol" in error["message"]


def test_total_period_has_no_start_or_reset(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(
        clients={
            "alice": {
                "key_sha256": key_digest(ALICE_KEY),
                "credit_budget": 7,
                "budget_period": "total",
            }
        },
        admin={"key": ADMIN_KEY},
    )
    data = _json(gateway, "alice")
    assert (data["period"], data["period_start"], data["resets_at"]) == ("total", None, None)
    assert (data["timezone"], data["remaining"]) == ("UTC", 7)


@pytest.mark.parametrize("counters", ["redis", "in process"])
def test_rpm_refuses_first_and_what_the_refused_request_took_is_given_back(
    make_gateway: GatewayFactory, request: pytest.FixtureRequest, counters: str
) -> None:
    shared: dict[str, Any] = {}
    if counters == "redis":
        shared = {"redis_url": REDIS_URL, "redis_prefix": request.getfixturevalue("redis_prefix")}
    gateway = make_gateway(
        clients={
            "alice": {"key_sha256": key_digest(ALICE_KEY), "rpm": 2, "credit_budget": 10},
            "bob": {
                "key_sha256": key_digest(BOB_KEY),
                "rpm": 1,
                "max_concurrent": 1,
                "credit_budget": 100,
            },
            "carol": {"key_sha256": key_digest(CAROL_KEY)},  # only the gateway-wide budget
        },
        limits={
            "budget_reserve_credits": 5,
            "gateway_credit_budget": 20,
            **shared,
        },
        admin={"key": ADMIN_KEY},
    )
    alice, bob = gateway.client(ALICE_KEY), gateway.client(BOB_KEY)
    for _ in range(2):  # 5 credits each: alice's rpm and budget are both used up
        alice.chat.completions.create(model="mavera-1", messages=COSTLY)
    with pytest.raises(openai.RateLimitError) as over_both:  # the rpm answers, not the budget
        alice.chat.completions.create(model="mavera-1", messages=COSTLY)
    assert "requests per minute" in over_both.value.message
    assert over_both.value.response.headers["x-ratelimit-remaining-requests"] == "0"

    bob.chat.completions.create(model="mavera-1", messages=COSTLY)  # 15 of the gateway's 20
    for _ in range(4):  # over bob's rpm only: its place and both reservations are given back
        with pytest.raises(openai.RateLimitError) as over_rpm:
            bob.chat.completions.create(model="mavera-1", messages=COSTLY)
        assert "requests per minute" in over_rpm.value.message
    gateway.flush()
    spent = {name: _json(gateway, name) for name in ("alice", "bob")}
    assert (spent["alice"]["spent"], spent["alice"]["reserved"]) == (10, 0)
    assert (spent["bob"]["spent"], spent["bob"]["reserved"], spent["bob"]["in_flight"]) == (5, 0, 0)
    # had the refused requests kept their gateway-wide reservations, carol would get a 402
    gateway.client(CAROL_KEY).chat.completions.create(model="mavera-1", messages=COSTLY)
    assert gateway.sim.total_credits_charged() == 20
