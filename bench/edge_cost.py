"""What app.edge costs per request: uvicorn's httptools protocol against EdgeProtocol.

    python -m bench.edge_cost [--requests N] [--rounds R]

Both protocols parse the same keep-alive POST (an OpenAI SDK's headers and a small body) from a
transport that only records writes, and run a trivial ASGI app, so the difference is the
protocol's own work: header and body counting, the deadlines, the response transport.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.config_sections import ServerSettings
from app.edge import protocol_class

REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8080\r\naccept: application/json\r\n"
    b"accept-encoding: gzip, deflate\r\nconnection: keep-alive\r\nuser-agent: OpenAI/Python 1.0\r\n"
    b"x-stainless-lang: python\r\nx-stainless-os: Linux\r\nauthorization: Bearer mgw_0123456789\r\n"
    b"content-type: application/json\r\ncontent-length: 70\r\n\r\n" + b"x" * 70
)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


class _Transport(asyncio.Transport):
    """Accepts writes; resolves `answered` when a response body has been written."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: asyncio.Future[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(b"ok") and self.answered is not None:
            self.answered.set_result(None)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def per_request_us(protocol: type[HttpToolsProtocol], requests: int) -> float:
    """Microseconds per request through `protocol` on one kept-alive connection."""
    config = uvicorn.Config(_app, log_config=None, lifespan="off")
    config.load()
    loop = asyncio.get_running_loop()
    connection = protocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = _Transport()
    connection.connection_made(transport)
    started = time.perf_counter()
    for _ in range(requests):
        transport.answered = loop.create_future()
        connection.data_received(REQUEST)
        await transport.answered
        await asyncio.sleep(0)  # let the request's task finish, as the server would
    spent = time.perf_counter() - started
    connection.connection_lost(None)
    return spent / requests * 1e6


async def compare(requests: int, rounds: int) -> None:
    """Alternate the two protocols `rounds` times; print the median and best of each."""
    edge = protocol_class(ServerSettings(), lambda reason: None)
    results: dict[str, list[float]] = {"uvicorn": [], "edge": []}
    for _ in range(rounds):
        results["uvicorn"].append(await per_request_us(HttpToolsProtocol, requests))
        results["edge"].append(await per_request_us(edge, requests))
    for name, values in results.items():
        print(f"{name:8} median {statistics.median(values):6.2f} us, best {min(values):6.2f} us")


def main() -> None:
    """Parse the options and run the comparison under uvloop, as `serve` does."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    uvloop.run(compare(arguments.requests, arguments.rounds))


if __name__ == "__main__":
    main()
