"""Bodies that parse but cannot be forwarded as sent, and uploads the client abandons."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway

HI = [{"role": "user", "content": "hi"}]


def _post(gateway: RunningGateway, raw: bytes) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=10,
    )


def _nested(depth: int) -> bytes:
    return b'{"model": "mavera-1", "messages": [], "deep": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [300, 5000])
def test_a_body_nested_too_deep_is_a_400_before_anything_goes_upstream(
    gateway: RunningGateway, depth: int
) -> None:
    response = _post(gateway, _nested(depth))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request_error"
    assert "nests too deeply" in error["message"]
    assert gateway.sim.records == [], "nothing reached Mavera"
    [record] = gateway.records()
    assert record["outcome"] == "client_error"


def test_an_integer_beyond_64_bits_is_refused_clearly(gateway: RunningGateway) -> None:
    raw = b'{"model": "mavera-1", "messages": [], "seed": 123456789012345678901234567890}'
    response = _post(gateway, raw)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "123456789012345678901234567890" in message and "64 bits" in message
    assert gateway.sim.records == []


def test_large_integers_within_64_bits_and_long_digit_strings_arrive_exactly(
    gateway: RunningGateway,
) -> None:
    body = {
        "model": "mavera-1",
        "messages": [{"role": "user", "content": "order 1234567890123456789012345"}],
        "seed": 18446744073709551615,
        "floor": -9223372036854775808,
    }
    response = _post(gateway, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    sent: Any = gateway.sim.records[-1].body
    assert sent["seed"] == 18446744073709551615 and sent["floor"] == -9223372036854775808
    assert sent["messages"][0]["content"] == "order 1234567890123456789012345"


def test_a_client_that_leaves_mid_upload_is_booked_as_disconnected(
    gateway: RunningGateway, no_key_in_logs: Any
) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100000\r\n\r\n" + b'{"model": "mavera-1", "messages": ['
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while not (rows := gateway.records()):
        assert time.monotonic() < deadline, "no record for the abandoned upload"
        time.sleep(0.05)
    [record] = rows
    assert (record["outcome"], record["error_code"]) == (
        "client_disconnected",
        "client_disconnected",
    )
    assert gateway.sim.records == []
    assert not [line for line in no_key_in_logs.lines if "Traceback" in line]
    assert not [line for line in no_key_in_logs.lines if "unexpected error" in line]
