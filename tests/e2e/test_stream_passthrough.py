"""Streams cross the gateway byte for byte and event for event, and cancellation reaches Mavera."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import RunningGateway

GAP_MS = 150


def _stream(gateway: RunningGateway, path: str, body: dict[str, Any]) -> list[tuple[float, bytes]]:
    """POST a streaming request; every raw chunk with the time it arrived."""
    received: list[tuple[float, bytes]] = []
    with httpx.stream("POST", gateway.url + path, json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        for chunk in response.iter_raw():
            received.append((time.monotonic(), chunk))
    return received


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {
                "model": "mavera-1",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hello"}],
            },
        ),
        ("/v1/responses", {"model": "mavera-1", "stream": True, "input": "hello"}),
    ],
)
def test_stream_is_relayed_unchanged_and_unbuffered(
    gateway: RunningGateway, path: str, body: dict[str, Any]
) -> None:
    body["mavera_sim"] = {"chunks": 5, "chunk_delay_ms": GAP_MS}
    received = _stream(gateway, path, body)
    sent = gateway.sim.records[-1].events
    assert b"".join(c for _, c in received) == b"".join(e for _, e in sent)
    assert [c for _, c in received] == [e for _, e in sent], "events were merged or split"
    for (arrived, _), (next_sent, _) in zip(received, sent[1:], strict=False):
        assert arrived < next_sent, "an event was held back until the next one was produced"


def test_gateway_requested_usage_chunk_is_the_only_difference(gateway: RunningGateway) -> None:
    body = {"model": "mavera-1", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    received = b"".join(c for _, c in _stream(gateway, "/v1/chat/completions", body))
    sent = [e for _, e in gateway.sim.records[-1].events]
    usage_events = [e for e in sent if b'"choices":[]' in e]
    assert len(usage_events) == 1
    assert received == b"".join(e for e in sent if e not in usage_events)
    assert gateway.records()[-1]["credits_used"] == gateway.sim.records[-1].credits_charged


def _wait_for(condition: Any, timeout_s: float = 3.0) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic()


def test_client_leaving_mid_stream_cancels_upstream(gateway: RunningGateway) -> None:
    body = {
        "model": "mavera-1",
        "stream": True,
        "input": "long one",
        "mavera_sim": {"chunks": 200, "chunk_delay_ms": 100},
    }
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, timeout=30) as response:
        stream = response.iter_raw()
        next(stream)
        next(stream)
    left_at = time.monotonic()
    seen = gateway.sim.records[-1]
    noticed = _wait_for(lambda: seen.client_disconnected_at is not None)
    assert seen.client_disconnected_at is not None
    assert seen.client_disconnected_at - left_at < 1.0
    assert noticed - left_at < 3.0
    assert not seen.completed
    _wait_for(lambda: gateway.state.writer.depth() == 0 and len(gateway.records()) == 1)
    [row] = gateway.records()
    assert (row["outcome"], row["status"], row["credits_used"]) == (
        "client_disconnected",
        200,
        None,
    )


@pytest.mark.parametrize("stream", [True, False])
def test_client_leaving_before_first_byte_cancels_upstream(
    gateway: RunningGateway, stream: bool
) -> None:
    body = {
        "model": "mavera-1",
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
        "mavera_sim": {"hang": True},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=0.5)
    left_at = time.monotonic()
    seen = gateway.sim.records[-1]
    _wait_for(lambda: seen.client_disconnected_at is not None)
    assert seen.client_disconnected_at is not None
    assert seen.client_disconnected_at - left_at < 1.0
    _wait_for(lambda: len(gateway.records()) == 1)
    [row] = gateway.records()
    assert (row["outcome"], row["status"]) == ("client_disconnected", 499)


def test_upstream_cut_mid_stream_is_reported_to_the_client(gateway: RunningGateway) -> None:
    import openai

    client = gateway.client()
    with pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(
            model="mavera-1",
            stream=True,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"mavera_sim": {"cut_after": 3}},
        ):
            pass
    assert "cut" in str(caught.value)
    [row] = gateway.records()
    assert (row["outcome"], row["error_code"]) == ("upstream_error", "upstream_stream_cut")
    assert row["credits_used"] is None
