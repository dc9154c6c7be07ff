"""The gateway's upstream connection under faults that real networks produce, end to end."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory

ANSWER = (
    b'{"id":"chatcmpl_1","object":"chat.completion","created":0,"model":"mavera-1",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
    b'"finish_reason":"stop"}],"usage":{"credits_used":1}}'
)
HI = [{"role": "user", "content": "hi"}]


class ClosingUpstream(socketserver.ThreadingTCPServer):
    """Answers the first request on each connection, then reads the next and hangs up.

    This is a kept-alive connection that the server (or a load balancer) drops just as the
    gateway reuses it: the request was written, so it may have reached Mavera.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[bytes] = []
        self.connections = 0


class _Handler(socketserver.StreamRequestHandler):
    server: ClosingUpstream

    def handle(self) -> None:
        self.server.connections += 1
        for turn in range(2):
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = self.rfile.readline()
                if not line:
                    return
                head += line
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.server.requests.append(head + self.rfile.read(length))
            if turn == 1:
                return  # read it, then close without a word
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(ANSWER)}\r\n\r\n".encode()
                + ANSWER
            )


@pytest.fixture
def closing_upstream() -> Iterator[ClosingUpstream]:
    server = ClosingUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_written_post_is_never_sent_twice(
    make_gateway: GatewayFactory, closing_upstream: ClosingUpstream
) -> None:
    port = closing_upstream.server_address[1]
    gateway = make_gateway(upstream={"base_url": f"http://127.0.0.1:{port}/api/v1"})
    client = gateway.client()
    assert client.chat.completions.create(model="mavera-1", messages=HI).id == "chatcmpl_1"

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="mavera-1", messages=HI)
    assert caught.value.status_code == 502
    error: Any = caught.value.body
    assert error["code"] == "upstream_unavailable"
    assert "connection" in error["message"]

    assert len(closing_upstream.requests) == 2, "the second POST reached the upstream once"
    assert closing_upstream.connections == 1, "no fresh connection was opened to send it again"
    first, second = gateway.records()
    assert (first["outcome"], second["outcome"]) == ("ok", "upstream_error")
    assert (second["status"], second["error_code"]) == (502, "upstream_unavailable")


def test_no_free_connection_is_503_upstream_busy_and_nothing_is_sent(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(upstream={"max_connections": 1, "pool_timeout_s": 0.3})
    slow = {"mavera_sim": {"chunks": 20, "chunk_delay_ms": 100}}  # holds the connection ~2 s
    body = {"model": "mavera-1", "messages": HI, "stream": True, **slow}
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, timeout=30
    ) as holding:
        assert holding.status_code == 200
        chunks = holding.iter_bytes()
        next(chunks)  # the stream has its connection
        started = len(gateway.sim.records)
        busy = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "mavera-1", "messages": HI},
            timeout=30,
        )
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        error = busy.json()["error"]
        assert error["code"] == "upstream_busy"
        assert "0.3 s" in error["message"]
        assert len(gateway.sim.records) == started, "the refused request never reached Mavera"
        b"".join(chunks)
    records = gateway.records()
    assert sorted((r["outcome"], r["error_code"]) for r in records) == [
        ("ok", None),
        ("rejected", "upstream_busy"),
    ]
