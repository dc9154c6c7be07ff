"""Start the gateway (optionally with the built-in simulator) or the simulator alone."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn
from pydantic import SecretStr
from sse_starlette.sse import AppStatus

from app.background import BackgroundServer
from app.config import Settings
from app.edge import uvicorn_options
from app.ledger.backends import open_ledger
from app.logs import configure_logging
from app.server import create_app
from app.simulator import SimScript, Simulator, persona_ids

logger = logging.getLogger("mavera_gateway")

SIMULATOR_RECORDS = 10_000  # what a standalone simulator remembers: it may run for weeks
SIMULATOR_KEY = "mvra_live_built_in_simulator_key_0000"


class StartupRefused(Exception):
    """Starting as configured would be unsafe or cannot work; the message says what to do."""


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            return False


def stored_key_count(settings: Settings) -> int:
    """Active gateway keys: configured ones plus those created with `keys create`."""

    async def count() -> int:
        ledger = open_ledger(settings.ledger.database_url)
        await ledger.open()
        try:
            return len(await ledger.keys(include_revoked=False))
        finally:
            await ledger.close()

    return len(settings.clients) + asyncio.run(count())


def check_exposure(settings: Settings) -> None:
    """Refuse an open (keyless) gateway on a non-loopback address unless explicitly allowed."""
    host = settings.server.host
    if is_loopback(host) or settings.server.allow_open or stored_key_count(settings):
        return
    raise StartupRefused(
        f"refusing to serve {host} with no client keys: anyone who can reach it would spend "
        "your Mavera credits. Create a key (mavera-gateway keys create NAME), bind to "
        "127.0.0.1, or pass --allow-open if the network is private."
    )


def with_simulator(settings: Settings, simulator_url: str) -> Settings:
    """Settings pointed at a running simulator, with a persona default if none is set."""
    upstream = settings.upstream.model_copy(
        update={"base_url": simulator_url + "/api/v1", "api_key": SecretStr(SIMULATOR_KEY)}
    )
    defaults = settings.defaults
    if defaults.persona_id is None:
        defaults = defaults.model_copy(update={"persona_id": persona_ids()[0]})
    return settings.model_copy(update={"upstream": upstream, "defaults": defaults})


def serve(
    settings: Settings,
    *,
    simulate: bool = False,
    reload_settings: Callable[[], Settings] | None = None,
) -> None:
    """Run the gateway in the foreground until SIGINT/SIGTERM, then drain and flush.

    `reload_settings` reads the configuration again on SIGHUP.
    """
    api_key = settings.upstream.api_key
    configure_logging(settings.server.log_format, (api_key.get_secret_value(),) if api_key else ())
    check_exposure(settings)
    simulator: BackgroundServer | None = None
    if simulate:
        # sse-starlette ends every SSE stream in the process on the first SIGTERM; the in-process
        # simulator must keep serving the streams the gateway is still draining.
        AppStatus.enable_automatic_graceful_drain = False
        simulator = BackgroundServer(Simulator().app).start()
        settings = with_simulator(settings, simulator.url)
        if reload_settings is not None:
            read_again, url = reload_settings, simulator.url
            reload_settings = lambda: with_simulator(read_again(), url)  # noqa: E731
        logger.info("simulate mode: upstream is the built-in Mavera simulator at %s", simulator.url)
    elif api_key is None:
        raise StartupRefused(
            "MAVERA_API_KEY is not set: export your Mavera key, or try the gateway with --simulate"
        )
    host, port = settings.server.host, settings.server.port
    logger.info(
        "mavera-gateway on http://%s:%d/v1 -> %s (default persona: %s)",
        host,
        port,
        settings.upstream.base_url,
        settings.defaults.persona_id or "none",
    )
    app = create_app(settings, reload_settings)
    try:
        with _stop_signals_exit_cleanly():
            uvicorn.run(
                app,
                host=host,
                port=port,
                loop="uvloop",
                lifespan="on",
                access_log=False,
                log_config=None,
                timeout_graceful_shutdown=int(settings.server.shutdown_grace_s),
                **uvicorn_options(settings.server, app),
            )
    finally:
        if simulator is not None:
            simulator.stop()


@contextlib.contextmanager
def _stop_signals_exit_cleanly() -> Iterator[None]:
    """Make SIGTERM/SIGINT end `serve` normally (exit 0) once uvicorn has drained and flushed.

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


def simulate(
    host: str,
    port: int,
    script: SimScript,
    *,
    rpm: int | None = None,
    credits: int | None = None,
    credits_used_elsewhere: int = 0,
) -> None:
    """Run the Mavera simulator alone, as a server."""
    configure_logging("text")
    sim = Simulator(script=script, rpm=rpm, credits=credits, max_records=SIMULATOR_RECORDS)
    sim.spend_elsewhere(credits_used_elsewhere)
    logger.info(
        "Mavera simulator on http://%s:%d/api/v1 (any mvra_live_ key of 32+ chars)", host, port
    )
    uvicorn.run(sim.app, host=host, port=port, access_log=False, log_config=None)
