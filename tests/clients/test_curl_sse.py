"""`curl -N` reading the raw SSE: the bytes are the simulator's own events, passed through."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.clients.support import missing, run
from tests.conftest import RunningGateway


@pytest.fixture
def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        missing("curl", "apt-get install curl")
    return found


def curl_post(curl: str, url: str, body: dict[str, object]) -> bytes:
    done = run(
        [
            curl,
            "--silent",
            "--show-error",
            "--fail-with-body",
            "-N",
            "-H",
            "Authorization: Bearer sk-curl",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            url,
        ]
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout.encode()


def test_curl_reads_responses_events_byte_for_byte(curl: str, gateway: RunningGateway) -> None:
    body = {"model": "mavera-1", "input": "Coffee or tea?", "stream": True}
    raw = curl_post(curl, gateway.url + "/v1/responses", body)
    sent = b"".join(data for _, data in gateway.sim.records[-1].events)
    assert raw == sent
    assert raw.startswith(b"event: response.created\ndata: {")
    assert raw.endswith(b"data: [DONE]\n\n")


def test_curl_reads_chat_chunks_without_the_gateways_usage_chunk(
    curl: str, gateway: RunningGateway
) -> None:
    body = {"model": "mavera-1", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    raw = curl_post(curl, gateway.url + "/v1/chat/completions", body)
    events = [data for _, data in gateway.sim.records[-1].events]
    usage_events = [e for e in events if b'"usage"' in e]
    assert len(usage_events) == 1, "the gateway asked upstream for usage"
    assert raw == b"".join(e for e in events if e not in usage_events)
    frames = raw.split(b"\n\n")
    assert all(frame.startswith(b"data: ") for frame in frames if frame)
    assert frames[-2] == b"data: [DONE]"
