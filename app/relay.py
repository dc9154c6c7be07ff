"""Relay an upstream answer to the client and capture its usage on the way past.

Streams are forwarded chunk by chunk as they arrive, byte for byte. The only exception is the
usage-only chat chunk the gateway itself asked for (`stream_options.include_usage`): it is read and
dropped, so the client sees what Mavera would have sent it. When the client goes away the
upstream response is closed at once. The record is finished in a `finally` this module owns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.http1 import ReadTimeout, TransportError
from app.http1 import Response as UpstreamResponse
from app.ledger.records import UsageRecord, outcome_for_status
from app.sse import SSEEvent, SSEScanner
from app.usage import RESPONSES, Usage, usage_from_event

logger = logging.getLogger("mavera_gateway.relay")

T = TypeVar("T")
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


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
    """An ASGI response that pumps an open upstream SSE response to the client."""

    def __init__(
        self,
        upstream: UpstreamResponse,
        headers: dict[str, str],
        record: UsageRecord,
        on_finish: Callable[[UsageRecord], None],
        *,
        endpoint: str,
        drop_usage_chunk: bool,
    ) -> None:
        self.status_code = upstream.status_code
        self.upstream = upstream
        self.init_headers({**headers, **STREAM_HEADERS})
        self.record = record
        self.on_finish = on_finish
        self.endpoint = endpoint
        self.drop_usage_chunk = drop_usage_chunk
        self.scanner = SSEScanner()
        self.usage: Usage | None = None
        self.background = None
        # The upstream's closing event ([DONE], response.completed) has gone to the client: the
        # OpenAI SDKs hang up right after it, often before the relay sees the upstream end.
        self.delivered = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        outcome_error: str | None = None
        try:
            await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not pump.done():
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
                if self.delivered:
                    self._finish("ok", None)
                else:
                    self._finish("client_disconnected", "client_disconnected")
            else:
                outcome_error = pump.result()
                if outcome_error is None:
                    self._finish(
                        "ok" if self.status_code < 400 else outcome_for_status(self.status_code),
                        None,
                    )
                else:
                    self._finish("upstream_error", outcome_error)
        except BaseException:
            pump.cancel()
            self._finish("client_disconnected", "cancelled")
            raise
        finally:
            watcher.cancel()
            await self.upstream.aclose()

    async def _pump(self, send: Send) -> str | None:
        """Forward the stream; return None when it ended cleanly, else an error code."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        self.record.mark_first_byte()
        try:
            async for chunk in self.upstream.aiter_raw():
                events = self.scanner.feed(chunk)
                chunk = self._observe(chunk, events)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if any(e.data == "[DONE]" or e.event == "response.completed" for e in events):
                    self.delivered = True
        except ReadTimeout:
            return await self._cut(send, "upstream_timeout", "Mavera stopped sending mid-stream")
        except TransportError:
            return await self._cut(send, "upstream_stream_cut", "Mavera cut the stream short")
        tail = self.scanner.pending if self.drop_usage_chunk else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        return None

    def _observe(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """Read usage from the events this chunk completes; return the bytes to forward."""
        if not self.drop_usage_chunk:
            for event in events:
                usage, _ = usage_from_event(self.endpoint, event)
                if usage is not None:
                    self.usage = usage
            return chunk
        kept: list[bytes] = []
        for event in events:
            usage, usage_only = usage_from_event(self.endpoint, event)
            if usage is not None:
                self.usage = usage
            if not usage_only:
                kept.append(event.raw)
        return b"".join(kept)

    async def _cut(self, send: Send, code: str, message: str) -> str:
        """Tell the client the upstream failed mid-stream, in the stream's own error format."""
        logger.warning("%s (request %s)", message, self.record.request_id)
        if self.scanner.pending and not self.drop_usage_chunk:
            # Mid-event: anything appended would corrupt that event. End without the final
            # chunk so the client's HTTP library reports an incomplete body.
            return code
        await send(
            {
                "type": "http.response.body",
                "body": stream_error_event(self.endpoint, code, message),
                "more_body": False,
            }
        )
        return code

    def _finish(self, outcome: Any, error_code: str | None) -> None:
        record = self.record
        if self.usage is not None:
            record.credits_used = self.usage.credits_used
            record.input_tokens = self.usage.input_tokens
            record.output_tokens = self.usage.output_tokens
        record.finish(self.status_code, outcome, error_code)
        self.on_finish(record)


def stream_error_event(endpoint: str, code: str, message: str) -> bytes:
    """An SSE error event the OpenAI SDKs raise as APIError, for the stream's format."""
    error = {"message": message, "type": "upstream_error", "param": None, "code": code}
    if endpoint == RESPONSES:
        payload = orjson.dumps({"type": "error", **error})
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
