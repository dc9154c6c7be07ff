"""The account of one request: its usage record, filled in as the request goes, closed once.

The API layer and the relay report what they learn here; nobody else writes the record. How a
request ended (its outcome) is decided here too: from Mavera's status when Mavera answered, from
the error's own class when something failed, and `gateway_error` for anything unforeseen, which
is the gateway's own fault and never booked as the client's or Mavera's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect

from app.clients import Client
from app.errors import GatewayError, InternalError, ShuttingDown
from app.records import Outcome, UsageRecord, outcome_for_status
from app.routing import Target
from app.usage import Usage

logger = logging.getLogger("mavera_gateway.api")

STRICT_WAIT_S = 30.0  # longest an answer waits for its record's commit in strict durability
CLIENT_GONE_STATUS = 499  # nginx's "client closed request": nobody received an answer


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


class RequestAccount:
    """Collects what is known about one request and hands its record on exactly once."""

    __slots__ = ("record", "_on_close", "_closed", "_stored")

    def __init__(
        self,
        endpoint: str,
        request_id: str,
        on_close: Callable[[UsageRecord], asyncio.Future[bool] | None],
    ) -> None:
        self.record = UsageRecord(endpoint=endpoint, client="unknown", request_id=request_id)
        self._on_close = on_close
        self._closed = False
        self._stored: asyncio.Future[bool] | None = None  # its commit, in strict durability

    @property
    def request_id(self) -> str:
        """The id the client sees in X-Request-Id."""
        return self.record.request_id

    @property
    def closed(self) -> bool:
        """Whether the record has been handed on."""
        return self._closed

    def caller(self, route: str | None, client: Client) -> None:
        """Who sent the request, and under which route."""
        self.record.route = route
        self.record.client = client.name

    def request(self, body: Mapping[str, Any]) -> None:
        """What was asked for: the end user and whether it streams, from the parsed body."""
        user = body.get("user")
        self.record.end_user = user if isinstance(user, str) else None
        self.record.stream = body.get("stream") is True

    def tagged(self, tags: str | None) -> None:
        """The request's cost tags, comma-joined (see `app.tags.request_tags`)."""
        self.record.tags = tags

    def target(self, target: Target) -> None:
        """Where the request goes: its persona (and where that came from) and models."""
        record = self.record
        record.requested_model = target.requested_model
        record.upstream_model = target.upstream_model
        record.persona_id = target.persona_id
        record.persona_source = target.persona_source

    def first_byte(self) -> None:
        """The first byte of the answer is going to the client now."""
        record = self.record
        if record.first_byte_at is None:
            record.first_byte_at = time.time()
            record.ttfb_ms = (time.perf_counter() - record.started) * 1000

    def usage(self, usage: Usage | None) -> None:
        """What Mavera said the request cost, if it said."""
        if usage is None:
            return
        record = self.record
        record.credits_used = usage.credits_used
        record.input_tokens = usage.input_tokens
        record.output_tokens = usage.output_tokens
        record.upstream_request_id = usage.upstream_id or record.upstream_request_id

    def free(self) -> None:
        """The request was served by an endpoint that costs no credits."""
        self.record.credits_used = 0

    def answered(self, status: int, error_code: str | None = None) -> None:
        """Mavera's answer (or the gateway's own) reached the client with this status."""
        self.close(status, outcome_for_status(status), error_code)

    def rejected(self, error: GatewayError) -> None:
        """The request ended with a GatewayError answered to the client."""
        self.close(error.status, error.outcome, error.code)

    def failed(self, exc: BaseException, status: int | None = None) -> GatewayError | None:
        """Close the record for a failure; return the error to answer with, if one can be sent.

        `status` is what the client already received (a stream's status line), if anything.
        """
        if isinstance(exc, GatewayError):
            self.close(status or exc.status, exc.outcome, exc.code)
            return exc
        if isinstance(exc, ClientGone | ClientDisconnect):
            self.close(status or CLIENT_GONE_STATUS, "client_disconnected", "client_disconnected")
            return None
        if isinstance(exc, asyncio.CancelledError):
            # The server cancels requests only when a shutdown ran past its grace period;
            # a client that leaves is reported as a disconnect message, not a cancellation.
            stopping = ShuttingDown("the gateway is shutting down; retry on another replica")
            self.close(status or stopping.status, stopping.outcome, stopping.code)
            return stopping
        logger.error("unexpected error in request %s", self.request_id, exc_info=exc)
        error = InternalError(
            f"the gateway failed unexpectedly; its log has the details under request id "
            f"{self.request_id}"
        )
        self.close(status or error.status, error.outcome, error.code)
        return error

    def close(self, status: int, outcome: Outcome, error_code: str | None = None) -> None:
        """Finish the record and hand it on; later calls change nothing."""
        if self._closed:
            return
        self._closed = True
        record = self.record
        record.status = status
        record.outcome = outcome
        record.error_code = error_code
        record.finished_at = time.time()
        record.latency_ms = (time.perf_counter() - record.started) * 1000
        self._stored = self._on_close(record)

    async def durable(self) -> None:
        """Return once the record is committed (strict durability); at once otherwise.

        Bounded: a ledger that stays down must not hold every answer for ever.
        """
        stored = self._stored
        if stored is None or stored.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(stored), STRICT_WAIT_S)
        except TimeoutError:
            logger.error(
                "request %s answered before its record was committed: the ledger is %.0f s behind",
                self.request_id,
                STRICT_WAIT_S,
            )
