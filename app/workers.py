"""Run the gateway's uvicorn server: in this process, or as N worker processes on one port.

`serve --workers N` starts N processes, each a whole gateway (its own upstream pool, ledger
writer, key store and limits), listening on the same port with SO_REUSEPORT. Chosen over the
alternatives because:

- one socket shared by all workers (the pre-fork model) lets whichever process wakes first take
  every connection waiting: asyncio accepts up to 100 per wake-up, so a burst of streams all
  lands on one worker. With SO_REUSEPORT the kernel spreads new connections over the workers;
- uvicorn's own supervisor (`uvicorn.run(workers=N)`) restarts dead workers on its own, turns
  SIGHUP into a restart of every worker rather than a config reload, and needs the app as an
  import string, where the gateway's app is built from its validated Settings.

Each worker is uvicorn.Server with the gateway's EdgeProtocol (app.edge), in the main thread of
its own process, so SIGTERM drains it and SIGHUP reloads its config exactly as with one process.
Workers are spawned, not forked: a fork would copy the parent's record-id prefix (app.records)
into every worker, and the threads of `--simulate`'s simulator. The parent binds nothing; it
forwards SIGTERM/SIGINT/SIGHUP, and a worker that dies is not restarted: the others are
stopped and the gateway exits 1, for whatever supervises it to see.

SO_REUSEPORT caveats: a connection still in the accept queue of a worker that stops is reset
(all workers stop together on SIGTERM, so that is no worse than one process), a busy worker still
gets its share of new connections, and any process of the same user could join the port (the
parent checks the port is free before the workers bind it).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn

from app.config import Settings
from app.edge import uvicorn_options
from app.logs import configure_logging
from app.server import create_app

logger = logging.getLogger("mavera_gateway")

STARTUP_FAILURE = 3  # uvicorn's exit code when the app's lifespan cannot start
SHARED_CLIENT_LIMITS = ("rpm", "credit_budget", "max_concurrent")
SHARED_GATEWAY_LIMITS = ("gateway_rpm", "gateway_credit_budget")


def limits_need_sharing(settings: Settings) -> list[str]:
    """The configured limits that several workers can only enforce together through Redis.

    Config-file clients with an rpm, a credit budget or a concurrency cap, and the gateway-wide
    limits. Keys created with `keys create` or the admin API live in the ledger and are only
    known at run time, so they are not named here.
    """
    found = [
        f"clients.{name}.{key}"
        for name, client in sorted(settings.clients.items())
        for key in SHARED_CLIENT_LIMITS
        if getattr(client, key, None) is not None
    ]
    found += [
        f"limits.{key}"
        for key in SHARED_GATEWAY_LIMITS
        if getattr(settings.limits, key, None) is not None
    ]
    return found


def gateway_config(
    settings: Settings, reload_settings: Callable[[], Settings] | None, **config: Any
) -> uvicorn.Config:
    """uvicorn's config for the gateway: its connection limits (app.edge), its shutdown grace."""
    app = create_app(settings, reload_settings)
    options: dict[str, Any] = {
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": int(settings.server.shutdown_grace_s),
        **uvicorn_options(settings.server, app),
    }
    return uvicorn.Config(app, **options, **config)


