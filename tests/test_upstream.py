"""Outgoing headers are built from an allow-list; only a few upstream headers come back."""

from __future__ import annotations

import httpx
from starlette.datastructures import Headers

from app.upstream import returned_headers, upstream_headers

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
