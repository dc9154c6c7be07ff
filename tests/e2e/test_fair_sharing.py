"""`[limits] gateway_rpm` with clients hammering one Mavera key: the simulator never sees more
than the limit in a window and never answers 429, and the waiting requests are admitted by
weighted round robin across clients.

The rate windows are shortened from 60 s to 1 s here (in the gateway and in the simulator alike)
so that several windows pass within a test; the product counts 60 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest

import app.limits.admission
import app.simulator.limits
from app.auth import key_digest
from tests.conftest import GatewayFactory, RunningGateway

WINDOW_S = 1.0
LIMIT = 5
KEYS = {
    "alice": "mgw_alice_fair_key_0123456789abcdefghijkl",
    "bob": "mgw_bob_fair_key_0123456789abcdefghijklmn",
}
BODY = {"model": "mavera-1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def short_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """One-second windows in the gateway (with a smaller margin) and in the simulator."""
    monkeypatch.setattr(app.limits.admission, "WINDOW_S", WINDOW_S)
    monkeypatch.setattr(app.limits.admission, "SHARED_MARGIN_S", 0.2)
    monkeypatch.setattr(app.simulator.limits, "WINDOW_S", WINDOW_S)


def _start(make_gateway: GatewayFactory, weights: dict[str, int], **limits: Any) -> RunningGateway:
    gateway = make_gateway(
        clients={n: {"key_sha256": key_digest(KEYS[n]), "weight": w} for n, w in weights.items()},
        limits={"gateway_rpm": LIMIT, **limits},
        upstream={"max_retries": 0},
    )
    gateway.sim.rpm = LIMIT  # the Mavera key's own limit, as the gateway was told
    return gateway


async def _burst(url: str, per_client: int) -> list[tuple[str, int]]:
    """Fill the window as alice, then send `per_client` requests per client at once."""
    count = 2 * per_client + LIMIT
    pool = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=pool, timeout=30) as http:

        async def one(name: str) -> tuple[str, int]:
            headers = {"authorization": f"Bearer {KEYS[name]}"}
            reply = await http.post(url + "/v1/chat/completions", json=BODY, headers=headers)
            if reply.status_code == 429:
                assert int(reply.headers["retry-after"]) >= 1
                assert "shared limit" in reply.json()["error"]["message"]
            return name, reply.status_code

        for _ in range(LIMIT):
            assert (await one("alice"))[1] == 200
        jobs = [one(name) for _ in range(per_client) for name in ("alice", "bob")]
        return list(await asyncio.gather(*jobs))


def _check_upstream(gateway: RunningGateway) -> None:
    records = [r for r in gateway.sim.records if r.path.endswith("/chat/completions")]
    assert [r.status for r in records if r.status != 200] == []  # never a 429 from Mavera
    times = sorted(r.received_at for r in records)
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + WINDOW_S)
        assert in_window <= LIMIT, f"{in_window} requests reached Mavera within one window"


def test_two_clients_share_the_key_evenly(make_gateway: GatewayFactory) -> None:
    gateway = _start(make_gateway, {"alice": 1, "bob": 1}, queue_timeout_ms=2500)
    results = asyncio.run(_burst(gateway.url, 15))

    admitted = Counter(name for name, status in results if status == 200)
    total = sum(admitted.values())
    assert total >= LIMIT  # at least one window's worth went through the queue
    assert admitted["alice"] >= total // 2 - 1 and admitted["bob"] >= total // 2 - 1, admitted
    statuses = Counter(status for _, status in results)
    assert set(statuses) == {200, 429}  # demand exceeded the limit, and the rest waited in vain
    _check_upstream(gateway)


def test_weights_share_the_key_two_to_one(make_gateway: GatewayFactory) -> None:
    gateway = _start(make_gateway, {"alice": 2, "bob": 1}, queue_timeout_ms=2500)
    results = asyncio.run(_burst(gateway.url, 15))

    admitted = Counter(name for name, status in results if status == 200)
    total = sum(admitted.values())
    assert total >= LIMIT
    assert admitted["alice"] >= 2 * total // 3 - 1, admitted
    assert admitted["bob"] >= total // 3 - 1, admitted
    _check_upstream(gateway)


def test_a_waiting_request_whose_client_leaves_leaves_the_queue(
    make_gateway: GatewayFactory,
) -> None:
    gateway = _start(make_gateway, {"alice": 1, "bob": 1}, queue_timeout_ms=20_000)
    headers = {"authorization": f"Bearer {KEYS['alice']}"}
    url = gateway.url + "/v1/chat/completions"
    for _ in range(LIMIT):
        assert httpx.post(url, json=BODY, headers=headers).status_code == 200
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=BODY, headers=headers, timeout=0.3)  # waits in the queue, gives up
    queue = gateway.state.limits.queue
    assert queue is not None
    deadline = time.monotonic() + 5
    while queue.waiting() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue.waiting() == 0
    assert gateway.records()[-1]["outcome"] == "client_disconnected"
    assert len(gateway.sim.records) == LIMIT  # the request that left never reached Mavera
