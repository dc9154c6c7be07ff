"""The OpenAI-compatible endpoints: chat completions, responses, models, personas."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.errors import BodyTooLarge, GatewayError, InternalError, InvalidRequest
from app.ledger.records import UsageRecord, new_id, outcome_for_status
from app.relay import ClientGone, StreamRelay, unless_disconnected
from app.routing import apply_target, resolve
from app.state import Gateway
from app.upstream import read_body, returned_headers
from app.usage import CHAT, RESPONSES, ask_for_stream_usage, usage_from_body

logger = logging.getLogger("mavera_gateway.api")

_Handler = Callable[[Gateway, Request, UsageRecord], Awaitable[Response]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
UPSTREAM_PATHS = {CHAT: "chat/completions", RESPONSES: "responses"}


def request_id_for(request: Request) -> str:
    """The client's X-Request-Id when it is sane, else a new one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else new_id()


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    return await proxy_generation(request, CHAT)


async def responses(request: Request) -> Response:
    """POST /v1/responses."""
    return await proxy_generation(request, RESPONSES)


async def proxy_generation(request: Request, endpoint: str) -> Response:
    """Authenticate, resolve persona and model, forward, relay, and record one request."""
    gateway: Gateway = request.app.state.gateway
    record = gateway.begin(endpoint, request_id_for(request))
    reply_headers = {"x-request-id": record.request_id}
    try:
        route = record.route = gateway.route_of(request)
        client = gateway.keys.authenticate(request.headers)
        record.client = client.name
        body = await read_json_object(request, gateway.settings.server.max_body_bytes)
        user = body.get("user")
        record.end_user = user if isinstance(user, str) else None
        record.stream = body.get("stream") is True
        target = resolve(gateway.settings, route, client, body, request.headers)
        record.requested_model = target.requested_model
        record.upstream_model = target.upstream_model
        record.persona_id = target.persona_id
        apply_target(target, body)
        drop_usage_chunk = endpoint == CHAT and record.stream and ask_for_stream_usage(body)
        gateway.limits.admit(client)
        upstream = await unless_disconnected(
            request.receive,
            gateway.upstream.send(
                "POST",
                UPSTREAM_PATHS[endpoint],
                gateway.upstream.headers(request.headers, record.request_id),
                orjson.dumps(body),
            ),
        )
        reply_headers.update(returned_headers(upstream))
        if record.stream and upstream.status_code < 300:
            return StreamRelay(
                upstream,
                reply_headers,
                record,
                gateway.finish,
                endpoint=endpoint,
                drop_usage_chunk=drop_usage_chunk,
            )
        content = await unless_disconnected(request.receive, read_body(upstream))
        _close_with_body(record, upstream.status_code, content)
        gateway.finish(record)
        return Response(content, upstream.status_code, reply_headers)
    except GatewayError as exc:
        record.finish(exc.status, exc.outcome, exc.code)
        gateway.finish(record)
        return exc.response(reply_headers)
    except ClientGone:
        record.finish(499, "client_disconnected", "client_disconnected")
        gateway.finish(record)
        return Response(status_code=499)
    except Exception:
        logger.exception("unexpected error handling request %s", record.request_id)
        error = InternalError("the gateway failed unexpectedly; see its log for request id")
        record.finish(error.status, error.outcome, error.code)
        gateway.finish(record)
        return error.response(reply_headers)


def _close_with_body(record: UsageRecord, status: int, content: bytes) -> None:
    record.mark_first_byte()
    error_code = None
    if status < 300:
        usage = usage_from_body(content)
        if usage is not None:
            record.credits_used = usage.credits_used
            record.input_tokens = usage.input_tokens
            record.output_tokens = usage.output_tokens
    else:
        error_code = _error_code(content)
    record.finish(status, outcome_for_status(status), error_code)


def _error_code(content: bytes) -> str | None:
    try:
        code = orjson.loads(content)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or the error that says what is wrong with it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(f"request body is over the gateway's limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"request body is over the gateway's limit of {max_bytes} bytes")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


async def list_models(request: Request) -> Response:
    """GET /v1/models: the upstream model plus every configured alias, in OpenAI list shape."""
    return await _recorded(request, "models", _models)


async def list_personas(request: Request) -> Response:
    """GET /v1/personas: Mavera's persona list, passed through and cached briefly (no credits)."""
    return await _recorded(request, "personas", _personas)


async def _recorded(request: Request, endpoint: str, handler: _Handler) -> Response:
    gateway: Gateway = request.app.state.gateway
    record = gateway.begin(endpoint, request_id_for(request))
    headers = {"x-request-id": record.request_id}
    try:
        record.route = gateway.route_of(request)
        record.client = gateway.keys.authenticate(request.headers).name
        response = await handler(gateway, request, record)
        record.mark_first_byte()
        record.finish(response.status_code, outcome_for_status(response.status_code))
        response.headers.update(headers)
        return response
    except GatewayError as exc:
        record.finish(exc.status, exc.outcome, exc.code)
        return exc.response(headers)
    finally:
        if record.finished_at is None:  # an unexpected exception is on its way out
            record.finish(500, "upstream_error", "internal_error")
        gateway.finish(record)


async def _models(gateway: Gateway, request: Request, record: UsageRecord) -> Response:
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


async def _personas(gateway: Gateway, request: Request, record: UsageRecord) -> Response:
    query = str(request.query_params)
    cached = gateway.personas_cache.get(query)
    if cached is not None:
        return Response(cached, media_type="application/json")
    upstream = await gateway.upstream.send(
        "GET",
        "personas",
        gateway.upstream.headers(request.headers, record.request_id),
        params=dict(request.query_params),
    )
    content = await read_body(upstream)
    if upstream.status_code == 200:
        gateway.personas_cache.put(query, content)
        record.credits_used = 0
    return Response(content, upstream.status_code, returned_headers(upstream))
