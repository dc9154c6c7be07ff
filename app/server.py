"""create_app: the ASGI application, its routes, and the lifespan that owns its resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import Receive, Scope, Send

from app.alerts import Alerts
from app.api import admin, dashboard, openai, ops
from app.auth import KeyStore
from app.config import ConfigError, Settings
from app.config_sections import LimitsSettings
from app.errors import GatewayError, error_body
from app.ledger.backends import open_ledger
from app.ledger.writer import LedgerWriter
from app.limits import Counters, Limits, MemoryCounters
from app.metrics import Metrics
from app.personas import PersonaNames
from app.state import Gateway
from app.upstream import Upstream

logger = logging.getLogger("mavera_gateway")

KEY_REFRESH_S = 2.0
SETTLE_S = 2.0  # for cancelled requests to book themselves before the ledger is flushed
ALERTS_FLUSH_S = 3.0  # for budget alerts still queued at shutdown
_FastEndpoint = Callable[[Request], Awaitable[Response]]


class GatewayApp(FastAPI):
    """FastAPI, except that POSTs to the generation endpoints skip its routing and middleware.

    They are nearly all of the traffic and handle every error themselves; FastAPI's and
    Starlette's layers cost about 40% of the CPU per request under load (bench/README.md).
    Which paths qualify comes from the same declarations FastAPI serves (`include_fast`: the
    router's endpoints marked `fast_path`, under each prefix it is included with), so there is
    one route table. Middleware added to this app does not see those requests.
    """

    _fast: tuple[tuple[re.Pattern[str], _FastEndpoint], ...] = ()

    def include_fast(self, router: APIRouter, includes: dict[str, dict[str, Any]]) -> None:
        """Include `router` under each prefix (with its `include_router` options), and serve
        its `fast_path` POSTs directly."""
        fast = list(self._fast)
        for prefix, options in includes.items():
            self.include_router(router, prefix=prefix, **options)
            for route in router.routes:
                if (
                    isinstance(route, APIRoute)
                    and "POST" in (route.methods or ())
                    and getattr(route.endpoint, "fast_path", False)
                ):
                    fast.append((compile_path(prefix + route.path)[0], route.endpoint))
        self._fast = tuple(fast)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            for pattern, endpoint in self._fast:
                match = pattern.match(path)
                if match is None:
                    continue
                scope["app"] = self
                scope["path_params"] = match.groupdict()
                response = await endpoint(Request(scope, receive))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, reload_settings: Callable[[], Settings] | None = None
) -> FastAPI:
    """The gateway as an ASGI app; resources are created when its lifespan starts.

    With `reload_settings`, SIGHUP reads the configuration again (when the app runs in the
    main thread, as `mavera-gateway serve` runs it).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = await _start(settings)
        app.state.gateway = gateway
        refresher = asyncio.create_task(_refresh_keys(gateway), name="key-refresh")
        hangup = reload_settings is not None and _on_hangup(gateway, reload_settings)
        if gateway.alerts is not None:
            gateway.alerts.start()
        try:
            yield
        finally:
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            await gateway.settle(SETTLE_S)
            await gateway.limits.drain()  # settlements first: they may queue alerts
            if gateway.alerts is not None:
                await gateway.alerts.aclose(ALERTS_FLUSH_S)
            await gateway.writer.close()
            await gateway.persona_names.aclose()
            await gateway.upstream.aclose()
            await gateway.ledger.close()

    app = GatewayApp(
        title="mavera-gateway",
        summary="OpenAI-compatible gateway in front of the Mavera API",
        lifespan=lifespan,
        redoc_url=None,
        redirect_slashes=False,  # a redirect would be built from the client's Host header
    )
    app.include_fast(
        openai.router,
        {
            "/v1": {"tags": ["openai"]},
            "/{route}/v1": {
                "tags": ["openai, under a route prefix"],
                "dependencies": [Depends(openai.route_prefix)],
            },
        },
    )
    app.include_router(ops.router)
    app.include_router(admin.router)
    app.include_router(dashboard.dashboard_router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


def open_counters(settings: LimitsSettings, rebuild: Callable[[], Awaitable[None]]) -> Counters:
    """The counters `[limits]` asks for: Redis (shared by replicas) with a redis_url, else this
    process's own. `rebuild` loads every budget from the ledger (Redis restarted empty)."""
    if not settings.redis_url:
        return MemoryCounters()
    try:
        from app.limits.redis_counters import RedisCounters
    except ImportError:
        raise ConfigError(
            "limits.redis_url is set, but the Redis client is not installed: "
            "pip install 'mavera-gateway[redis]'"
        ) from None
    return RedisCounters(settings.redis_url, settings.redis_prefix, rebuild)


async def _start(settings: Settings) -> Gateway:
    started: list[Gateway] = []
    counters = open_counters(settings.limits, lambda: started[0].rebuild_budgets())
    ledger = open_ledger(settings.ledger.database_url)
    await ledger.open()
    metrics = Metrics()
    writer = LedgerWriter(
        ledger,
        batch_size=settings.ledger.batch_size,
        flush_interval_s=settings.ledger.flush_interval_ms / 1000,
        max_buffer=settings.ledger.max_buffer,
        on_write_failure=metrics.write_failures.inc,
        on_drop=metrics.dropped.inc,
        strict=settings.ledger.durability == "strict",
    )
    writer.start()
    gateway = Gateway(
        settings=settings,
        upstream=Upstream(settings.upstream),
        keys=KeyStore(settings.clients),
        limits=Limits(settings.limits, counters),
        writer=writer,
        metrics=metrics,
        ledger=ledger,
        alerts=_alerts(settings),
        persona_names=PersonaNames(ledger),
    )
    if settings.upstream.persona_names_at_start:
        gateway.persona_names.refresh(gateway.upstream)
    started.append(gateway)
    metrics.track_queue(writer.depth)
    metrics.track_in_flight(lambda: gateway.in_flight)
    await gateway.reload_keys()  # seeds the budgets (and the alerts' thresholds) too
    return gateway


def _alerts(settings: Settings) -> Alerts | None:
    """Budget alerts, when a webhook is configured."""
    if not settings.alerts.webhook_url:
        return None
    return Alerts(
        settings.alerts.webhook_url,
        settings.alerts.thresholds,
        timezone=settings.limits.timezone,
    )


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, without the 422 answers it assumes: bad input is a 400 here."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema


def _on_hangup(gateway: Gateway, reload_settings: Callable[[], Settings]) -> bool:
    """Reload the config on SIGHUP; False where signals cannot be handled (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False

    def reload() -> None:
        try:
            new = reload_settings()
        except ConfigError as exc:
            one_line = " ".join(str(exc).split())
            logger.error("config reload refused, keeping the running config: %s", one_line)
            return
        fixed = gateway.reconfigure(new)
        logger.info("config reloaded on SIGHUP")
        if fixed:
            logger.warning(
                "config reload: changes to [%s] need a restart; the running values stay",
                "], [".join(fixed),
            )

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    return True


async def _refresh_keys(gateway: Gateway) -> None:
    """Pick up keys created or revoked by the CLI or another replica, without a restart."""
    while True:
        await asyncio.sleep(KEY_REFRESH_S)
        try:
            await gateway.reload_keys()
        except Exception as exc:  # a database hiccup must not stop the refresher
            logger.warning("could not refresh gateway keys: %s", exc)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return Response(
        error_body(message, "invalid_request_error", kind),
        exc.status_code,
        exc.headers,
        media_type="application/json",
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 for bad parameters or bodies, as a 400 in the OpenAI shape."""
    assert isinstance(exc, RequestValidationError)
    problems = []
    param = None
    for error in exc.errors():
        where = [
            str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")
        ]
        param = param or (where[-1] if where else None)
        problems.append(f"{'.'.join(where) or 'body'}: {error.get('msg', 'invalid')}")
    body = error_body("; ".join(problems), "invalid_request_error", "invalid_request_error", param)
    return Response(body, 400, media_type="application/json")
