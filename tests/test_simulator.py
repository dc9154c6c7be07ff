"""Tests for the Mavera simulator: in-process for formats and validation, real sockets for
streams, timing, cuts and disconnects, and the real openai SDK as a client."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import openai
import pydantic
import pytest
from starlette.testclient import TestClient

from app.simulator import PERSONAS, SimRecord, SimScript, Simulator, credit_cost, persona_ids
from app.simulator.limits import SlidingWindowLimiter
from tests.servers import serve_in_thread

KEY = "mvra_live_" + "k" * 30
OTHER_KEY = "mvra_test_" + "o" * 30
AUTH = {"Authorization": f"Bearer {KEY}"}
PID = persona_ids()[0]
QUESTION = "What do you think of electric scooters in big cities?"
CHAT = "/api/v1/chat/completions"
RESPONSES = "/api/v1/responses"


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "mavera-1",
        "persona_id": PID,
        "messages": [{"role": "user", "content": QUESTION}],
        **extra,
    }


def resp_body(**extra: Any) -> dict[str, Any]:
    return {"model": "mavera-1", "persona_id": PID, "input": QUESTION, **extra}


@contextlib.contextmanager
def local(sim: Simulator, headers: dict[str, str] | None = None) -> Iterator[TestClient]:
    with TestClient(sim.app, headers=AUTH if headers is None else headers) as client:
        yield client


@contextlib.contextmanager
def served(sim: Simulator, timeout: float = 10) -> Iterator[httpx.Client]:
    with serve_in_thread(sim.app) as base:
        with httpx.Client(base_url=base, headers=AUTH, timeout=timeout) as client:
            yield client


def sdk(base_url: str, api_key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/api/v1", api_key=api_key, max_retries=0)


def split_events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    return [event + b"\n\n" for event in raw[:-2].split(b"\n\n")]


def chat_data(event: bytes) -> Any:
    assert event.startswith(b"data: ") and event.count(b"\n") == 2
    payload = event[len(b"data: ") : -2]
    return payload.decode() if payload == b"[DONE]" else json.loads(payload)


def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Reply(Protocol):
    """What the checks need from an httpx or TestClient (httpx2) response."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def assert_error(response: Reply, status: int, type_: str, code: str, param: Any) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": type_,
            "code": code,
            "param": param,
        }
    }
    assert response.json()["error"]["message"]


# Authentication


def test_missing_key_is_401_missing_api_key() -> None:
    sim = Simulator()
    with local(sim, headers={}) as client:
        response = client.post(CHAT, json=chat_body())
    assert_error(response, 401, "authentication_error", "missing_api_key", None)
    assert response.headers["x-ratelimit-limit"] == "600"
    record = sim.records[0]
    assert (record.status, record.error_code, record.id, record.api_key) == (
        401,
        "missing_api_key",
        "",
        None,
    )
    assert record.credits_charged == 0 and sim.total_credits_charged() == 0


@pytest.mark.parametrize(
    "authorization",
    [
        "Token " + KEY,
        "Bearer",
        "Bearer mvra_live_short",
        "Bearer sk-" + "x" * 40,
        "Bearer mvra_prod_" + "x" * 30,
    ],
)
def test_malformed_key_is_401_invalid_api_key(authorization: str) -> None:
    sim = Simulator()
    with local(sim, headers={"Authorization": authorization}) as client:
        for method, path in (
            ("GET", "/personas"),
            ("GET", "/api/v1/usage"),
            ("POST", CHAT),
            ("POST", RESPONSES),
        ):
            response = client.request(method, path, json=chat_body() if method == "POST" else None)
            assert_error(response, 401, "authentication_error", "invalid_api_key", None)


def test_key_set_accepts_only_listed_keys() -> None:
    sim = Simulator(api_keys={"custom-key"})
    with local(sim, headers={}) as client:
        assert (
            client.get("/personas", headers={"Authorization": "Bearer custom-key"}).status_code
            == 200
        )
        rejected = client.get("/personas", headers={"Authorization": f"Bearer {KEY}"})
    assert_error(rejected, 401, "authentication_error", "invalid_api_key", None)
    assert [r.api_key for r in sim.records] == ["custom-key", KEY]


def test_test_keys_are_accepted() -> None:
    with local(Simulator(), headers={"Authorization": f"Bearer {OTHER_KEY}"}) as client:
        assert client.post(CHAT, json=chat_body()).status_code == 200


# Validation


