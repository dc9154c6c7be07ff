"""Property tests of the pure parts that take hostile input: body parsing, persona resolution."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from app.api.bodies import read_json_object
from app.clients import Client, ClientSpec
from app.config import Settings
from app.errors import GatewayError, InvalidRequest
from app.routing import resolve

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what JSON parsers keep exact
JSON = st.recursive(
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def parse(raw: bytes, max_bytes: int = 1 << 20) -> dict[str, Any]:
    chunks = [raw[i : i + 7] for i in range(0, len(raw), 7)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks[:-1]]
    messages.append({"type": "http.request", "body": chunks[-1], "more_body": False})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "headers": [], "path": "/v1/chat/completions"}
    return asyncio.run(read_json_object(Request(scope, receive), max_bytes))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_any_bytes_parse_to_an_object_or_a_400(raw: bytes) -> None:
    try:
        body = parse(raw)
    except InvalidRequest as exc:
        assert exc.status in (400, 413) and exc.message
    else:
        assert isinstance(body, dict)


@settings(max_examples=300)
@given(st.dictionaries(st.text(), JSON, max_size=6))
def test_any_json_object_round_trips_exactly(value: dict[str, Any]) -> None:
    raw = json.dumps(value).encode()
    assert parse(raw) == json.loads(raw)


@settings(max_examples=300)
@given(st.integers() | st.integers(min_value=-(2**64), max_value=2**65))
def test_integers_arrive_exactly_or_are_refused(number: int) -> None:
    raw = b'{"n": ' + str(number).encode() + b"}"
    try:
        body = parse(raw)
    except InvalidRequest as exc:
        assert "64 bits" in exc.message and not -(2**63) <= number < 2**64
    else:
        assert body["n"] == number and type(body["n"]) is int


PERSONA = st.one_of(st.none(), st.sampled_from(["p-a", "p-b", "p-c"]))


@settings(max_examples=300)
@given(
    default=PERSONA,
    client_persona=PERSONA,
    route_persona=PERSONA,
    alias_persona=PERSONA,
    override=st.one_of(st.none(), st.text(max_size=5), st.integers(), st.sampled_from(["p-z"])),
    header=st.one_of(st.none(), st.text(max_size=5)),
    allowed=st.one_of(st.none(), st.booleans()),
    model=st.one_of(st.none(), st.sampled_from(["alias", "mavera-1", "gpt-4o"]), st.integers()),
    require=st.booleans(),
)
def test_resolution_follows_the_precedence_or_explains_why_not(
    default: str | None,
    client_persona: str | None,
    route_persona: str | None,
    alias_persona: str | None,
    override: Any,
    header: str | None,
    allowed: bool | None,
    model: Any,
    require: bool,
) -> None:
    settings_ = Settings(
        defaults={"persona_id": default, "require_persona": require},
        models={"alias": {"persona_id": alias_persona}},
        routes={"r": {"persona_id": route_persona}},
        ledger={"database_url": "sqlite:///:memory:"},
    )
    client = Client("c", ClientSpec(persona_id=client_persona, allow_persona_override=allowed))
    body: dict[str, Any] = {"model": model, "persona_id": override}
    headers = {"x-mavera-persona": header} if header is not None else {}
    try:
        target = resolve(settings_, "r", client, body, headers)
    except GatewayError as exc:
        assert exc.status in (400, 403, 404) and exc.message
        return
    configured = [
        alias_persona if model == "alias" else None,
        route_persona,
        client_persona,
        default,
    ]
    chosen = next((p for p in configured if p), None)
    asked = override if isinstance(override, str) and override else (header or None)
    if asked is not None and asked != chosen:
        assert allowed is True and target.persona_id == asked
    else:
        assert target.persona_id == chosen
    assert target.persona_id is not None or not require
