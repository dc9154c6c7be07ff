"""The fault soak's client: one keep-alive HTTP/1.1 connection that can give up or hang up.

Raw asyncio streams (as in `bench.client`), because the soak needs what an HTTP library hides: a
stream abandoned after its first chunk, a request abandoned at a deadline, and an answer that
ended without its terminating chunk. After anything but a clean answer the connection is closed
and the next request opens a new one, as a client library would. Loopback only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

HEAD_END = b"\r\n\r\n"
READ_LIMIT = 1 << 20
CHAT_DONE = b"data: [DONE]"
RESPONSES_DONE = b"event: response.completed"
CHAT_ERROR = b'data: {"error":'
RESPONSES_ERROR = b"event: error"


@dataclass(slots=True)
class Seen:
    """What the client saw of one answer.

    `end` is one of: `complete` (the whole answer; a stream with its closing event), `error_event`
    (a stream that ended with an error event), `incomplete` (a stream that ended cleanly but with
    neither), `bad_shape` (an error answer that is not the OpenAI error shape), `eof` (the
    connection closed mid-answer), `hung_up` (the client left after the first chunk), `abandoned`
    (the client's deadline passed) and `no_answer` (closed before a byte of the answer came).
    """

    status: int
    end: str


def encode_head(port: int, path: str, body: bytes) -> bytes:
    """Every header line of a POST but the request id, for one kind of request."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: 127.0.0.1:{port}",
        "content-type: application/json",
        "accept: */*",
        f"content-length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def encode_request(head: bytes, request_id: str, body: bytes) -> bytes:
    """`head` from `encode_head` with this request's id, then the body."""
    return head + b"x-request-id: " + request_id.encode() + HEAD_END + body


class Connection:
    """One connection to 127.0.0.1; one request at a time. `usable` is False once closed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.usable = True

    @classmethod
    async def open(cls, port: int) -> Connection:
        """Connect to 127.0.0.1:port."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READ_LIMIT)
        return cls(reader, writer)

    def close(self) -> None:
        """Close the socket without waiting (an abort from the server's point of view)."""
        self.usable = False
        self.writer.close()

    async def exchange(self, request: bytes, timeout_s: float, hang_up_early: bool) -> Seen:
        """Send one request and read its answer within `timeout_s`.

        With `hang_up_early` the connection is closed as soon as the first body chunk of a
        chunked answer has arrived.
        """
        seen = Seen(0, "no_answer")
        try:
            async with asyncio.timeout(timeout_s):
                self.writer.write(request)
                await self._read(seen, hang_up_early)
        except TimeoutError:
            seen.end = "abandoned"
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            seen.end = "eof" if seen.status else "no_answer"
        if seen.end != "complete" and seen.end != "error_event" and seen.end != "bad_shape":
            self.close()
        return seen

    async def _read(self, seen: Seen, hang_up_early: bool) -> None:
        head = await self.reader.readuntil(HEAD_END)
        status, headers = _parse_head(head)
        seen.status, seen.end = status, "eof"
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(hang_up_early)
            if body is None:
                seen.end = "hung_up"
                return
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        seen.end = _classify(status, headers.get("content-type", ""), body)
        if headers.get("connection", "").lower() == "close":
            self.close()

    async def _read_chunked(self, hang_up_early: bool) -> bytes | None:
        """The body of a chunked answer; None when the client hung up after its first chunk."""
        reader, frames = self.reader, list[bytes]()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are expected
                return b"".join(frames)
            frames.append((await reader.readexactly(size + 2))[:-2])
            if hang_up_early:
                self.close()
                return None


def _classify(status: int, content_type: str, body: bytes) -> str:
    """How an answer that arrived whole ended (see `Seen.end`)."""
    if content_type.startswith("text/event-stream"):
        tail = body[-2048:]
        if CHAT_ERROR in tail or RESPONSES_ERROR in tail:
            return "error_event"
        return "complete" if CHAT_DONE in tail or RESPONSES_DONE in body else "incomplete"
    if status >= 400 and not _openai_error(body):
        return "bad_shape"
    return "complete"


def _openai_error(body: bytes) -> bool:
    """Whether `body` is an OpenAI error object: {"error": {"message": ..., ...}}."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return isinstance(error, dict) and isinstance(error.get("message"), str)


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers
