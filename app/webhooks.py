"""One JSON POST to a webhook (Slack or any receiver), through app/upstream.py's `post_once`.

A webhook gets the same TLS verification (system store or `SSL_CERT_FILE`) and proxy choice
(HTTPS_PROXY, HTTP_PROXY, NO_PROXY) as Mavera's connection. Each POST opens one connection and
closes it: alerts are rare, and a connection kept for minutes would only go stale.

A webhook URL is a secret (Slack's carries its token in the path), so nothing here puts more
than its scheme and host in a message: `where(url)` is what callers may log.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import orjson

from app.errors import UpstreamTimeout, UpstreamUnavailable
from app.upstream import post_once

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
    headers = [
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("user-agent", USER_AGENT),
        ("connection", "close"),
    ]
    origin = f"{parts.scheme}://{parts.netloc}"
    try:
        return await post_once(origin, path, headers, orjson.dumps(body), timeout_s)
    except (UpstreamTimeout, UpstreamUnavailable) as exc:
        raise WebhookFailed(f"{where(url)}: {exc.message}") from None
