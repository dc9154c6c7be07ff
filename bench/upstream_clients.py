"""CPU cost per request of candidate upstream HTTP clients, measured in this process.

The gateway's own cost per request is dominated by its upstream client (see bench/README.md).
This puts numbers on the candidates, each doing what the gateway does for a non-streaming
request (POST a JSON body on a pooled keep-alive connection, read the whole answer), at
concurrency 1, 16 and 64, first with a fresh pool and then after 200 concurrent streams have
grown the pool to 200+ idle connections; once over plain HTTP and once over TLS (the same fake
upstream behind TLS with a certificate from a throwaway CA, which every client is given).
Clients that are not importable here are skipped:

- `bare`: `bench.client.Connection` with a deque of idle connections (the floor; plain only);
- `gateway`: the gateway's own `app.http1.Pool`;
- `httpx` (and `httpx2` if installed) with the gateway's pool settings;
- `aiohttp`, if installed.

    python -m bench.upstream_clients [--port PORT] [--requests N] [--clients a,b] [--no-tls]

Without `--port` it starts the fake upstream itself (needs httptools, uvloop, orjson); the TLS
upstream (`bench.tls_upstream`, always started here) needs trustme for its certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import uvloop

from bench import procs
from bench.client import Connection, encode_request
from bench.tls_upstream import Tls, start

BODY = b'{"model":"mavera-1","messages":[{"role":"user","content":"Say hello."}]}'
STREAM_BODY = BODY[:-1] + b',"stream":true}'
PATH = "/api/v1/chat/completions"
LIMIT_S = 120.0


class UpstreamClient(Protocol):
    """What the gateway needs from an upstream client, for this measurement."""

    async def post(self, body: bytes) -> bytes: ...
    async def aclose(self) -> None: ...


class Bare:
    """Raw asyncio streams with a LIFO stack of idle keep-alive connections: O(1) checkout."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: collections.deque[Connection] = collections.deque()

    async def post(self, body: bytes) -> bytes:
        connection = self.idle.pop() if self.idle else await Connection.open(self.port)
        reply = await connection.exchange(encode_request(self.port, PATH, body))
        self.idle.append(connection)
        return reply.body

    async def aclose(self) -> None:
        for connection in self.idle:
            connection.close()


class Httpx:
    """httpx (or a drop-in fork) with the gateway's pool settings."""

    def __init__(self, port: int, tls: Tls | None, module: str = "httpx") -> None:
        httpx: Any = importlib.import_module(module)
        limits = httpx.Limits(
            max_connections=512, max_keepalive_connections=512, keepalive_expiry=5
        )
        self.client = httpx.AsyncClient(
            base_url=f"{_scheme(tls)}://127.0.0.1:{port}/api/v1/",
            limits=limits,
            trust_env=False,
            verify=tls.client_context() if tls else True,
        )

    async def post(self, body: bytes) -> bytes:
        request = self.client.build_request(
            "POST", "chat/completions", content=body, headers={"content-type": "application/json"}
        )
        response = await self.client.send(request, stream=True)
        try:
            return bytes(await response.aread())
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


class GatewayPool:
    """The gateway's own client, `app.http1.Pool`, as `app/upstream.py` configures it."""

    def __init__(self, port: int, tls: Tls | None) -> None:
        http1: Any = importlib.import_module("app.http1")
        self.pool = http1.Pool(
            f"{_scheme(tls)}://127.0.0.1:{port}/api/v1",
            connect_timeout_s=5.0,
            read_timeout_s=120.0,
            write_timeout_s=30.0,
            pool_timeout_s=30.0,
            max_connections=512,
            ca_bundle=str(tls.ca_file) if tls else None,
            trust_env=False,
        )

    async def post(self, body: bytes) -> bytes:
        headers = [("content-type", "application/json")]
        response = await self.pool.request("POST", "chat/completions", headers, body)
        try:
            return bytes(await response.aread())
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.pool.aclose()


class Aiohttp:
    """aiohttp's ClientSession with a TCPConnector of the same size."""

    def __init__(self, port: int, tls: Tls | None) -> None:
        aiohttp: Any = importlib.import_module("aiohttp")
        self.url = f"{_scheme(tls)}://127.0.0.1:{port}{PATH}"
        context = tls.client_context() if tls else None
        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=5, ssl=context or True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def post(self, body: bytes) -> bytes:
        headers = {"content-type": "application/json"}
        async with self.session.post(self.url, data=body, headers=headers) as response:
            return bytes(await response.read())

    async def aclose(self) -> None:
        await self.session.close()


