"""Budget alerts end to end: SDK requests through the gateway and the simulator, until a
client's budget is crossed; a real webhook receiver on a loopback port gets the alerts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from app.auth import key_digest
from tests.conftest import GatewayFactory, RunningGateway
from tests.webhook_receiver import receiver

HI = [{"role": "user", "content": "hi"}]
ALICE_KEY = "mgw_alice_test_key_0123456789abcdefghijkl"
HOOK_PATH = "/services/T0001/B0002/XsecretTOKENx"


def _gateway(make_gateway: GatewayFactory, url: str, budget: int) -> RunningGateway:
    return make_gateway(
        clients={"alice": {"key_sha256": key_digest(ALICE_KEY), "credit_budget": budget}},
        alerts={"webhook_url": url + HOOK_PATH},
    )


def _spend_until(gateway: RunningGateway, stop: float | None = None) -> list[str]:
    """Requests one at a time until the budget is spent (402) or `stop` credits are used."""
    client = gateway.client(ALICE_KEY, timeout=10)
    outcomes = []
    for _ in range(100):
        try:
            client.chat.completions.create(model="mavera-1", messages=HI)
            outcomes.append("ok")
        except openai.APIStatusError as exc:
            assert exc.status_code == 402
            outcomes.append("budget_exceeded")
            break
        if stop is not None and _spent(gateway) >= stop:
            break
    return outcomes


def _spent(gateway: RunningGateway) -> float:
    return float(sum(r["credits_used"] or 0 for r in gateway.records()))


def _sent(bodies: list[dict[str, Any]]) -> list[tuple[str, float, bool]]:
    return [(b["client"], b["threshold"], b["gateway"]) for b in bodies]


def test_concurrent_requests_crossing_a_budget_send_each_alert_once(
    make_gateway: GatewayFactory,
) -> None:
    with receiver() as (seen, url):
        gateway = _gateway(make_gateway, url, budget=10)
        client = gateway.client(ALICE_KEY, timeout=10)

        def ask(_: int) -> str:
            try:
                client.chat.completions.create(model="mavera-1", messages=HI)
                return "ok"
            except openai.APIStatusError as exc:
                return str(exc.code)

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(ask, range(40)))
        assert "budget_exceeded" in outcomes
        spent = _spent(gateway)
        gateway.server.stop()  # shutdown flushes what is queued: nothing is still to come
        assert _sent(seen.delivered()) == [("alice", 0.8, False), ("alice", 1.0, False)]
        assert len(seen.posts) == 2
        first, second = seen.delivered()
        assert 8 <= first["spent"] <= second["spent"] <= spent
        assert second["text"].startswith(
            "mavera-gateway: client alice has used 100% of its 10-credit monthly budget ("
        )
        assert seen.posts[0].path == HOOK_PATH


def test_a_restart_does_not_send_an_alert_again(make_gateway: GatewayFactory) -> None:
    with receiver() as (seen, url):
        gateway = _gateway(make_gateway, url, budget=40)
        _spend_until(gateway, stop=32)
        assert 32 <= _spent(gateway) < 40, "the simulator's answers cost 1-5 credits each"
        assert _sent(seen.wait_for(1)) == [("alice", 0.8, False)]
        gateway.server.stop()
        again = _gateway(make_gateway, url, budget=40)  # the same ledger: it seeds its spend
        assert _spend_until(again)[-1] == "budget_exceeded"
        again.server.stop()
        assert _sent(seen.delivered()) == [("alice", 0.8, False), ("alice", 1.0, False)]


def test_a_hung_receiver_does_not_hold_up_requests(make_gateway: GatewayFactory) -> None:
    with receiver() as (seen, url):
        seen.release.clear()  # the receiver takes the POST and does not answer
        gateway = _gateway(make_gateway, url, budget=10)
        outcomes = _spend_until(gateway)
        assert outcomes[-1] == "budget_exceeded" and set(outcomes[:-1]) == {"ok"}
        assert seen.delivered() == []
        seen.release.set()
        assert _sent(seen.wait_for(2)) == [("alice", 0.8, False), ("alice", 1.0, False)]
