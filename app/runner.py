"""Start the gateway (optionally with the built-in simulator) or the simulator alone."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable

import uvicorn
from pydantic import SecretStr
from sse_starlette.sse import AppStatus

from app.background import BackgroundServer
from app.config import Settings
from app.ledger.backends import open_ledger
from app.logs import configure_logging
from app.simulator import SimScript, Simulator, persona_ids
from app.workers import gateway_config, limits_need_sharing, run_server, supervise

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
    workers: int = 1,
) -> int:
    """Run the gateway in the foreground until SIGINT/SIGTERM, then drain and flush; exit code.

    `reload_settings` reads the configuration again on SIGHUP. With `workers` > 1, that many
    processes serve the port (app.workers), and `reload_settings` must be picklable.
    """
    api_key = settings.upstream.api_key
    configure_logging(settings.server.log_format, (api_key.get_secret_value(),) if api_key else ())
    check_exposure(settings)
    if workers > 1:
        check_workers(settings, workers)
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update={"port": claim_port(settings)})}
        )
    simulator: BackgroundServer | None = None
    if simulate:
        # sse-starlette ends every SSE stream in the process on the first SIGTERM; the in-process
        # simulator must keep serving the streams the gateway is still draining.
        AppStatus.enable_automatic_graceful_drain = False
        # One simulator for all workers: they share its records, rate limits and credits.
        simulator = BackgroundServer(Simulator().app).start()
        settings = with_simulator(settings, simulator.url)
        if reload_settings is not None:
            reload_settings = functools.partial(_simulated, reload_settings, simulator.url)
        logger.info("simulate mode: upstream is the built-in Mavera simulator at %s", simulator.url)
    elif api_key is None:
        raise StartupRefused(
            "MAVERA_API_KEY is not set: export your Mavera key, or try the gateway with --simulate"
        )
    host, port = settings.server.host, settings.server.port
    logger.info(
        "mavera-gateway on http://%s:%d/v1 -> %s (default persona: %s%s)",
        host,
        port,
        settings.upstream.base_url,
        settings.defaults.persona_id or "none",
        f", {workers} workers" if workers > 1 else "",
    )
    try:
        if workers > 1:
            return supervise(settings, reload_settings, workers)
        run_server(uvicorn.Server(gateway_config(settings, reload_settings, host=host, port=port)))
        return 0
    finally:
        if simulator is not None:
            simulator.stop()


def _simulated(read: Callable[[], Settings], simulator_url: str) -> Settings:
    """The configuration read again, still pointed at the running simulator."""
    return with_simulator(read(), simulator_url)


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse several workers where they cannot act as one gateway."""
    if not sys.platform.startswith("linux"):
        raise StartupRefused(
            "--workers needs Linux, where SO_REUSEPORT spreads connections over the workers; "
            "run one worker per gateway and several gateways instead"
        )
    shared = limits_need_sharing(settings)
    if shared and not settings.limits.redis_url:
        raise StartupRefused(
            f"--workers {workers} with limits configured ({', '.join(shared)}): each worker "
            "would count them on its own, letting through up to "
            f"{workers} times the limit. Set MAVERA_GATEWAY_REDIS_URL=redis://HOST:6379/0 "
            "(or [limits] redis_url) so the workers share their counters, or run one worker."
        )


def claim_port(settings: Settings) -> int:
    """The port the workers will share: free now (no other process on it), 0 made concrete."""
    host, port = settings.server.host, settings.server.port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
            return int(probe.getsockname()[1])
    except OSError as exc:
        raise StartupRefused(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


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
