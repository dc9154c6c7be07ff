"""The admin API: usage reports, raw records and key management, behind the admin key."""

from __future__ import annotations

import contextlib
import functools
import hmac
import time
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request
from starlette.responses import Response

from app import key_admin
from app.api.schemas import (
    CONFLICT,
    ERRORS,
    GENERATION_ERRORS,
    PATCH_DESCRIPTION,
    PATCH_EXAMPLE,
    AuditLog,
    CreatedKey,
    KeyInfo,
    KeyList,
    NewKey,
    Reconciliation,
    RecordPage,
    Revoked,
    Spend,
    UsageReport,
)
from app.auth import authorization, key_digest
from app.clients import LOCAL_CLIENT, InvalidClientSpec, parse_client_spec
from app.errors import ClientNotFound, GatewayError, InvalidApiKey, InvalidRequest
from app.ledger.protocol import REPORT_GROUPS, KeyExists, ReportGroup
from app.limits.spend import spend_report
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


class KeyNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "key_not_found"
    outcome = "client_error"


class KeyInConfig(GatewayError):
    """The key is the config file's (`[clients.NAME]`): changed by editing the file."""

    status = 409
    type = "invalid_request_error"
    code = "key_in_config_file"
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
    responses={409: CONFLICT},
)
async def create_key(gateway: Admin, new: NewKey, request: Request) -> Response:
    """POST /admin/keys: validate the client's settings, store a new key, return it once."""
    with _key_errors():
        spec = parse_client_spec(new.model_dump(exclude={"name"}))
        key = await key_admin.create_key(
            gateway.ledger, new.name, spec, _actor(request), gateway.settings.clients
        )
    await gateway.reload_keys()
    return _json({"name": new.name, "key": key, "created_at": time.time()}, 201)


@router.patch(
    "/keys/{name}",
    summary="Change some of a client's settings (its key stays the same)",
    response_model=KeyInfo,
    responses={409: CONFLICT},
)
async def update_key(
    gateway: Admin,
    name: str,
    patch: Annotated[dict[str, Any], Body(description=PATCH_DESCRIPTION, examples=[PATCH_EXAMPLE])],
    request: Request,
) -> Response:
    """PATCH /admin/keys/{name}: change the given settings; the next request sees them."""
    with _key_errors():
        stored, _ = await key_admin.update_key(
            gateway.ledger, name, patch, _actor(request), gateway.settings.clients
        )
    await gateway.reload_keys()
    return _json(stored.public())


@router.delete(
    "/keys/{name}",
    summary="Revoke a client's key now",
    response_model=Revoked,
    responses={409: CONFLICT},
)
async def revoke_key(gateway: Admin, name: str, request: Request) -> Response:
    """DELETE /admin/keys/{name}: revoke a client's key now."""
    with _key_errors():
        await key_admin.revoke_key(gateway.ledger, name, _actor(request), gateway.settings.clients)
    await gateway.reload_keys()
    return _json({"name": name, "revoked": True})


@router.get("/audit", summary="Admin changes to keys, newest first", response_model=AuditLog)
async def audit(
    gateway: Admin,
    since: Annotated[str | None, Query(description="30m, 24h, 7d or an ISO date")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Response:
    """GET /admin/audit?since=&limit=: who changed which key, when, and what changed."""
    start = _time(since, "since") if since is not None else 0.0
    entries = await gateway.ledger.audit(start, limit)
    return _json({"object": "list", "data": [entry.public() for entry in entries]})


def _actor(request: Request) -> str:
    return key_admin.api_actor(request.client.host if request.client else None)


@contextlib.contextmanager
def _key_errors() -> Iterator[None]:
    """The key administration's refusals as errors in the OpenAI shape."""
    try:
        yield
    except InvalidClientSpec as exc:
        raise InvalidRequest(str(exc), param=exc.field) from None
    except KeyExists as exc:
        raise InvalidRequest(str(exc), param="name") from None
    except key_admin.NoActiveKey as exc:
        raise KeyNotFound(str(exc), param="name") from None
    except key_admin.DeclaredInConfig as exc:
        raise KeyInConfig(str(exc), param="name") from None


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


@router.get(
    "/clients/{name}/spend",
    summary="A client's budget period: spent, reserved, remaining, reset time, limits",
    response_model=Spend,
)
async def client_spend(gateway: Admin, name: str) -> Response:
    """GET /admin/clients/{name}/spend: the client's spend and limits now (404: no such client)."""
    known = {client.name: client for client in gateway.keys.clients()}
    if gateway.keys.open_mode:
        known[LOCAL_CLIENT.name] = LOCAL_CLIENT
    client = known.get(name)
    if client is None:
        raise ClientNotFound(f"no client named {name!r} has a key on this gateway", param="name")
    report = await spend_report(
        gateway.limits, client, functools.partial(gateway.ledger.spent_since, name)
    )
    return _json(report)
