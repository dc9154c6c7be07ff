"""The admin API: usage reports, raw records and key management, behind the admin key."""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request
from starlette.responses import Response

from app.api.schemas import (
    ERRORS,
    GENERATION_ERRORS,
    CreatedKey,
    KeyList,
    NewKey,
    Reconciliation,
    RecordPage,
    Revoked,
    UsageReport,
)
from app.auth import authorization, issue_key, key_digest
from app.clients import ClientSpec, InvalidClientSpec
from app.errors import GatewayError, InvalidApiKey, InvalidRequest
from app.ledger.protocol import REPORT_GROUPS, KeyExists, ReportGroup
from app.reconcile import UpstreamRefused, reconcile
from app.reports import fetch_records, footnote, parse_time, summarize
from app.state import Gateway

MAX_PAGE = 1000
_bearer = HTTPBearer(auto_error=False, description="the admin key (MAVERA_GATEWAY_ADMIN_KEY)")


class AdminDisabled(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "admin_disabled"
    outcome = "client_error"


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def admin_gateway(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Gateway:
    """The gateway, for a request that carries the admin key; else the error that says why."""
    gateway = _gateway(request)
    configured = gateway.settings.admin.key
    if configured is None:
        raise AdminDisabled("the admin API is off: set MAVERA_GATEWAY_ADMIN_KEY to enable it")
    authorization(request.headers)  # refuses several Authorization headers; HTTPBearer took one
    token = credentials.credentials.strip() if credentials else ""
    expected = key_digest(configured.get_secret_value())
    if not token or not hmac.compare_digest(key_digest(token), expected):
        raise InvalidApiKey("admin endpoints need 'Authorization: Bearer <admin key>'")
    return gateway


Admin = Annotated[Gateway, Depends(admin_gateway)]
router = APIRouter(prefix="/admin", tags=["admin"], responses={**ERRORS, 404: ERRORS[400]})


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _time(text: str, name: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=name) from None


@router.get("/usage", summary="Usage totals per group", response_model=UsageReport)
async def usage(
    gateway: Admin,
    since: Annotated[str, Query(description="30m, 24h, 7d, 2w or an ISO date")] = "24h",
    until: Annotated[str | None, Query(description="end of the period (default now)")] = None,
    by: Annotated[ReportGroup, Query(description=", ".join(REPORT_GROUPS))] = "client",
    client: Annotated[str | None, Query(max_length=64, description="only this client")] = None,
) -> Response:
    """GET /admin/usage?since=&until=&by=&client=: grouped totals, of one client if named."""
    start = _time(since, "since")
    end = _time(until, "until") if until is not None else None
    rows = await summarize(gateway.ledger, since=start, until=end, by=by, client=client)
    report = {"object": "list", "by": by, "since": start, "until": end, "data": rows}
    return _json({**report, "note": footnote(by)})


@router.get("/usage/records", summary="Raw usage records, newest first", response_model=RecordPage)
async def records(
    gateway: Admin,
    since: Annotated[str, Query(description="30m, 24h, 7d, 2w or an ISO date")] = "24h",
    client: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Response:
    """GET /admin/usage/records?since=&client=&limit=&offset=: raw records, newest first."""
    start = _time(since, "since")
    rows = await fetch_records(
        gateway.ledger, since=start, client=client, limit=limit + 1, offset=offset
    )
    has_more = len(rows) > limit
    return _json(
        {
            "object": "list",
            "data": rows[:limit],
            "has_more": has_more,
            "next_offset": offset + limit if has_more else None,
        }
    )


@router.get("/keys", summary="Clients with keys (never the keys)", response_model=KeyList)
async def list_keys(gateway: Admin) -> Response:
    """GET /admin/keys: every stored key's client and settings, revoked ones included."""
    data = [key.public() for key in await gateway.ledger.keys()]
    return _json({"object": "list", "data": data})


@router.post(
    "/keys",
    summary="Create a client's key (shown once)",
    status_code=201,
    response_model=CreatedKey,
)
async def create_key(gateway: Admin, new: NewKey) -> Response:
    """POST /admin/keys: validate the client's settings, store a new key, return it once."""
    try:
        spec = ClientSpec.model_validate(new.model_dump(exclude={"name"}))
        key = await issue_key(gateway.ledger, new.name, spec)
    except InvalidClientSpec as exc:
        raise InvalidRequest(str(exc), param=exc.field) from None
    except KeyExists as exc:
        raise InvalidRequest(str(exc), param="name") from None
    await gateway.reload_keys()
    return _json({"name": new.name, "key": key, "created_at": time.time()}, 201)


@router.delete("/keys/{name}", summary="Revoke a client's key now", response_model=Revoked)
async def revoke_key(gateway: Admin, name: str) -> Response:
    """DELETE /admin/keys/{name}: revoke a client's key now."""
    if not await gateway.ledger.revoke_key(name, time.time()):
        raise InvalidRequest(f"no active key named {name!r}", param="name")
    await gateway.reload_keys()
    return _json({"name": name, "revoked": True})


@router.get(
    "/reconcile",
    summary="The ledger's credits for Mavera's billing period next to Mavera's GET /usage",
    response_model=Reconciliation,
    responses={502: GENERATION_ERRORS[502]},
)
async def reconcile_credits(gateway: Admin) -> Response:
    """GET /admin/reconcile: Mavera's bill, the ledger's total, the difference, unknown costs."""
    try:
        return _json(await reconcile(gateway.upstream, gateway.ledger))
    except UpstreamRefused as exc:  # Mavera's own 4xx, passed on as elsewhere
        return Response(exc.body, exc.status, exc.headers)
