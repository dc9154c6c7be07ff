"""The admin API: usage reports, raw records and key management, behind the admin key."""

from __future__ import annotations

import asyncio
import hmac
import time
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.auth import key_digest
from app.errors import GatewayError, InvalidApiKey, InvalidRequest
from app.ledger.keys import KeyExists, create_key, list_keys, revoke_key
from app.reports import fetch_records, parse_time, summarize
from app.state import Gateway

MAX_PAGE = 1000


class AdminDisabled(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "admin_disabled"
    outcome = "client_error"


def routes() -> list[Route]:
    """The /admin/* routes."""
    return [
        Route("/admin/usage", usage, methods=["GET"]),
        Route("/admin/usage/records", records, methods=["GET"]),
        Route("/admin/keys", keys, methods=["GET", "POST", "DELETE"]),
        Route("/admin/keys/{name}", delete_key, methods=["DELETE"]),
        Route("/dashboard", dashboard, methods=["GET"]),
    ]


async def dashboard(request: Request) -> Response:
    """GET /dashboard: a page that shows /admin/usage; it asks for the admin key itself."""
    gateway: Gateway = request.app.state.gateway
    if gateway.settings.admin.key is None:
        raise AdminDisabled("the dashboard is off: set MAVERA_GATEWAY_ADMIN_KEY to enable it")
    page = resources.files("app").joinpath("static/dashboard.html").read_bytes()
    return Response(page, media_type="text/html; charset=utf-8")


def _admin(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    configured = gateway.settings.admin.key
    if configured is None:
        raise AdminDisabled("the admin API is off: set MAVERA_GATEWAY_ADMIN_KEY to enable it")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = key_digest(configured.get_secret_value())
    if scheme.lower() != "bearer" or not hmac.compare_digest(key_digest(token.strip()), expected):
        raise InvalidApiKey("admin endpoints need 'Authorization: Bearer <admin key>'")
    return gateway


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _since(request: Request, name: str = "since", default: str = "24h") -> float:
    try:
        return parse_time(request.query_params.get(name) or default)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=name) from None


def _int(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > maximum:
        raise InvalidRequest(f"{name} must be a whole number from 0 to {maximum}", param=name)
    return int(raw)


async def usage(request: Request) -> Response:
    """GET /admin/usage?since=&until=&by=: grouped totals."""
    gateway = _admin(request)
    since = _since(request)
    until = parse_time(request.query_params["until"]) if "until" in request.query_params else None
    by = request.query_params.get("by", "client")
    try:
        rows = await asyncio.to_thread(summarize, gateway.ledger, since=since, until=until, by=by)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="by") from None
    return _json({"object": "list", "by": by, "since": since, "until": until, "data": rows})


async def records(request: Request) -> Response:
    """GET /admin/usage/records?since=&client=&limit=&offset=: raw records, newest first."""
    gateway = _admin(request)
    since = _since(request)
    limit = _int(request, "limit", 100, MAX_PAGE)
    offset = _int(request, "offset", 0, 10**9)
    rows = await asyncio.to_thread(
        fetch_records,
        gateway.ledger,
        since=since,
        client=request.query_params.get("client"),
        limit=limit + 1,
        offset=offset,
    )
    has_more = len(rows) > limit
    page = rows[:limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "has_more": has_more,
            "next_offset": offset + limit if has_more else None,
        }
    )


async def keys(request: Request) -> Response:
    """GET lists keys (never the keys themselves); POST creates one; DELETE ?name= revokes."""
    gateway = _admin(request)
    if request.method == "GET":
        rows = await asyncio.to_thread(list_keys, gateway.ledger)
        return _json({"object": "list", "data": [row.public() for row in rows]})
    if request.method == "DELETE":
        return await _revoke(gateway, request.query_params.get("name", ""))
    try:
        spec = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("body must be a JSON object with at least a name") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise InvalidRequest("body must be a JSON object with a non-empty name", param="name")
    allowed = {"persona_id", "credit_budget", "rpm", "budget_period", "allow_persona_override"}
    unknown = set(spec) - allowed - {"name"}
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    try:
        key = await asyncio.to_thread(
            create_key, gateway.ledger, spec["name"], **{k: spec[k] for k in allowed if k in spec}
        )
    except KeyExists as exc:
        raise InvalidRequest(str(exc), param="name") from None
    await gateway.reload_keys()
    return _json({"name": spec["name"], "key": key, "created_at": time.time()}, 201)


async def delete_key(request: Request) -> Response:
    """DELETE /admin/keys/{name}: revoke a client's key now."""
    return await _revoke(_admin(request), request.path_params["name"])


async def _revoke(gateway: Gateway, name: str) -> Response:
    if not await asyncio.to_thread(revoke_key, gateway.ledger, name):
        raise InvalidRequest(f"no active key named {name!r}", param="name")
    await gateway.reload_keys()
    return _json({"name": name, "revoked": True})