FACTORIES: dict[str, Callable[[int, Tls | None], UpstreamClient]] = {
    "bare": lambda port, tls: Bare(port),
    "gateway": GatewayPool,
    "httpx": Httpx,
    "httpx2": lambda port, tls: Httpx(port, tls, "httpx2"),
    "aiohttp": Aiohttp,
}
PLAIN_ONLY = {"bare"}


def _scheme(tls: Tls | None) -> str:
    return "https" if tls else "http"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def load(client: UpstreamClient, concurrency: int, requests: int) -> tuple[float, float]:
    """(CPU microseconds per request, requests per second) for `requests` at `concurrency`."""
    per_worker = max(1, requests // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            await client.post(BODY)

    cpu, started = _cpu(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), LIMIT_S)
    done = per_worker * concurrency
    return (_cpu() - cpu) / done * 1e6, done / (time.perf_counter() - started)


async def grow_pool(port: int, client: UpstreamClient, streams: int = 200) -> None:
    """Leave `streams` idle connections in the client's pool, as 200 concurrent streams do."""
    if isinstance(client, Bare):
        client.idle.extend(await asyncio.gather(*(Connection.open(port) for _ in range(streams))))
        return
    await asyncio.wait_for(asyncio.gather(*(_slow_post(client) for _ in range(streams))), LIMIT_S)


async def _slow_post(client: UpstreamClient) -> None:
    await client.post(STREAM_BODY)  # a whole stream, read to the end: ~1 s per request


async def measure(port: int, name: str, requests: int, tls: Tls | None) -> list[str]:
    """Markdown rows for one client."""
    rows = []
    for concurrency in (1, 16, 64):
        client = FACTORIES[name](port, tls)
        try:
            await load(client, concurrency, requests // 10)  # warm-up
            fresh = await load(client, concurrency, requests)
            await grow_pool(port, client)
            grown = await load(client, concurrency, requests)
        finally:
            await client.aclose()
        rows.append(
            f"| {name} | {'TLS' if tls else 'plain'} | {concurrency} | {fresh[0]:.0f} "
            f"| {fresh[1]:,.0f} "
            f"| {grown[0]:.0f} | {grown[1]:,.0f} |"
        )
    return rows


def available(names: list[str]) -> list[str]:
    """The clients whose library imports here."""
    modules = {
        "bare": "bench.client",
        "gateway": "app.http1",
        "httpx": "httpx",
        "httpx2": "httpx2",
        "aiohttp": "aiohttp",
    }
    found = []
    for name in names:
        try:
            importlib.import_module(modules[name])
        except ImportError:
            continue
        found.append(name)
    return found


def run(port: int | None, names: list[str], requests: int, with_tls: bool = True) -> str:
    """Measure every available client, plain then TLS; start the fake upstreams it needs."""
    workdir = Path(tempfile.mkdtemp())
    started: list[subprocess.Popen[bytes]] = []
    try:
        if port is None:
            from bench import targets

            upstream = targets.start_upstream(workdir, 2, 50, 20.0)
            assert upstream.process is not None
            started.append(upstream.process)
            port = upstream.port
        tls = Tls(workdir) if with_tls else None
        tls_port = start(tls, workdir, started) if tls else 0
        lines = [
            "| client | transport | concurrency | CPU us/request, fresh pool | req/s "
            "| CPU us/request, 200+ pooled | req/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in available(names):
            lines += uvloop.run(measure(port, name, requests, None))
            if tls and name not in PLAIN_ONLY:
                lines += uvloop.run(measure(tls_port, name, requests, tls))
        return "\n".join(lines)
    finally:
        for process in started:
            procs.stop(process)


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_clients", description=__doc__)
    parser.add_argument("--port", type=int, help="a fake upstream already running on 127.0.0.1")
    parser.add_argument("--clients", default=",".join(FACTORIES))
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--no-tls", action="store_true", help="plain HTTP rows only")
    args = parser.parse_args()
    names = [n for n in args.clients.split(",") if n in FACTORIES]
    print(run(args.port, names, args.requests, with_tls=not args.no_tls))


if __name__ == "__main__":
    main()
