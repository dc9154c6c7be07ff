"""A client's connection to the gateway: uvicorn's httptools protocol with the limits of
app.edge. Parser callbacks count header fields and body bytes; one timer per connection phase
(headers, body) that did not arrive in a single read; answers of its own via app.linger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from app.errors import (
    BodyTooLarge,
    GatewayError,
    HeadersTooLarge,
    InvalidRequest,
    RequestTimeout,
    TooManyConnections,
)
from app.linger import CycleTransport, Linger, raw_response

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent

    from app.edge import EdgePolicy

logger = logging.getLogger("mavera_gateway.edge")

# Set in a request's scope["extensions"] when its body missed body_timeout_s.
BODY_TIMED_OUT = "mavera_gateway.body_timed_out"
_IDLE, _HEADERS, _BODY = 0, 1, 2


class EdgeProtocol(HttpToolsProtocol):
    """One client connection: uvicorn's protocol with the gateway's limits (no WebSockets)."""

    policy: ClassVar[EdgePolicy]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.policy.limits
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_body = limits.max_body_bytes
        self._phase = _IDLE
        self._deadline: asyncio.TimerHandle | None = None
        self._linger: Linger | None = None
        self._cycle_transport: CycleTransport | None = None
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._header_count = self._header_bytes = self._declared = self._body_bytes = 0
        self._raw_header_bytes = -1  # the read a request starts in is not counted: see below
        self._chunked = self._body_over = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._cycle_transport = CycleTransport(transport, self._close_from_cycle)
        if len(self.connections) > self.policy.limits.max_connections:
            count = self.policy.limits.max_connections
            self._refuse(
                "too_many_connections",
                TooManyConnections(
                    f"the gateway is serving its maximum of {count} connections; retry shortly",
                    headers={"retry-after": "1"},
                ),
            )
            return
        # The first request's headers are due header_timeout_s after connecting; a connection
        # that sends nothing at all is closed then.
        self._deadline = self.loop.call_later(self.policy.limits.header_timeout_s, self._expire)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._linger is not None:
            self._linger.close()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            self._linger.discard(data)
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No WebSockets or h2c here: the request is served as HTTP/1.1, and what follows it
            # belongs to the protocol it asked for, so the connection ends after the answer.
            if self.cycle is not None:
                self.cycle.keep_alive = False
        except httptools.HttpParserError as exc:
            refusal = exc.__context__  # what one of the callbacks below raised, if one did
            if not isinstance(refusal, GatewayError):
                detail = "" if isinstance(exc, httptools.HttpParserCallbackError) else f": {exc}"
                refusal = InvalidRequest(f"malformed HTTP request{detail}")
            too_large = isinstance(refusal, HeadersTooLarge)
            self._refuse("header_too_large" if too_large else "bad_request", refusal)
            return
        if self._phase == _HEADERS:
            # httptools buffers an unfinished header line without calling back, so count the
            # reads that fell wholly inside the headers (the first one may hold the end of the
            # previous request, so it is left out: the read size bounds what that misses).
            if self._raw_header_bytes < 0:
                self._raw_header_bytes = 0
            else:
                self._raw_header_bytes += len(data)
                if self._raw_header_bytes > self._max_header_bytes:
                    self._refuse("header_too_large", self._headers_too_large())
                    return
        if self._phase and self._deadline is None:
            self._arm()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEADERS
        self._reset_counts()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self._max_headers or self._header_bytes > self._max_header_bytes:
            raise self._headers_too_large()
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        elif name == b"content-length":
            self._declared = int(value)
        elif name == b"transfer-encoding":
            self._chunked = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._header_bytes + len(self.url) > self._max_header_bytes:
            raise self._headers_too_large()
        if (self._declared or self._chunked) and self.parser.should_upgrade():
            # the parser would hand the body to the upgraded protocol, or parse it as requests
            raise InvalidRequest("a request with an Upgrade header cannot have a body here")
        self._phase = _BODY
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is previous or self._cycle_transport is None:
            return
        cycle.transport = self._cycle_transport
        if self._declared > self._max_body or self._chunked:
            if self._declared > self._max_body:
                self._body_over = True  # not read: the app answers 413 from the declared size
                self.flow.pause_reading()
            # Only these bodies can outgrow the limit, so only they pay for the check.
            cycle.receive = partial(self._receive_within_limit, cycle, cycle.receive)  # type: ignore[method-assign]

    def on_body(self, body: bytes) -> None:
        if self._body_over:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            # Deliver the read that crosses the limit, so the app sees the body is too large
            # and answers 413 itself (and records it); read nothing more.
            self._body_over = True
            self.flow.pause_reading()
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_over:
            return  # the app must not take the part it was given for the whole body
        self._phase = _IDLE
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        answered_early = self._phase == _BODY and not self.pipeline
        super().on_response_complete()
        if self._linger is not None or self.transport.is_closing():
            self._unset_keepalive_if_required()
        elif answered_early:
            self._start_linger()  # the rest of the body is not worth reading to keep the connection
        elif self._phase and self._deadline is None:
            self._arm()

    def shutdown(self) -> None:
        if self._linger is not None:
            self._linger.close()
            return
        super().shutdown()

    # Limits

    async def _receive_within_limit(
        self, cycle: RequestResponseCycle, receive: Callable[[], Awaitable[ASGIReceiveEvent]]
    ) -> ASGIReceiveEvent:
        """The cycle's receive, except that an app asking for more of a body that is over the
        limit (it did not refuse it itself, e.g. FastAPI reading a body) gets 413 from here."""
        if self._body_over and cycle is self.cycle and not cycle.body:
            if not cycle.response_started:
                limit = self._max_body
                self._refuse(
                    "body_too_large",
                    BodyTooLarge(f"request body is over the gateway's limit of {limit} bytes"),
                )
        return await receive()

    def _headers_too_large(self) -> HeadersTooLarge:
        limits = self.policy.limits
        return HeadersTooLarge(
            f"request headers are over the gateway's limit of {limits.max_header_bytes} bytes "
            f"or {limits.max_headers} fields"
        )

    def _arm(self) -> None:
        limits = self.policy.limits
        if self._phase == _HEADERS:
            if self.cycle is not None and not self.cycle.response_complete:
                return  # still answering the previous request: armed when that is done
            delay = limits.header_timeout_s
        elif self.pipeline:
            return  # this body's request waits behind another: armed when it starts
        else:
            delay = limits.body_timeout_s
        self._deadline = self.loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        limits = self.policy.limits
        if self._phase == _HEADERS:
            message = f"request headers did not arrive within {limits.header_timeout_s:g} s"
            self._refuse("header_timeout", RequestTimeout(message))
        elif self._phase == _BODY:
            self.cycle.scope.setdefault("extensions", {})[BODY_TIMED_OUT] = {}
            message = f"request body did not arrive within {limits.body_timeout_s:g} s"
            self._refuse("body_timeout", RequestTimeout(message))
        else:
            self.policy.count("idle_connection")
            self.transport.close()

    # Answering on the server's own

    def _refuse(self, reason: str, error: GatewayError) -> None:
        """Answer `error` in the OpenAI shape and end the connection."""
        if self._linger is not None or self.transport.is_closing():
            return
        self.policy.count(reason)
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        logger.info("refused a request from %s: %s (%s)", peer, error.message, reason)
        cycle = self.cycle
        busy = cycle is not None and not cycle.response_complete
        if busy and self._phase == _BODY and not cycle.response_started and not self.pipeline:
            cycle.disconnected = True  # the app stops waiting for the body; its answer is dropped
            cycle.message_event.set()
        elif busy and self.pipeline:
            self.transport.close()  # a pipelining client sent something wrong: no second answer
            return
        elif busy:
            cycle.keep_alive = False  # an answer is on its way: no second one, close after it
            self.flow.pause_reading()
            return
        status_line = STATUS_LINE[error.status]
        self.transport.write(raw_response(error, status_line, self.server_state.default_headers))
        self._start_linger()

    def _start_linger(self) -> None:
        if self._linger is not None or self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._linger = Linger(self.transport, self.loop)
        self.flow.resume_reading()

    def _close_from_cycle(self) -> None:
        if self._phase == _BODY and not self.pipeline:
            self._start_linger()
        else:
            self.transport.close()
