"""Per-client rate limits on a running gateway: x-ratelimit-* headers on every generation answer,
Retry-After on 429, and max_concurrent with streams held open."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from app.auth import key_digest
from tests.conftest import GatewayFactory, RunningGateway

ALICE_KEY = "mgw_alice_rate_key_0123456789abcdefghijkl"
HI = [{"role": "user", "content": "hi"}]
# OpenAI's duration format: 17ms, 1s, 1.5s, 6m0s
RESET = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+s)$")
LIMIT = "x-ratelimit-limit-requests"
REMAINING = "x-ratelimit-remaining-requests"
RESET_HEADER = "x-ratelimit-reset-requests"


def _keyed(make_gateway: GatewayFactory, **client: object) -> RunningGateway:
    return make_gateway(clients={"alice": {"key_sha256": key_digest(ALICE_KEY), **client}})


def _post(gateway: RunningGateway, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {ALICE_KEY}"},
        timeout=30,
        **kwargs,  # type: ignore[arg-type]
    )


def test_headers_count_down_and_a_429_carries_retry_after(make_gateway: GatewayFactory) -> None:
    gateway = _keyed(make_gateway, rpm=4)
    client = gateway.client(ALICE_KEY)
    seen = []
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(model="mavera-1", messages=HI)
        seen.append((raw.headers[LIMIT], raw.headers[REMAINING]))
        assert RESET.match(raw.headers[RESET_HEADER]), raw.headers[RESET_HEADER]
    assert seen == [("4", "3"), ("4", "2"), ("4", "1"), ("4", "0")]
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mavera-1", messages=HI)
    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert (headers[LIMIT], headers[REMAINING]) == ("4", "0")
    assert RESET.match(headers[RESET_HEADER])
    assert len(gateway.sim.records) == 4


def test_headers_on_a_stream_an_upstream_error_and_the_gateways_own_error(
    make_gateway: GatewayFactory,
) -> None:
    gateway = _keyed(make_gateway, rpm=10)
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={"model": "mavera-1", "stream": True, "messages": HI},
        headers={"authorization": f"Bearer {ALICE_KEY}"},
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert (stream.headers[LIMIT], stream.headers[REMAINING]) == ("10", "9")
        stream.read()
    upstream_error = _post(
        gateway, {"model": "mavera-1", "messages": HI, "mavera_sim": {"status": 404}}
    )
    assert upstream_error.status_code == 404
    assert upstream_error.headers[REMAINING] == "8"
    not_json = _post(gateway, None, content=b"{not json")
    assert not_json.status_code == 400
    assert not_json.headers[REMAINING] == "8"  # refused before it was counted
    assert RESET.match(not_json.headers[RESET_HEADER])


def test_no_headers_for_a_client_without_rpm(make_gateway: GatewayFactory) -> None:
    gateway = _keyed(make_gateway)
    reply = _post(gateway, {"model": "mavera-1", "messages": HI})
    assert reply.status_code == 200
    assert LIMIT not in reply.headers


def test_max_concurrent_counts_open_streams_until_they_close(make_gateway: GatewayFactory) -> None:
    gateway = _keyed(make_gateway, max_concurrent=1)
    slow = {
        "model": "mavera-1",
        "stream": True,
        "messages": HI,
        "mavera_sim": {"hang_after": 1},  # open until the client leaves
    }
    headers = {"authorization": f"Bearer {ALICE_KEY}"}
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=slow, headers=headers
    ) as held:
        assert held.status_code == 200
        chunks = held.iter_raw()  # kept: a dropped iterator closes the stream
        next(chunks)  # the stream is open and answering
        refused = _post(gateway, {"model": "mavera-1", "messages": HI})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "max_concurrent" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] == "1"
    deadline = time.monotonic() + 5
    while gateway.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _post(gateway, {"model": "mavera-1", "messages": HI}).status_code == 200
