"""A raw-socket HTTP/1.1 client for tests that send what no HTTP library would: oversized or
slow headers, bodies that never end, malformed requests. It reports what a client sees: the
answer, and whether the connection then ended cleanly or with a reset."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

MIB = 1024 * 1024
WAIT_S = 10.0  # the longest a test waits for the gateway to answer or close


@dataclass
class Reply:
    """What the client received, and how the connection ended."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    ended: str = "open"  # "closed" (FIN), "reset", or "open" (still open after WAIT_S)
    sent: int = 0  # body or header bytes the gateway took before the connection ended

    def error(self) -> dict[str, Any]:
        """The OpenAI-shape error object, asserting the answer is one."""
        assert self.headers.get("content-type") == "application/json", self.headers
        payload = orjson.loads(self.body)
        assert set(payload) == {"error"}
        assert set(payload["error"]) == {"message", "type", "param", "code"}
        error: dict[str, Any] = payload["error"]
        return error


def connect(port: int) -> socket.socket:
    """A connection to the gateway on 127.0.0.1:port."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send(port: int, head: bytes, pieces: Iterable[bytes] = ()) -> Reply:
    """Send `head`, then `pieces` for as long as the gateway takes them, then read the answer."""
    with connect(port) as sock:
        sock.sendall(head)
        sent = 0
        try:
            for piece in pieces:
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            pass  # the gateway stopped reading: what it answered is still to be read
        reply = read_reply(sock)
    reply.sent = sent
    return reply


def answered(sock: socket.socket, wait_s: float = 0.0) -> bool:
    """Whether the gateway has sent something (or closed) within `wait_s`."""
    readable, _, _ = select.select([sock], [], [], wait_s)
    return bool(readable)


def read_reply(sock: socket.socket) -> Reply:
    """Read one response, then wait for the connection to end (or WAIT_S)."""
    data, ended = _read_until_end(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return Reply(status=0, body=data, ended=ended)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Reply(int(parts[1]), headers, rest[:length], ended)


def read_response(sock: socket.socket, buffer: bytearray | None = None) -> Reply:
    """Read one response on a connection that stays open (keep-alive); what arrived beyond it
    (a pipelined answer) stays in `buffer`."""
    data = buffer if buffer is not None else bytearray()
    for _ in range(1000):
        head, sep, rest = bytes(data).partition(b"\r\n\r\n")
        if sep:
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n")[0])
            if len(rest) >= length:
                del data[: len(head) + len(sep) + length]
                return Reply(int(head.split(b" ", 2)[1]), body=rest[:length])
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {bytes(data)!r}"
        data += chunk
    raise AssertionError("no complete response")


def _read_until_end(sock: socket.socket) -> tuple[bytes, str]:
    data = b""
    try:
        for _ in range(100_000):
            chunk = sock.recv(65536)
            if not chunk:
                return data, "closed"
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    except TimeoutError:
        pass
    return data, "open"
