"""The upstream HTTP/1.1 client against scripted raw-socket servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from app.http1 import ConnectFailed, Pool, ProtocolFailed, ReadTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def _run(
    handler: Handler, test: Callable[[Pool, list[bytes]], Awaitable[None]], **pool: float
) -> None:
    async def main() -> None:
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    seen.append(await _read_request(reader))
                    await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        options = {"connect_timeout_s": 2.0, "read_timeout_s": 2.0, "max_connections": 4.0}
        options.update(pool)
        client = Pool(
            f"http://127.0.0.1:{port}/api/v1",
            connect_timeout_s=options["connect_timeout_s"],
            read_timeout_s=options["read_timeout_s"],
            max_connections=int(options["max_connections"]),
        )
        try:
            await test(client, seen)
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def _json_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    )
    await writer.drain()


def test_request_line_headers_body_and_keep_alive() -> None:
    async def test(pool: Pool, seen: list[bytes]) -> None:
        for _ in range(3):
            response = await pool.request("POST", "chat/completions", [("x-a", "1")], b'{"a":1}')
            assert (response.status_code, await response.aread()) == (200, b"{}")
            assert response.headers["content-type"] == "application/json"
            await response.aclose()
        assert seen[0].startswith(b"POST /api/v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nx-a: 1\r\n" in seen[0] and seen[0].endswith(b'\r\n\r\n{"a":1}')
        assert len(pool._idle) == 1, "one connection should have served all three"

    _run(_json_ok, test)


def test_chunked_stream_arrives_chunk_by_chunk() -> None:
    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def test(pool: Pool, seen: list[bytes]) -> None:
        response = await pool.request("POST", "responses", [], b"{}")
        chunks = [chunk async for chunk in response.aiter_raw()]
        assert chunks == [b"data: 1\n\n", b"data: 2\n\n"]
        await response.aclose()

    _run(stream, test)


def test_read_timeout_waiting_for_headers() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def test(pool: Pool, seen: list[bytes]) -> None:
        with pytest.raises(ReadTimeout):
            await pool.request("POST", "responses", [], b"{}")
        assert pool._idle == []

    _run(silent, test, read_timeout_s=0.2)


def test_connection_closed_mid_body_is_a_protocol_failure() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()
        raise ConnectionError

    async def test(pool: Pool, seen: list[bytes]) -> None:
        response = await pool.request("POST", "responses", [], b"{}")
        with pytest.raises(ProtocolFailed):
            await response.aread()
        await response.aclose()

    _run(cut, test)


def test_a_kept_alive_connection_the_server_dropped_is_replaced() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()  # no keep-alive announced, but the socket closes right after
        raise ConnectionError

    async def test(pool: Pool, seen: list[bytes]) -> None:
        for _ in range(3):
            response = await pool.request("POST", "responses", [], b"{}")
            assert await response.aread() == b"{}"
            await response.aclose()
            await asyncio.sleep(0.05)
        assert len(seen) == 3

    _run(once, test)


def test_connect_failure() -> None:
    async def main() -> None:
        pool = Pool(
            "http://127.0.0.1:9/api/v1", connect_timeout_s=1, read_timeout_s=1, max_connections=2
        )
        with pytest.raises(ConnectFailed):
            await pool.request("POST", "responses", [], b"{}")
        with pytest.raises(ConnectFailed):  # the failed attempt gave its slot back
            await pool.request("POST", "responses", [], b"{}")
        with pytest.raises(ConnectFailed):
            await pool.request("POST", "responses", [], b"{}")

    asyncio.run(main())


def test_pool_limit_waits_for_a_free_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.1)
        await _json_ok(reader, writer)

    async def test(pool: Pool, seen: list[bytes]) -> None:
        async def one() -> bytes:
            response = await pool.request("POST", "responses", [], b"{}")
            body = await response.aread()
            await response.aclose()
            return body

        bodies = await asyncio.gather(*(one() for _ in range(6)))
        assert bodies == [b"{}"] * 6

    _run(slow, test, max_connections=2)
