"""Hundreds of concurrent requests of every kind: one record each, credits exact per client."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from app.auth import key_digest
from tests.conftest import GatewayFactory

CLIENTS = {name: f"mgw_{name}_accounting_key_0123456789abcdef" for name in ("ann", "bob", "cy")}
REQUESTS = 300
HI = [{"role": "user", "content": "count me"}]


def _plan(i: int) -> tuple[str, dict[str, Any], str]:
    """Request i: its path, body, and the outcome the ledger should show."""
    chat = {"model": "mavera-1", "messages": HI}
    responses = {"model": "mavera-1", "input": "count me"}
    kind = i % 10
    if kind in (0, 1):
        return "/v1/chat/completions", chat, "ok"
    if kind in (2, 3):
        return "/v1/responses", responses, "ok"
    if kind == 4:
        return "/v1/chat/completions", {**chat, "stream": True}, "ok"
    if kind == 5:
        return "/v1/responses", {**responses, "stream": True}, "ok"
    if kind == 6:
        status = (500, 429, 400)[i % 3]
        return (
            "/v1/responses",
            {**responses, "mavera_sim": {"status": status}},
            ("upstream_error" if status >= 500 else "client_error"),
        )
    if kind == 7:
        path, body = ("/v1/chat/completions", chat) if i % 2 else ("/v1/responses", responses)
        return path, {**body, "stream": True, "mavera_sim": {"cut_after": 3}}, "upstream_error"
    if kind == 8:
        slow = {"stream": True, "mavera_sim": {"chunks": 400, "chunk_delay_ms": 25}}
        return "/v1/responses", {**responses, **slow}, "client_disconnected"
    body = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    return "/v1/chat/completions", body, "ok"


async def _one(http: httpx.AsyncClient, base: str, i: int, key: str, request_id: str) -> None:
    path, body, expected = _plan(i)
    headers = {"authorization": f"Bearer {key}", "x-request-id": request_id}
    async with http.stream("POST", base + path, json=body, headers=headers) as response:
        if expected == "client_disconnected":
            async for _ in response.aiter_raw():
                break  # leave after the first chunk
            return
        try:
            await response.aread()
        except httpx.RemoteProtocolError:
            pass  # a cut stream may end without its final chunk


async def _drive(base: str) -> dict[str, str]:
    owners: dict[str, str] = {}
    names = sorted(CLIENTS)
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        jobs = []
        for i in range(REQUESTS):
            name = names[i % len(names)]
            request_id = f"acct-{i:04d}"
            owners[request_id] = name
            jobs.append(_one(http, base, i, CLIENTS[name], request_id))
        await asyncio.gather(*jobs)
    return owners


def test_every_request_recorded_once_and_credits_match_mavera(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(
        clients={name: {"key_sha256": key_digest(key)} for name, key in CLIENTS.items()},
        upstream={"max_retries": 0},
    )
    owners = asyncio.run(_drive(gateway.url))

    deadline = time.monotonic() + 10
    while len(gateway.records()) < REQUESTS and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = gateway.records()
    assert Counter(r["request_id"] for r in rows) == Counter(owners.keys()), (
        "not one record per request"
    )

    expected = {f"acct-{i:04d}": _plan(i)[2] for i in range(REQUESTS)}
    assert {r["request_id"]: r["outcome"] for r in rows} == expected

    charged: Counter[str] = Counter()
    for seen in gateway.sim.records:
        charged[owners[seen.headers["x-request-id"]]] += seen.credits_charged
    recorded: Counter[str] = Counter()
    for row in rows:
        assert row["client"] == owners[row["request_id"]]
        recorded[row["client"]] += row["credits_used"] or 0
    assert recorded == charged
    assert sum(charged.values()) > 0
    unknown = [r for r in rows if r["credits_used"] is None and r["outcome"] == "ok"]
    assert unknown == [], "a completed request lost its credits"
