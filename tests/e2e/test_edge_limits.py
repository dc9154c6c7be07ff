"""Limits at the connection, before authentication (issue 9; app.edge), on raw sockets against a
running gateway: what the client sees, that nothing went upstream, and which requests the ledger
has (those that reached the app) and which only the edge refusal counter has (the others)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from app.auth import key_digest
from tests.conftest import GatewayFactory, RunningGateway, free_port
from tests.processes import GatewayProcess, gateway_env
from tests.rawhttp import MIB, answered, connect, read_reply, read_response, send

POST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
BODY = b'{"model": "mavera-1", "messages": [{"role": "user", "content": "hi"}]}'
ALICE_KEY = "mgw_alice_edge_test_key_0123456789abcdef"
ADMIN_KEY = "admin-key-for-edge-tests-0123456789"


def _refusals(gateway: RunningGateway, reason: str) -> float:
    """The edge refusal counter for `reason`, as /metrics shows it."""
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'mavera_gateway_edge_refusals_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _get(path: bytes, *fields: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n" + b"".join(fields) + b"\r\n"


def test_a_16_mib_header_gets_431_and_goes_nowhere(gateway: RunningGateway) -> None:
    pieces = [*(b"a" * MIB for _ in range(16)), b"\r\ncontent-length: %d\r\n\r\n" % len(BODY)]
    reply = send(gateway.server.port, POST + b"x-big: ", [*pieces, BODY])
    assert reply.status == 431
    assert reply.error()["type"] == "invalid_request_error"
    assert reply.headers["connection"] == "close"
    assert reply.ended in ("closed", "reset")
    assert gateway.sim.records == []
    assert gateway.records() == []
    assert _refusals(gateway, "header_too_large") == 1


def test_header_field_count_and_size_limits(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(server={"max_headers": 20, "max_header_bytes": 2048})
    port = gateway.server.port
    fields = [b"x-f%d: v\r\n" % i for i in range(19)]  # with host: 20 fields
    assert send(port, _get(b"/healthz", *fields)).status == 200
    too_many = send(port, _get(b"/healthz", *fields, b"x-one-more: v\r\n"))
    assert too_many.status == 431
    assert "20 fields" in too_many.error()["message"]
    assert send(port, _get(b"/healthz", b"x-fill: " + b"f" * 1900 + b"\r\n")).status == 200
    assert send(port, _get(b"/healthz", b"x-fill: " + b"f" * 2100 + b"\r\n")).status == 431
    # headers arriving in many small reads are counted as a whole, not per read
    with connect(port) as sock:
        request = _get(b"/healthz", b"x-fill: " + b"f" * 1900 + b"\r\n")
        for start in range(0, len(request), 100):
            sock.sendall(request[start : start + 100])
            time.sleep(0.002)
        assert read_response(sock).status == 200
    assert gateway.sim.records == []


def test_headers_sent_one_byte_at_a_time_get_408(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(server={"header_timeout_s": 0.5})
    request = POST + b"x-slow: " + b"s" * 400 + b"\r\n\r\n"
    with connect(gateway.server.port) as sock:
        for byte in request:  # 0.05 s a byte: 25 s for all of it, far past the deadline
            if answered(sock, 0.05):
                break
            sock.sendall(bytes([byte]))
        else:
            pytest.fail("the gateway let the headers drip in for 25 s")
        reply = read_reply(sock)
    assert reply.status == 408
    assert reply.error()["code"] == "request_timeout"
    assert reply.ended == "closed"
    assert gateway.sim.records == []
    assert gateway.records() == []


def test_connections_that_never_send_a_byte_are_closed(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(server={"header_timeout_s": 0.5})
    socks = [connect(gateway.server.port) for _ in range(20)]
    try:
        replies = [read_reply(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert {(r.status, r.body, r.ended) for r in replies} == {(0, b"", "closed")}
    assert _refusals(gateway, "idle_connection") == 20


def test_an_idle_keep_alive_connection_is_closed(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(server={"keepalive_timeout_s": 0.3})
    with connect(gateway.server.port) as sock:
        sock.sendall(_get(b"/healthz"))
        assert read_response(sock).status == 200
        sock.sendall(_get(b"/healthz"))
        assert read_response(sock).status == 200, "the connection is reused while active"
        sock.settimeout(3)  # ten times the setting; uvicorn's own default would be 5 s
        assert read_reply(sock).ended == "closed"


def test_a_body_sent_too_slowly_gets_408_and_a_record(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(server={"body_timeout_s": 0.5})
    with connect(gateway.server.port) as sock:
        sock.sendall(POST + b"content-length: %d\r\n\r\n" % len(BODY) + BODY[:10])
        reply = read_reply(sock)
    assert reply.status == 408
    assert reply.error()["code"] == "request_timeout"
    assert gateway.sim.records == []
    [record] = gateway.records()
    assert (record["status"], record["outcome"]) == (408, "client_error")
    assert record["error_code"] == "request_timeout"


def test_a_declared_oversize_body_gets_413_and_is_not_read(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(server={"max_body_bytes": 64 * 1024})
    head = POST + b"content-length: %d\r\n\r\n" % (64 * MIB)
    reply = send(gateway.server.port, head, (b"x" * MIB for _ in range(64)))
    assert reply.status == 413
    assert reply.headers["connection"] == "close"
    assert reply.error()["type"] == "invalid_request_error"
    assert reply.sent < 64 * MIB, "the gateway read the whole body it had refused"
    expect = POST + b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % (64 * MIB)
    assert send(gateway.server.port, expect).status == 413, "no 100 Continue for a refused body"
    assert gateway.sim.records == []
    assert [(r["status"], r["outcome"]) for r in gateway.records()] == [(413, "client_error")] * 2


def test_a_chunked_upload_past_the_limit_gets_413_then_a_clean_close(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(server={"max_body_bytes": 64 * 1024})
    chunk = b"2000\r\n" + b"x" * 0x2000 + b"\r\n"
    with connect(gateway.server.port) as sock:
        sock.sendall(POST + b"transfer-encoding: chunked\r\n\r\n")
        for _ in range(8192):  # up to 64 MiB, watching for the answer as curl does
            if answered(sock, 0.01):
                break
            sock.sendall(chunk)
        sock.sendall(chunk)  # what was on its way when the answer came
        reply = read_reply(sock)
    assert reply.status == 413
    assert reply.error()["type"] == "invalid_request_error"
    assert reply.ended == "closed", "the 413 must be followed by a close, not a reset"
    assert gateway.sim.records == []
    assert [r["status"] for r in gateway.records()] == [413]


def test_the_sdk_sending_far_more_than_the_limit_still_reads_the_413(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(server={"max_body_bytes": 64 * 1024})
    huge = [{"role": "user", "content": "x" * (16 * MIB)}]
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().chat.completions.create(model="mavera-1", messages=huge)
    assert caught.value.status_code == 413
    assert gateway.sim.records == []


def test_admin_bodies_over_the_limit_get_413_from_the_server(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(server={"max_body_bytes": 4096}, admin={"key": ADMIN_KEY})
    admin = b"POST /admin/keys HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n" % (
        ADMIN_KEY.encode()
    )
    declared = send(gateway.server.port, admin + b"content-length: %d\r\n\r\n" % MIB)
    assert declared.status == 413
    chunks = (b"1000\r\n" + b" " * 0x1000 + b"\r\n" for _ in range(256))
    chunked = send(gateway.server.port, admin + b"transfer-encoding: chunked\r\n\r\n", chunks)
    assert chunked.status == 413
    assert chunked.error()["type"] == "invalid_request_error"
    keys = httpx.get(
        gateway.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    assert keys.json()["data"] == []
    assert _refusals(gateway, "body_too_large") == 2


@pytest.mark.parametrize(
    "path",
    [b"/v1/chat/completions/", b"/v1/responses/", b"/v1/models/", b"/healthz/", b"/admin/keys/"],
)
def test_a_trailing_slash_is_404_without_a_redirect(gateway: RunningGateway, path: bytes) -> None:
    for method in (b"POST", b"GET"):
        request = method + b" " + path + b" HTTP/1.1\r\nhost: evil.example\r\n"
        reply = send(gateway.server.port, request + b"connection: close\r\n\r\n")
        assert reply.status in (404, 405)
        assert "location" not in reply.headers
        assert reply.error()["type"] == "invalid_request_error"
    assert gateway.sim.records == []


def test_two_authorization_headers_are_refused(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(
        clients={"alice": {"key_sha256": key_digest(ALICE_KEY)}}, admin={"key": ADMIN_KEY}
    )
    alice = ("authorization", f"Bearer {ALICE_KEY}")
    chat = gateway.url + "/v1/chat/completions"
    for second in (alice, ("authorization", "Bearer mgw_someone_else")):
        answer = httpx.post(chat, headers=[alice, second], content=BODY)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
        assert "2 Authorization headers" in answer.json()["error"]["message"]
    assert httpx.post(chat, headers=[alice], content=BODY).is_success
    admin = ("authorization", f"Bearer {ADMIN_KEY}")
    twice = httpx.get(gateway.url + "/admin/keys", headers=[admin, admin])
    assert twice.status_code == 401
    assert "2 Authorization headers" in twice.json()["error"]["message"]
    assert httpx.get(gateway.url + "/admin/keys", headers=[admin]).status_code == 200
    assert len(gateway.sim.records) == 1
    assert [(r["client"], r["outcome"]) for r in gateway.records()] == [
        ("unknown", "rejected"),
        ("unknown", "rejected"),
        ("alice", "ok"),
    ]


def test_connections_beyond_max_connections_get_503(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(server={"max_connections": 3})
    held = [connect(gateway.server.port) for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(_get(b"/healthz"))
            assert read_response(sock).status == 200
        refused = send(gateway.server.port, _get(b"/healthz"))
        assert refused.status == 503
        assert refused.error()["code"] == "too_many_connections"
        assert refused.headers["retry-after"] == "1"
        held.pop().close()
        for _ in range(100):  # the gateway notices the close asynchronously
            if send(gateway.server.port, _get(b"/healthz", b"connection: close\r\n")).status == 200:
                break
            time.sleep(0.02)
        else:
            pytest.fail("a freed connection slot was never given to a new connection")
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nba\x01d: 1\r\n\r\n",
        b"BREW /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        b"hello\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
    ],
)
def test_malformed_requests_get_an_openai_shaped_400(
    gateway: RunningGateway, request_bytes: bytes
) -> None:
    reply = send(gateway.server.port, request_bytes)
    assert reply.status == 400
    assert "malformed HTTP request" in reply.error()["message"]
    assert reply.ended == "closed"


def test_upgrade_requests_are_served_as_http_1_1_then_closed(gateway: RunningGateway) -> None:
    upgrade = b"connection: upgrade\r\nupgrade: h2c\r\n"
    served = send(gateway.server.port, _get(b"/v1/models", upgrade))
    assert (served.status, served.ended) == (200, "closed")
    head = POST + upgrade + b"content-length: %d\r\n\r\n" % len(BODY)
    with_body = send(gateway.server.port, head + BODY)  # its body would be read as requests
    assert with_body.status == 400
    assert "Upgrade" in with_body.error()["message"]
    assert gateway.sim.records == []


def test_pipelined_requests_are_still_answered_in_order(gateway: RunningGateway) -> None:
    with connect(gateway.server.port) as sock:
        sock.sendall(_get(b"/healthz") + _get(b"/v1/models"))
        pending = bytearray()
        first, second = read_response(sock, pending), read_response(sock, pending)
    assert (first.status, second.status) == (200, 200)
    assert b"mavera-1" in second.body


def test_serve_applies_the_same_limits(tmp_path: Path) -> None:
    port = free_port()
    env = gateway_env(tmp_path, MAVERA_GATEWAY_SERVER__MAX_HEADER_BYTES="2048")
    args = ["serve", "--simulate", "--port", str(port)]
    process = GatewayProcess(args, env, tmp_path / "serve.log", port).start()
    try:
        process.wait_ready()
        reply = send(port, _get(b"/v1/models", b"x-fill: " + b"f" * 4096 + b"\r\n"))
        assert reply.status == 431
        assert reply.error()["type"] == "invalid_request_error"
        assert send(port, _get(b"/v1/models/", b"connection: close\r\n")).status == 404
    finally:
        process.stop()