@pytest.mark.parametrize(
    ("path", "body", "code", "param"),
    [
        (CHAT, [1, 2], "invalid_field", None),
        (CHAT, {k: v for k, v in chat_body().items() if k != "model"}, "invalid_model", "model"),
        (CHAT, chat_body(model="gpt-4o"), "invalid_model", "model"),
        (
            CHAT,
            {k: v for k, v in chat_body().items() if k != "persona_id"},
            "missing_field",
            "persona_id",
        ),
        (CHAT, chat_body(persona_id="clx0000000000000000000000"), "invalid_persona", "persona_id"),
        (CHAT, chat_body(persona_id=42), "invalid_persona", "persona_id"),
        (
            CHAT,
            {k: v for k, v in chat_body().items() if k != "messages"},
            "missing_field",
            "messages",
        ),
        (CHAT, chat_body(messages=[]), "invalid_field", "messages"),
        (CHAT, chat_body(messages="hello"), "invalid_field", "messages"),
        (
            CHAT,
            chat_body(messages=[{"role": "user", "content": "x"}] * 129),
            "invalid_field",
            "messages",
        ),
        (CHAT, chat_body(messages=["hello"]), "invalid_field", "messages"),
        (CHAT, chat_body(stream="yes"), "invalid_field", "stream"),
        (CHAT, chat_body(mavera_sim={"chunks": "many"}), "invalid_field", "mavera_sim.chunks"),
        (CHAT, chat_body(mavera_sim=[1]), "invalid_field", "mavera_sim"),
        (RESPONSES, "just a string", "invalid_field", None),
        (RESPONSES, resp_body(model="mavera-2"), "invalid_model", "model"),
        (
            RESPONSES,
            {k: v for k, v in resp_body().items() if k != "persona_id"},
            "missing_field",
            "persona_id",
        ),
        (RESPONSES, resp_body(persona_id="nope"), "invalid_persona", "persona_id"),
        (
            RESPONSES,
            {k: v for k, v in resp_body().items() if k != "input"},
            "missing_field",
            "input",
        ),
        (RESPONSES, resp_body(input="x" * 100_001), "invalid_field", "input"),
        (RESPONSES, resp_body(input=[]), "invalid_field", "input"),
        (RESPONSES, resp_body(input=42), "invalid_field", "input"),
    ],
)
def test_validation_errors(path: str, body: Any, code: str, param: str | None) -> None:
    sim = Simulator()
    with local(sim) as client:
        response = client.post(path, json=body)
    assert_error(response, 400, "invalid_request_error", code, param)
    assert sim.records[0].error_code == code and sim.total_credits_charged() == 0


def test_body_that_is_not_json_is_400() -> None:
    with local(Simulator()) as client:
        response = client.post(
            CHAT, content=b"{not json", headers={"content-type": "application/json"}
        )
    assert_error(response, 400, "invalid_request_error", "invalid_field", None)


def test_input_at_the_limit_is_accepted() -> None:
    with local(Simulator()) as client:
        assert client.post(RESPONSES, json=resp_body(input="x" * 100_000)).status_code == 200
        messages = [{"role": "user", "content": "x"}] * 128
        assert client.post(CHAT, json=chat_body(messages=messages)).status_code == 200


def test_routes_at_root_and_unknown_paths() -> None:
    with local(Simulator()) as client:
        assert client.post("/chat/completions", json=chat_body()).status_code == 200
        assert client.post("/responses", json=resp_body()).status_code == 200
        assert client.get("/personas").status_code == 200
        missing = client.get("/api/v1/models")
        wrong_method = client.get(CHAT)
    assert_error(missing, 404, "invalid_request_error", "resource_not_found", None)
    assert (
        wrong_method.status_code == 405
        and wrong_method.json()["error"]["type"] == "invalid_request_error"
    )


# Personas and usage


def test_personas_list_shape() -> None:
    sim = Simulator()
    with local(sim) as client:
        body = client.get("/api/v1/personas").json()
    assert body["object"] == "list" and set(body) == {"object", "data"}
    assert [p["id"] for p in body["data"]] == persona_ids() == [p.id for p in PERSONAS]
    assert len(body["data"]) >= 10
    categories = {p["category"] for p in body["data"]}
    assert {"Generational", "Professional", "Lifestyle", "IndustrySpecific", "Expert"} <= categories
    for persona in body["data"]:
        fields = {"id", "object", "name", "category", "description", "created_at"}
        assert set(persona) == fields | {"is_custom", "is_expert"}
        assert re.fullmatch(r"c[a-z0-9]{24}", persona["id"]) and persona["object"] == "persona"
        assert isinstance(persona["created_at"], int)
    assert any(p["is_expert"] for p in body["data"]) and any(p["is_custom"] for p in body["data"])
    assert sim.total_credits_charged() == 0 and sim.records[0].credits_charged == 0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("category=generational", lambda p: p.category == "Generational"),
        ("search=PARENT", lambda p: "parent" in p.name.lower()),
        ("search=hospital", lambda p: "hospital" in p.description),
        ("is_custom=true", lambda p: p.is_custom),
        ("is_custom=false", lambda p: not p.is_custom),
        ("category=Expert&search=pricing", lambda p: p.name == "Behavioral Economist"),
    ],
)
def test_personas_filters(query: str, expected: Callable[[Any], bool]) -> None:
    with local(Simulator()) as client:
        ids = [p["id"] for p in client.get(f"/personas?{query}").json()["data"]]
    assert ids and ids == [p.id for p in PERSONAS if expected(p)]


