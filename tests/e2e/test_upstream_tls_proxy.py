"""The whole gateway against a TLS upstream (the simulator behind a private CA), directly and
through an egress proxy, configured the way an operator configures it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from app.background import BackgroundServer
from app.simulator import Simulator
from tests.conftest import UPSTREAM_KEY, GatewayFactory
from tests.upstream_servers import ProxyLog, http_proxy

HI = [{"role": "user", "content": "hi"}]
NAME = "mavera.internal.test"  # only the test proxy knows it: it maps every name to 127.0.0.1


@pytest.fixture
def tls_simulator(ca: trustme.CA, tmp_path: Path) -> Iterator[tuple[Simulator, int]]:
    """The simulator over HTTPS, with a certificate for 127.0.0.1 and NAME from the test CA."""
    cert = ca.issue_cert("127.0.0.1", NAME)
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    sim = Simulator(api_keys={UPSTREAM_KEY})
    with BackgroundServer(
        sim.app, ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)
    ) as server:
        yield sim, server.port


@contextlib.contextmanager
def proxy_in_thread() -> Iterator[ProxyLog]:
    """tests.upstream_servers' recording forward proxy, on a loop of its own thread."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"] = stop
        async with http_proxy() as log:
            box["log"] = log
            ready.set()
            await stop.wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(5), "the proxy did not start"
    try:
        log = box["log"]
        assert isinstance(log, ProxyLog)
        yield log
    finally:
        stop = box["stop"]
        assert isinstance(stop, asyncio.Event)
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        loop.close()


def _chat(url: str, stream: bool = False) -> httpx.Response:
    body = {"model": "mavera-1", "messages": HI, "stream": stream}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=20)


def test_a_tls_upstream_with_a_private_ca(
    make_gateway: GatewayFactory, tls_simulator: tuple[Simulator, int], ca_file: str
) -> None:
    sim, port = tls_simulator
    base = f"https://127.0.0.1:{port}/api/v1"
    gateway = make_gateway(upstream={"base_url": base, "ca_bundle": ca_file})
    assert _chat(gateway.url).status_code == 200
    streamed = _chat(gateway.url, stream=True)
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    assert len(sim.records) == 2 and sim.records[0].api_key == UPSTREAM_KEY


def test_an_untrusted_upstream_certificate_is_refused(
    make_gateway: GatewayFactory, tls_simulator: tuple[Simulator, int]
) -> None:
    sim, port = tls_simulator
    gateway = make_gateway(upstream={"base_url": f"https://127.0.0.1:{port}/api/v1"})
    response = _chat(gateway.url)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert "certificate" in error["message"].lower()
    assert sim.records == [], "nothing was sent over an unverified connection"


def test_through_an_egress_proxy_from_https_proxy(
    make_gateway: GatewayFactory,
    tls_simulator: tuple[Simulator, int],
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, port = tls_simulator
    with proxy_in_thread() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://gw:secret@127.0.0.1:{proxy.port}")
        base = f"https://{NAME}:{port}/api/v1"
        gateway = make_gateway(upstream={"base_url": base, "ca_bundle": ca_file})
        assert _chat(gateway.url).status_code == 200
        assert _chat(gateway.url, stream=True).status_code == 200
    assert proxy.connect_lines == [f"CONNECT {NAME}:{port} HTTP/1.1"], "one tunnel, reused"
    assert proxy.authorizations == ["Basic Z3c6c2VjcmV0"]  # gw:secret
    assert len(sim.records) == 2
    assert "proxy-authorization" not in sim.records[0].headers


def test_no_proxy_sends_the_upstream_direct(
    make_gateway: GatewayFactory,
    tls_simulator: tuple[Simulator, int],
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, port = tls_simulator
    with proxy_in_thread() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        base = f"https://127.0.0.1:{port}/api/v1"
        gateway = make_gateway(upstream={"base_url": base, "ca_bundle": ca_file})
        assert _chat(gateway.url).status_code == 200
    assert proxy.connect_lines == [] and len(sim.records) == 1
