"""Sending one generation answer under its script: delays, hangs, cuts and client disconnects.

A ``Delivery`` is the ASGI response object the route returns once the request is validated.
It owns the response timing so that a hang or a delay can watch for the client going away
(``receive()`` yields ``http.disconnect``) and record when that happened.

Plain JSON answers (lists, errors) are ``json_response``s noted in the record the same way.

A cut (``SimScript.cut_after``) raises ``StreamCut`` from inside the response; the
simulator's outer ASGI wrapper turns it into an abrupt close of the connection.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import orjson
from sse_starlette import EventSourceResponse
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.simulator.errors import SimError
from app.simulator.formats import Event
from app.simulator.script import SimRecord, SimScript

# Pings would be bytes on the wire that SimRecord.events does not show; a day is "never".
PING_INTERVAL_S = 86_400

Biller = Callable[[bool], None]


YIELD_EVERY = 32  # stream events between pauses that let a disconnect be seen


class StreamCut(Exception):
    """Raised to drop the connection mid-response, as a scripted fault."""


def is_cut(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``StreamCut``, possibly wrapped in exception groups by task groups."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_cut(inner) for inner in exc.exceptions)
    return isinstance(exc, StreamCut)


async def drop_connection(send: Send, receive: Receive) -> bool:
    """Close the client's socket without ending the response; False if the server hides it.

    uvicorn's ``send`` is a method of its request cycle, which holds the transport. Closing it
    here instead of letting the exception reach uvicorn avoids a logged traceback.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not callable(getattr(transport, "close", None)):
        return False
    transport.close()
    # Wait until uvicorn notices, so it does not also report an incomplete response.
    with anyio.move_on_after(1):
        while (await receive())["type"] != "http.disconnect":
            pass
    return True


def json_response(
    record: SimRecord, status: int, payload: Any, headers: dict[str, str]
) -> Response:
    """A compact JSON response, noted in the record."""
    body = orjson.dumps(payload)
    record.events.append((time.monotonic(), body))
    record.completed = True
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_response(record: SimRecord, exc: SimError, headers: dict[str, str]) -> Response:
    """The Mavera error envelope for ``exc``, noted in the record."""
    record.error_code = exc.code
    return json_response(record, exc.status, exc.envelope(), {**headers, **exc.headers})


class Delivery:
    """Answers one request: a JSON body (``body``) or an SSE stream (``events``)."""

    def __init__(
        self,
        *,
        record: SimRecord,
        script: SimScript,
        status: int,
        headers: dict[str, str],
        body: bytes | None = None,
        events: list[Event] | None = None,
        bill: Biller | None = None,
    ) -> None:
        self.record = record
        self.script = script
        self.status = status
        self.headers = headers
        self.body = body
        self.events = events
        self.bill = bill

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        delay = None if self.script.hang else self.script.first_byte_delay_ms / 1000
        if (delay is None or delay > 0) and await self._client_left(receive, delay):
            return
        if self.events is not None:
            await self._stream(scope, receive, send)
        else:
            await self._send_body(receive, send)

    async def _client_left(self, receive: Receive, timeout: float | None) -> bool:
        """Wait up to ``timeout`` s (None: forever) for a disconnect; True if the client left."""
        with anyio.move_on_after(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.record.client_disconnected_at = time.monotonic()
                    return True
        return False

    async def _send_body(self, receive: Receive, send: Send) -> None:
        body = self.body or b""
        given = {k.lower(): v for k, v in self.headers.items()}
        given.setdefault("content-type", "application/json")
        headers = [(k.encode(), v.encode()) for k, v in given.items()]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        cut, hang = self.script.cut_after, self.script.hang_after
        partial = cut if cut is not None else hang
        if partial is not None and partial < len(body):
            # Non-stream faults count body bytes: send a prefix, then drop or go silent.
            self.record.events.append((time.monotonic(), body[:partial]))
            await send({"type": "http.response.body", "body": body[:partial], "more_body": True})
            if cut is not None:
                raise StreamCut
            await self._client_left(receive, None)
            return
        if self.bill is not None:
            self.bill(True)
        self.record.events.append((time.monotonic(), body))
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.record.completed = True

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = EventSourceResponse(
            self._iterate(),
            status_code=self.status,
            headers=self.headers,
            sep="\n",
            ping=PING_INTERVAL_S,
            client_close_handler_callable=self._on_client_close,
        )
        await response(scope, receive, send)

    async def _on_client_close(self, message: Message) -> None:
        if not self.record.completed and self.record.client_disconnected_at is None:
            self.record.client_disconnected_at = time.monotonic()

    async def _iterate(self) -> AsyncIterator[bytes]:
        script = self.script
        for index, event in enumerate(self.events or ()):
            if self.record.client_disconnected_at is not None:
                return  # nobody is listening: stop, as Mavera stops generating
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                # A send to a client that has gone returns at once, so without a pause here a
                # long stream with no delay would never let the disconnect be noticed.
                await anyio.sleep(0)
            if script.cut_after is not None and index >= script.cut_after:
                raise StreamCut
            if script.hang_after is not None and index >= script.hang_after:
                await anyio.sleep_forever()
            if index and script.chunk_delay_ms > 0:
                await anyio.sleep(script.chunk_delay_ms / 1000)
            if event.bill is not None and self.bill is not None:
                self.bill(event.bill == "reported")
            self.record.events.append((time.monotonic(), event.data))
            yield event.data
        self.record.completed = True
