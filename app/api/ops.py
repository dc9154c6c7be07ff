"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request
from starlette.responses import Response

from app.api.schemas import ErrorResponse, Health, Readiness
from app.auth import key_digest
from app.errors import InvalidApiKey
from app.state import Gateway

router = APIRouter(tags=["operations"])
_bearer = HTTPBearer(auto_error=False, description="the metrics key or the admin key")


@router.get("/healthz", summary="The process is alive", response_model=Health)
async def healthz(request: Request) -> Response:
    """The process is alive."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/readyz",
    summary="Ready to serve: the ledger answers, its writer keeps up, shared limits answer",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready; `problems` says why"}},
)
async def readyz(request: Request) -> Response:
    """Ready to serve: the ledger answers, its writer keeps up, and the shared limits (Redis)
    answer; under `on_shared_failure = fail_open` a Redis outage only shows as `degraded`."""
    gateway: Gateway = request.app.state.gateway
    problems = [] if await gateway.ledger.ping() else ["ledger database unreachable"]
    problems += gateway.writer.problems()
    limits, degraded = await gateway.limits.readiness()
    problems += limits
    body = {
        "status": "not ready" if problems else "ready",
        "problems": problems,
        "degraded": degraded,
    }
    return Response(orjson.dumps(body), 503 if problems else 200, media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus text exposition (per-client series with the metrics or admin key)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        401: {"model": ErrorResponse, "description": "a key was sent, and it is not one of ours"},
    },
)
async def metrics(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Response:
    """Prometheus text exposition; client names and spend only for the metrics or admin key."""
    gateway: Gateway = request.app.state.gateway
    settings = gateway.settings
    per_client = settings.metrics.public_client_labels
    if credentials is not None:
        keys = [k for k in (settings.metrics.key, settings.admin.key) if k is not None]
        token = key_digest(credentials.credentials.strip())
        if not any(hmac.compare_digest(token, key_digest(k.get_secret_value())) for k in keys):
            raise InvalidApiKey("/metrics takes the metrics key or the admin key, or no key")
        per_client = True
    body = gateway.metrics.render(per_client=per_client)
    return Response(body, media_type="text/plain; version=0.0.4")