def test_personas_limit() -> None:
    with local(Simulator()) as client:
        assert len(client.get("/personas?limit=3").json()["data"]) == 3
        assert len(client.get("/personas?limit=100").json()["data"]) == len(PERSONAS)
        for bad in ("0", "101", "abc", "-1"):
            response = client.get(f"/personas?limit={bad}")
            assert_error(response, 400, "invalid_request_error", "invalid_field", "limit")
        response = client.get("/personas?is_custom=maybe")
    assert_error(response, 400, "invalid_request_error", "invalid_field", "is_custom")


def test_usage_reports_credits_and_rate_limit() -> None:
    sim = Simulator(rpm=120, credits=1000)
    with local(sim) as client:
        cost = client.post(CHAT, json=chat_body()).json()["usage"]["credits_used"]
        cost += client.post(RESPONSES, json=resp_body()).json()["usage"]["credits_used"]
        usage = client.get("/api/v1/usage").json()
    assert usage["object"] == "usage"
    assert usage["credits"] == {
        "used": cost,
        "included": 1000,
        "remaining": 1000 - cost,
        "percentage_used": round(100 * cost / 1000),
    }
    assert usage["rate_limit"] == {"requests_per_minute": 120}
    assert usage["api_requests"]["credits_used"] == cost == sim.total_credits_charged()
    assert usage["api_requests"]["total_requests"] == 2
    assert usage["billing_period"]["start"].endswith("T00:00:00.000Z")
    assert {"transcription", "storage", "auto_recharge", "limits"} <= set(usage)


def test_credits_spent_elsewhere_count_in_usage_and_the_balance() -> None:
    sim = Simulator(credits=100)
    sim.spend_elsewhere(90)
    with local(sim) as client:
        cost = client.post(CHAT, json=chat_body()).json()["usage"]["credits_used"]
        usage = client.get("/api/v1/usage").json()
        assert usage["credits"]["used"] == 90 + cost and usage["credits"]["remaining"] == 10 - cost
        assert usage["api_requests"]["credits_used"] == cost == sim.total_credits_charged()
        sim.spend_elsewhere(10)
        response = client.post(CHAT, json=chat_body())
    assert_error(response, 402, "insufficient_credits", "credits_exhausted", None)
    with pytest.raises(ValueError, match="negative"):
        sim.spend_elsewhere(-1)
    sim.reset()
    with local(sim) as client:
        assert client.get("/api/v1/usage").json()["credits"]["used"] == 0


# Rate limits and credits


def test_rate_limit_headers_and_429() -> None:
    sim = Simulator(rpm=2)
    with local(sim) as client:
        first, second, third = (client.post(CHAT, json=chat_body()) for _ in range(3))
        other = client.post(
            CHAT, json=chat_body(), headers={"Authorization": f"Bearer {OTHER_KEY}"}
        )
    assert [r.headers["x-ratelimit-remaining"] for r in (first, second, third)] == ["1", "0", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "2" for r in (first, second, third))
    reset = int(third.headers["x-ratelimit-reset"])
    assert time.time() < reset <= time.time() + 61
    assert_error(third, 429, "rate_limit_error", "rate_limit_exceeded", None)
    retry_after = int(third.headers["retry-after"])
    assert 1 <= retry_after <= 60
    message = f"Rate limit exceeded. Please retry after {retry_after} seconds."
    assert third.json()["error"]["message"] == message
    assert other.status_code == 200 and other.headers["x-ratelimit-remaining"] == "1"
    assert sim.records[2].credits_charged == 0
    sim.reset()
    with local(sim) as client:
        assert client.post(CHAT, json=chat_body()).status_code == 200
    assert len(sim.records) == 1


def test_sliding_window_frees_slots_as_requests_age() -> None:
    now = [1000.0]
    limiter = SlidingWindowLimiter(2, clock=lambda: now[0], wall_clock=lambda: 5000.0)
    assert limiter.hit("a").allowed
    now[0] += 30
    assert limiter.hit("a").remaining == 0
    denied = limiter.hit("a")
    assert (denied.allowed, denied.retry_after_s, denied.reset_at) == (False, 30, 5030)
    assert limiter.hit("b").allowed
    now[0] += 30
    assert limiter.hit("a").allowed and not limiter.hit("a").allowed
    assert SlidingWindowLimiter(None).peek("a").headers()["X-RateLimit-Limit"] == "600"


def test_credits_exhausted_is_402() -> None:
    with local(Simulator()) as client:
        cost = client.post(CHAT, json=chat_body()).json()["usage"]["credits_used"]
    sim = Simulator(credits=2 * cost + 1)
    with local(sim) as client:
        assert [client.post(CHAT, json=chat_body()).status_code for _ in range(2)] == [200, 200]
        response = client.post(CHAT, json=chat_body())
    assert_error(response, 402, "insufficient_credits", "credits_exhausted", None)
    assert sim.total_credits_charged() == 2 * cost and sim.records[-1].credits_charged == 0


