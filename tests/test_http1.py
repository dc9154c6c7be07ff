"""The upstream HTTP/1.1 client against scripted raw-socket servers: framing, keep-alive, the pool
limit, timeouts, and that a request is never sent twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.http1 import (
    ConnectFailed,
    Pool,
    PoolTimeout,
    ProtocolFailed,
    ReadTimeout,
    Response,
    WriteTimeout,
)
from tests.upstream_servers import Handler, Origin, json_ok, origin, run

Test = Callable[[Pool, Origin], Awaitable[None]]


def pool_for(port: int, **options: Any) -> Pool:
    """A pool on the test origin; the environment's proxy settings stay out of these tests."""
    settings: dict[str, Any] = {
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "write_timeout_s": 2.0,
        "pool_timeout_s": 2.0,
        "max_connections": 4,
        "trust_env": False,
    }
    return Pool(f"http://127.0.0.1:{port}/api/v1", **(settings | options))


def _run(handler: Handler, test: Test, **options: Any) -> None:
    async def main() -> None:
        async with origin(handler) as seen:
            pool = pool_for(seen.port, **options)
            try:
                await test(pool, seen)
            finally:
                await pool.aclose()

    run(main)


async def _post(pool: Pool, body: bytes = b"{}") -> tuple[Response, bytes]:
    response = await pool.request("POST", "chat/completions", [], body)
    try:
        return response, await response.aread()
    finally:
        await response.aclose()


async def _write(writer: asyncio.StreamWriter, *parts: bytes) -> None:
    writer.write(b"".join(parts))
    await writer.drain()


