"""The fake upstream behind TLS, for the TLS rows of `bench.upstream_clients`.

`bench.fake_upstream`'s protocol on an SSL server socket, in TLS_WORKERS processes sharing one
port with SO_REUSEPORT (as many as the plain fake upstream runs), with a certificate for 127.0.0.1
from a throwaway CA (trustme) that every measured client is given.

    python -m bench.tls_upstream --port PORT --cert CERT_AND_KEY_PEM   # one worker
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from bench import fake_upstream, procs

TLS_WORKERS = 2
READY_LIMIT_S = 30.0


class Tls:
    """A throwaway CA and a certificate for 127.0.0.1, as PEM files in `directory`."""

    def __init__(self, directory: Path) -> None:
        trustme: Any = importlib.import_module("trustme")
        authority = trustme.CA()
        self.ca_file = directory / "bench-ca.pem"
        self.cert_file = directory / "bench-cert.pem"
        authority.cert_pem.write_to_path(str(self.ca_file))
        issued = authority.issue_cert("127.0.0.1")
        issued.private_key_and_cert_chain_pem.write_to_path(str(self.cert_file))

    def client_context(self) -> ssl.SSLContext:
        """What a client is given: trust in the throwaway CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def start(tls: Tls, workdir: Path, started: list[subprocess.Popen[bytes]]) -> int:
    """The fake upstream behind TLS, in TLS_WORKERS processes sharing a port; returns the port."""
    port = procs.free_port()
    command = [sys.executable, "-m", "bench.tls_upstream", "--port", str(port)]
    command += ["--cert", str(tls.cert_file)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for worker in range(TLS_WORKERS):
        started.append(procs.spawn(command, workdir / f"tls-upstream-{worker}.log", env))
    deadline = time.monotonic() + READY_LIMIT_S
    context = tls.client_context()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"the TLS fake upstream did not answer on port {port} (see {workdir})")


def serve(port: int, cert_file: str) -> None:
    """One worker of the fake upstream behind TLS, until SIGTERM (`bench.fake_upstream`'s
    protocol on an SSL server socket bound with SO_REUSEPORT)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    defaults = fake_upstream.StreamDefaults()

    async def until_stopped() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: fake_upstream.FakeMavera(defaults), sock=sock, ssl=context, backlog=4096
        )
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(until_stopped())


def main() -> None:
    """Command line: one worker (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench.tls_upstream", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="PEM file: private key and certificate")
    args = parser.parse_args()
    serve(args.port, args.cert)


if __name__ == "__main__":
    main()
