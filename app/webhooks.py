"""One JSON POST to a webhook (Slack or any receiver), over the gateway's own transport.

The second of the two modules that know the transport (`app.http1`); the first, app/upstream.py,
is Mavera's connection and its retry policy, and has no room for a webhook's. A webhook gets
the same TLS verification (system store or `SSL_CERT_FILE`) and proxy choice (HTTPS_PROXY,
HTTP_PROXY, NO_PROXY) as Mavera's connection. Each POST opens one connection and closes it:
alerts are rare, and a connection kept for minutes would only go stale.

A webhook URL is a secret (Slack's carries its token in the path), so nothing here puts more
than its scheme and host in a message: `where(url)` is what callers may log.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import orjson

from app.http1 import Pool, TransportError

USER_AGENT = "mavera-gateway-alerts"


class WebhookFailed(Exception):
    """The POST got no HTTP answer: no connection, a timeout, a broken response."""


def where(url: str) -> str:
    """The scheme and host of a URL, the only part of a webhook URL fit for a log line."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or '?'}{port}"


def check_url(url: str) -> None:
    """ValueError (naming only scheme and host) unless `url` is an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL {where(url)}/... is not an http:// or https:// URL")


async def post_json(url: str, body: object, timeout_s: float) -> int:
    """POST `body` as JSON to `url`; return the HTTP status, within `timeout_s` for everything.

    Raises WebhookFailed when no status came back (its message names only scheme and host).
    """
    check_url(url)
    parts = urlsplit(url)
    path = parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
    pool = Pool(
        f"{parts.scheme}://{parts.netloc}",
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
        write_timeout_s=timeout_s,
        pool_timeout_s=timeout_s,
        max_connections=1,
        keepalive_s=0,  # one POST, then the connection closes
    )
    headers = [
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("user-agent", USER_AGENT),
        ("connection", "close"),
    ]
    try:
        async with asyncio.timeout(timeout_s):
            response = await pool.request("POST", path, headers, orjson.dumps(body))
            await response.aclose()  # the answer's body says nothing we act on
            return response.status_code
    except TimeoutError:
        raise WebhookFailed(f"{where(url)} did not answer within {timeout_s:g} s") from None
    except TransportError as exc:
        raise WebhookFailed(f"{where(url)}: {exc}") from None
    finally:
        await pool.aclose()
