"""A gateway whose ledger and keys live in PostgreSQL, driven by the openai SDK."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from app import reports
from app.clients import ClientSpec
from app.key_admin import create_key
from app.ledger.postgres import PostgresLedger
from tests.conftest import POSTGRES_ADDRESS, GatewayFactory, free_port, raw_query, through_port
from tests.tcp_relay import TcpRelay

CLIENTS = ("ann", "bob")
REQUESTS = 60
HI = [{"role": "user", "content": "count me"}]


async def _issue_keys(url: str) -> dict[str, str]:
    ledger = PostgresLedger(url)
    await ledger.open()
    try:
        return {name: await create_key(ledger, name, ClientSpec(), "cli:test") for name in CLIENTS}
    finally:
        await ledger.close()


async def _report(url: str) -> list[dict[str, object]]:
    ledger = PostgresLedger(url)
    await ledger.open()
    try:
        return await reports.summarize(ledger, since=0)
    finally:
        await ledger.close()


def _request(client: openai.OpenAI, i: int) -> None:
    """Request i: chat or responses, whole or streamed, under its own request id."""
    headers = {"x-request-id": f"pg-{i:03d}"}
    kind = i % 4
    if kind == 0:
        client.chat.completions.create(model="mavera-1", messages=HI, extra_headers=headers)  # type: ignore[arg-type]
    elif kind == 1:
        stream = client.chat.completions.create(
            model="mavera-1",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        )
        list(stream)
    elif kind == 2:
        client.responses.create(model="mavera-1", input="count me", extra_headers=headers)
    else:
        list(
            client.responses.create(
                model="mavera-1", input="count me", stream=True, extra_headers=headers
            )
        )


def test_a_gateway_on_postgres_books_each_request_once_at_maveras_price(
    make_gateway: GatewayFactory, postgres_url: str
) -> None:
    keys = asyncio.run(_issue_keys(postgres_url))
    gateway = make_gateway(ledger={"database_url": postgres_url})
    assert httpx.get(gateway.url + "/readyz", timeout=10).status_code == 200  # the ledger pings
    sdk = {name: gateway.client(key) for name, key in keys.items()}
    owner = {f"pg-{i:03d}": CLIENTS[i % 2] for i in range(REQUESTS)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _request(sdk[CLIENTS[i % 2]], i), range(REQUESTS)))

    rows = gateway.records()
    assert Counter(r["request_id"] for r in rows) == Counter(owner.keys()), (
        "not one record per request"
    )
    assert all(r["client"] == owner[r["request_id"]] and r["outcome"] == "ok" for r in rows)
    charged: Counter[str] = Counter()
    for seen in gateway.sim.records:
        charged[owner[seen.headers["x-request-id"]]] += seen.credits_charged
    recorded: Counter[str] = Counter()
    for row in rows:
        recorded[row["client"]] += row["credits_used"]
    assert recorded == charged and sum(charged.values()) == gateway.sim.total_credits_charged() > 0

    by_client = {row["client"]: row for row in asyncio.run(_report(postgres_url))}
    assert {name: by_client[name]["credits"] for name in CLIENTS} == dict(charged)
    assert {name: by_client[name]["requests"] for name in CLIENTS} == {
        name: REQUESTS // 2 for name in CLIENTS
    }


def test_records_made_while_postgres_is_unreachable_arrive_once_it_is_back(
    make_gateway: GatewayFactory, postgres_url: str
) -> None:
    relay = TcpRelay(free_port(), POSTGRES_ADDRESS[1])
    relay.start()
    url = through_port(postgres_url, relay.port)
    gateway = make_gateway(ledger={"database_url": url})
    client = gateway.client()
    for i in range(3):
        _request(client, i)
    assert len(gateway.records()) == 3

    relay.cut()
    for i in range(3, 13):
        _request(client, i)  # still served: batched durability keeps the records in memory
    deadline = time.monotonic() + 30
    while (ready := httpx.get(gateway.url + "/readyz", timeout=10)).status_code == 200:
        assert time.monotonic() < deadline, "/readyz never noticed the ledger was gone"
        time.sleep(0.1)
    assert "ledger" in ready.text

    relay.start()
    gateway.flush(timeout_s=60)  # the writer retries with backoff, the pool reconnects
    rows = raw_query(postgres_url, "SELECT request_id, credits_used FROM usage_records")
    assert Counter(request_id for request_id, _ in rows) == Counter(
        f"pg-{i:03d}" for i in range(13)
    )
    assert sum(credits for _, credits in rows) == gateway.sim.total_credits_charged() > 0
    assert httpx.get(gateway.url + "/readyz", timeout=10).status_code == 200
    relay.cut()
