"""A small HTTP/1.1 client for talking to one upstream: keep-alive pool, streaming bodies.

Why not httpx: under load the gateway spent a third of its CPU in httpx/httpcore, whose pool
scans every pooled connection (a `select` per connection) on each request and on each response
close; at 200 concurrent streams that is quadratic (see bench/README.md). This client keeps idle
connections in a LIFO stack and learns that the server closed one from asyncio's
`connection_lost`, so taking a connection is O(1). Parsing is httptools (uvicorn's parser).

Errors (all `TransportError`):
ConnectFailed       could not open a connection (refused, DNS, TLS, connect timeout)
ReadTimeout         the server sent nothing for `read_timeout_s` (headers or between chunks)
ProtocolFailed      the server broke HTTP: closed mid-response, or sent what does not parse
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import cast
from urllib.parse import urlsplit

import httptools

MAX_BUFFERED = 256 * 1024  # stop reading from the socket while this much body waits unread


class TransportError(Exception):
    """The exchange with the upstream failed below HTTP status level."""


class ConnectFailed(TransportError):
    """No connection could be opened."""


class ReadTimeout(TransportError):
    """The upstream went quiet for longer than the read timeout."""


class ProtocolFailed(TransportError):
    """The connection closed mid-response, or the response did not parse."""


class PoolTimeout(TransportError):
    """No connection became free within the pool timeout."""


class WriteTimeout(TransportError):
    """The request could not be written within the write timeout."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one request/response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # nothing was asked: an idle connection must stay silent
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFailed(f"unparsable response from upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None and not self.response.complete:
            self._fail(ProtocolFailed("upstream closed the connection before the response ended"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.received_anything = True
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.response.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response.status_code = self.parser.get_status_code()
        self.response._wake()

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.received_anything = True
        self.response._add(bytes(body))

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response.complete = True
        self.response.keep_alive = self.parser.should_keep_alive()
        self.response._wake()

    def _fail(self, error: TransportError) -> None:
        if self.response is not None:
            self.response._fail(error)

    def close(self) -> None:
        """Drop the connection."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """An upstream response whose headers have arrived; the body is read as it comes."""

    def __init__(self, connection: _Connection, pool: Pool) -> None:
        self._connection = connection
        self._pool = pool
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self.keep_alive = False
        self.received_anything = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    def _add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        transport = self._connection.transport
        if self._buffered > MAX_BUFFERED and transport is not None:
            transport.pause_reading()
        self._wake()

    def _fail(self, error: TransportError) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout_s: float) -> None:
        """Wait for the next parser event, or raise ReadTimeout."""
        loop = self._connection.loop
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, waiter, timeout_s)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _wait_for_headers(self, timeout_s: float) -> None:
        while not self.status_code and self._error is None:
            await self._wait(timeout_s)
        if self._error is not None:
            raise self._error

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as the upstream sends it (chunked framing removed)."""
        read_timeout = self._pool.read_timeout_s
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= MAX_BUFFERED and self._connection.transport is not None:
                    self._connection.transport.resume_reading()
                yield chunk
            if self.complete:
                return
            if self._error is not None:
                raise self._error
            await self._wait(read_timeout)

    async def aread(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        """Give the connection back for reuse if the response ended cleanly, else drop it."""
        if self._released:
            return
        self._released = True
        if self.complete and self.keep_alive and not self._connection.closed:
            self._pool._release(self._connection)
        else:
            self._connection.close()
            self._pool._forget()


def _expire(waiter: asyncio.Future[None], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout(f"upstream sent nothing for {timeout_s:g} s"))


class Pool:
    """Keep-alive connections to one origin, at most `max_connections` open at once."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        write_timeout_s: float = 30.0,
        pool_timeout_s: float = 5.0,
        keepalive_s: float = 30.0,
        proxy_url: str | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc.rpartition("@")[2].encode("latin-1")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self._idle: list[_Connection] = []
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)

    async def request(
        self, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> Response:
        """Send one request; return once the response headers are in."""
        head = self._head(method, path, headers, body)
        for _ in range(2):
            connection = await self._connection()
            response = Response(connection, self)
            connection.response = response
            connection.parser = httptools.HttpResponseParser(connection)
            assert connection.transport is not None
            connection.transport.write(head + body if body else head)
            try:
                await response._wait_for_headers(self.read_timeout_s)
            except ProtocolFailed:
                await response.aclose()
                # A kept-alive connection the server closed just as we reused it: the request
                # never reached the server, so one fresh attempt is safe.
                if connection.reused and not response.received_anything:
                    continue
                raise
            except BaseException:
                await response.aclose()
                raise
            return response
        raise ProtocolFailed("upstream closed a fresh connection without answering")

    def _head(
        self, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> bytes:
        lines = [f"{method} {self.base_path}/{path.lstrip('/')} HTTP/1.1".encode("latin-1")]
        lines.append(b"host: " + self.host_header)
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_s:
                connection.reused = True
                return connection
            connection.close()
            self._forget()
        try:
            await asyncio.wait_for(self._slots.acquire(), self.connect_timeout_s)
        except TimeoutError:
            raise PoolTimeout(
                f"all {self.max_connections} upstream connections stayed busy for "
                f"{self.connect_timeout_s:g} s"
            ) from None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._forget()
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            self._forget()
            raise
        return protocol

    def _release(self, connection: _Connection) -> None:
        if self._slots.locked():
            # every slot is taken and a request may be waiting for one: free a slot rather
            # than park the connection where that waiter would not see it
            connection.close()
            self._forget()
            return
        connection.response = None
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)

    def _forget(self) -> None:
        self._slots.release()

    async def aclose(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop().close()
