"""Ending a client connection so that the server's last answer reaches the client.

Closing a socket while the client is still sending makes the kernel answer with a reset, and the
reset can cost the client the answer just written (its send fails first; some stacks drop what
they had received). So, like nginx's lingering close and Go's closeWriteAndWait: half-close,
so the answer is followed by a FIN; read and discard what the client still sends, bounded in
bytes and time; then close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.errors import GatewayError

LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024


class Linger:
    """One connection's lingering close, from `start` until the transport is closed."""

    __slots__ = ("_transport", "_timer", "_budget")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._budget = LINGER_BYTES
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = loop.call_later(LINGER_S, transport.close)

    def discard(self, data: bytes) -> None:
        """Drop what the client sent after the answer; close once it has sent too much."""
        self._budget -= len(data)
        if self._budget < 0:
            self.close()

    def close(self) -> None:
        """Close now."""
        self._timer.cancel()
        self._transport.close()


class CycleTransport(asyncio.Transport):
    """The transport a request's response cycle writes to, whose close goes through `close`
    (the protocol, which closes lingeringly while the request body has not all arrived)."""

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        super().__init__()
        # the transport's own methods, not wrappers: every response write goes through here
        self.write = transport.write  # type: ignore[method-assign]
        self.is_closing = transport.is_closing  # type: ignore[method-assign]
        self._close = close

    def close(self) -> None:
        """End the connection, lingeringly if the protocol so decides."""
        self._close()


def raw_response(
    error: GatewayError, status_line: bytes, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole HTTP/1.1 response carrying `error` in the OpenAI shape, announcing the close."""
    body = error.body()
    lines = [status_line]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in error.headers.items()]
    lines.append(b"content-type: application/json\r\nconnection: close\r\n")
    lines.append(b"content-length: %d\r\n\r\n" % len(body))
    return b"".join(lines) + body
