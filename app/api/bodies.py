"""The body of a generation request: read once, bounded, parsed into a JSON object, and
serialised once for Mavera, with a clear error for anything the gateway would change or cannot
carry (over size, too deep, integers beyond 64 bits, not an object).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from app.accounting import ClientGone
from app.edge import body_timed_out
from app.errors import BodyTooLarge, InvalidRequest, RequestTimeout


def serialised(body: dict[str, Any]) -> bytes:
    """The body as Mavera receives it, or InvalidRequest if it nests deeper than can be sent."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:  # nesting deeper than the serializer writes
        raise InvalidRequest(TOO_DEEP.format(limit=MAX_FORWARD_DEPTH)) from None


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or the error that says what is wrong with it."""
    # connection: close, since the rest of the body is not read (app.edge closes lingeringly)
    message = f"request body is over the gateway's limit of {max_bytes} bytes"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(message, headers={"connection": "close"})
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(message, headers={"connection": "close"})
            chunks.append(chunk)
    except ClientDisconnect:
        if body_timed_out(request.scope):
            raise RequestTimeout("request body did not arrive in time") from None
        raise ClientGone() from None
    raw = b"".join(chunks)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise InvalidRequest(TOO_DEEP.format(limit=MAX_FORWARD_DEPTH)) from None
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    if _LONG_DIGITS.search(raw):
        _refuse_huge_integers(raw)
    return body


TOO_DEEP = "request body nests too deeply: the gateway forwards at most {limit} levels"
MAX_FORWARD_DEPTH = 254  # orjson writes no deeper
# 19 digits in a row: the only way to write an integer beyond 64 bits (below -2**63 or from
# 2**64 on), which the parser would turn into a float, a silent change of value. Rare, so the
# exact check runs only then.
_LONG_DIGITS = re.compile(rb"\d{19}")
_INT64 = range(-(2**63), 2**64)


def _refuse_huge_integers(raw: bytes) -> None:
    def exact(text: str) -> int:
        number = int(text)
        if number not in _INT64:
            raise InvalidRequest(
                f"request body holds the integer {text[:40]}, beyond 64 bits: the gateway would "
                "change its value; send it as a string or a float"
            )
        return number

    json.loads(raw, parse_int=exact)