def run_server(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
    """Serve until SIGINT/SIGTERM has drained the server; exit 3 if the app could not start."""
    with _stop_signals_exit_cleanly():
        server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


@contextlib.contextmanager
def _stop_signals_exit_cleanly() -> Iterator[None]:
    """Make SIGTERM/SIGINT end the server normally (exit 0) once uvicorn has drained and flushed.

    uvicorn re-raises the signal that stopped it after its graceful shutdown, under the handler
    that was installed before it started: by default that kills the process (SIGTERM, exit -15)
    or raises KeyboardInterrupt (SIGINT). By then the shutdown is complete, so ignore it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _ReadyServer(uvicorn.Server):
    """uvicorn.Server that tells the parent once its app has started and it is listening."""

    def __init__(self, config: uvicorn.Config, ready: Connection) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._ready.send(os.getpid())
            self._ready.close()


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _work(
    settings: Settings,
    reload_settings: Callable[[], Settings] | None,
    ready: Connection,
) -> None:
    """The body of one worker process (spawned: it sets up its own logging)."""
    api_key = settings.upstream.api_key
    configure_logging(settings.server.log_format, (api_key.get_secret_value(),) if api_key else ())
    try:
        sock = _reuseport_socket(settings.server.host, settings.server.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", settings.server.host, settings.server.port, exc)
        sys.exit(STARTUP_FAILURE)
    run_server(_ReadyServer(gateway_config(settings, reload_settings), ready), [sock])


@dataclass
class _Worker:
    number: int
    process: BaseProcess
    ready: Connection
    pid: int | None = None  # set once it reported ready


class _Supervisor:
    """Starts the workers, forwards signals to them, and waits for them; restarts nothing."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.workers: list[_Worker] = []
        self.stopping = False  # a stop signal arrived: exits are expected from now on
        self.failed = False  # a worker failed to start or exited on its own

    def on_stop(self, sig: int, _frame: object) -> None:
        if not self.stopping:
            logger.info("%s: stopping %d workers", signal.Signals(sig).name, self.count)
        self.stopping = True
        self.signal_all(signal.SIGTERM)  # not SIGINT: a second SIGINT makes uvicorn force-quit

    def on_hangup(self, _sig: int, _frame: object) -> None:
        logger.info("SIGHUP: each worker reads the configuration again")
        self.signal_all(signal.SIGHUP, ready_only=True)  # before its handler, SIGHUP kills

    def signal_all(self, sig: int, *, ready_only: bool = False) -> None:
        for worker in self.workers:
            pid = worker.process.pid
            if pid and worker.process.exitcode is None and (worker.pid or not ready_only):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def fail(self, message: str, *args: object) -> None:
        logger.error(message, *args)
        if not self.stopping:
            logger.error("stopping the other workers; nothing is restarted")
            self.stopping = self.failed = True
            self.signal_all(signal.SIGTERM)

    def wait_ready(self) -> None:
        """Wait until every worker is serving, or one has died (then stop the others)."""
        while not self.stopping and any(w.pid is None for w in self.workers):
            pending = [w for w in self.workers if w.pid is None]
            events = wait([w.ready for w in pending] + [w.process.sentinel for w in pending])
            for worker in pending:
                if worker.ready in events:
                    with contextlib.suppress(EOFError):  # EOF: it died; its sentinel says so
                        worker.pid = worker.ready.recv()
                        logger.info(
                            "worker %d of %d ready (pid %d)", worker.number, self.count, worker.pid
                        )
                if worker.pid is None and worker.process.sentinel in events:
                    worker.process.join()
                    self.fail(
                        "worker %d exited with code %s before it was ready",
                        worker.number,
                        worker.process.exitcode,
                    )

    def wait_exited(self) -> int:
        """Wait for every worker to exit; the gateway's exit code."""
        running = list(self.workers)
        while running:
            wait([w.process.sentinel for w in running])
            for worker in [w for w in running if w.process.exitcode is not None]:
                running.remove(worker)
                code = worker.process.exitcode
                message = "worker %d (pid %s) exited with code %s"
                if not self.stopping:
                    self.fail(message, worker.number, worker.pid, code)
                elif code != 0 and worker.pid is not None:  # not ready yet: killed by the stop
                    self.failed = True
                    logger.error(message, worker.number, worker.pid, code)
        return 1 if self.failed else 0


def supervise(
    settings: Settings, reload_settings: Callable[[], Settings] | None, count: int
) -> int:
    """Run `count` worker processes on settings.server's port until stopped; the exit code.

    `settings` and `reload_settings` travel to each worker by pickle: `reload_settings` must be a
    module-level function or a functools.partial of one.
    """
    supervisor = _Supervisor(count)
    handlers = {
        signal.SIGTERM: supervisor.on_stop,
        signal.SIGINT: supervisor.on_stop,
        signal.SIGHUP: supervisor.on_hangup,
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    spawn = multiprocessing.get_context("spawn")
    try:
        for number in range(1, count + 1):
            if supervisor.stopping:
                break
            reader, writer = spawn.Pipe(duplex=False)
            process = spawn.Process(
                target=_work,
                args=(settings, reload_settings, writer),
                name=f"mavera-gateway-worker-{number}",
            )
            process.start()
            writer.close()
            supervisor.workers.append(_Worker(number, process, reader))
        supervisor.wait_ready()
        return supervisor.wait_exited()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
