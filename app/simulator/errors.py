"""Mavera-shape errors: one exception type carrying status, envelope fields and extra headers.

Every error the simulator answers with has the documented envelope
``{"error": {"message", "type", "code", "param"}}`` (mavera-api.md section 7).
"""

from __future__ import annotations

from typing import Any

# status -> (type, code, message) for faults injected with SimScript.status
_SCRIPTED: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "invalid_field", "Invalid request."),
    401: ("authentication_error", "invalid_api_key", "Invalid API key provided."),
    402: ("insufficient_credits", "credits_exhausted", "You have run out of credits."),
    403: ("invalid_request_error", "forbidden", "You do not have access to this resource."),
    404: ("invalid_request_error", "resource_not_found", "The requested resource was not found."),
    429: ("rate_limit_error", "rate_limit_exceeded", ""),
    500: ("api_error", "internal_error", "The server had an error processing your request."),
    503: ("api_error", "service_unavailable", "The service is temporarily unavailable."),
}


def rate_limit_message(retry_after_s: int) -> str:
    """The documented 429 message text."""
    return f"Rate limit exceeded. Please retry after {retry_after_s} seconds."


class SimError(Exception):
    """An error answer: HTTP status, Mavera envelope fields and extra response headers."""

    def __init__(
        self,
        status: int,
        type_: str,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        """The JSON body for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }

    @classmethod
    def auth(cls, code: str, message: str) -> SimError:
        """A 401 ``authentication_error``."""
        return cls(401, "authentication_error", code, message)

    @classmethod
    def invalid(cls, message: str, *, code: str, param: str | None) -> SimError:
        """A 400 ``invalid_request_error``."""
        return cls(400, "invalid_request_error", code, message, param)

    @classmethod
    def rate_limited(cls, retry_after_s: int) -> SimError:
        """A 429 ``rate_limit_exceeded`` with ``Retry-After``."""
        return cls(
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            rate_limit_message(retry_after_s),
            headers={"Retry-After": str(retry_after_s)},
        )

    @classmethod
    def credits_exhausted(cls) -> SimError:
        """A 402 ``credits_exhausted``."""
        return cls(
            402,
            "insufficient_credits",
            "credits_exhausted",
            "You have run out of credits. Please upgrade your plan or wait for your next cycle.",
        )

    @classmethod
    def scripted(cls, status: int, retry_after_s: int | None) -> SimError:
        """A plausible error for an injected ``SimScript.status``."""
        default = _SCRIPTED[500] if status >= 500 else _SCRIPTED[400]
        type_, code, message = _SCRIPTED.get(status, default)
        headers: dict[str, str] = {}
        if retry_after_s is not None and status in (429, 503):
            headers["Retry-After"] = str(retry_after_s)
        if status == 429:
            message = rate_limit_message(retry_after_s if retry_after_s is not None else 30)
        return cls(status, type_, code, message, headers=headers)
