"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.schemas import Health, Readiness
from app.state import Gateway

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive", response_model=Health)
async def healthz(request: Request) -> Response:
    """The process is alive."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/readyz",
    summary="Ready to serve: the ledger answers and its writer keeps up",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready; `problems` says why"}},
)
async def readyz(request: Request) -> Response:
    """Ready to serve: the ledger answers and its writer keeps up."""
    gateway: Gateway = request.app.state.gateway
    problems = [] if await gateway.ledger.ping() else ["ledger database unreachable"]
    problems += gateway.writer.problems()
    body = {"status": "not ready" if problems else "ready", "problems": problems}
    return Response(orjson.dumps(body), 503 if problems else 200, media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus text exposition",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    gateway: Gateway = request.app.state.gateway
    return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")
