"""The upstream client over TLS (a test CA from trustme) and through HTTP proxies (a local
recording proxy), on both event loops the gateway may run on."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from app.http1 import ConnectFailed, Pool
from app.http1.proxy import bypassed
from tests.upstream_servers import header, http_proxy, json_ok, origin, run

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
UPSTREAM_NAME = "app.mavera.test"  # reached only through the test proxy, which maps it to 127.0.0.1
CREDENTIALS = ("gw:user", "p@ss word")  # both need percent-encoding in a URL
ENCODED_USERINFO = "gw%3Auser:p%40ss%20word"


def server_tls(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server-side context with a certificate from `ca` for `names`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def make_pool(base_url: str, **options: Any) -> Pool:
    """A pool with short timeouts."""
    settings: dict[str, Any] = {
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "write_timeout_s": 2.0,
        "pool_timeout_s": 2.0,
        "max_connections": 4,
    }
    return Pool(base_url, **(settings | options))


async def post(pool: Pool) -> tuple[int, bytes]:
    """POST `{}` and read the whole answer."""
    response = await pool.request("POST", "chat/completions", [("x-request-id", "r1")], b"{}")
    try:
        return response.status_code, await response.aread()
    finally:
        await response.aclose()


async def refused(pool: Pool) -> str:
    """The ConnectFailed message a request gets."""
    with pytest.raises(ConnectFailed) as caught:
        await post(pool)
    return str(caught.value)


@LOOPS
def test_tls_with_a_private_ca_bundle(loop: str, ca: trustme.CA, ca_file: str) -> None:
    async def main() -> None:
        async with origin(json_ok, server_tls(ca, "127.0.0.1")) as seen:
            pool = make_pool(f"https://127.0.0.1:{seen.port}/api/v1", ca_bundle=ca_file)
            try:
                assert await post(pool) == (200, b"{}")
                assert await post(pool) == (200, b"{}")
            finally:
                await pool.aclose()
            assert seen.requests[0].startswith(b"POST /api/v1/chat/completions HTTP/1.1\r\n")
            assert seen.connections == 1, "the TLS connection is kept alive"

    run(main, loop)


def test_tls_trusts_ssl_cert_file(
    ca: trustme.CA, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)

    async def main() -> None:
        async with origin(json_ok, server_tls(ca, "localhost")) as seen:
            pool = make_pool(f"https://localhost:{seen.port}/api/v1")
            try:
                assert await post(pool) == (200, b"{}")
            finally:
                await pool.aclose()

    run(main)


@LOOPS
def test_an_untrusted_certificate_is_refused(
    loop: str, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the system store, which lacks the CA

    async def main() -> None:
        async with origin(json_ok, server_tls(ca, "127.0.0.1")) as seen:
            message = await refused(make_pool(f"https://127.0.0.1:{seen.port}/api/v1"))
            assert message.startswith("TLS certificate verification failed for 127.0.0.1: ")
            assert "(private CA? set [upstream] ca_bundle or SSL_CERT_FILE)" in message
            assert seen.requests == []

    run(main, loop)


@LOOPS
def test_a_certificate_for_another_name_is_refused(loop: str, ca: trustme.CA, ca_file: str) -> None:
    async def main() -> None:
        async with origin(json_ok, server_tls(ca, "other.example")) as seen:
            pool = make_pool(f"https://localhost:{seen.port}/api/v1", ca_bundle=ca_file)
            message = await refused(pool)
            assert "verification failed for localhost: Hostname mismatch" in message
            assert seen.requests == []

    run(main, loop)


@LOOPS
def test_a_close_delimited_body_over_tls(loop: str, ca: trustme.CA, ca_file: str) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()
        raise ConnectionError

    async def main() -> None:
        async with origin(until_close, server_tls(ca, "127.0.0.1")) as seen:
            pool = make_pool(f"https://127.0.0.1:{seen.port}", ca_bundle=ca_file)
            assert await post(pool) == (200, b"all of it")
            assert await post(pool) == (200, b"all of it")
            assert seen.connections == 2

    run(main, loop)


def test_an_unreadable_ca_bundle_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "not-pem.txt").write_text("hello")
    for path in (tmp_path / "missing.pem", tmp_path / "not-pem.txt"):
        with pytest.raises(ValueError, match=f"ca_bundle {path}: not a readable PEM file"):
            make_pool("https://app.mavera.io", ca_bundle=str(path))


@LOOPS
@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_https_goes_through_a_connect_tunnel(
    loop: str, variable: str, ca: trustme.CA, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with (
            origin(json_ok, server_tls(ca, UPSTREAM_NAME)) as seen,
            http_proxy() as proxy,
        ):
            monkeypatch.setenv(variable, f"http://{ENCODED_USERINFO}@127.0.0.1:{proxy.port}")
            base = f"https://{UPSTREAM_NAME}:{seen.port}/api/v1"
            pool = make_pool(base, ca_bundle=ca_file)
            try:
                assert await post(pool) == (200, b"{}")
                assert await post(pool) == (200, b"{}")
            finally:
                await pool.aclose()
        target = f"{UPSTREAM_NAME}:{seen.port}"
        assert proxy.connect_lines == [f"CONNECT {target} HTTP/1.1"], "one tunnel, kept alive"
        expected = base64.b64encode(":".join(CREDENTIALS).encode()).decode()
        assert proxy.authorizations == [f"Basic {expected}"]
        first = seen.requests[0]
        assert first.startswith(b"POST /api/v1/chat/completions HTTP/1.1\r\n")
        assert header(first, "host") == target
        assert header(first, "proxy-authorization") is None, "credentials stay with the proxy"

    run(main, loop)


def test_plain_http_through_a_proxy_uses_the_absolute_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        async with origin(json_ok) as seen, http_proxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://{ENCODED_USERINFO}@127.0.0.1:{proxy.port}")
            monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # for https only: unused
            pool = make_pool(f"http://{UPSTREAM_NAME}:{seen.port}/api/v1")
            try:
                assert await post(pool) == (200, b"{}")
            finally:
                await pool.aclose()
        url = f"http://{UPSTREAM_NAME}:{seen.port}/api/v1/chat/completions"
        assert proxy.request_lines == [f"POST {url} HTTP/1.1"]
        expected = base64.b64encode(":".join(CREDENTIALS).encode()).decode()
        assert proxy.authorizations == [f"Basic {expected}"]
        assert header(seen.requests[0], "host") == f"{UPSTREAM_NAME}:{seen.port}"

    run(main)


@pytest.mark.parametrize(
    ("no_proxy", "direct"),
    [
        ("*", True),
        ("localhost", True),
        (".localhost", True),
        ("example.com, LOCALHOST ", True),
        ("localhost:{port}", True),
        ("localhost:1", False),
        ("other.test,.example", False),
        ("", False),
    ],
)
def test_no_proxy_decides_what_goes_direct(
    no_proxy: str, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with origin(json_ok) as seen, http_proxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
            monkeypatch.setenv("NO_PROXY", no_proxy.format(port=seen.port))
            pool = make_pool(f"http://localhost:{seen.port}/api/v1")
            try:
                assert await post(pool) == (200, b"{}")
            finally:
                await pool.aclose()
        assert len(seen.requests) == 1
        assert proxy.request_lines == ([] if direct else [proxy.request_lines[0]])
        assert seen.requests[0].startswith(b"POST /api/v1/" if direct else b"POST http://")

    run(main)


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("app.mavera.io", 443, "mavera.io", True),
        ("app.mavera.io", 443, ".mavera.io", True),
        ("app.mavera.io", 443, "*.mavera.io", True),
        ("mavera.io", 443, ".mavera.io", True),
        ("evilmavera.io", 443, "mavera.io", False),
        ("app.mavera.io", 443, "app.mavera.io:443", True),
        ("app.mavera.io", 8443, "app.mavera.io:443", False),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("::1", 443, "::1", True),
        ("::1", 443, "[::1]:443", True),
        ("1password.com", 443, "1password.com", True),
        ("app.mavera.io", 443, " , ,", False),
    ],
)
def test_no_proxy_entries(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypassed(host, port, no_proxy) is expected


def test_an_explicit_proxy_url_overrides_the_environment(
    ca: trustme.CA, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "*")

    async def main() -> None:
        async with (
            origin(json_ok, server_tls(ca, UPSTREAM_NAME)) as seen,
            http_proxy() as proxy,
        ):
            base = f"https://{UPSTREAM_NAME}:{seen.port}"
            proxy_url = f"http://127.0.0.1:{proxy.port}"
            pool = make_pool(base, ca_bundle=ca_file, proxy_url=proxy_url)
            try:
                assert await post(pool) == (200, b"{}")
            finally:
                await pool.aclose()
        assert proxy.connect_lines == [f"CONNECT {UPSTREAM_NAME}:{seen.port} HTTP/1.1"]
        assert proxy.authorizations == [None]

    run(main)


def test_trust_env_false_ignores_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")

    async def main() -> None:
        async with origin(json_ok) as seen:
            pool = make_pool(f"http://127.0.0.1:{seen.port}", trust_env=False)
            try:
                assert await post(pool) == (200, b"{}")
            finally:
                await pool.aclose()

    run(main)


@LOOPS
def test_a_proxy_that_refuses_connect_is_a_connect_failure(loop: str) -> None:
    wanted = "Basic " + base64.b64encode(b"gw:right").decode()

    async def main() -> None:
        async with http_proxy(require_auth=wanted) as proxy:
            base = f"https://{UPSTREAM_NAME}"
            without = await refused(make_pool(base, proxy_url=f"http://127.0.0.1:{proxy.port}"))
            assert without == (
                f"proxy 127.0.0.1:{proxy.port} refused CONNECT to {UPSTREAM_NAME}:443: "
                "407 Proxy Authentication Required (put user:password@ in the proxy URL)"
            )
            wrong_url = f"http://gw:s3cret-wrong@127.0.0.1:{proxy.port}"
            wrong = await refused(make_pool(base, proxy_url=wrong_url))
            assert "407 Proxy Authentication Required (the proxy rejected the credentials" in wrong
            assert "s3cret-wrong" not in wrong

    run(main, loop)


def test_a_proxy_407_to_a_plain_http_request_is_a_connect_failure() -> None:
    async def main() -> None:
        async with http_proxy(require_auth="Basic Z3c6cmlnaHQ=") as proxy:
            pool = make_pool("http://app.mavera.test", proxy_url=f"http://127.0.0.1:{proxy.port}")
            message = await refused(pool)
            assert message.startswith(f"proxy 127.0.0.1:{proxy.port} refused the request to ")
            assert "407 Proxy Authentication Required" in message

    run(main)


def test_an_unreachable_proxy_is_named() -> None:
    async def main() -> None:
        pool = make_pool("https://app.mavera.test", proxy_url="http://127.0.0.1:9")
        assert (await refused(pool)).startswith("cannot connect to proxy 127.0.0.1:9: ")

    run(main)


@pytest.mark.parametrize("url", ["https://gw:s3cret@proxy:3128", "socks5://gw:s3cret@proxy:1080"])
def test_proxy_schemes_other_than_http_are_refused_at_start(url: str) -> None:
    with pytest.raises(ValueError, match="is not supported: give an http:// proxy") as caught:
        make_pool("https://app.mavera.io", proxy_url=url)
    assert "s3cret" not in str(caught.value)
