"""Small real servers on 127.0.0.1 for the upstream client's tests.

`origin` is a scripted HTTP/1.1 server (plain or TLS) that records every request it reads and
counts the connections it accepts. `http_proxy` is a forward proxy that records what it was asked:
CONNECT lines, absolute-form request lines and Proxy-Authorization values. Whatever host name it is
asked for, it connects to 127.0.0.1 (names stand for this machine), so tests can use real-looking
upstream names without a DNS lookup or any traffic off the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import uvloop

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMIT_S = 20.0  # no test of the upstream client runs longer than this
MAX_HEAD = 64 * 1024
PROXY_407 = (
    b'HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm="test"\r\n'
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)


def run(main: Callable[[], Coroutine[Any, Any, None]], loop: str = "asyncio") -> None:
    """Run a test's coroutine on a fresh asyncio or uvloop event loop, bounded in time."""

    async def bounded() -> None:
        async with asyncio.timeout(LIMIT_S):
            await main()

    if loop == "uvloop":
        uvloop.run(bounded())
    else:
        asyncio.run(bounded())


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request as sent: the head and a Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def header(message: bytes, name: str) -> str | None:
    """The value of header `name` in a request or response head, if present."""
    head = message.partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@dataclass
class Origin:
    """What the origin server saw."""

    port: int
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    ended: int = 0  # connections the client closed or dropped


@contextlib.asynccontextmanager
async def origin(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Origin]:
    """Serve on a free port: read a request, record it, let `handler` answer, repeat.

    A handler ends the connection by closing the writer and raising ConnectionError.
    """
    seen = Origin(0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        try:
            while True:
                seen.requests.append(await read_request(reader))
                await handler(reader, writer)
        except asyncio.IncompleteReadError:
            seen.ended += 1
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    seen.port = server.sockets[0].getsockname()[1]
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()


async def json_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer `200 {}` and keep the connection open."""
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    )
    await writer.drain()


@dataclass
class ProxyLog:
    """What the proxy was asked, in order."""

    port: int
    connect_lines: list[str] = field(default_factory=list)
    request_lines: list[str] = field(default_factory=list)  # plain http, absolute form
    authorizations: list[str | None] = field(default_factory=list)


@contextlib.asynccontextmanager
async def http_proxy(require_auth: str | None = None) -> AsyncIterator[ProxyLog]:
    """A forward proxy on a free port; with `require_auth`, anything else gets 407.

    It logs the first request of each plain http connection; later ones pass through unlogged.
    """
    log = ProxyLog(0)
    pipes: set[asyncio.Task[None]] = set()
    handlers: set[asyncio.Task[Any]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer: asyncio.StreamWriter | None = None
        handler = asyncio.current_task()
        if handler is not None:
            handlers.add(handler)
        writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.partition(b"\r\n")[0].decode("latin-1")
            method, target, _ = line.split(" ", 2)
            authorization = header(head, "proxy-authorization")
            log.authorizations.append(authorization)
            (log.connect_lines if method == "CONNECT" else log.request_lines).append(line)
            if require_auth is not None and authorization != require_auth:
                writer.write(PROXY_407)
                await writer.drain()
                return
            hostport = target if method == "CONNECT" else target.split("/")[2]
            port = int(hostport.rpartition(":")[2])
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            writers.add(up_writer)
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_writer.write(head)
            task = asyncio.ensure_future(_pipe(up_reader, writer))
            pipes.add(task)
            await _pipe(reader, up_writer)
            await task
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            if up_writer is not None:
                up_writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    log.port = server.sockets[0].getsockname()[1]
    try:
        yield log
    finally:
        server.close()
        for open_writer in writers:  # every pipe then ends at EOF, and each handler returns
            open_writer.close()
        if handlers:
            await asyncio.wait(handlers, timeout=LIMIT_S)
        for task in pipes:
            task.cancel()
        await server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
