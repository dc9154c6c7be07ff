"""A fake Mavera upstream fast enough never to be the bottleneck.

Raw asyncio protocol on uvloop with the httptools parser, one process per worker bound with
SO_REUSEPORT, and every body pre-encoded in `bench.wire`. Speaks:

- `POST /api/v1/chat/completions` and `POST /api/v1/responses`, streaming when the body has
  `"stream": true`. A chat stream carries the usage-only chunk only when the request asks with
  `stream_options.include_usage: true`, as Mavera does.
- `GET` anything else: `200 {}` (readiness probe).

Stream shape per request: body fields `bench_chunks` / `bench_delay_ms`, else query parameters
`chunks` / `delay_ms`, else the command-line defaults (50 chunks, 20 ms). Deltas are scheduled
against the stream's start, so loop lag never accumulates into the total time.

No pipelining: a client must wait for a response before sending the next request, which every
client in this harness (wrk, the asyncio client, the gateway, nginx, LiteLLM) does.

    python -m bench.fake_upstream --port 18001 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools
import orjson
import uvloop

from bench.wire import (
    CHAT,
    CHAT_REPLY,
    RESPONSES,
    RESPONSES_REPLY,
    SHAPES,
    STREAM_END,
    STREAM_HEAD,
    json_reply,
)

PATHS = {b"/api/v1/chat/completions": CHAT, b"/api/v1/responses": RESPONSES}
REPLIES = {CHAT: CHAT_REPLY, RESPONSES: RESPONSES_REPLY}
OK_REPLY = json_reply(b"{}")
NOT_FOUND = json_reply(b'{"error":{"message":"not found","code":"not_found"}}', "404 Not Found")
BAD_REQUEST = json_reply(b'{"error":{"message":"bad request","code":"bad"}}', "400 Bad Request")
DEFAULT_CHUNKS = 50
DEFAULT_DELAY_MS = 20.0
MAX_CHUNKS = 10_000
MAX_DELAY_MS = 10_000


@dataclass(frozen=True, slots=True)
class StreamDefaults:
    """Stream shape used when a request does not say."""

    chunks: int = DEFAULT_CHUNKS
    delay_ms: float = DEFAULT_DELAY_MS


def _bounded(value: Any, default: float, limit: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return min(max(number, 0.0), limit)


class FakeMavera(asyncio.Protocol):
    """One client connection."""

    def __init__(self, defaults: StreamDefaults) -> None:
        self.defaults = defaults
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.stream_task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream_task is not None:
            self.stream_task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(BAD_REQUEST, keep_alive=False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        path, _, query = self.url.partition(b"?")
        if self.parser.get_method() != b"POST":
            self._send(OK_REPLY, keep_alive)
            return
        endpoint = PATHS.get(path)
        if endpoint is None:
            self._send(NOT_FOUND, keep_alive)
            return
        try:
            request = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            self._send(BAD_REQUEST, keep_alive)
            return
        if not isinstance(request, dict) or request.get("stream") is not True:
            self._send(REPLIES[endpoint], keep_alive)
            return
        self.stream_task = asyncio.get_running_loop().create_task(
            self._stream(endpoint, request, query, keep_alive)
        )

    def _send(self, data: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if not keep_alive:
            self.transport.close()

    async def _stream(
        self, endpoint: str, request: dict[str, Any], query: bytes, keep_alive: bool
    ) -> None:
        assert self.transport is not None
        params = dict(parse_qsl(query.decode("latin-1")))
        chunks = int(
            _bounded(
                request.get("bench_chunks", params.get("chunks")), self.defaults.chunks, MAX_CHUNKS
            )
        )
        delay = (
            _bounded(
                request.get("bench_delay_ms", params.get("delay_ms")),
                self.defaults.delay_ms,
                MAX_DELAY_MS,
            )
            / 1000
        )
        shape = SHAPES[endpoint]
        options = request.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        transport = self.transport
        loop = asyncio.get_running_loop()
        start = loop.time()
        transport.write(STREAM_HEAD)
        for event in shape.head:
            transport.write(event)
        for index in range(chunks):
            wait = start + index * delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if transport.is_closing():
                return
            transport.write(shape.delta)
        tail = shape.tail
        if with_usage and shape.usage is not None:
            tail = (*tail[:-1], shape.usage, tail[-1])  # usage-only chunk just before [DONE]
        for event in tail:
            transport.write(event)
        transport.write(STREAM_END)
        if not keep_alive:
            transport.close()


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def _serve(sock: socket.socket, defaults: StreamDefaults) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeMavera(defaults), sock=sock, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def run_worker(host: str, port: int, defaults: StreamDefaults) -> None:
    """Serve on this process until SIGTERM/SIGINT."""
    sock = _listen(host, port)  # bound before the loop exists, so the port is taken at once
    uvloop.run(_serve(sock, defaults))


def run(host: str, port: int, workers: int, defaults: StreamDefaults) -> None:
    """Fork `workers` processes sharing the port with SO_REUSEPORT; stop them all on SIGTERM."""
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            run_worker(host, port, defaults)
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        os.waitpid(child, 0)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bench.fake_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS)
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY_MS)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost"):
        sys.exit("the fake upstream only listens on loopback")
    run(args.host, args.port, max(1, args.workers), StreamDefaults(args.chunks, args.delay_ms))


if __name__ == "__main__":
    main()
