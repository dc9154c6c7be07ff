"""A minimal keep-alive HTTP/1.1 client on asyncio streams, for latency and stream scenarios.

Raw sockets rather than httpx so that the client costs little and, above all, the same for every
target, and so that it sees what a proxy really sends: each `Transfer-Encoding: chunked` frame is
kept as it arrived on the wire, which is how merged or split chunks are detected. Loopback only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"
READ_LIMIT = 1 << 20


@dataclass(slots=True)
class Reply:
    """One response: status, headers, body frames and timings (perf_counter seconds)."""

    status: int
    headers: dict[str, str]
    frames: list[bytes] = field(default_factory=list)
    sent_at: float = 0.0
    first_byte_at: float = 0.0  # the first body frame (the head alone for bodies not chunked)
    done_at: float = 0.0

    @property
    def body(self) -> bytes:
        """The whole body."""
        return b"".join(self.frames)

    @property
    def ttfb(self) -> float:
        """Seconds from sending the request to the first body frame."""
        return self.first_byte_at - self.sent_at

    @property
    def total(self) -> float:
        """Seconds from sending the request to the end of the body."""
        return self.done_at - self.sent_at


def encode_request(port: int, path: str, body: bytes, token: str | None = None) -> bytes:
    """A POST of a JSON body, encoded once and reused for every request of a scenario."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: 127.0.0.1:{port}",
        "content-type: application/json",
        "accept: */*",
        f"content-length: {len(body)}",
    ]
    if token:
        lines.append(f"authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection; requests go one at a time (no pipelining)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        """Connect to 127.0.0.1:port."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READ_LIMIT)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> Reply:
        """Send one encoded request and read the whole response."""
        sent_at = time.perf_counter()
        self.writer.write(request)
        head = await self.reader.readuntil(HEAD_END)
        reply = _parse_head(head)
        reply.sent_at = sent_at
        if reply.headers.get("transfer-encoding", "").lower() == "chunked":
            await self._read_chunked(reply)
        else:
            reply.first_byte_at = time.perf_counter()
            length = reply.headers.get("content-length")
            if length is not None:
                reply.frames.append(await self.reader.readexactly(int(length)))
            else:
                reply.frames.append(await self.reader.read())
        reply.done_at = time.perf_counter()
        return reply

    async def _read_chunked(self, reply: Reply) -> None:
        reader = self.reader
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are expected
                return
            frame = await reader.readexactly(size + 2)
            if not reply.frames:
                reply.first_byte_at = time.perf_counter()
            reply.frames.append(frame[:-2])

    def close(self) -> None:
        """Close the socket without waiting."""
        self.writer.close()


def _parse_head(head: bytes) -> Reply:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Reply(status, headers)
