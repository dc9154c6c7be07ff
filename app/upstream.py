"""The one connection to Mavera: paths, outgoing headers, retries, deadlines, error translation.

This is the only module that knows the transport (`app.http1`); `post_once` lends it to the
alert webhooks. Every transport failure becomes
a GatewayError here, once, and the body of an answer is handed out as an iterator that raises
nothing else. Retries happen only here, so only before any byte has gone to the client, and only
when the request provably never reached Mavera (no connection could be opened) or Mavera said
502/503; a request that was written is never sent again. `Retry-After` is honoured up to a cap.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Protocol
from urllib.parse import urlencode

import orjson

from app.config_sections import UpstreamSettings
from app.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamBusy,
    UpstreamStreamCut,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.http1 import (
    ConnectFailed,
    Pool,
    PoolTimeout,
    ReadTimeout,
    TransportError,
    WriteTimeout,
)
from app.scrub import Scrubber, error_body

logger = logging.getLogger("mavera_gateway.upstream")

# Mavera's path for each endpoint the gateway serves.
UPSTREAM_PATHS = {
    "chat.completions": "chat/completions",
    "responses": "responses",
    "personas": "personas",
    "usage": "usage",
}
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
# Error bodies are read to this size at most: enough for any real error, and a hostile or
# broken upstream cannot make the gateway buffer more.
MAX_ERROR_BODY_BYTES = 64 * 1024
RETRY_STATUSES = frozenset({502, 503})
RETRY_BASE_DELAY_S = 0.25
RETRY_MAX_DELAY_S = 4.0
BUSY_RETRY_AFTER_S = 1


class TransportResponse(Protocol):
    """What the transport hands back once response headers are in."""

    status_code: int
    headers: dict[str, str]

    def aiter_raw(self) -> AsyncIterator[bytes]: ...
    async def aread(self) -> bytes: ...
    async def aclose(self) -> None: ...


class Transport(Protocol):
    """A pooled HTTP/1.1 client to one origin (`app.http1.Pool`; tests pass fakes)."""

    async def request(
        self, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> TransportResponse: ...
    async def aclose(self) -> None: ...


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


def returned_headers(found: Mapping[str, str]) -> dict[str, str]:
    """The upstream response headers passed back to the client."""
    return {name: found[name] for name in RETURNED_RESPONSE_HEADERS if name in found}


class UpstreamReply:
    """Mavera's answer with its headers in and its body still to come.

    Reading the body raises only GatewayErrors; `aclose` gives the connection back.
    """

    def __init__(
        self, response: TransportResponse, read_timeout_s: float, scrubber: Scrubber
    ) -> None:
        self._response = response
        self._read_timeout_s = read_timeout_s
        self._scrubber = scrubber
        self.status_code = response.status_code
        self.headers = returned_headers(response.headers)
        if self.status_code >= 400:
            self.headers = {k: scrubber.text(v) for k, v in self.headers.items()}

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as Mavera sends it."""
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except TransportError as exc:
            raise self._cut(exc) from None

    def _cut(self, exc: TransportError) -> GatewayError:
        if isinstance(exc, ReadTimeout):
            return UpstreamTimeout(
                f"Mavera sent nothing for {self._read_timeout_s:g} s in the middle of its answer"
            )
        return UpstreamStreamCut(f"Mavera cut its answer short: {exc}")

    async def read(self) -> bytes:
        """The whole body, given back with the connection afterwards.

        An error body (4xx) is bounded, scrubbed of keys and put in the OpenAI error shape;
        `headers` then says it is JSON.
        """
        if self.status_code < 400:
            try:
                return await self._response.aread()  # the hot path: no generator of ours on top
            except TransportError as exc:
                raise self._cut(exc) from None
            finally:
                await self.aclose()
        raw = bytearray()
        try:
            async for chunk in self.chunks():
                raw += chunk
                if len(raw) > MAX_ERROR_BODY_BYTES:
                    break  # the rest is not worth reading; the connection is dropped
        finally:
            await self.aclose()
        self.headers["content-type"] = "application/json"
        return error_body(self.status_code, bytes(raw[:MAX_ERROR_BODY_BYTES]), self._scrubber)

    async def aclose(self) -> None:
        """Give the connection back (or drop it, if the answer did not end cleanly)."""
        await self._response.aclose()