# Scripted faults, queue and overrides


@pytest.mark.parametrize(
    ("status", "type_", "code", "retry_after"),
    [
        (401, "authentication_error", "invalid_api_key", None),
        (402, "insufficient_credits", "credits_exhausted", None),
        (429, "rate_limit_error", "rate_limit_exceeded", 7),
        (500, "api_error", "internal_error", None),
        (503, "api_error", "service_unavailable", 3),
        (503, "api_error", "service_unavailable", None),
        (418, "invalid_request_error", "invalid_field", None),
    ],
)
def test_scripted_status(status: int, type_: str, code: str, retry_after: int | None) -> None:
    sim = Simulator(script=SimScript(status=status, retry_after_s=retry_after))
    with local(sim) as client:
        for path, body in ((CHAT, chat_body(stream=True)), (RESPONSES, resp_body())):
            response = client.post(path, json=body)
            assert_error(response, status, type_, code, None)
            assert response.headers.get("retry-after") == (
                str(retry_after) if retry_after else None
            )
            assert "x-ratelimit-limit" in response.headers
    assert [r.error_code for r in sim.records] == [code, code]
    assert sim.total_credits_charged() == 0


def test_enqueue_is_fifo_and_only_used_by_valid_generation_requests() -> None:
    sim = Simulator()
    sim.enqueue(SimScript(status=503, retry_after_s=1))
    sim.enqueue(SimScript(status=500))
    with local(sim) as client:
        assert client.post(CHAT, json=chat_body(model="bad")).status_code == 400
        assert client.get("/personas").status_code == 200
        statuses = [client.post(CHAT, json=chat_body()).status_code for _ in range(3)]
    assert statuses == [503, 500, 200]


def test_body_overrides_beat_queue_and_instance_script() -> None:
    sim = Simulator(script=SimScript(chunks=2))
    sim.enqueue(SimScript(chunks=3, status=500))
    with local(sim) as client:
        overridden = client.post(
            CHAT, json=chat_body(mavera_sim={"chunks": 5, "status": None, "x": 1})
        )
        default = client.post(CHAT, json=chat_body())
        sim.script.chunks = 1
        changed = client.post(CHAT, json=chat_body())
    assert overridden.status_code == 200
    answers = [r.json()["choices"][0]["message"]["content"] for r in (overridden, default, changed)]
    assert [len(re.findall(r"[.?!](?: |$)", answer)) for answer in answers] == [5, 2, 1]


# Non-stream formats


def test_chat_completion_format_and_determinism() -> None:
    sim = Simulator()
    with local(sim) as client:
        first, second = (client.post(CHAT, json=chat_body()).json() for _ in range(2))
    assert re.fullmatch(r"chatcmpl_[0-9a-f]{24}", first["id"]) and first["id"] != second["id"]
    assert first["object"] == "chat.completion" and first["model"] == "mavera-1"
    assert isinstance(first["created"], int)
    message = first["choices"][0]["message"]
    assert first["choices"] == [{"index": 0, "message": message, "finish_reason": "stop"}]
    assert message["role"] == "assistant"
    assert message["content"].startswith(f"As a Gen Z Consumer, here is my take on: {QUESTION}")
    assert message["content"] == second["choices"][0]["message"]["content"]
    usage = first["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens", "credits_used"}
    assert usage == second["usage"]
    assert usage["prompt_tokens"] == len(QUESTION.split())
    assert usage["completion_tokens"] == len(message["content"].split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["credits_used"] == credit_cost(usage["prompt_tokens"], usage["completion_tokens"])
    record = sim.records[0]
    assert (
        record.id == first["id"]
        and record.credits_charged == record.credits_reported == usage["credits_used"]
    )
    assert (
        record.completed
        and record.events[0][1] == json.dumps(first, separators=(",", ":")).encode()
    )
    assert sim.total_credits_charged() == 2 * usage["credits_used"]


def test_cost_is_between_1_and_5() -> None:
    assert [
        credit_cost(0, 0),
        credit_cost(20, 19),
        credit_cost(20, 20),
        credit_cost(1000, 1000),
    ] == [1, 1, 2, 5]
    with local(Simulator()) as client:
        short = client.post(CHAT, json=chat_body(mavera_sim={"chunks": 1})).json()["usage"]
        long = client.post(CHAT, json=chat_body(mavera_sim={"chunks": 40})).json()["usage"]
    assert (short["credits_used"], long["credits_used"]) == (1, 5)


def test_response_object_format() -> None:
    sim = Simulator()
    with local(sim) as client:
        body = client.post(RESPONSES, json=resp_body(instructions="Be brief.")).json()
    assert re.fullmatch(r"resp_[0-9a-f]{24}", body["id"])
    assert (body["object"], body["status"], body["model"]) == ("response", "completed", "mavera-1")
    assert isinstance(body["created_at"], int)
    [item] = body["output"]
    assert re.fullmatch(r"msg_[0-9a-f]{24}", item["id"])
    assert (item["type"], item["role"], item["status"]) == ("message", "assistant", "completed")
    assert (
        item["content"][0]["type"] == "output_text"
        and "Gen Z Consumer" in item["content"][0]["text"]
    )
    usage = body["usage"]
    assert set(usage) == {"input_tokens", "output_tokens", "total_tokens", "credits_used"}
    assert usage["input_tokens"] == len(QUESTION.split()) + 2
    assert sim.records[0].credits_reported == usage["credits_used"] == sim.total_credits_charged()


def test_responses_input_items() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Old question"}]},
        {"role": "assistant", "content": "Old answer"},
        {"role": "user", "content": [{"type": "input_text", "text": "New question here"}]},
    ]
    with local(Simulator()) as client:
        body = client.post(RESPONSES, json=resp_body(input=items)).json()
    assert "take on: New question here." in body["output"][0]["content"][0]["text"]
    assert body["usage"]["input_tokens"] == 7


