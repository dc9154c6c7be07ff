"""The gateway's client connections: limits enforced before a request reaches the app.

What nginx and Envoy do at the connection and uvicorn does not: a cap on the request line and
headers (bytes and field count), deadlines for the headers and for the body, a cap on open
connections, bodies over `max_body_bytes` left unread, and every answer the server gives on its
own in the OpenAI error shape, followed by a lingering close (app.linger) so that a client still
sending gets the answer rather than a reset. The protocol itself is app.connection.

Requests refused here never reach the app, so the ledger has no record of them; they are counted
in `mavera_gateway_edge_refusals_total{reason}`. On the hot path this costs a few integer updates
per header and per body chunk, and no timer for a request that arrives in one read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.config_sections import ServerSettings
from app.connection import BODY_TIMED_OUT, EdgeProtocol


@dataclass(frozen=True)
class EdgePolicy:
    """The limits one server applies, and where it counts what it refused."""

    limits: ServerSettings
    count: Callable[[str], None]


def uvicorn_options(server: ServerSettings, app: Any) -> dict[str, Any]:
    """uvicorn.Config options that serve `app` (the gateway) with the limits of `server`."""
    return {
        "http": protocol_class(server, _gateway_counter(app)),
        "ws": "none",  # the gateway has no WebSockets: an Upgrade header is served as plain HTTP
        "timeout_keep_alive": server.keepalive_timeout_s,
    }


def protocol_class(server: ServerSettings, count: Callable[[str], None]) -> type[EdgeProtocol]:
    """An EdgeProtocol class bound to these limits (uvicorn instantiates it per connection)."""

    class Configured(EdgeProtocol):
        policy = EdgePolicy(server, count)

    return Configured


def body_timed_out(scope: Any) -> bool:
    """Whether the server gave up on this request's body (body_timeout_s) and answered 408."""
    return BODY_TIMED_OUT in (scope.get("extensions") or {})


def _gateway_counter(app: Any) -> Callable[[str], None]:
    def count(reason: str) -> None:
        gateway = getattr(getattr(app, "state", None), "gateway", None)
        if gateway is not None:  # None only before the lifespan has started
            gateway.metrics.edge_refusals.labels(reason).inc()

    return count
