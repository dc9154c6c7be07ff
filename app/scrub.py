"""Keep the Mavera key out of what the upstream sends back on its error paths.

Mavera, or a proxy in front of it, may echo the Authorization header or the key in an error
(`persona not enabled for API key mvra_live_...`). Every byte of such an answer passes through
here before it reaches a client or a log line. Pure functions over bytes.
"""

from __future__ import annotations

import re

import orjson

KEY_PATTERN = re.compile(rb"mvra_[A-Za-z0-9_\-]+")
REDACTED = b"mvra_[redacted]"
MAX_ERROR_CODE_CHARS = 64  # an upstream error code longer than this is cut before it is stored


class Scrubber:
    """Removes the Mavera key, and anything shaped like one, from what the upstream sent."""

    def __init__(self, api_key: str) -> None:
        self._key = api_key.encode() if api_key else b""

    def bytes(self, data: bytes) -> bytes:
        """`data` with every key replaced."""
        if self._key:
            data = data.replace(self._key, REDACTED)
        return KEY_PATTERN.sub(REDACTED, data)

    def text(self, text: str) -> str:
        """`text` with every key replaced."""
        return self.bytes(text.encode("utf-8", "replace")).decode("utf-8", "replace")


def error_body(status: int, raw: bytes, scrubber: Scrubber) -> bytes:
    """An upstream error body fit for the client: no key in it, and in the OpenAI error shape.

    Mavera's own JSON errors pass as they are (less any key); anything else, such as an HTML
    page from a proxy, is wrapped so that SDKs can parse it.
    """
    clean = scrubber.bytes(raw)
    try:
        parsed = orjson.loads(clean)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return clean
    said = clean[:500].decode("utf-8", "replace").strip() or "no body"
    message = f"Mavera (or a proxy in front of it) answered {status} without a JSON error: {said}"
    return orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "upstream_error",
                "param": None,
                "code": f"upstream_http_{status}",
            }
        }
    )