def test_chat_tool_calls() -> None:
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
    ]
    tool_reply = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    with local(Simulator()) as client:
        called = client.post(CHAT, json=chat_body(tools=tools)).json()
        forced = {"type": "function", "function": {"name": "other"}}
        chosen = client.post(CHAT, json=chat_body(tools=tools, tool_choice=forced)).json()
        none = client.post(CHAT, json=chat_body(tools=tools, tool_choice="none")).json()
        answered = client.post(CHAT, json=chat_body(tools=tools, messages=tool_reply)).json()
    choice = called["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert call["type"] == "function" and call["function"] == {
        "name": "get_weather",
        "arguments": "{}",
    }
    assert chosen["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "other"
    for body in (none, answered):
        assert (
            body["choices"][0]["finish_reason"] == "stop"
            and body["choices"][0]["message"]["content"]
        )


def test_responses_function_call() -> None:
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    follow_up = [
        {"role": "user", "content": "Look it up"},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    with local(Simulator()) as client:
        called = client.post(RESPONSES, json=resp_body(tools=tools)).json()
        answered = client.post(RESPONSES, json=resp_body(tools=tools, input=follow_up)).json()
    [item] = called["output"]
    assert re.fullmatch(r"fc_[0-9a-f]{24}", item.pop("id"))
    assert re.fullmatch(r"call_[0-9a-f]{24}", item.pop("call_id"))
    assert item == {
        "type": "function_call",
        "name": "lookup",
        "arguments": "{}",
        "status": "completed",
    }
    assert answered["output"][0]["type"] == "message"


def test_json_modes() -> None:
    schema = {
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "score": {"type": "integer"},
            "ok": {"type": "boolean"},
        },
        "required": ["summary", "score", "ok"],
    }
    with local(Simulator()) as client:
        chat_object = client.post(
            CHAT, json=chat_body(response_format={"type": "json_object"})
        ).json()
        chat_schema = client.post(
            CHAT,
            json=chat_body(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": schema},
                }
            ),
        ).json()
        text = {"format": {"type": "json_schema", "name": "r", "schema": schema, "strict": True}}
        responses = client.post(RESPONSES, json=resp_body(text=text)).json()
    assert set(json.loads(chat_object["choices"][0]["message"]["content"])) == {"answer"}
    parsed = json.loads(chat_schema["choices"][0]["message"]["content"])
    assert parsed["score"] == 0 and parsed["ok"] is True and "Gen Z Consumer" in parsed["summary"]
    assert set(json.loads(responses["output"][0]["content"][0]["text"])) == {
        "summary",
        "score",
        "ok",
    }


def test_record_fields() -> None:
    sim = Simulator()
    with local(sim) as client:
        client.post(RESPONSES, json=resp_body(stream=False), headers={"X-Trace": "abc"})
    record = sim.records[0]
    assert (record.method, record.path, record.model, record.persona_id, record.stream) == (
        "POST",
        RESPONSES,
        "mavera-1",
        PID,
        False,
    )
    assert record.headers["x-trace"] == "abc" and record.headers["authorization"] == f"Bearer {KEY}"
    assert record.body == resp_body(stream=False) and record.api_key == KEY
    assert record.status == 200 and record.client_disconnected_at is None
    assert record.received_at <= record.events[0][0] <= time.monotonic()


# Streams over real sockets


def stream_raw(
    client: httpx.Client, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, bytes]:
    with client.stream("POST", path, json=body) as response:
        return response, response.read()


