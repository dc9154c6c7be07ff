"""Streams that would cost the gateway unbounded memory: a client that never reads, an upstream
event larger than `[upstream] max_event_bytes`, a line that never ends. Real sockets throughout.

What the gateway holds is measured from outside: the bytes the upstream has handed to its server,
minus what sits in the kernel's socket queues on the way (Linux's /proc/net/tcp), is what the
processes hold in their own buffers.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import httpx
import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.background import BackgroundServer
from app.http1.connection import MAX_BUFFERED
from tests.conftest import GatewayFactory, RunningGateway

# Beyond MAX_BUFFERED: a socket read or two in flight at each hop, and the 64 KiB write buffers
# of the two uvicorn servers. Without backpressure the gateway would hold ten times this.
ALLOWANCE = 2 * 1024 * 1024
ESTABLISHED = "01"


def kernel_queued(ports: set[int]) -> int:
    """Bytes waiting in the send and receive queues of every loopback TCP connection on `ports`."""
    total = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            ends = {int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)}
            if fields[3] == ESTABLISHED and ends & ports:
                sent, received = fields[4].split(":")
                total += int(sent, 16) + int(received, 16)
    return total


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.02)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def test_a_client_that_never_reads_holds_bounded_memory_and_stops_mavera_when_it_leaves(
    gateway: RunningGateway,
) -> None:
    # About 25 MB of Responses events, more than the socket queues on the way can absorb.
    body = orjson.dumps(
        {"model": "mavera-1", "stream": True, "input": "go", "mavera_sim": {"chunks": 100_000}}
    )
    head = b"POST /v1/responses HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.settimeout(10)
    client.connect(("127.0.0.1", gateway.server.port))
    client.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)
    ports = {gateway.server.port, port_of(gateway.settings.upstream.base_url)}
    sim = gateway.sim
    wait_until(lambda: bool(sim.records) and bool(sim.records[-1].events), 20, "stream started")
    record = sim.records[-1]

    def produced() -> int:
        return sum(len(event) for _, event in list(record.events))

    # Wait for Mavera's sends to back up: nothing more produced for a whole second.
    deadline, last, still_since = time.monotonic() + 60, -1, time.monotonic()
    while time.monotonic() - still_since < 1.0:
        assert time.monotonic() < deadline, "the stream never backed up"
        now = produced()
        if now != last:
            last, still_since = now, time.monotonic()
        time.sleep(0.05)
    held = produced() - kernel_queued(ports)
    assert held < MAX_BUFFERED + ALLOWANCE, f"{held} bytes held in user space"
    assert not record.completed, "Mavera finished a stream that nobody read"

    client.close()
    wait_until(lambda: record.client_disconnected_at is not None, 5, "Mavera told to stop")
    assert not record.completed
    wait_until(lambda: not gateway.state.in_flight, 5, "request finished")
    [row] = gateway.records()
    assert (row["outcome"], row["status"]) == ("client_disconnected", 200)


class ScriptedUpstream:
    """A Mavera stand-in that streams `pieces` (one write each), then ends the stream.

    Notes how much it wrote, whether it finished, and whether the gateway hung up on it.
    """

    def __init__(self, pieces: Iterator[bytes], end: bytes) -> None:
        self.pieces = pieces
        self.end = end
        self.written = 0
        self.completed = False
        self.hung_up = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with anyio.move_on_after(20):  # bounded, in case the gateway never hangs up
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch, receive, group.cancel_scope)
                for piece in self.pieces:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    # uvicorn's send returns at once when the peer has gone: let the watcher run
                    await anyio.lowlevel.checkpoint()
                    if self.hung_up:
                        return
                    self.written += len(piece)
                await send({"type": "http.response.body", "body": self.end, "more_body": False})
                self.completed = True
                group.cancel_scope.cancel()

    async def _watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.hung_up = not self.completed
        scope.cancel()


@pytest.fixture
def scripted(make_gateway: GatewayFactory) -> Iterator[Callable[..., RunningGateway]]:
    """Start a ScriptedUpstream and a gateway in front of it (max_event_bytes 64 KiB)."""
    servers: list[BackgroundServer] = []

    def start(upstream: ScriptedUpstream) -> RunningGateway:
        paths = ["/api/v1/chat/completions", "/api/v1/responses"]
        app = Starlette(routes=[Route(path, upstream, methods=["POST"]) for path in paths])
        servers.append(BackgroundServer(app).start())
        settings: dict[str, Any] = {"base_url": servers[-1].url + "/api/v1"}
        return make_gateway(upstream={**settings, "max_event_bytes": 64 * 1024})

    yield start
    for server in servers:
        server.stop()


def chat_delta(text: str) -> bytes:
    payload = {
        "id": "chatcmpl_1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def test_a_line_that_never_ends_is_cut_at_the_limit_with_an_error_the_sdk_raises(
    scripted: Callable[..., RunningGateway],
) -> None:
    # 64 MiB in 64 KiB writes, never a newline; the SDK did not ask for usage, so the gateway
    # did, and forwards whole events only: the error event can always follow.
    pieces = (b"data: " if i == 0 else b"x" * 65536 for i in range(1025))
    upstream = ScriptedUpstream(pieces, b"\n\ndata: [DONE]\n\n")
    gateway = scripted(upstream)
    client = gateway.client(timeout=30)
    with pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(
            model="mavera-1", stream=True, messages=[{"role": "user", "content": "hi"}]
        ):
            pass
    assert caught.value.code == "upstream_event_too_large"
    wait_until(lambda: upstream.hung_up, 5, "the gateway hung up on the upstream")
    assert not upstream.completed and upstream.written < 16 * 1024 * 1024
    [row] = gateway.records()
    assert (row["outcome"], row["error_code"]) == ("upstream_error", "upstream_event_too_large")


def test_an_oversized_event_half_sent_to_the_client_ends_its_body_incomplete(
    scripted: Callable[..., RunningGateway],
) -> None:
    created = b'event: response.created\ndata: {"type":"response.created"}\n\n'
    delta = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    text = (b'"delta":"' if i == 0 else b"x" * 65536 for i in range(1025))  # 64 MiB
    upstream = ScriptedUpstream(itertools.chain([created, delta], text), b'"}\n\n')
    gateway = scripted(upstream)
    received = b""
    body = {"model": "mavera-1", "stream": True, "input": "hi"}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, timeout=10) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += chunk
    # Streamed as it came, until the limit; then the body ends short, so no client can take
    # the truncated event for a whole one.
    assert received.startswith(created + delta)
    assert len(received) <= 64 * 1024 + len(created + delta)
    wait_until(lambda: upstream.hung_up, 5, "the gateway hung up on the upstream")
    assert not upstream.completed and upstream.written < 16 * 1024 * 1024
    [row] = gateway.records()
    assert (row["outcome"], row["error_code"]) == ("upstream_error", "upstream_event_too_large")
