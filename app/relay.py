"""Relay an upstream answer to the client and capture its usage on the way past.

Streams are forwarded chunk by chunk as they arrive, byte for byte. The only exception is the
usage-only chat chunk the gateway itself asked for (`stream_options.include_usage`): it is read and
dropped, so the client sees what Mavera would have sent it. When the client goes away the
upstream answer is closed at once. The request's account is closed in a `finally` this module
owns, whatever happens.

Memory per stream is bounded at both ends. A client that does not read makes `send` wait (the
server's flow control), so the pump stops taking chunks and the upstream connection stops reading
once its buffer is full (MAX_BUFFERED in app/http1/connection.py). And the scanner holds at most
one unfinished event: one larger than `[upstream] max_event_bytes` cuts the stream as an upstream
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.accounting import ClientGone, RequestAccount
from app.errors import GatewayError, UpstreamEventTooLarge
from app.sse import EventTooLarge, SSEEvent, SSEScanner
from app.upstream import UpstreamReply
from app.usage import RESPONSES, RESPONSES_FINAL_EVENTS, usage_from_event

T = TypeVar("T")
SHUTDOWN_NOTICE_S = 1.0
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has closed its connection."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it and raising ClientGone if the client leaves first.

    `work` runs in the calling task; only the watcher is a task of its own, and it cancels the
    caller when the client disconnects (one task per request, not two plus asyncio.wait).
    """
    caller = asyncio.current_task()
    assert caller is not None
    left = False

    async def watch() -> None:
        nonlocal left
        await wait_for_disconnect(receive)
        left = True
        caller.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise
        caller.uncancel()
        raise ClientGone() from None
    finally:
        watcher.cancel()


class StreamRelay(Response):
    """An ASGI response that pumps an open upstream SSE answer to the client."""

    def __init__(
        self,
        upstream: UpstreamReply,
        headers: dict[str, str],
        account: RequestAccount,
        *,
        endpoint: str,
        drop_usage_chunk: bool,
        max_event_bytes: int,
        strict: bool = False,
    ) -> None:
        self.status_code = upstream.status_code
        self.upstream = upstream
        self.init_headers({**headers, **STREAM_HEADERS})
        self.account = account
        self.endpoint = endpoint
        self.drop_usage_chunk = drop_usage_chunk
        self.scanner = SSEScanner(max_event_bytes)
        # Strict durability: the closing event goes out only once the record is committed.
        self.strict = strict
        self.background = None
        # The upstream's closing event ([DONE], response.completed/failed/incomplete) has gone to
        # the client: the OpenAI SDKs hang up right after it, often before the relay sees the
        # upstream end.
        self.delivered = False
        # The client has been sent the start of an event but not its end.
        self.mid_event = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
            if pump.done():
                pump.result()  # a failure inside the pump is raised here, and accounted below
                self.account.answered(self.status_code)
            else:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
                if self.delivered:
                    self.account.answered(self.status_code)
                else:
                    self.account.failed(ClientGone(), self.status_code)
        except BaseException as exc:
            pump.cancel()
            error = self.account.failed(exc, self.status_code)
            if isinstance(exc, asyncio.CancelledError) and error is not None:
                await self._stopped(send, error)
            elif not isinstance(exc, Exception):
                raise
        finally:
            watcher.cancel()
            await self.upstream.aclose()

    async def _stopped(self, send: Send, error: GatewayError) -> None:
        """A shutdown past its grace period cut the stream: tell the client, briefly."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if self.mid_event:
            return
        event = stream_error_event(self.endpoint, error)
        final = {"type": "http.response.body", "body": event, "more_body": False}
        with contextlib.suppress(Exception):  # a client that cannot take it is not waited for
            await asyncio.wait_for(send(final), SHUTDOWN_NOTICE_S)

    async def _pump(self, send: Send) -> None:
        """Forward the stream; a mid-stream upstream failure is told to the client, then raised."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        self.account.first_byte()
        try:
            async for chunk in self.upstream.chunks():
                await self._relay(send, chunk)
        except GatewayError as exc:
            await self._cut(send, exc)
            raise
        tail = self.scanner.pending if self.drop_usage_chunk else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _relay(self, send: Send, chunk: bytes) -> None:
        """Scan one upstream chunk and forward it; raise if it brings an oversized event."""
        held = self.scanner.pending_size
        try:
            events = self.scanner.feed(chunk)
        except EventTooLarge as exc:
            if exc.events:
                # Forward the events the chunk completed first: the client is then left at an
                # event boundary, where the error event can follow.
                complete = sum(len(event.raw) for event in exc.events) - held
                await self._forward(send, chunk[:complete], exc.events)
                self.mid_event = False
            raise UpstreamEventTooLarge(
                f"Mavera sent a stream event larger than {exc.limit} bytes "
                "([upstream] max_event_bytes); the gateway cut the stream"
            ) from None
        await self._forward(send, chunk, events)
        self.mid_event = not self.drop_usage_chunk and self.scanner.pending_size > 0

    async def _forward(self, send: Send, chunk: bytes, events: list[SSEEvent]) -> None:
        """Send the client its bytes of `chunk`; note usage and whether the stream has closed."""
        chunk = self._observe(chunk, events)
        closing = any(e.data == "[DONE]" or e.event in RESPONSES_FINAL_EVENTS for e in events)
        if closing and self.strict:
            self.account.answered(self.status_code)
            await self.account.durable()
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if closing:
            self.delivered = True

    def _observe(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """Read usage from the events this chunk completes; return the bytes to forward."""
        if not self.drop_usage_chunk:
            for event in events:
                usage, _ = usage_from_event(self.endpoint, event)
                if usage is not None:
                    self.account.usage(usage)
            return chunk
        kept: list[bytes] = []
        for event in events:
            usage, usage_only = usage_from_event(self.endpoint, event)
            if usage is not None:
                self.account.usage(usage)
            if not usage_only:
                kept.append(event.raw)
        return b"".join(kept)

    async def _cut(self, send: Send, error: GatewayError) -> None:
        """Tell the client the upstream failed mid-stream, in the stream's own error format."""
        if self.mid_event:
            # Anything appended would corrupt the half-sent event. End without the final chunk
            # so the client's HTTP library reports an incomplete body.
            return
        await send(
            {
                "type": "http.response.body",
                "body": stream_error_event(self.endpoint, error),
                "more_body": False,
            }
        )


def stream_error_event(endpoint: str, failure: GatewayError) -> bytes:
    """An SSE error event the OpenAI SDKs raise as APIError, for the stream's format."""
    error = {"message": failure.message, "type": failure.type, "param": None, "code": failure.code}
    if endpoint == RESPONSES:
        payload = orjson.dumps({"type": "error", **error})
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