def test_chat_stream_framing_with_usage() -> None:
    sim = Simulator(script=SimScript(chunks=4))
    with served(sim) as client:
        response, raw = stream_raw(
            client, CHAT, chat_body(stream=True, stream_options={"include_usage": True})
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-ratelimit-remaining"] == "599"
    events = split_events(raw)
    assert b"event:" not in raw and len(events) == 1 + 4 + 1 + 1 + 1
    chunks = [chat_data(e) for e in events]
    assert chunks[-1] == "[DONE]"
    first, *deltas, finish, usage_chunk, _ = chunks
    record = sim.records[0]
    for chunk in (first, *deltas, finish, usage_chunk):
        assert chunk["id"] == record.id and chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "mavera-1" and isinstance(chunk["created"], int)
    for chunk in (first, *deltas, finish):
        assert "usage" not in chunk and len(chunk["choices"]) == 1
    assert first["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "finish_reason": None,
    }
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in deltas)
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert usage_chunk["choices"] == []
    text = "".join(c["choices"][0]["delta"]["content"] for c in deltas)
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == len(text.split())
    assert record.completed and b"".join(data for _, data in record.events) == raw
    assert record.credits_charged == record.credits_reported == usage["credits_used"]
    assert sim.total_credits_charged() == usage["credits_used"]


def test_chat_stream_without_include_usage_is_billed_silently() -> None:
    sim = Simulator()
    with served(sim) as client:
        _, raw = stream_raw(client, CHAT, chat_body(stream=True))
        _, raw_off = stream_raw(
            client, CHAT, chat_body(stream=True, stream_options={"include_usage": False})
        )
    for body in (raw, raw_off):
        assert b"usage" not in body and body.endswith(b"data: [DONE]\n\n")
        assert len(split_events(body)) == 1 + 8 + 1 + 1
    with local(Simulator()) as client:
        cost = client.post(CHAT, json=chat_body()).json()["usage"]["credits_used"]
    assert [(r.credits_charged, r.credits_reported, r.completed) for r in sim.records] == [
        (cost, None, True)
    ] * 2


def test_responses_stream_framing() -> None:
    sim = Simulator(script=SimScript(chunks=3))
    with served(sim) as client:
        _, raw = stream_raw(client, RESPONSES, resp_body(stream=True))
    events = split_events(raw)
    assert events[-1] == b"data: [DONE]\n\n"
    payloads = []
    for event in events[:-1]:
        match = re.fullmatch(rb"event: ([a-z_.]+)\ndata: (\{.*\})\n\n", event)
        assert match, event
        payload = json.loads(match.group(2))
        assert payload["type"] == match.group(1).decode()
        payloads.append(payload)
    assert [p["type"] for p in payloads] == [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    created, completed = payloads[0]["response"], payloads[-1]["response"]
    record = sim.records[0]
    assert created["id"] == completed["id"] == record.id and "usage" not in created
    assert (created["status"], created["output"], completed["status"]) == (
        "in_progress",
        [],
        "completed",
    )
    deltas = payloads[3:6]
    item_id = completed["output"][0]["id"]
    assert all(
        (d["item_id"], d["output_index"], d["content_index"]) == (item_id, 0, 0) for d in deltas
    )
    text = "".join(d["delta"] for d in deltas)
    assert payloads[6]["text"] == text == completed["output"][0]["content"][0]["text"]
    assert all("usage" not in p.get("response", {}) for p in payloads[:-1])
    cost = completed["usage"]["credits_used"]
    assert record.completed and record.credits_charged == record.credits_reported == cost
    assert b"".join(data for _, data in record.events) == raw


def test_chunk_and_first_byte_delays() -> None:
    sim = Simulator(script=SimScript(first_byte_delay_ms=200, chunk_delay_ms=50, chunks=2))
    with served(sim) as client:
        stream_raw(client, CHAT, chat_body(stream=True))
        started = time.monotonic()
        assert client.post(RESPONSES, json=resp_body()).status_code == 200
        assert time.monotonic() - started >= 0.19
    stamps = [t for t, _ in sim.records[0].events]
    assert stamps[0] - sim.records[0].received_at >= 0.19
    assert all(later - earlier >= 0.045 for earlier, later in zip(stamps, stamps[1:], strict=False))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def uvicorn_errors() -> Iterator[list[logging.LogRecord]]:
    """Errors uvicorn logs meanwhile (attach after start: uvicorn's dictConfig resets handlers)."""
    handler, logger = _Collect(), logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("path", "body", "cut_after", "billed"),
    [
        (CHAT, chat_body(stream=True), 3, False),
        (CHAT, chat_body(stream=True), 10, False),  # everything but [DONE]: completes unreported
        (CHAT, chat_body(stream=True, stream_options={"include_usage": True}), 10, False),
        (CHAT, chat_body(stream=True, stream_options={"include_usage": True}), 11, True),
        (RESPONSES, resp_body(stream=True), 0, False),
        (RESPONSES, resp_body(stream=True), 14, False),  # everything up to response.completed
        (RESPONSES, resp_body(stream=True), 15, True),
        (CHAT, chat_body(), 20, False),
        (RESPONSES, resp_body(), 0, False),
    ],
)
def test_cut_after_drops_the_connection(
    path: str,
    body: dict[str, Any],
    cut_after: int,
    billed: bool,
) -> None:
    sim = Simulator(script=SimScript(cut_after=cut_after))
    received = b""
    with served(sim) as client, uvicorn_errors() as errors:
        with pytest.raises(httpx.RemoteProtocolError):
            with client.stream("POST", path, json=body) as response:
                for chunk in response.iter_raw():
                    received += chunk
        assert client.get("/personas").status_code == 200  # the server carries on
    record = sim.records[0]
    assert not record.completed and received == b"".join(data for _, data in record.events)
    if body.get("stream"):
        assert len(record.events) == cut_after and not received.endswith(b"[DONE]\n\n")
    else:
        assert received == record.events[0][1] and len(received) == cut_after
    assert (
        record.credits_charged > 0
    ) is billed and sim.total_credits_charged() == record.credits_charged
    assert record.credits_reported == (record.credits_charged if billed else None)
    assert errors == []


