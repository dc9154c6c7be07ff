"""Hostile clients against a running gateway's connections, measured (issue 9, app.edge).

    python -m bench.edge_attacks [--source DIR]

Starts `python -m app serve --simulate` from DIR (default: this checkout; give an older checkout
to compare), runs each attack on raw loopback sockets, and prints one line per attack: what the
client saw and the figure (how long a connection stayed open, bytes the gateway took, peak RSS).
Not a test: it takes a minute or two (four against a checkout without app.edge), and its
timings are the point. The protocol's cost per request is bench.edge_cost.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench.procs import free_port, peak_rss_mb, reset_peak_rss, spawn, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
POST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
BODY = b'{"model": "mavera-1", "messages": [{"role": "user", "content": "hi"}]}'
CAP_S = 40.0  # how long an attack may keep a connection before we call it "open indefinitely"
MIB = 1024 * 1024


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CAP_S)


def _status(answer: bytes) -> str:
    line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    kind = "json" if b"application/json" in answer else "text" if answer else "nothing"
    return f"{line[9:12] or 'none'} {kind}"


def _read_all(sock: socket.socket) -> tuple[bytes, str]:
    """What the server sent until it closed, and how it closed."""
    got = b""
    try:
        for _ in range(10_000):
            data = sock.recv(65536)
            if not data:
                return got, "closed"
            got += data
    except TimeoutError:
        return got, f"still open after {CAP_S:g} s"
    except OSError as exc:
        return got, type(exc).__name__
    return got, "still sending"


def _push(sock: socket.socket, head: bytes, pieces: Iterable[bytes]) -> tuple[int, bytes, str]:
    """Send `head` then `pieces` until the server stops taking them; bytes sent, answer, end."""
    sent = 0
    sock.sendall(head)
    try:
        for piece in pieces:
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass
    answer, end = _read_all(sock)
    return sent, answer, end


def huge_header(port: int, pids: list[int]) -> str:
    """A 16 MiB header value."""
    reset_peak_rss(pids)
    before = peak_rss_mb(pids)
    with _connect(port) as sock:
        pieces = (b"a" * MIB for _ in range(16))
        end = b"\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
        sent, answer, _ = _push(sock, POST + b"x-big: ", [*pieces, end])
    after = peak_rss_mb(pids)
    return f"{_status(answer)}; took {sent / MIB:.1f} MiB; peak RSS {before:.0f} -> {after:.0f} MiB"


def many_headers(port: int, pids: list[int]) -> str:
    """50,000 small header fields."""
    fields = b"".join(b"x-h%d: v\r\n" % i for i in range(50_000))
    with _connect(port) as sock:
        head = POST + b"content-length: %d\r\n" % len(BODY)
        _, answer, _ = _push(sock, head, [fields, b"\r\n", BODY])
    return _status(answer)


def _drip(port: int, data: bytes, interval_s: float) -> str:
    """Send `data` one byte per interval; how long the server kept the connection."""
    started = time.monotonic()
    with _connect(port) as sock:
        for byte in data:
            if time.monotonic() - started > CAP_S:
                return f"still open after {CAP_S:g} s"
            readable, _, _ = select.select([sock], [], [], interval_s)
            if readable:
                answer, _ = _read_all(sock)
                return f"{_status(answer)} after {time.monotonic() - started:.1f} s"
            try:
                sock.send(bytes([byte]))
            except OSError:
                return f"closed after {time.monotonic() - started:.1f} s"
    return "all sent"


def slow_headers(port: int, pids: list[int]) -> str:
    """Headers at one byte per second."""
    return _drip(port, POST + b"x-slow: " + b"s" * 100 + b"\r\n\r\n", 1.0)


def slow_body(port: int, pids: list[int]) -> str:
    """A body at one byte per second, after headers sent at once."""
    with _connect(port) as sock:
        sock.sendall(POST + b"content-length: %d\r\n\r\n" % len(BODY))
        started = time.monotonic()
        for byte in BODY:
            if time.monotonic() - started > CAP_S:
                return f"still open after {CAP_S:g} s"
            if select.select([sock], [], [], 1.0)[0]:
                break
            sock.send(bytes([byte]))
        answer, end = _read_all(sock)
    return f"{_status(answer)} after {time.monotonic() - started:.1f} s, then {end}"


def idle_connections(port: int, pids: list[int], count: int = 250, wait_s: float = 12.0) -> str:
    """`count` connections that never send a byte: how many are still open after `wait_s`."""
    socks = [_connect(port) for _ in range(count)]
    rss = peak_rss_mb(pids)
    time.sleep(wait_s)
    open_now = 0
    for sock in socks:
        readable, _, _ = select.select([sock], [], [], 0)
        open_now += not readable  # a closed connection is readable (EOF)
        sock.close()
    return f"{open_now} of {count} still open after {wait_s:g} s (peak RSS {rss:.0f} MiB)"


def declared_oversize(port: int, pids: list[int]) -> str:
    """Content-Length 64 MiB (limit 4 MiB), then the body."""
    with _connect(port) as sock:
        pieces = (b"x" * MIB for _ in range(64))
        started = time.monotonic()
        sent, answer, end = _push(sock, POST + b"content-length: %d\r\n\r\n" % (64 * MIB), pieces)
    spent = time.monotonic() - started
    return f"{_status(answer)}; the gateway took {sent / MIB:.1f} MiB in {spent:.2f} s, {end}"


def chunked_oversize(port: int, pids: list[int]) -> str:
    """A chunked body that grows to 64 MiB, sent while watching for an answer (as curl does)."""
    chunk = b"%x\r\n" % MIB + b"x" * MIB + b"\r\n"
    with _connect(port) as sock:
        sock.sendall(POST + b"transfer-encoding: chunked\r\n\r\n")
        sent = 0
        for _ in range(64):
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += MIB
        answer, end = _read_all(sock)
    return f"{_status(answer)} after {sent / MIB:.0f} MiB, then {end}"


def too_many_connections(port: int, pids: list[int], count: int = 150) -> str:
    """`count` connections at once (run with max_connections = 100), each asking for /healthz."""
    socks = [_connect(port) for _ in range(count)]
    statuses: dict[str, int] = {}
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    for sock in socks:
        sock.settimeout(5)
        try:
            answer = sock.recv(65536)
        except OSError as exc:
            answer = type(exc).__name__.encode()
        key = _status(answer) if answer.startswith(b"HTTP/") else answer.decode()
        statuses[key] = statuses.get(key, 0) + 1
    for sock in socks:  # only now: a slot freed earlier could go to a connection not yet accepted
        sock.close()
    return ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items()))


def _one_shot(port: int, request: bytes) -> str:
    with _connect(port) as sock:
        sock.sendall(request)
        answer, _ = _read_all(sock)
    location = b"\r\nlocation:" in answer.lower()
    return _status(answer) + (" with Location" if location else "")


def malformed(port: int, pids: list[int]) -> str:
    """A header name with a control character, and an unknown method."""
    bad_char = _one_shot(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nba\x01d: 1\r\n\r\n")
    bad_method = _one_shot(port, b"BREW /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    return f"bad header: {bad_char}; unknown method: {bad_method}"


def trailing_slash(port: int, pids: list[int]) -> str:
    """POST /v1/chat/completions/ with Host: evil.example."""
    request = b"POST /v1/chat/completions/ HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n"
    return _one_shot(port, request + b"content-length: %d\r\n\r\n" % len(BODY) + BODY)


Attack = Callable[[int, list[int]], str]
ATTACKS: list[Attack] = [
    huge_header,
    many_headers,
    malformed,
    trailing_slash,
    declared_oversize,
    chunked_oversize,
    slow_headers,
    slow_body,
    idle_connections,
    too_many_connections,
]


def main() -> None:
    """Start a gateway from --source and run every attack against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to serve from")
    arguments = parser.parse_args()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="edge-attacks-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAVERA_")}
    env.update(
        MAVERA_GATEWAY_DATABASE_URL=f"sqlite:///{workdir / 'ledger.db'}",
        MAVERA_GATEWAY_SERVER__MAX_CONNECTIONS="100",
        PYTHONPATH=str(arguments.source),
    )
    # -P: import `app` from --source (PYTHONPATH), not from the current directory
    command = [sys.executable, "-P", "-m", "app", "serve", "--simulate", "--port", str(port)]
    process = spawn(command, workdir / "serve.log", env=env)
    try:
        wait_ready(process, port, "/readyz", time.perf_counter(), 30.0)
        print(f"gateway from {arguments.source}, log in {workdir / 'serve.log'}")
        for attack in ATTACKS:
            print(f"{attack.__name__:22} {attack(port, [process.pid])}", flush=True)
    finally:
        stop(process)


if __name__ == "__main__":
    main()
