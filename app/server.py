"""create_app: the ASGI application, its routes, and the lifespan that owns its resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from app.api import admin, openai
from app.auth import KeyStore
from app.config import Settings
from app.errors import GatewayError, error_body
from app.ledger.backends import open_ledger
from app.ledger.writer import LedgerWriter
from app.limits import Limits, period_start
from app.metrics import Metrics
from app.state import Gateway
from app.upstream import Upstream

logger = logging.getLogger("mavera_gateway")

KEY_REFRESH_S = 2.0


def _v1_routes() -> list[Route]:
    return [
        Route("/chat/completions", openai.chat_completions, methods=["POST"]),
        Route("/responses", openai.responses, methods=["POST"]),
        Route("/models", openai.list_models, methods=["GET"]),
        Route("/personas", openai.list_personas, methods=["GET"]),
    ]


# The two generation endpoints, by path suffix, served without the framework's stack.
_GENERATION = (
    ("/v1/chat/completions", openai.chat_completions),
    ("/v1/responses", openai.responses),
)


class GatewayApp(FastAPI):
    """FastAPI, except that POSTs to the generation endpoints skip its routing and middleware.

    They are nearly all of the traffic and handle every error themselves; FastAPI's and
    Starlette's layers cost about a fifth of the CPU per request under load (bench/README.md).
    Everything else, including OpenAPI, 404/405 answers and the admin API, goes the usual way.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            for suffix, handler in _GENERATION:
                if not path.endswith(suffix):
                    continue
                prefix = path[: -len(suffix)]
                if prefix and (prefix.count("/") != 1 or len(prefix) < 2):
                    break
                scope["app"] = self
                if prefix:
                    scope["path_params"] = {"route": prefix[1:]}
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    """The gateway as an ASGI app; resources are created when its lifespan starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = await _start(settings)
        app.state.gateway = gateway
        refresher = asyncio.create_task(_refresh_keys(gateway), name="key-refresh")
        try:
            yield
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            await gateway.writer.close()
            await gateway.upstream.aclose()
            await gateway.ledger.close()

    app = GatewayApp(
        title="mavera-gateway",
        summary="OpenAI-compatible gateway in front of the Mavera API",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.router.routes.extend(
        [
            Mount("/v1", routes=_v1_routes()),
            Mount("/{route}/v1", routes=_v1_routes()),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *admin.routes(),
        ]
    )
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    return app


async def _start(settings: Settings) -> Gateway:
    if settings.limits.redis_url:
        logger.warning(
            "limits.redis_url is set, but this version keeps rate-limit and budget counters "
            "in this process: replicas do not share them"
        )
    ledger = open_ledger(settings.ledger.database_url)
    await ledger.open()
    metrics = Metrics()
    writer = LedgerWriter(
        ledger,
        metrics,
        batch_size=settings.ledger.batch_size,
        flush_interval_s=settings.ledger.flush_interval_ms / 1000,
        max_buffer=settings.ledger.max_buffer,
    )
    writer.start()
    gateway = Gateway(
        settings=settings,
        upstream=Upstream(settings.upstream),
        keys=KeyStore(settings.clients),
        limits=Limits(),
        writer=writer,
        metrics=metrics,
        ledger=ledger,
    )
    metrics.track_in_flight(lambda: gateway.in_flight)
    await gateway.reload_keys()
    await _seed_budgets(gateway)
    return gateway


async def _refresh_keys(gateway: Gateway) -> None:
    """Pick up keys created or revoked by the CLI or another replica, without a restart."""
    while True:
        await asyncio.sleep(KEY_REFRESH_S)
        try:
            await gateway.reload_keys()
        except Exception as exc:  # a database hiccup must not stop the refresher
            logger.warning("could not refresh gateway keys: %s", exc)


async def _seed_budgets(gateway: Gateway) -> None:
    """Start each budgeted client's spend from what the ledger already holds for this period."""
    for client in gateway.keys.clients():
        if client.credit_budget is None:
            continue
        began = period_start(client.budget_period, time.time())
        rows = await asyncio.to_thread(
            gateway.ledger.query,
            "SELECT COALESCE(SUM(credits_used), 0) FROM usage_records "
            "WHERE client = ? AND received_at >= ?",
            (client.name, began),
        )
        gateway.limits.load_spent(client.name, client.budget_period, began, float(rows[0][0]))


async def healthz(request: Request) -> Response:
    """The process is alive."""
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready to serve: the ledger answers and its writer keeps up."""
    gateway: Gateway = request.app.state.gateway
    problems = []
    if not await gateway.ledger.ping():
        problems.append("ledger database unreachable")
    if gateway.writer.failing_since is not None:
        problems.append(f"ledger writes failing; {gateway.writer.depth()} records buffered")
    if gateway.writer.dropped:
        problems.append(f"ledger buffer overflowed: {gateway.writer.dropped} records dropped")
    body = {"status": "not ready" if problems else "ready", "problems": problems}
    return Response(orjson.dumps(body), 503 if problems else 200, media_type="application/json")


async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    gateway: Gateway = request.app.state.gateway
    return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")


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