def raw_post(base_url: str, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a request on a bare socket, so the test decides exactly when the client leaves."""
    url = urlsplit(base_url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(head.encode() + payload)
    return sock


@pytest.mark.parametrize("body", [chat_body(), resp_body(stream=True)])
def test_hang_until_client_disconnects(body: dict[str, Any]) -> None:
    sim = Simulator(script=SimScript(hang=True))
    with serve_in_thread(sim.app) as base:
        sock = raw_post(base, CHAT if "messages" in body else RESPONSES, body)
        try:
            assert wait_for(lambda: len(sim.records) == 1)
            record = sim.records[0]
            time.sleep(0.2)
            assert (record.status, record.client_disconnected_at, record.events) == (0, None, [])
        finally:
            sock.close()
        left = time.monotonic()
        assert wait_for(lambda: record.client_disconnected_at is not None)
    assert record.client_disconnected_at is not None and record.client_disconnected_at - left < 2
    assert record.status == 0 and not record.completed and record.credits_charged == 0


@pytest.mark.parametrize(
    ("path", "body", "script", "read", "sent"),
    [
        (CHAT, chat_body(stream=True), SimScript(hang_after=2), 2, {2}),
        (RESPONSES, resp_body(stream=True), SimScript(hang_after=4), 4, {4}),
        (CHAT, chat_body(stream=True), SimScript(chunk_delay_ms=400), 2, {2, 3}),
        (RESPONSES, resp_body(stream=True), SimScript(first_byte_delay_ms=60_000), 0, {0}),
    ],
)
def test_stream_abandoned_by_client(
    path: str, body: dict[str, Any], script: SimScript, read: int, sent: set[int]
) -> None:
    sim = Simulator(script=script)
    seen = 0
    with served(sim, timeout=0.3 if not read else 10) as client:
        with contextlib.suppress(httpx.ReadTimeout):
            with client.stream("POST", path, json=body) as response:
                for chunk in response.iter_raw():
                    seen += chunk.count(b"\n\n")
                    if seen >= read:
                        break
        left = time.monotonic()
        record = sim.records[0]
        assert wait_for(lambda: record.client_disconnected_at is not None)
    assert record.client_disconnected_at is not None and record.client_disconnected_at - left < 2
    assert not record.completed and record.credits_charged == 0 and record.credits_reported is None
    assert len(record.events) in sent


# The openai SDK as a client


def test_openai_sdk_chat() -> None:
    sim = Simulator(script=SimScript(chunks=3))
    with serve_in_thread(sim.app) as base, sdk(base) as client:
        completion = client.chat.completions.create(
            model="mavera-1",
            messages=[{"role": "user", "content": QUESTION}],
            extra_body={"persona_id": PID},
        )
        stream = client.chat.completions.create(
            model="mavera-1",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"persona_id": PID},
        )
        chunks = list(stream)
    text = completion.choices[0].message.content
    assert text and text.startswith("As a Gen Z Consumer")
    assert completion.usage is not None
    assert completion.usage.model_extra == {"credits_used": sim.records[0].credits_charged}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    final_usage = chunks[-1].usage
    assert final_usage is not None and final_usage.total_tokens == completion.usage.total_tokens


def test_openai_sdk_responses() -> None:
    sim = Simulator(script=SimScript(chunks=3))
    persona = {"persona_id": PID}
    with serve_in_thread(sim.app) as base, sdk(base) as client:
        response = client.responses.create(model="mavera-1", input=QUESTION, extra_body=persona)
        events = list(
            client.responses.create(
                model="mavera-1", input=QUESTION, stream=True, extra_body=persona
            )
        )
        with client.responses.stream(
            model="mavera-1", input=QUESTION, extra_body=persona
        ) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
    assert response.output_text.startswith("As a Gen Z Consumer")
    assert response.usage is not None and response.usage.total_tokens > 0
    credits = (response.usage.model_extra or {})["credits_used"]
    assert [type(e).__name__ for e in events][:3] == [
        "ResponseCreatedEvent",
        "ResponseOutputItemAddedEvent",
        "ResponseContentPartAddedEvent",
    ]
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == response.output_text
    assert "".join(deltas) == final.output_text == response.output_text
    assert final.usage is not None and (final.usage.model_extra or {})["credits_used"] == credits
    assert sim.total_credits_charged() == 3 * credits


class Opinion(pydantic.BaseModel):
    summary: str
    score: int


def test_openai_sdk_structured_outputs_and_tools() -> None:
    persona = {"persona_id": PID}
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    parameters: dict[str, object] = {"type": "object", "properties": {}}
    with serve_in_thread(Simulator().app) as base, sdk(base) as client:
        parsed = client.responses.parse(
            model="mavera-1", input=QUESTION, text_format=Opinion, extra_body=persona
        ).output_parsed
        chat_parsed = client.chat.completions.parse(
            model="mavera-1", messages=messages, response_format=Opinion, extra_body=persona
        )
        tool_call = client.chat.completions.create(
            model="mavera-1",
            messages=messages,
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": parameters}}],
            extra_body=persona,
        )
    assert parsed is not None and parsed.score == 0 and "Gen Z Consumer" in parsed.summary
    assert chat_parsed.choices[0].message.parsed == parsed
    [call] = tool_call.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "lookup"
    assert tool_call.choices[0].finish_reason == "tool_calls"


def test_openai_sdk_errors() -> None:
    sim = Simulator(rpm=3)
    kwargs: dict[str, Any] = {
        "model": "mavera-1",
        "input": QUESTION,
        "extra_body": {"persona_id": PID},
    }
    with serve_in_thread(sim.app) as base, sdk(base) as client, sdk(base, "mvra_live_bad") as bad:
        with pytest.raises(openai.AuthenticationError) as auth:
            bad.responses.create(**kwargs)
        with pytest.raises(openai.BadRequestError) as invalid:
            client.responses.create(**{**kwargs, "model": "gpt-4o"})
        with pytest.raises(openai.InternalServerError) as unavailable:
            client.responses.create(
                **{**kwargs, "extra_body": {"persona_id": PID, "mavera_sim": {"status": 503}}}
            )
        client.responses.create(**kwargs)
        with pytest.raises(openai.RateLimitError) as limited:
            client.responses.create(**kwargs)
    assert (auth.value.code, auth.value.type) == ("invalid_api_key", "authentication_error")
    assert (invalid.value.code, invalid.value.param) == ("invalid_model", "model")
    assert unavailable.value.status_code == 503 and unavailable.value.code == "service_unavailable"
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"]


def test_openai_sdk_credits_exhausted() -> None:
    sim = Simulator(credits=0)
    with serve_in_thread(sim.app) as base, sdk(base) as client:
        with pytest.raises(openai.APIStatusError) as exhausted:
            client.chat.completions.create(
                model="mavera-1",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"persona_id": PID},
            )
    assert exhausted.value.status_code == 402
    assert (exhausted.value.code, exhausted.value.type) == (
        "credits_exhausted",
        "insufficient_credits",
    )


def test_records_are_visible_in_flight() -> None:
    sim = Simulator(script=SimScript(hang_after=1))
    with (
        served(sim) as client,
        client.stream("POST", CHAT, json=chat_body(stream=True)) as response,
    ):
        next(response.iter_raw())
        record: SimRecord = sim.records[0]
        assert record.status == 200 and len(record.events) == 1 and not record.completed


def test_a_long_running_simulator_keeps_only_its_recent_records() -> None:
    sim = Simulator(max_records=5)
    with TestClient(sim.app) as client:
        for n in range(23):
            client.get("/api/v1/personas", headers={"x-n": str(n)})
    assert 5 <= len(sim.records) < 10
    assert sim.records[-1].headers["x-n"] == "22", "the newest are kept"


def test_a_stream_whose_client_leaves_stops_being_generated() -> None:
    sim = Simulator()
    body = {
        "model": "mavera-1",
        "persona_id": persona_ids()[0],
        "stream": True,
        "input": "go",
        "mavera_sim": {"chunks": 20_000},
    }
    with serve_in_thread(sim.app) as base:
        with httpx.stream(
            "POST", base + "/api/v1/responses", json=body, headers=AUTH, timeout=10
        ) as response:
            assert response.status_code == 200
            next(response.iter_raw())
        deadline = time.monotonic() + 10
        while sim.records[-1].client_disconnected_at is None:
            assert time.monotonic() < deadline, "the simulator never noticed the client leave"
            time.sleep(0.02)
    record = sim.records[-1]
    assert not record.completed
    assert len(record.events) < 20_000, "it went on generating for nobody"