async def _answer_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _write(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
    writer.close()  # keep-alive was not refused, but the socket closes right after
    raise ConnectionError


def test_request_line_headers_body_and_keep_alive() -> None:
    async def test(pool: Pool, seen: Origin) -> None:
        for _ in range(3):
            response = await pool.request("POST", "chat/completions", [("x-a", "1")], b'{"a":1}')
            assert (response.status_code, await response.aread()) == (200, b"{}")
            assert response.headers["content-type"] == "application/json"
            await response.aclose()
        assert seen.requests[0].startswith(b"POST /api/v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nx-a: 1\r\n" in seen.requests[0]
        assert seen.requests[0].endswith(b'\r\n\r\n{"a":1}')
        assert seen.connections == 1, "one connection should have served all three"

    _run(json_ok, test)


def test_a_request_the_server_read_and_dropped_is_not_sent_again() -> None:
    answered = 0

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        if answered:
            writer.close()  # read the request (it may have run), then hang up without a word
            raise ConnectionError
        answered += 1
        await json_ok(reader, writer)

    async def test(pool: Pool, seen: Origin) -> None:
        await _post(pool, b'{"n":1}')
        with pytest.raises(ProtocolFailed, match="without answering"):
            await pool.request("POST", "chat/completions", [], b'{"n":2}')
        assert [request.endswith(b'{"n":2}') for request in seen.requests] == [False, True]
        assert seen.connections == 1, "the request must not have been tried on a new connection"

    _run(answer_once, test)


def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def test(pool: Pool, seen: Origin) -> None:
        for n in range(3):
            response, body = await _post(pool, b'{"n":%d}' % n)
            assert body == b"{}"
            await asyncio.sleep(0.05)  # the close reaches the client while the connection idles
        assert [request[-7:] for request in seen.requests] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        assert seen.connections == 3

    _run(_answer_then_hang_up, test)


def test_an_idle_connection_expires_after_keepalive_s() -> None:
    async def test(pool: Pool, seen: Origin) -> None:
        await _post(pool)
        await _post(pool)
        assert seen.connections == 1
        await asyncio.sleep(0.3)
        await _post(pool)
        assert (seen.connections, len(seen.requests)) == (2, 3)

    _run(json_ok, test, keepalive_s=0.1)


def test_idle_connections_past_keepalive_s_are_closed_without_a_new_request() -> None:
    async def test(pool: Pool, seen: Origin) -> None:
        await asyncio.gather(_post(pool), _post(pool))
        assert (seen.connections, seen.ended) == (2, 0)
        await asyncio.sleep(0.4)
        assert seen.ended == 2

    _run(json_ok, test, keepalive_s=0.1)


def test_a_shorter_server_keep_alive_timeout_is_honoured() -> None:
    async def one_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write(writer, b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=1, max=100\r\n")
        await _write(writer, b"content-length: 2\r\n\r\n{}")

    async def test(pool: Pool, seen: Origin) -> None:
        await _post(pool)
        await asyncio.sleep(0.7)  # past half the server's timeout, well inside keepalive_s
        await _post(pool)
        assert seen.connections == 2

    _run(one_second, test, keepalive_s=30.0)


def test_a_close_delimited_body_is_complete() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write(writer, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst, ")
        await _write(writer, b"then the rest")
        writer.close()
        raise ConnectionError

    async def test(pool: Pool, seen: Origin) -> None:
        response, body = await _post(pool)
        assert (response.status_code, body) == (200, b"first, then the rest")
        response, body = await _post(pool)  # and the closed connection was not reused
        assert body == b"first, then the rest" and seen.connections == 2

    _run(until_close, test)


def test_chunk_extensions_and_trailers() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write(writer, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n")
        await _write(writer, b"5;name=val\r\nhello\r\n", b'7;q="a b"\r\n, world\r\n')
        await _write(writer, b"0\r\nx-checksum: 99\r\nx-a: trailer\r\n\r\n")

    async def test(pool: Pool, seen: Origin) -> None:
        for _ in range(2):  # the connection stays usable after a body with trailers
            response, body = await _post(pool)
            assert body == b"hello, world"
            assert response.headers == {"transfer-encoding": "chunked", "x-a": "1"}
            assert response.trailers == {"x-checksum": "99", "x-a": "trailer"}
        assert seen.connections == 1

    _run(chunked, test)


def test_interim_responses_come_before_the_final_one() -> None:
    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write(writer, b"HTTP/1.1 100 Continue\r\n\r\n")
        await _write(writer, b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
        await _write(writer, b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone")

    async def test(pool: Pool, seen: Origin) -> None:
        for _ in range(2):
            response, body = await _post(pool)
            assert (response.status_code, body) == (201, b"done")
            assert response.headers == {"content-length": "4"}
        assert seen.connections == 1

    _run(hints, test)


def test_chunked_stream_arrives_chunk_by_chunk() -> None:
    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write(writer, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            await _write(writer, b"%x\r\n%s\r\n" % (len(part), part))
            await asyncio.sleep(0.05)
        await _write(writer, b"0\r\n\r\n")

    async def test(pool: Pool, seen: Origin) -> None:
        response = await pool.request("POST", "responses", [], b"{}")
        chunks = [chunk async for chunk in response.aiter_raw()]
        assert chunks == [b"data: 1\n\n", b"data: 2\n\n"]
        await response.aclose()

    _run(stream, test)


def test_a_finished_connection_goes_to_the_next_waiter() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.02)
        await json_ok(reader, writer)

    async def test(pool: Pool, seen: Origin) -> None:
        results = await asyncio.gather(*(_post(pool) for _ in range(6)))
        assert [body for _, body in results] == [b"{}"] * 6
        assert (seen.connections, len(seen.requests)) == (1, 6)

    _run(slow, test, max_connections=1)


def test_no_free_connection_within_pool_timeout_s_is_a_pool_timeout() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        await json_ok(reader, writer)

    async def test(pool: Pool, seen: Origin) -> None:
        first = asyncio.ensure_future(_post(pool))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolTimeout, match="all 1 upstream connections stayed busy") as caught:
            await pool.request("POST", "chat/completions", [], b"{}")
        assert not isinstance(caught.value, ConnectFailed)
        assert len(seen.requests) == 1, "the timed-out request was never sent"
        release.set()
        assert (await first)[1] == b"{}"
        assert (await _post(pool))[1] == b"{}"
        assert seen.connections == 1

    _run(held, test, max_connections=1, pool_timeout_s=0.2)


def test_a_cancelled_waiter_leaves_its_turn_to_the_next() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        await json_ok(reader, writer)

    async def test(pool: Pool, seen: Origin) -> None:
        first = asyncio.ensure_future(_post(pool))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(_post(pool))
        await asyncio.sleep(0.05)
        waiting.cancel()
        release.set()
        await first
        assert (await _post(pool))[1] == b"{}"
        assert waiting.cancelled() and (seen.connections, len(seen.requests)) == (1, 2)

    _run(held, test, max_connections=1)


def test_a_server_that_does_not_read_is_a_write_timeout() -> None:
    async def test(pool: Pool, seen: Origin) -> None:
        with pytest.raises(WriteTimeout, match="never took the request within 0.3 s"):
            await pool.request("POST", "chat/completions", [], b"x" * (64 << 20))

    async def main() -> None:
        stalled: list[asyncio.StreamWriter] = []

        async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stalled.append(writer)

        server = await asyncio.start_server(never_read, "127.0.0.1", 0)
        pool = pool_for(server.sockets[0].getsockname()[1], write_timeout_s=0.3)
        try:
            await test(pool, Origin(0))
        finally:
            await pool.aclose()
            for writer in stalled:
                writer.close()
            server.close()
            await server.wait_closed()

    run(main)


def test_read_timeout_waiting_for_headers() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def test(pool: Pool, seen: Origin) -> None:
        with pytest.raises(ReadTimeout, match="sent anything within 0.2 s"):
            await pool.request("POST", "responses", [], b"{}")

    _run(silent, test, read_timeout_s=0.2)


def test_connection_closed_mid_body_is_a_protocol_failure() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        writer.close()
        raise ConnectionError

    async def test(pool: Pool, seen: Origin) -> None:
        response = await pool.request("POST", "responses", [], b"{}")
        with pytest.raises(ProtocolFailed, match="mid-body"):
            await response.aread()
        await response.aclose()

    _run(cut, test)


def test_a_response_that_does_not_parse_is_a_protocol_failure() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _write(writer, b"SMTP ready\r\n\r\n")

    async def test(pool: Pool, seen: Origin) -> None:
        with pytest.raises(ProtocolFailed, match="unparsable"):
            await pool.request("POST", "responses", [], b"{}")

    _run(garbage, test)


def test_connect_failure_gives_the_slot_back() -> None:
    async def main() -> None:
        pool = pool_for(9, max_connections=1)
        for _ in range(3):  # each failed attempt gave its slot back, or the third would wait
            with pytest.raises(ConnectFailed, match="cannot connect to 127.0.0.1:9"):
                await pool.request("POST", "responses", [], b"{}")

    run(main)
