"""The upstream boundary against a fake transport: headers, paths, retries, error mapping.

Outgoing headers are built from an allow-list; only a few upstream headers come back. A request
is retried only when it provably never reached Mavera (no connection) or Mavera said 502/503;
every transport failure becomes one GatewayError.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest
from starlette.datastructures import Headers

from app.config_sections import UpstreamSettings
from app.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamBusy,
    UpstreamStreamCut,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.http1 import ConnectFailed, PoolTimeout, ProtocolFailed, ReadTimeout, WriteTimeout
from app.upstream import Upstream, returned_headers, upstream_headers

KEY = "mvra_live_" + "k" * 30

CLIENT_HEADERS = Headers(
    raw=[
        (name.lower().encode(), value.encode())
        for name, value in [
            ("Authorization", "Bearer mgw_client_key"),
            ("Cookie", "session=abc"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Real-IP", "10.0.0.1"),
            ("Forwarded", "for=10.0.0.1"),
            ("OpenAI-Organization", "org-123"),
            ("OpenAI-Project", "proj-123"),
            ("X-Stainless-Lang", "python"),
            ("X-Stainless-Package-Version", "1.50.0"),
            ("X-Stainless-Retry-Count", "0"),
            ("X-Mavera-Persona", "p-header"),
            ("X-Request-ID", "client-chosen-id"),
            ("Accept-Encoding", "gzip, br"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "123"),
            ("Host", "gateway.local"),
            ("Proxy-Authorization", "Basic xyz"),
            ("Accept", "text/event-stream"),
            ("User-Agent", "OpenAI/Python 1.50.0"),
            ("Accept-Language", "de"),
        ]
    ]
)


def build() -> dict[str, str]:
    return upstream_headers(CLIENT_HEADERS, KEY, "req_ours")


def test_exact_outgoing_headers() -> None:
    assert build() == {
        "accept": "text/event-stream",
        "accept-language": "de",
        "user-agent": "OpenAI/Python 1.50.0",
        "authorization": f"Bearer {KEY}",
        "content-type": "application/json",
        "accept-encoding": "identity",
        "x-request-id": "req_ours",
    }


def test_client_credentials_and_identity_are_not_forwarded() -> None:
    headers = build()
    values = " ".join(headers.values())
    for secret in ("mgw_client_key", "session=abc", "10.0.0.1", "org-123", "proj-123", "xyz"):
        assert secret not in values
    lowered = {name.lower() for name in headers}
    for name in (
        "cookie",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "openai-organization",
        "openai-project",
        "x-mavera-persona",
        "proxy-authorization",
        "host",
        "content-length",
    ):
        assert name not in lowered
    assert not any(name.startswith("x-stainless") for name in lowered)


def test_authorization_is_the_mavera_key() -> None:
    assert build()["authorization"] == f"Bearer {KEY}"


def test_request_id_is_ours_and_encoding_is_identity() -> None:
    headers = build()
    assert headers["x-request-id"] == "req_ours"
    assert headers["accept-encoding"] == "identity"
    assert headers["content-type"] == "application/json"


def test_minimal_client_headers() -> None:
    assert upstream_headers({}, KEY, "r1") == {
        "authorization": f"Bearer {KEY}",
        "content-type": "application/json",
        "accept-encoding": "identity",
        "x-request-id": "r1",
    }


def test_returned_headers_keep_only_the_allow_list() -> None:
    response = httpx.Response(
        429,
        headers=[
            ("Content-Type", "application/json"),
            ("Retry-After", "3"),
            ("X-RateLimit-Limit", "100"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", "1700000000"),
            ("Set-Cookie", "upstream=1"),
            ("Server", "nginx"),
            ("Content-Length", "42"),
            ("Content-Encoding", "gzip"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive"),
            ("X-Request-ID", "upstream-id"),
            ("Via", "1.1 proxy"),
        ],
    )
    assert returned_headers(response.headers) == {
        "content-type": "application/json",
        "retry-after": "3",
        "x-ratelimit-limit": "100",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "1700000000",
    }


def test_returned_headers_when_upstream_sends_none_of_them() -> None:
    response = httpx.Response(200, headers={"Server": "x", "Set-Cookie": "a=b"})
    assert returned_headers(response.headers) == {}


def test_returned_event_stream_content_type() -> None:
    response = httpx.Response(200, headers={"content-type": "text/event-stream; charset=utf-8"})
    assert returned_headers(response.headers) == {
        "content-type": "text/event-stream; charset=utf-8"
    }


# --- retries and error mapping against a fake transport --------------------------------------


class FakeResponse:
    def __init__(
        self,
        status: int,
        body: bytes = b"{}",
        headers: dict[str, str] | None = None,
        failure: Exception | None = None,
        hang: bool = False,
    ) -> None:
        self.status_code = status
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.body = body
        self.failure = failure
        self.hang = hang
        self.closed = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        yield self.body
        if self.hang:
            await asyncio.Event().wait()
        if self.failure is not None:
            raise self.failure

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        self.closed = True


class FakeTransport:
    """Plays one outcome (a response or a transport error) per request, and records requests."""

    def __init__(self, *outcomes: FakeResponse | Exception) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    async def request(
        self, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> FakeResponse:
        self.requests.append((method, path, dict(headers), body))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        pass


def upstream(transport: FakeTransport, **settings: Any) -> Upstream:
    options: dict[str, Any] = {"api_key": KEY, "max_retries": 2, **settings}
    return Upstream(UpstreamSettings(**options), transport)  # type: ignore[arg-type]


def open_chat(up: Upstream) -> Any:
    return asyncio.run(up.open("POST", "chat.completions", {}, "req-1", b"{}"))


def failure_of(up: Upstream) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        open_chat(up)
    return caught.value


def test_paths_and_the_key_are_the_upstreams_own() -> None:
    transport = FakeTransport(FakeResponse(200), FakeResponse(200))
    up = upstream(transport)
    open_chat(up)
    asyncio.run(up.open("GET", "personas", {}, "req-2", params={"custom": "true"}))
    assert [r[1] for r in transport.requests] == ["chat/completions", "personas?custom=true"]
    assert transport.requests[0][2]["authorization"] == f"Bearer {KEY}"


def test_connect_failures_are_retried_then_succeed() -> None:
    transport = FakeTransport(ConnectFailed("refused"), ConnectFailed("refused"), FakeResponse(200))
    reply = open_chat(upstream(transport))
    assert reply.status_code == 200
    assert len(transport.requests) == 3


def test_connect_failures_beyond_the_retries_are_502_unavailable() -> None:
    transport = FakeTransport(*[ConnectFailed("connection refused")] * 3)
    error = failure_of(upstream(transport))
    assert isinstance(error, UpstreamUnavailable)
    assert (error.status, error.code) == (502, "upstream_unavailable")
    assert "cannot reach Mavera" in error.message and "connection refused" in error.message
    assert len(transport.requests) == 3


@pytest.mark.parametrize(
    ("failure", "kind", "status", "code"),
    [
        (ProtocolFailed("upstream closed the connection"), UpstreamUnavailable, 502, None),
        (ReadTimeout("nothing for 120 s"), UpstreamTimeout, 504, "upstream_timeout"),
        (WriteTimeout("could not write"), UpstreamTimeout, 504, "upstream_timeout"),
        (PoolTimeout("all busy"), UpstreamBusy, 503, "upstream_busy"),
    ],
    ids=["written-then-closed", "read-timeout", "write-timeout", "pool-busy"],
)
def test_a_request_that_may_have_left_is_never_sent_again(
    failure: Exception, kind: type[GatewayError], status: int, code: str | None
) -> None:
    transport = FakeTransport(failure, FakeResponse(200))
    error = failure_of(upstream(transport))
    assert isinstance(error, kind)
    assert error.status == status
    assert code is None or error.code == code
    assert len(transport.requests) == 1, "a POST that may have reached Mavera is not replayed"


def test_a_busy_pool_says_when_to_retry_and_is_booked_as_rejected() -> None:
    error = failure_of(upstream(FakeTransport(PoolTimeout("busy")), pool_timeout_s=0.5))
    assert error.headers["retry-after"] == "1"
    assert error.outcome == "rejected"
    assert "0.5 s" in error.message


def test_503_is_retried_honouring_retry_after() -> None:
    busy = FakeResponse(503, headers={"retry-after": "0"})
    transport = FakeTransport(busy, FakeResponse(200))
    assert open_chat(upstream(transport)).status_code == 200
    assert len(transport.requests) == 2
    assert busy.closed


def test_500_is_not_retried_and_quotes_mavera_without_the_key() -> None:
    said = b'{"error": {"code": "boom", "message": "failed for mvra_live_abcdefgh12345678"}}'
    transport = FakeTransport(FakeResponse(500, said))
    error = failure_of(upstream(transport))
    assert isinstance(error, UpstreamUnavailable)
    assert "Mavera answered 500: boom" in error.message
    assert "abcdefgh12345678" not in error.message
    assert len(transport.requests) == 1


def test_401_is_the_gateways_key_not_the_clients() -> None:
    error = failure_of(upstream(FakeTransport(FakeResponse(401, b"{}"))))
    assert isinstance(error, UpstreamAuthFailed)
    assert (error.status, error.code) == (502, "upstream_auth_failed")


@pytest.mark.parametrize("status", [400, 402, 404, 429])
def test_mavera_4xx_answers_are_handed_back(status: int) -> None:
    assert open_chat(upstream(FakeTransport(FakeResponse(status)))).status_code == status


def test_a_body_cut_short_is_a_stream_cut_and_a_quiet_body_a_timeout() -> None:
    cut = FakeResponse(200, b"data: {}\n\n", failure=ProtocolFailed("closed mid-body"))
    reply = open_chat(upstream(FakeTransport(cut)))
    with pytest.raises(UpstreamStreamCut, match="closed mid-body"):
        asyncio.run(reply.read())
    assert cut.closed
    quiet = FakeResponse(200, b"", failure=ReadTimeout("quiet"))
    reply = open_chat(upstream(FakeTransport(quiet), read_timeout_s=7))
    with pytest.raises(UpstreamTimeout, match="7 s"):
        asyncio.run(reply.read())


def test_a_non_streaming_answer_has_a_total_deadline() -> None:
    slow = FakeResponse(200, b'{"partial":', hang=True)
    up = upstream(FakeTransport(slow), total_timeout_s=0.2)
    with pytest.raises(UpstreamTimeout, match="within 0.2 s"):
        asyncio.run(up.fetch("POST", "chat.completions", {}, "req-1", b"{}"))
    assert slow.closed
