"""The OpenAI-compatible endpoints: chat completions, responses, models, personas.

Declared once on `router`; `server.py` mounts it under `/v1` and `/{route}/v1`, and serves the
two generation endpoints from the same declarations on its fast path (`fast_path` marks them).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Path
from starlette.requests import Request
from starlette.responses import Response

from app.accounting import CLIENT_GONE_STATUS, RequestAccount
from app.api.bodies import read_json_object, serialised
from app.api.schemas import (
    ERRORS,
    GENERATION_ERRORS,
    ChatCompletion,
    ChatCompletionRequest,
    ModelList,
    PersonaList,
    ResponseObject,
    ResponsesRequest,
)
from app.clients import Client
from app.errors import GatewayError
from app.limits.spend import error_headers
from app.records import new_id
from app.relay import StreamRelay, unless_disconnected
from app.routing import apply_target, resolve
from app.scrub import MAX_ERROR_CODE_CHARS
from app.state import Gateway
from app.tags import TAGS_HEADER, request_tags
from app.usage import CHAT, RESPONSES, ask_for_stream_usage, usage_from_body

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Awaitable[Response]])
router = APIRouter()


def route_prefix(
    route: Annotated[str, Path(description="a route configured in [routes.NAME]")],
) -> str:
    """The route name of `/{route}/v1/...` (declared so the OpenAPI schema documents it)."""
    return route


def fast_path(endpoint: _Endpoint) -> _Endpoint:
    """Mark an endpoint that serves itself completely, so the app may call it directly."""
    endpoint.__dict__["fast_path"] = True
    return endpoint


def _generation_docs(request_model: type[Any], answer_model: type[Any]) -> dict[str, Any]:
    return {
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_model.model_json_schema()}},
            }
        },
        "responses": {
            200: {
                "model": answer_model,
                "description": "the answer; with `stream: true`, Mavera's SSE stream as it sent it",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **GENERATION_ERRORS,
        },
    }


def request_id_for(request: Request) -> str:
    """The client's X-Request-Id when it is sane, else a new one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else new_id()


@router.post(
    "/chat/completions",
    summary="Chat completion (OpenAI format), persona and key injected",
    **_generation_docs(ChatCompletionRequest, ChatCompletion),
)
@fast_path
async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    return await proxy_generation(request, CHAT)


@router.post(
    "/responses",
    summary="Response (OpenAI Responses format), persona and key injected",
    **_generation_docs(ResponsesRequest, ResponseObject),
)
@fast_path
async def responses(request: Request) -> Response:
    """POST /v1/responses."""
    return await proxy_generation(request, RESPONSES)


async def proxy_generation(request: Request, endpoint: str) -> Response:
    """Authenticate, resolve persona and model, forward, relay, and account for one request."""
    gateway: Gateway = request.app.state.gateway
    account = gateway.begin(endpoint, request_id_for(request))
    reply_headers = {"x-request-id": account.request_id}
    client: Client | None = None
    try:
        route = gateway.route_of(request)
        client = gateway.keys.authenticate(request.headers)
        account.caller(route, client)
        body = await read_json_object(request, gateway.settings.server.max_body_bytes)
        account.request(body)
        account.tagged(request_tags(request.headers.getlist(TAGS_HEADER), body, client.spec.tags))
        target = resolve(gateway.settings, route, client, body, request.headers)
        account.target(target)
        apply_target(target, body)
        stream = account.record.stream  # read from the body once, by the account
        drop_usage = endpoint == CHAT and stream and ask_for_stream_usage(body)
        # a wait in the shared queue ends when the client hangs up
        guard = functools.partial(unless_disconnected, request.receive)
        admission = await gateway.limits.admit(client, account.record, guard)
        reply_headers.update(admission.headers)
        content = serialised(body)
        upstream = gateway.upstream
        if stream:
            reply = await unless_disconnected(
                request.receive,
                upstream.open("POST", endpoint, request.headers, account.request_id, content),
            )
            if reply.status_code < 300:
                reply_headers.update(reply.headers)
                return StreamRelay(
                    reply,
                    reply_headers,
                    account,
                    endpoint=endpoint,
                    drop_usage_chunk=drop_usage,
                    max_event_bytes=gateway.settings.upstream.max_event_bytes,
                    strict=gateway.settings.ledger.durability == "strict",
                )
            answer = await unless_disconnected(request.receive, reply.read())
            reply_headers.update(reply.headers)
        else:
            reply, answer = await unless_disconnected(
                request.receive,
                upstream.fetch("POST", endpoint, request.headers, account.request_id, content),
            )
            reply_headers.update(reply.headers)
        _account_answer(account, reply.status_code, answer)
        response = Response(answer, reply.status_code, reply_headers)
    except BaseException as exc:
        if client is not None and isinstance(exc, GatewayError):
            reply_headers.update(await error_headers(gateway.limits, client, exc, reply_headers))
        response = _failure(account, exc, reply_headers)
    await account.durable()
    return response


