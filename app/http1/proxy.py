"""How connections reach the upstream: directly or through an HTTP proxy, with TLS on top.

The proxy is chosen as curl and httpx choose it. An explicit proxy URL is used for every request,
and the environment is then not read at all. Otherwise, when the environment is trusted,
`HTTPS_PROXY`/`https_proxy` serves an https upstream and `HTTP_PROXY`/`http_proxy` an http one
(lower case wins when both are set), unless `NO_PROXY`/`no_proxy` names the upstream: a comma
list of `*`, host names and domain suffixes (`mavera.io` and `.mavera.io` both match
`app.mavera.io`), `host:port`, IP addresses and CIDR ranges.

Only http:// proxies are spoken to: an https upstream is reached through a CONNECT tunnel with TLS
inside it, so the proxy never sees the request. `user:password@` in the proxy URL (percent-encoded
as URLs are) becomes `Proxy-Authorization: Basic`. Nothing here puts those credentials in a
message or a repr. Every failure to connect becomes a `ConnectFailed` saying where and why.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment

from app.http1.connection import ConnectFailed, Connection

MAX_REPLY_HEAD = 16 * 1024  # a proxy's answer to CONNECT is a status line and a few headers


@dataclass(frozen=True, slots=True)
class Proxy:
    """An http:// proxy: where it listens, and the Proxy-Authorization value for it, if any."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """`host:port`, for messages; never the credentials."""
        return authority(self.host, self.port)


class TunnelRefused(Exception):
    """The proxy did not open the CONNECT tunnel; the message says what it did instead."""


