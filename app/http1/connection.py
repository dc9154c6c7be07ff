"""One upstream HTTP/1.1 connection: the asyncio protocol, the response it parses, the errors.

The protocol learns from asyncio that the server closed the connection (`eof_received`,
`connection_lost`), which is how the pool knows a kept-alive connection is no longer usable
without probing the socket. Parsing is httptools (uvicorn's parser, llhttp); one parser serves
all the responses of a connection. 1xx interim responses are skipped, trailers are kept apart
from the headers, and a body without Content-Length or chunked framing ends at the close.
`app/http1.py` is the public face of this module (and the only one that imports it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import httptools

if TYPE_CHECKING:
    from app.http1 import Pool

MAX_BUFFERED = 256 * 1024  # stop reading from the socket while this much body waits unread


class TransportError(Exception):
    """The exchange with the upstream failed below HTTP status level."""


class ConnectFailed(TransportError):
    """No connection could be opened; the request was not sent."""


class PoolTimeout(TransportError):
    """Every connection stayed busy for the pool timeout; the request was not sent."""


class WriteTimeout(TransportError):
    """The upstream did not take the request within the write timeout."""


class ReadTimeout(TransportError):
    """The upstream went quiet for longer than the read timeout."""


class ProtocolFailed(TransportError):
    """The connection closed mid-response, or the response did not parse."""


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one request/response at a time."""

    __slots__ = (
        "pool", "loop", "transport", "parser", "response", "closed", "idle", "counted",
        "expires", "interim", "drain", "tunnel",
    )  # fmt: skip

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)  # llhttp resets itself between messages
        self.response: Response | None = None
        self.closed = False
        self.idle = False  # on the pool's idle stack
        self.counted = True  # holds one of the pool's max_connections slots
        self.expires = 0.0
        self.interim = False  # parsing a 1xx response
        self.drain: asyncio.Future[None] | None = None  # set while the transport is paused
        # Under TLS inside a proxy's CONNECT tunnel: the TCP transport the TLS one runs over.
        # Closing TLS alone waits for a close_notify exchange that may never finish.
        self.tunnel: asyncio.BaseTransport | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing was asked: an idle connection must stay silent
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            response._fail(ProtocolFailed(f"unparsable response from upstream: {exc!r}"))
            self.close()

    def eof_received(self) -> None:
        self._ended()  # returning None lets the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        self.resume_writing()  # a writer waiting to drain now finds the response failed

    def pause_writing(self) -> None:
        self.drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drained(self, timeout_s: float) -> None:
        """Wait until a paused transport takes data again, or raise WriteTimeout."""
        drain = self.drain
        if drain is None:
            return
        timer = self.loop.call_later(timeout_s, _expire, drain, WriteTimeout, timeout_s)
        try:
            await drain
        finally:
            timer.cancel()

    def _ended(self) -> None:
        self.closed = True
        if self.idle:
            self.pool._forget(self)
            return
        response = self.response
        if response is None or response.complete:
            return
        headers = response.headers
        if response.status_code and not (
            "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        ):
            response.complete = True  # a close-delimited body: the close is its end
            response._wake()
        elif response.status_code:
            response._fail(ProtocolFailed("upstream closed the connection mid-body"))
        else:
            response._fail(
                ProtocolFailed(
                    "upstream closed the connection without answering; the request had been "
                    "sent, so it is not sent again (it may have been processed)"
                )
            )

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        response = cast(Response, self.response)
        found = response.trailers if response.status_code else response.headers
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        found[key] = f"{found[key]}, {text}" if key in found else text

    def on_headers_complete(self) -> None:
        response = cast(Response, self.response)
        if response.status_code:
            raise ProtocolFailed("upstream sent a second response to one request")
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the final response follows
            self.interim = True
            response.headers.clear()
            return
        response.status_code = status
        response._wake()

    def on_body(self, body: bytes) -> None:
        cast(Response, self.response)._add(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        response = cast(Response, self.response)
        response.complete = True
        response.keep_alive = self.parser.should_keep_alive()
        response._wake()

    def close(self) -> None:
        """Drop the connection."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self.tunnel is not None:
            self.tunnel.close()


class Response:
    """An upstream response whose headers have arrived; the body is read as it comes.

    `headers` are the final response's (lower-case names, repeats joined with ", "); `trailers`
    holds trailer fields of a chunked body, if any.
    """

    __slots__ = (
        "_connection", "status_code", "headers", "trailers", "complete", "keep_alive",
        "_chunks", "_buffered", "_error", "_waiter", "_released",
    )  # fmt: skip

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.status_code = 0
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.complete = False
        self.keep_alive = False
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
        timer = loop.call_later(timeout_s, _expire, waiter, ReadTimeout, timeout_s)
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
        read_timeout = self._connection.pool.read_timeout_s
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
        if self.complete:  # usual for a small answer: it came with its headers
            body = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            if self._connection.transport is not None:
                self._connection.transport.resume_reading()
            return body
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        """Give the connection back for reuse if the response ended cleanly, else drop it."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        if self.complete and self.keep_alive and not connection.closed:
            connection.pool._release(connection, self.headers.get("keep-alive"))
        else:
            connection.close()
            connection.pool._forget(connection)


def _expire(waiter: asyncio.Future[None], error: type[TransportError], timeout_s: float) -> None:
    if not waiter.done():
        what = "took the request" if error is WriteTimeout else "sent anything"
        waiter.set_exception(error(f"upstream never {what} within {timeout_s:g} s"))


def keep_alive_window(hint: str | None, default_s: float) -> float:
    """Our idle window, shortened to below a server's `Keep-Alive: timeout=N`."""
    if hint is not None:
        for part in hint.split(","):
            name, _, value = part.strip().partition("=")
            if name.lower() == "timeout" and value.isdigit():
                # it counts from its last write, before our clock starts: stop short of N
                return min(default_s, max(int(value) - 1.0, int(value) / 2))
    return default_s