def _failure(account: RequestAccount, exc: BaseException, headers: dict[str, str]) -> Response:
    """Book a failed request and answer it, in the OpenAI shape where anyone is listening."""
    error = account.failed(exc)
    if isinstance(exc, asyncio.CancelledError):
        # A shutdown past its grace period cancelled us before any answer went out: say so
        # (503, the client may retry elsewhere) rather than let the server send a bare 500.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    elif not isinstance(exc, Exception):
        raise exc
    if error is None:
        return Response(status_code=CLIENT_GONE_STATUS)
    return error.response(headers)


def _account_answer(account: RequestAccount, status: int, content: bytes) -> None:
    account.first_byte()
    if status < 300:
        account.usage(usage_from_body(content))
        account.answered(status)
    else:
        account.answered(status, _error_code(content))


def _error_code(content: bytes) -> str | None:
    try:
        code = orjson.loads(content)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return code[:MAX_ERROR_CODE_CHARS] if isinstance(code, str) else None


@router.get(
    "/models",
    summary="Model names this gateway serves: Mavera's model and every alias",
    response_model=ModelList,
    responses=ERRORS,
)
async def list_models(request: Request) -> Response:
    """GET /v1/models: the upstream model plus every configured alias, in OpenAI list shape."""
    return await _accounted(request, "models", _models)


@router.get(
    "/personas",
    summary="Mavera's personas, passed through and cached briefly (costs no credits)",
    response_model=PersonaList,
    responses={**ERRORS, 502: GENERATION_ERRORS[502]},
)
async def list_personas(request: Request) -> Response:
    """GET /v1/personas: Mavera's persona list, passed through and cached briefly (no credits)."""
    return await _accounted(request, "personas", _personas)


_Handler = Callable[[Gateway, Request, RequestAccount], Awaitable[Response]]


async def _accounted(request: Request, endpoint: str, handler: _Handler) -> Response:
    gateway: Gateway = request.app.state.gateway
    account = gateway.begin(endpoint, request_id_for(request))
    headers = {"x-request-id": account.request_id}
    try:
        route = gateway.route_of(request)
        account.caller(route, gateway.keys.authenticate(request.headers))
        response = await handler(gateway, request, account)
        account.first_byte()
        account.answered(response.status_code)
        response.headers.update(headers)
        return response
    except BaseException as exc:
        return _failure(account, exc, headers)


async def _models(gateway: Gateway, request: Request, account: RequestAccount) -> Response:
    settings = gateway.settings
    names = [settings.defaults.model]
    names += [r.model for r in settings.routes.values() if r.model and r.model not in names]
    entries = [{"id": n, "object": "model", "created": 0, "owned_by": "mavera"} for n in names]
    entries += [
        {"id": alias, "object": "model", "created": 0, "owned_by": "mavera-gateway"}
        for alias in settings.models
    ]
    body = orjson.dumps({"object": "list", "data": entries})
    return Response(body, media_type="application/json")


async def _personas(gateway: Gateway, request: Request, account: RequestAccount) -> Response:
    query = str(request.query_params)
    cached = gateway.personas_cache.get(query)
    if cached is not None:
        account.free()
        return Response(cached, media_type="application/json")
    reply, content = await gateway.upstream.fetch(
        "GET", "personas", request.headers, account.request_id, params=dict(request.query_params)
    )
    if reply.status_code == 200:
        gateway.personas_cache.put(query, content)
        gateway.persona_names.remember(content)
        account.free()
    return Response(content, reply.status_code, reply.headers)
