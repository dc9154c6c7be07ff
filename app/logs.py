"""Logging: one line per request (text or JSON), and a last guard against printing secrets.

Request lines carry the usage record's fields: never message content, never a key.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson

from app.records import UsageRecord

REQUEST_FIELDS = (
    "request_id",
    "client",
    "end_user",
    "route",
    "endpoint",
    "requested_model",
    "upstream_model",
    "persona_id",
    "stream",
    "status",
    "outcome",
    "error_code",
    "credits_used",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "ttfb_ms",
)
_MAVERA_KEY = re.compile(r"mvra_(?:live|test)_[A-Za-z0-9_\-]{6,}")


def request_fields(record: UsageRecord) -> dict[str, Any]:
    """The fields of a request's log line."""
    fields = {name: getattr(record, name) for name in REQUEST_FIELDS}
    for name in ("latency_ms", "ttfb_ms"):
        if fields[name] is not None:
            fields[name] = round(fields[name], 3)
    return fields


class RedactingFilter(logging.Filter):
    """Masks anything shaped like a Mavera key, and the configured key itself, in every line."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _MAVERA_KEY.sub("mvra_[redacted]", message)
        for secret in self.secrets:
            cleaned = cleaned.replace(secret, "[redacted]")
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...` lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        usage = getattr(record, "record", None)
        if isinstance(usage, UsageRecord):
            pairs = request_fields(usage).items()
            line += " " + " ".join(f"{k}={v}" for k, v in pairs if v is not None)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        usage = getattr(record, "record", None)
        if isinstance(usage, UsageRecord):
            entry.update(request_fields(usage))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(fmt: str, secrets: tuple[str, ...] = (), level: int = logging.INFO) -> None:
    """Send the gateway's and uvicorn's logs to stderr in `fmt` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
