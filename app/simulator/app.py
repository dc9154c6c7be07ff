"""The ``Simulator``: an ASGI app imitating the Mavera API, scriptable for tests and demos.

Routes are served both under ``/api/v1`` and at the root: ``GET /personas``, ``GET /usage``,
``POST /chat/completions`` and ``POST /responses``.

Order of checks: authentication, rate limit, body validation, then the request's script
(``SimScript.status`` faults), then the credit balance, then generation.

Billing rule: a generation is billed its cost exactly when the simulator hands the server the
usage object reporting that cost: a non-stream 200 body; the ``response.completed`` event of
a Responses stream; the usage chunk of a chat stream with ``stream_options.include_usage``.
A chat stream without ``include_usage`` is billed when it completes (``[DONE]`` is handed
over) although it reports nothing, as the real API charges without telling. A stream cut or
abandoned before that point is not billed, and errors are never billed. The cost is
``min(5, 1 + (input_tokens + output_tokens) // 40)`` with tokens counted as whitespace-split
words, so the same request always costs the same. A credit limit is checked against what has
already been billed: concurrent streams may together overdraw it slightly.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.simulator import formats
from app.simulator.delivery import Delivery, drop_connection, error_response, is_cut, json_response
from app.simulator.errors import SimError
from app.simulator.generate import Completion, new_id, plan
from app.simulator.limits import SlidingWindowLimiter
from app.simulator.personas import PERSONAS, filter_personas
from app.simulator.script import SimRecord, SimScript, apply_overrides
from app.simulator.usage import UsageTotals, billing_month, usage_report
from app.simulator.validate import (
    GenerationRequest,
    bearer_token,
    check_key,
    parse_chat,
    parse_responses,
    personas_query,
)

RECORD_KEY = "mavera_sim.record"
Handler = Callable[[Request, SimRecord, dict[str, str]], Awaitable[ASGIApp]]


class Simulator:
    """A fake Mavera API with scripted timing, faults, rate limits and credits."""

    def __init__(
        self,
        api_keys: set[str] | None = None,
        script: SimScript | None = None,
        rpm: int | None = None,
        credits: int | None = None,
        max_records: int | None = None,
    ) -> None:
        self.api_keys = set(api_keys) if api_keys is not None else None
        # A long-running simulator keeps only about its last `max_records` records (between
        # that and twice as many); tests keep them all.
        self.max_records = max_records
        self.script = script if script is not None else SimScript()
        self.credits = credits
        self.records: list[SimRecord] = []
        self._queue: deque[SimScript] = deque()
        self._limiter = SlidingWindowLimiter(rpm)
        self._totals = UsageTotals()
        routes: list[BaseRoute] = [
            Route("/personas", self._endpoint(self._personas), methods=["GET"]),
            Route("/usage", self._endpoint(self._usage), methods=["GET"]),
            Route("/chat/completions", self._endpoint(self._chat), methods=["POST"]),
            Route("/responses", self._endpoint(self._responses), methods=["POST"]),
        ]
        self._router = Starlette(
            routes=[Mount("/api/v1", routes=routes), *routes],
            exception_handlers={HTTPException: self._http_error},
        )

    @property
    def app(self) -> ASGIApp:
        """The ASGI application to serve: the simulator itself.

        An instance with ``async __call__`` rather than a bound method, because uvicorn's
        interface detection would take a bound method for an ASGI 2 app.
        """
        return self

    @property
    def rpm(self) -> int | None:
        """Requests per minute per key; None for unlimited (headers then report 600)."""
        return self._limiter.rpm

    @rpm.setter
    def rpm(self, value: int | None) -> None:
        self._limiter.rpm = value

    def enqueue(self, script: SimScript) -> None:
        """Use ``script`` for the next generation request that passes validation (FIFO)."""
        self._queue.append(script)

    def reset(self) -> None:
        """Forget records, queued scripts, rate-limit windows and credit usage."""
        self.records.clear()
        self._queue.clear()
        self._limiter.reset()
        self._totals = UsageTotals()

    def total_credits_charged(self) -> int:
        """Credits billed this calendar month (UTC), since creation or the last ``reset()``."""
        return self._current().credits

    def spend_elsewhere(self, credits: int) -> None:
        """Count ``credits`` as spent this month outside any gateway (Mavera's web app, say):
        ``GET /usage`` reports them and they draw on the balance, yet no request made them."""
        if credits < 0:
            raise ValueError("credits spent elsewhere cannot be negative")
        self._current().elsewhere += credits

    def _current(self) -> UsageTotals:
        """This billing period's totals: a new calendar month starts from nothing."""
        if self._totals.month != billing_month():
            self._totals = UsageTotals()
        return self._totals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: record the request, route it, turn a ``StreamCut`` into a drop."""
        if scope["type"] != "http":
            await self._router(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        record = SimRecord(
            method=scope["method"],
            path=scope["path"],
            headers=headers,
            api_key=bearer_token(headers.get("authorization")),
            received_at=time.monotonic(),
        )
        self.records.append(record)
        if self.max_records is not None and len(self.records) >= 2 * self.max_records:
            del self.records[: -self.max_records]

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        try:
            await self._router({**scope, RECORD_KEY: record}, receive, send_noting_status)
        except Exception as exc:
            if not is_cut(exc) or not await drop_connection(send, receive):
                raise

    def _endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[ASGIApp]]:
        """Wrap ``handler`` with body capture, authentication, rate limiting and error rendering."""

        async def endpoint(request: Request) -> ASGIApp:
            record: SimRecord = request.scope[RECORD_KEY]
            await self._capture_body(request, record)
            headers = self._limiter.peek(None).headers()
            try:
                key = check_key(request.headers.get("authorization"), self.api_keys)
                verdict = self._limiter.hit(key)
                headers = verdict.headers()
                if not verdict.allowed:
                    raise SimError.rate_limited(verdict.retry_after_s)
                return await handler(request, record, headers)
            except SimError as exc:
                return error_response(record, exc, headers)

        return endpoint

    @staticmethod
    async def _capture_body(request: Request, record: SimRecord) -> None:
        raw = await request.body()
        if not raw:
            return
        try:
            record.body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(record.body, dict):
            body = record.body
            record.model = body["model"] if isinstance(body.get("model"), str) else None
            persona_id = body.get("persona_id")
            record.persona_id = persona_id if isinstance(persona_id, str) else None
            record.stream = body.get("stream") is True

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        record: SimRecord = request.scope[RECORD_KEY]
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code, message = "resource_not_found", f"No such endpoint: {request.url.path}"
        if status == 405:
            code, message = "method_not_allowed", f"Method {request.method} is not allowed here."
        error = SimError(status, "invalid_request_error", code, message)
        return error_response(record, error, self._limiter.peek(None).headers())

    async def _personas(
        self, request: Request, record: SimRecord, headers: dict[str, str]
    ) -> ASGIApp:
        query = personas_query(request.query_params)
        data = [persona.to_json() for persona in filter_personas(PERSONAS, **query)]
        return json_response(record, 200, {"object": "list", "data": data}, headers)

    async def _usage(self, request: Request, record: SimRecord, headers: dict[str, str]) -> ASGIApp:
        generations = [
            r for r in self.records if r.path.endswith(("/chat/completions", "/responses"))
        ]
        totals = dataclasses.replace(
            self._current(),
            requests=len(generations),
            errors=sum(1 for r in self.records if r.status >= 400),
        )
        report = usage_report(totals, self.credits, self._limiter.limit)
        return json_response(record, 200, report, headers)

    async def _chat(self, request: Request, record: SimRecord, headers: dict[str, str]) -> ASGIApp:
        return self._generate(parse_chat(record.body), record, headers)

    async def _responses(
        self, request: Request, record: SimRecord, headers: dict[str, str]
    ) -> ASGIApp:
        return self._generate(parse_responses(record.body), record, headers)

    def _script_for(self, body: dict[str, Any]) -> SimScript:
        """Body ``mavera_sim`` fields over the next queued script over ``self.script``."""
        script = apply_overrides(
            self._queue[0] if self._queue else self.script, body.get("mavera_sim")
        )
        if self._queue:
            self._queue.popleft()
        return script

    def _generate(
        self, req: GenerationRequest, record: SimRecord, headers: dict[str, str]
    ) -> ASGIApp:
        script = self._script_for(record.body)
        if script.status is not None:
            error = SimError.scripted(script.status, script.retry_after_s)
            record.error_code = error.code
            error_headers = {**headers, **error.headers}
            error_body = orjson.dumps(error.envelope())
            if script.error_body is not None:
                error_body = script.error_body.replace("{api_key}", record.api_key or "").encode()
                error_headers["content-type"] = script.error_content_type
            return Delivery(
                record=record,
                script=script,
                status=error.status,
                headers=error_headers,
                body=error_body,
            )
        done = plan(
            req.persona.name,
            req.question,
            req.prompt_text,
            chunks=script.chunks,
            tool_name=req.tool_name,
            json_schema=req.json_schema,
        )
        if self.credits is not None and self._current().spent() + done.cost > self.credits:
            raise SimError.credits_exhausted()
        record.id = new_id("chatcmpl_" if req.kind == "chat" else "resp_")
        body, events = formats.render(req, record.id, done)
        bill = functools.partial(self._bill, record, done)
        return Delivery(
            record=record,
            script=script,
            status=200,
            headers=headers,
            body=body,
            events=events,
            bill=bill,
        )

    def _bill(self, record: SimRecord, done: Completion, reported: bool) -> None:
        record.credits_charged = done.cost
        if reported:
            record.credits_reported = done.cost
        totals = self._current()
        totals.credits += done.cost
        totals.prompt_tokens += done.input_tokens
        totals.completion_tokens += done.output_tokens
