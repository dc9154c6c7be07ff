"""A small HTTP/1.1 client for one upstream: keep-alive pool, streaming bodies, TLS, proxies.

Why not httpx: its pool scans every pooled connection on each request and each response close,
which is quadratic at 200 concurrent streams (see bench/README.md). Here idle connections sit in a
LIFO stack, asyncio says when the server closed one, and a connection that finishes while
requests wait goes straight to the first of them: taking one is O(1). TLS is verified against the
system store (OpenSSL honours `SSL_CERT_FILE`), or against `ca_bundle` instead. The proxy is
chosen as curl and httpx choose it (`proxy.py`). The connection itself, its parser and the
response are in `connection.py`. This package is the transport: only app/upstream.py imports it
(the alert webhooks POST through its `post_once`).

Errors:

    TransportError
    ├── ConnectFailed   no connection could be opened: refused, DNS, TLS handshake or
    │                   verification, connect timeout, proxy refused CONNECT
    │                   (the request never left)
    ├── PoolTimeout     no connection came free within pool_timeout_s (the request never left)
    ├── WriteTimeout    the request could not be written within write_timeout_s
    ├── ReadTimeout     nothing arrived for read_timeout_s (headers, or between body chunks)
    └── ProtocolFailed  the connection closed mid-response, or the response did not parse

A request is written once and never re-sent: a pooled connection is used only while it is known
open (asyncio has not reported it closed) and idle for less than its keep-alive window. Once the
request is written, a failure goes to the caller, who alone knows whether it may be repeated.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from urllib.parse import urlsplit

from app.http1.connection import (
    ConnectFailed,
    Connection,
    PoolTimeout,
    ProtocolFailed,
    ReadTimeout,
    Response,
    TransportError,
    WriteTimeout,
    keep_alive_window,
)
from app.http1.proxy import Route, select_proxy

__all__ = [
    "ConnectFailed",
    "Pool",
    "PoolTimeout",
    "ProtocolFailed",
    "ReadTimeout",
    "Response",
    "TransportError",
    "WriteTimeout",
]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # always sent with a content-length
Waiter = asyncio.Future[Connection | None]  # a connection handed over, or None: a free slot


class Pool:
    """Keep-alive connections to one origin, at most `max_connections` open at once.

    `proxy_url` names an http:// proxy for every request; without it, and with `trust_env`, the
    proxy comes from HTTPS_PROXY / HTTP_PROXY / NO_PROXY. Raises ValueError for a URL, proxy or
    CA bundle that cannot be used.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        write_timeout_s: float,
        pool_timeout_s: float,
        max_connections: int,
        keepalive_s: float = 5.0,
        proxy_url: str | None = None,
        ca_bundle: str | None = None,
        trust_env: bool = True,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        proxy = select_proxy(parts.scheme, host, port, proxy_url, trust_env)
        self.route = Route(parts.scheme, host, port, proxy, ca_bundle)
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self.pool_timeout_s = pool_timeout_s
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        absolute = self.route.absolute_form  # plain http through a proxy: the whole URL
        self._target = f"http://{self.route.origin}" if absolute else ""
        self._target += parts.path.rstrip("/") + "/"
        self._fixed = f"host: {parts.netloc.rpartition('@')[2]}\r\n"
        if absolute and proxy is not None and proxy.authorization:
            self._fixed += f"proxy-authorization: {proxy.authorization}\r\n"
        self._idle: deque[Connection] = deque()
        self._waiters: deque[Waiter] = deque()
        self._open = 0  # connections counted against max_connections: idle, busy or opening
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> Response:
        """Send one request, once; return when the final response's headers are in."""
        head = self._head(method, path, headers, body)
        connection = await self._acquire(asyncio.get_running_loop())
        response = Response(connection)
        connection.response = response
        try:
            assert connection.transport is not None
            connection.transport.write(head + body if body else head)
            if connection.drain is not None:
                await connection.drained(self.write_timeout_s)
            await response._wait_for_headers(self.read_timeout_s)
            if response.status_code == 407 and self.route.absolute_form:  # the proxy's answer
                raise self.route.refused_by_proxy()
        except BaseException:
            await response.aclose()
            raise
        return response

    def _head(
        self, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> bytes:
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers])
        if body or method in BODY_METHODS:
            lines += f"content-length: {len(body)}\r\n"
        target = self._target + path.lstrip("/")
        return f"{method} {target} HTTP/1.1\r\n{self._fixed}{lines}\r\n".encode("latin-1")

    async def _acquire(self, loop: asyncio.AbstractEventLoop) -> Connection:
        """An idle connection known open, else a new one, else the next one to come free."""
        idle = self._idle
        if idle:
            now = loop.time()
            while idle:
                connection = idle.pop()
                connection.idle = False
                if not connection.closed and now < connection.expires:
                    return connection
                connection.close()
                self._forget(connection)
        if self._open < self.max_connections:
            self._open += 1
            return await self._connect(loop)
        waiter: Waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(self.pool_timeout_s, self._time_out, waiter)
        try:
            handed = await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed over just as we were cancelled
            raise
        finally:
            timer.cancel()
        if handed is not None and not handed.closed:
            return handed
        if handed is not None:  # it closed on its way to us: open one in its slot
            handed.counted = False
        return await self._connect(loop)

    def _time_out(self, waiter: Waiter) -> None:
        if not waiter.done():
            waiter.set_exception(
                PoolTimeout(
                    f"all {self.max_connections} upstream connections stayed busy for "
                    f"{self.pool_timeout_s:g} s (pool_timeout_s; max_connections)"
                )
            )

    def _give_back(self, handed: Connection | None) -> None:
        if handed is None:
            self._open -= 1
            self._grant()
        else:
            self._release(handed, None)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Connection:
        """Open a connection in a slot already counted; give the slot back if that fails."""
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await self.route.open(loop, lambda: Connection(self, loop))
        except BaseException as exc:
            self._open -= 1
            self._grant()
            if isinstance(exc, TimeoutError):
                raise ConnectFailed(
                    f"no connection to {self.route.where} within {self.connect_timeout_s:g} s "
                    "(connect_timeout_s)"
                ) from None
            raise

    def _release(self, connection: Connection, keep_alive_hint: str | None) -> None:
        """A connection whose response ended cleanly: to the next waiter, else onto the stack."""
        connection.response = None
        if connection.closed or self._closed:
            connection.close()
            self._forget(connection)
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        window = keep_alive_window(keep_alive_hint, self.keepalive_s)
        if window <= 0:
            connection.close()
            self._forget(connection)
            return
        connection.expires = connection.loop.time() + window
        connection.idle = True
        self._idle.append(connection)
        if self._sweeper is None:
            self._sweeper = connection.loop.call_later(window, self._sweep)

    def _forget(self, connection: Connection) -> None:
        """A connection is gone: its slot goes to the first waiter, if any."""
        if connection.counted:
            connection.counted = False
            self._open -= 1
            self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close idle connections past their window, oldest first; again while any are idle."""
        self._sweeper = None
        idle = self._idle
        loop = asyncio.get_running_loop()
        now = loop.time()
        while idle and (idle[0].closed or idle[0].expires <= now):
            connection = idle.popleft()
            connection.idle = False
            connection.close()
            self._forget(connection)
        if idle:
            self._sweeper = loop.call_later(idle[0].expires - now, self._sweep)

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close when their response does."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            connection = self._idle.pop()
            connection.idle = False
            connection.close()
            self._forget(connection)
