"""The one pooled connection to Mavera: outgoing headers, retries, and error translation.

Transport errors and upstream failures are translated into GatewayErrors here, once. Retries
happen only here, so only before any byte has gone to the client, and only on connect errors,
502 and 503, honouring `Retry-After` up to a cap.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Mapping
from urllib.parse import urlencode

import orjson

from app.config import UpstreamSettings
from app.errors import UpstreamAuthFailed, UpstreamTimeout, UpstreamUnavailable
from app.http1 import ConnectFailed, Pool, ReadTimeout, Response, TransportError

logger = logging.getLogger("mavera_gateway.upstream")

# Client headers worth passing on; everything else (Authorization, cookies, proxies' headers,
# SDK telemetry) stays at the gateway.
FORWARDED_REQUEST_HEADERS = ("accept", "accept-language", "user-agent")
# Upstream response headers the client may see.
RETURNED_RESPONSE_HEADERS = (
    "content-type",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)
KEY_PATTERN = re.compile(r"mvra_[A-Za-z0-9_\-]+")
RETRY_STATUSES = frozenset({502, 503})
RETRY_BASE_DELAY_S = 0.25
RETRY_MAX_DELAY_S = 4.0


def upstream_headers(
    client_headers: Mapping[str, str], api_key: str, request_id: str
) -> dict[str, str]:
    """The headers of the request to Mavera: an allow-list of the client's, plus our own."""
    headers = {
        name: client_headers[name] for name in FORWARDED_REQUEST_HEADERS if name in client_headers
    }
    headers["authorization"] = f"Bearer {api_key}"
    headers["content-type"] = "application/json"
    headers["accept-encoding"] = "identity"  # relay bytes as they are, never re-encode
    headers["x-request-id"] = request_id
    return headers


def returned_headers(upstream: Response) -> dict[str, str]:
    """The upstream response headers passed back to the client."""
    found = upstream.headers
    return {name: found[name] for name in RETURNED_RESPONSE_HEADERS if name in found}


class Upstream:
    """Sends requests to Mavera and turns failures into the gateway's errors."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._api_key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.pool = Pool(
            settings.base_url,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            max_connections=settings.max_connections,
        )

    def headers(self, client_headers: Mapping[str, str], request_id: str) -> dict[str, str]:
        """Outgoing headers for one request, with the Mavera key."""
        return upstream_headers(client_headers, self._api_key, request_id)

    async def send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        content: bytes = b"",
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """Open the upstream response (body not yet read), retrying what may be retried.

        Returns 2xx and passable 4xx responses; raises a GatewayError for the rest.
        """
        if params:
            path = f"{path}?{urlencode(params)}"
        attempt = 0
        while True:
            try:
                response = await self.pool.request(method, path, headers.items(), content)
            except ConnectFailed as exc:
                if attempt >= self.settings.max_retries:
                    raise UpstreamUnavailable(
                        f"cannot reach Mavera at {self.settings.base_url}: {exc}"
                    ) from None
                delay = _backoff(attempt, None)
            except ReadTimeout:
                raise UpstreamTimeout(
                    f"Mavera did not answer within {self.settings.read_timeout_s:g} s"
                ) from None
            except TransportError as exc:
                raise UpstreamUnavailable(f"connection to Mavera failed: {exc}") from None
            else:
                if response.status_code < 500 and response.status_code != 401:
                    return response
                if (
                    response.status_code not in RETRY_STATUSES
                    or attempt >= self.settings.max_retries
                ):
                    raise await _translate_failure(response)
                delay = _backoff(attempt, response.headers.get("retry-after"))
                await response.aclose()
            attempt += 1
            logger.info(
                "retrying upstream %s %s in %.2fs (attempt %d)", method, path, delay, attempt + 1
            )
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Close the pool."""
        await self.pool.aclose()


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), RETRY_MAX_DELAY_S)
        except ValueError:
            pass
    delay = min(RETRY_BASE_DELAY_S * (1 << attempt), RETRY_MAX_DELAY_S)
    return delay * (0.5 + random.random() / 2)


async def _translate_failure(response: Response) -> Exception:
    """The GatewayError for an upstream 401 or 5xx, quoting what the upstream said."""
    try:
        body = await response.aread()
    except TransportError:
        body = b""
    finally:
        await response.aclose()
    said = KEY_PATTERN.sub("mvra_[redacted]", _upstream_message(body))
    if response.status_code == 401:
        return UpstreamAuthFailed(
            "Mavera rejected the gateway's API key (the gateway operator must fix MAVERA_API_KEY; "
            f"your gateway key is fine): {said}"
        )
    return UpstreamUnavailable(f"Mavera answered {response.status_code}: {said}")


def _upstream_message(body: bytes) -> str:
    try:
        error = orjson.loads(body).get("error", {})
        return f"{error.get('code')}: {error.get('message')}"
    except (orjson.JSONDecodeError, AttributeError):
        return body[:200].decode("utf-8", "replace") or "no body"


async def read_body(response: Response) -> bytes:
    """The whole body of an opened upstream response, then close it."""
    try:
        return await response.aread()
    except ReadTimeout:
        raise UpstreamTimeout("Mavera stopped sending the response body") from None
    except TransportError as exc:
        raise UpstreamUnavailable(f"connection to Mavera failed: {exc}") from None
    finally:
        await response.aclose()