def authority(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_proxy_url(url: str) -> Proxy:
    """The proxy a URL names; ValueError (without the credentials) for one we cannot use."""
    if "://" not in url:
        url = "http://" + url  # curl reads a bare `host:port` as an http proxy
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(
            f"proxy URL scheme {parts.scheme}:// is not supported: give an http:// proxy "
            "(an https upstream is still reached over TLS, through a CONNECT tunnel)"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError("proxy URL has an invalid port") from None
    if not parts.hostname:
        raise ValueError("proxy URL has no host")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return Proxy(parts.hostname, port, authorization)


def select_proxy(
    scheme: str, host: str, port: int, proxy_url: str | None, trust_env: bool
) -> Proxy | None:
    """The proxy for an upstream at scheme://host:port, or None to connect directly."""
    if proxy_url:
        return parse_proxy_url(proxy_url)
    if not trust_env:
        return None
    found = getproxies_environment()
    url = found.get(scheme)
    if not url or bypassed(host, port, found.get("no", "")):
        return None
    return parse_proxy_url(url)


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether a NO_PROXY value says to reach host:port directly."""
    host = host.lower().strip("[]")
    for entry in no_proxy.lower().split(","):
        name, entry_port = _split_entry(entry.strip())
        if name == "*":
            return True
        if not name or (entry_port is not None and entry_port != port):
            continue
        network = _network(name)
        if network is not None:
            if _address_in(host, network):
                return True
            continue
        name = name.lstrip("*").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _split_entry(entry: str) -> tuple[str, int | None]:
    """`host[:port]`, `[v6]:port`, a bare IPv6 address or a CIDR range, split at the port."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        name, _, port = entry.partition(":")
    else:
        name, port = entry, ""
    return name, int(port) if port.isdigit() else None


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:  # a host or domain name
        return None


def _address_in(host: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:  # the upstream is named, not addressed: matched by name only
        return False


def connect_head(target: str, proxy: Proxy) -> bytes:
    """The CONNECT request that asks `proxy` for a tunnel to `target` (`host:port`)."""
    lines = f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n"
    if proxy.authorization:
        lines += f"proxy-authorization: {proxy.authorization}\r\n"
    return (lines + "\r\n").encode("latin-1")


class _Reply(asyncio.Protocol):
    """Collects the proxy's answer to CONNECT: one response head."""

    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.done = done
        self.head = b""

    def data_received(self, data: bytes) -> None:
        self.head += data
        if (b"\r\n\r\n" in self.head or len(self.head) > MAX_REPLY_HEAD) and not self.done.done():
            self.done.set_result(self.head)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.head)


async def open_tunnel(
    loop: asyncio.AbstractEventLoop, proxy: Proxy, target: str
) -> asyncio.Transport:
    """A connection to `proxy` on which CONNECT `target` succeeded: its bytes now reach `target`.

    Raises OSError when the proxy cannot be reached, TunnelRefused when it will not connect.
    """
    done: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: _Reply(done), proxy.host, proxy.port)
    try:
        transport.write(connect_head(target, proxy))
        head = await done
        status_line = head.partition(b"\r\n")[0].decode("latin-1")
        version, _, status = status_line.partition(" ")
        if b"\r\n\r\n" not in head:
            what = (
                "sent an incomplete answer to"
                if head
                else "closed the connection without answering"
            )
            raise TunnelRefused(f"{what} CONNECT to {target}")
        if not version.startswith("HTTP/") or not status[:3].isdigit():
            raise TunnelRefused(f"answered CONNECT with something not HTTP: {status_line[:60]!r}")
        if not 200 <= int(status[:3]) < 300:
            hint = ""
            if status.startswith("407"):
                hint = (
                    " (the proxy rejected the credentials in its URL)"
                    if proxy.authorization
                    else " (put user:password@ in the proxy URL)"
                )
            said = "".join(c if c.isprintable() else "?" for c in status[:80])
            raise TunnelRefused(f"refused CONNECT to {target}: {said}{hint}")
    except BaseException:
        transport.close()
        raise
    return transport


class Route:
    """The way to one upstream origin: its address, the TLS context, the proxy (if any)."""

    def __init__(
        self, scheme: str, host: str, port: int, proxy: Proxy | None, ca_bundle: str | None
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls_context(ca_bundle) if scheme == "https" else None
        self.proxy = proxy
        self.origin = authority(host, port)
        self.where = self.origin + (f" via proxy {proxy.label}" if proxy else "")
        # Through a proxy, plain http requests name the whole URL (absolute form) and carry the
        # proxy's credentials; https requests go inside a CONNECT tunnel and look direct.
        self.absolute_form = proxy is not None and self.tls is None

    async def open(
        self, loop: asyncio.AbstractEventLoop, factory: Callable[[], Connection]
    ) -> Connection:
        """A new connection to the origin (no timeout here); ConnectFailed says why not."""
        proxy, stage = self.proxy, self.origin
        try:
            if proxy is None or self.absolute_form:
                host, port = (self.host, self.port) if proxy is None else (proxy.host, proxy.port)
                stage = self.origin if proxy is None else f"proxy {proxy.label}"
                server_hostname = self.host if self.tls else None
                _, connection = await loop.create_connection(
                    factory, host, port, ssl=self.tls, server_hostname=server_hostname
                )
                return connection
            assert self.tls is not None  # a plain http upstream goes in absolute form
            stage = f"proxy {proxy.label}"
            raw = await open_tunnel(loop, proxy, self.origin)
            stage = self.where
            connection = factory()
            try:
                tls = await loop.start_tls(raw, connection, self.tls, server_hostname=self.host)
            except BaseException:
                raw.close()
                raise
            if tls is None:
                raise ConnectFailed(f"{stage}: the TLS connection closed during the handshake")
            connection.connection_made(tls)  # start_tls does not call it
            connection.tunnel = raw
            return connection
        except TunnelRefused as exc:
            raise ConnectFailed(f"{stage} {exc}") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectFailed(
                f"TLS certificate verification failed for {self.host}: {exc.verify_message} "
                "(private CA? set [upstream] ca_bundle or SSL_CERT_FILE)"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS handshake with {stage} failed: {exc}") from None
        except socket.gaierror as exc:
            raise ConnectFailed(f"cannot resolve {stage}: {exc.strerror}") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {stage}: {exc}") from None

    def refused_by_proxy(self) -> ConnectFailed:
        """The error for a plain http request that the proxy answered with 407."""
        assert self.proxy is not None
        hint = "its URL's credentials" if self.proxy.authorization else "no credentials in its URL"
        return ConnectFailed(
            f"proxy {self.proxy.label} refused the request to {self.origin}: "
            f"407 Proxy Authentication Required ({hint})"
        )


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Verification against the system store (or SSL_CERT_FILE), or against `ca_bundle` alone."""
    try:
        context = ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"ca_bundle {ca_bundle}: not a readable PEM file of CAs: {exc}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context
