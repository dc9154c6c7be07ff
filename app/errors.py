"""Errors the gateway itself produces, and the one renderer for the OpenAI error shape.

GatewayError                      any error answered by the gateway, not the upstream
├── InvalidApiKey                 401 invalid_api_key: no or unknown gateway key
├── InvalidRequest                400 invalid_request_error: body not JSON / not an object, or
│   │                             not HTTP at all (answered by app.edge)
│   ├── BodyTooLarge              413: body over max_body_bytes
│   ├── HeadersTooLarge           431: request line and headers over max_header_bytes/max_headers
│   └── RequestTimeout            408 request_timeout: headers or body not in within their deadline
├── PersonaRequired               400 persona_required
├── PersonaOverrideForbidden      403 persona_override_forbidden
├── ModelNotFound                 404 model_not_found (strict_models only)
├── RouteNotFound                 404 route_not_found: /NAME/v1/... with no such route
├── ClientNotFound                404 client_not_found: an admin request names no known client
├── BudgetExceeded                402 budget_exceeded
├── RateLimited                   429 rate_limit_exceeded (+ Retry-After)
├── UpstreamAuthFailed            502 upstream_auth_failed: Mavera refused *our* key
├── UpstreamUnavailable           502 upstream_unavailable: unreachable or 5xx after retries
│   ├── UpstreamStreamCut         502 upstream_stream_cut: the connection broke mid-answer
│   └── UpstreamEventTooLarge     502 upstream_event_too_large: a stream event over max_event_bytes
├── UpstreamBusy                  503 upstream_busy (+ Retry-After): no upstream connection free
├── TooManyConnections            503 too_many_connections (+ Retry-After): over max_connections
├── LimitsUnavailable             503 limits_unavailable (+ Retry-After): the shared counters
│                                 (Redis) cannot be reached, and on_shared_failure = fail_closed
├── UpstreamTimeout               504 upstream_timeout
├── ShuttingDown                  503 shutdown: cut by a shutdown past its grace period
└── InternalError                 500 internal_error: the gateway's own bug (outcome gateway_error)

Upstream 4xx errors other than 401 are not GatewayErrors: they pass through as they came.
Each class carries the ledger outcome of a request that ends with it, so the outcome of a failed
request is decided by what failed, in one place.
"""

from __future__ import annotations

from typing import ClassVar

import orjson
from starlette.responses import Response

from app.records import Outcome


class GatewayError(Exception):
    """An error answered by the gateway in the OpenAI error shape."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    # how the ledger classifies a request that ended with this error
    outcome: ClassVar[Outcome] = "gateway_error"

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        """The JSON error body."""
        return error_body(self.message, self.type, self.code, self.param)

    def response(self, extra_headers: dict[str, str] | None = None) -> Response:
        """The HTTP response that tells the client what went wrong."""
        headers = {**self.headers, **(extra_headers or {})}
        return Response(self.body(), self.status, headers, media_type="application/json")


def error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    """Serialize an error in the shape OpenAI SDKs parse."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


class InvalidApiKey(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    outcome = "rejected"


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"
    outcome = "client_error"


class BodyTooLarge(InvalidRequest):
    status = 413


class HeadersTooLarge(InvalidRequest):
    status = 431


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


class PersonaRequired(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "persona_required"
    outcome = "client_error"


class PersonaOverrideForbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "persona_override_forbidden"
    outcome = "client_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    outcome = "client_error"


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "route_not_found"
    outcome = "client_error"


class ClientNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "client_not_found"
    outcome = "client_error"


class BudgetExceeded(GatewayError):
    status = 402
    type = "insufficient_credits"
    code = "budget_exceeded"
    outcome = "rejected"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    outcome = "rejected"


class UpstreamAuthFailed(GatewayError):
    outcome = "upstream_error"
    status = 502
    type = "upstream_error"
    code = "upstream_auth_failed"


class UpstreamUnavailable(GatewayError):
    outcome = "upstream_error"
    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamStreamCut(UpstreamUnavailable):
    code = "upstream_stream_cut"


class UpstreamEventTooLarge(UpstreamUnavailable):
    code = "upstream_event_too_large"


class UpstreamBusy(GatewayError):
    outcome = "rejected"  # refused at the gateway for capacity, like a rate limit
    status = 503
    type = "upstream_error"
    code = "upstream_busy"


class TooManyConnections(GatewayError):
    outcome = "rejected"
    status = 503
    type = "server_error"
    code = "too_many_connections"


class LimitsUnavailable(GatewayError):
    # Refused at the gateway before anything reached Mavera, so no credits were spent, as a rate
    # limit refuses: "rejected". Not "gateway_error" (kept for the gateway's own bugs) nor
    # "upstream_error" (Mavera's); the code and /readyz say it was the shared counters.
    outcome = "rejected"
    status = 503
    type = "server_error"
    code = "limits_unavailable"


class UpstreamTimeout(GatewayError):
    outcome = "upstream_error"
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class ShuttingDown(GatewayError):
    status = 503
    type = "server_error"
    code = "shutdown"
    outcome = "shutdown"


class InternalError(GatewayError):
    """The gateway's own fault: status, type, code and outcome are the base class's."""