class Upstream:
    """Sends requests to Mavera and turns failures into the gateway's errors."""

    def __init__(self, settings: UpstreamSettings, transport: Transport | None = None) -> None:
        self.settings = settings
        self._api_key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.scrubber = Scrubber(self._api_key)
        self.transport: Transport = transport or Pool(
            settings.base_url,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            write_timeout_s=settings.write_timeout_s,
            pool_timeout_s=settings.pool_timeout_s,
            max_connections=settings.max_connections,
            keepalive_s=settings.keepalive_s,
            proxy_url=settings.proxy_url,
            ca_bundle=settings.ca_bundle,
        )

    async def open(
        self,
        method: str,
        endpoint: str,
        client_headers: Mapping[str, str],
        request_id: str,
        body: bytes = b"",
        params: Mapping[str, str] | None = None,
    ) -> UpstreamReply:
        """Send one request for `endpoint`; return Mavera's answer once its headers are in.

        Returns 2xx and passable 4xx answers; raises a GatewayError for the rest.
        """
        path = UPSTREAM_PATHS[endpoint]
        if params:
            path = f"{path}?{urlencode(params)}"
        headers = upstream_headers(client_headers, self._api_key, request_id).items()
        attempt = 0
        while True:
            try:
                response = await self.transport.request(method, path, headers, body)
            except ConnectFailed as exc:
                if attempt >= self.settings.max_retries:
                    raise self._translate(exc) from None
                delay = _backoff(attempt, None)
            except TransportError as exc:
                raise self._translate(exc) from None
            else:
                status = response.status_code
                if status < 500 and status != 401:
                    return UpstreamReply(response, self.settings.read_timeout_s, self.scrubber)
                if status not in RETRY_STATUSES or attempt >= self.settings.max_retries:
                    raise await _failure(response, self.scrubber)
                delay = _backoff(attempt, response.headers.get("retry-after"))
                await response.aclose()
            attempt += 1
            logger.info(
                "retrying upstream %s %s in %.2fs (attempt %d)", method, path, delay, attempt + 1
            )
            await asyncio.sleep(delay)

    async def fetch(
        self,
        method: str,
        endpoint: str,
        client_headers: Mapping[str, str],
        request_id: str,
        body: bytes = b"",
        params: Mapping[str, str] | None = None,
    ) -> tuple[UpstreamReply, bytes]:
        """A whole answer, within `total_timeout_s` for everything (retries included).

        The deadline is one timer that cancels this task: `asyncio.timeout` does the same with
        about 5 us more per request, and this runs for nearly every request.
        """
        limit = self.settings.total_timeout_s
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(limit, expire)
        try:
            reply = await self.open(method, endpoint, client_headers, request_id, body, params)
            return reply, await reply.read()
        except asyncio.CancelledError:
            if not expired:
                raise  # someone else's cancellation (a client gone, a shutdown): theirs to handle
            task.uncancel()
            raise UpstreamTimeout(f"Mavera did not finish answering within {limit:g} s") from None
        finally:
            timer.cancel()

    def _translate(self, exc: TransportError) -> GatewayError:
        """The GatewayError for a transport failure before any answer arrived."""
        if isinstance(exc, ConnectFailed):
            return UpstreamUnavailable(f"cannot reach Mavera at {self.settings.base_url}: {exc}")
        if isinstance(exc, PoolTimeout):
            return UpstreamBusy(
                f"all {self.settings.max_connections} connections to Mavera stayed busy for "
                f"{self.settings.pool_timeout_s:g} s; retry shortly",
                headers={"retry-after": str(BUSY_RETRY_AFTER_S)},
            )
        if isinstance(exc, ReadTimeout):
            return UpstreamTimeout(
                f"Mavera did not answer within {self.settings.read_timeout_s:g} s"
            )
        if isinstance(exc, WriteTimeout):
            return UpstreamTimeout(
                f"could not send the request to Mavera within {self.settings.write_timeout_s:g} s"
            )
        return UpstreamUnavailable(f"connection to Mavera failed: {exc}")

    async def aclose(self) -> None:
        """Close every connection."""
        await self.transport.aclose()


async def post_once(
    origin: str, path: str, headers: list[tuple[str, str]], content: bytes, timeout_s: float
) -> int:
    """POST `content` to `origin`/`path` on a connection of its own and return the answer's
    status: for the alert webhooks, which get the same TLS verification and proxy choice as
    Mavera's connection but none of its retries. UpstreamUnavailable when no status came back
    (its message names the host, never the path: a webhook's path can be its secret).
    """
    pool = Pool(
        origin,
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
        write_timeout_s=timeout_s,
        pool_timeout_s=timeout_s,
        max_connections=1,
        keepalive_s=0,  # one POST, then the connection closes
    )
    try:
        async with asyncio.timeout(timeout_s):
            response = await pool.request("POST", path, headers, content)
            await response.aclose()  # the answer's body says nothing the caller acts on
            return response.status_code
    except TimeoutError:
        raise UpstreamTimeout(f"no answer within {timeout_s:g} s") from None
    except TransportError as exc:
        raise UpstreamUnavailable(str(exc)) from None
    finally:
        await pool.aclose()


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), RETRY_MAX_DELAY_S)
        except ValueError:
            pass
    delay = min(RETRY_BASE_DELAY_S * (1 << attempt), RETRY_MAX_DELAY_S)
    return delay * (0.5 + random.random() / 2)


async def _failure(response: TransportResponse, scrubber: Scrubber) -> GatewayError:
    """The GatewayError for an upstream 401 or 5xx, quoting what the upstream said."""
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > MAX_ERROR_BODY_BYTES:
                break
    except TransportError:
        pass
    finally:
        await response.aclose()
    said = _upstream_message(scrubber.bytes(bytes(body[:MAX_ERROR_BODY_BYTES])))
    if response.status_code == 401:
        return UpstreamAuthFailed(
            "Mavera rejected the gateway's API key (the gateway operator must fix MAVERA_API_KEY; "
            f"your gateway key is fine): {said}"
        )
    return UpstreamUnavailable(f"Mavera answered {response.status_code}: {said}")


def _upstream_message(body: bytes) -> str:
    try:
        error = orjson.loads(body).get("error", {})
        return f"{error.get('code')}: {str(error.get('message'))[:500]}"
    except (orjson.JSONDecodeError, AttributeError):
        return body[:200].decode("utf-8", "replace") or "no body"
