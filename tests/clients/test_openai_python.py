"""The openai Python SDK, sync and async, as an application would use it through the gateway.

tests/e2e covers the relay itself; these cover what SDK users reach for: the streaming helpers,
raw responses, the error classes, the SDK's own retries, tools and structured output.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from app.simulator import SimScript
from tests.conftest import GatewayFactory, RunningGateway

QUESTION = [{"role": "user", "content": "Would you try a bike subscription?"}]
WEATHER_TOOL_CHAT: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
WEATHER_TOOL_RESPONSES: Any = {"type": "function", **WEATHER_TOOL_CHAT["function"]}


class Verdict(BaseModel):
    answer: str
    score: int
    would_buy: bool


def sent(raw: Any) -> dict[str, Any]:
    """The JSON body the SDK put on the wire for a `with_raw_response` call."""
    body: dict[str, Any] = json.loads(raw.http_request.content)
    return body


def test_sync_chat_stream_helper_and_raw_response(gateway: RunningGateway) -> None:
    client = gateway.client()
    with client.chat.completions.stream(model="mavera-1", messages=QUESTION) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"

    raw = client.chat.completions.with_raw_response.create(model="mavera-1", messages=QUESTION)
    reply = raw.parse()
    assert raw.request_id and raw.headers["x-request-id"] == raw.request_id
    assert reply._request_id == raw.request_id
    assert gateway.records()[-1]["request_id"] == raw.request_id
    assert reply.usage is not None and reply.usage.total_tokens > 0


def test_sdk_configured_by_environment_alone(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", gateway.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    reply = openai.OpenAI(max_retries=0).responses.create(model="gpt-4o", input="hi")
    assert reply.output_text.startswith("As a")
    assert gateway.records()[-1]["requested_model"] == "gpt-4o"


def test_async_chat_and_responses_with_stream_helpers(gateway: RunningGateway) -> None:
    async def drive() -> None:
        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key="sk-local", max_retries=0
        ) as client:
            reply = await client.chat.completions.create(model="mavera-1", messages=QUESTION)
            assert "bike subscription" in (reply.choices[0].message.content or "")

            chunks = await client.chat.completions.create(
                model="mavera-1", messages=QUESTION, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
            assert text.startswith("As a")

            async with client.chat.completions.stream(
                model="mavera-1", messages=QUESTION
            ) as chat_stream:
                deltas = [e.delta async for e in chat_stream if e.type == "content.delta"]
                completion = await chat_stream.get_final_completion()
            assert "".join(deltas) == completion.choices[0].message.content

            response = await client.responses.create(model="mavera-1", input="Trains or buses?")
            assert "Trains or buses?" in response.output_text
            async with client.responses.stream(model="mavera-1", input="Trains?") as stream:
                parts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
                final = await stream.get_final_response()
            assert "".join(parts) == final.output_text

            raw = await client.responses.with_raw_response.create(model="mavera-1", input="hi")
            assert raw.parse().id.startswith("resp_")
            assert raw.headers["x-request-id"] == raw.request_id

    asyncio.run(drive())
    rows = gateway.records()
    assert [(r["endpoint"], r["stream"], r["outcome"]) for r in rows] == [
        ("chat.completions", 0, "ok"),
        ("chat.completions", 1, "ok"),
        ("chat.completions", 1, "ok"),
        ("responses", 0, "ok"),
        ("responses", 1, "ok"),
        ("responses", 0, "ok"),
    ]


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        (400, openai.BadRequestError, "invalid_field"),
        (402, openai.APIStatusError, "credits_exhausted"),
        (404, openai.NotFoundError, "resource_not_found"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (401, openai.InternalServerError, "upstream_auth_failed"),
        (500, openai.InternalServerError, "upstream_unavailable"),
    ],
)
def test_error_classes(
    gateway: RunningGateway, status: int, error_class: type[openai.APIStatusError], code: str
) -> None:
    gateway.sim.enqueue(SimScript(status=status))
    with pytest.raises(error_class) as caught:
        gateway.client().chat.completions.create(model="mavera-1", messages=QUESTION)
    error = caught.value
    assert error.code == code
    assert error.request_id == gateway.records()[-1]["request_id"]
    assert "mvra_" not in str(error.body)


def test_error_classes_without_upstream(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(clients={"app": {"key_sha256": "0" * 64}})
    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.client("sk-not-a-key").responses.create(model="mavera-1", input="hi")
    assert caught.value.code == "invalid_api_key"
    gone = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        gone.models.list()


def test_sdk_retries_a_429_after_retry_after(gateway: RunningGateway) -> None:
    gateway.sim.enqueue(SimScript(status=429, retry_after_s=1))
    reply = gateway.client(max_retries=2).chat.completions.create(
        model="mavera-1", messages=QUESTION
    )
    assert reply.choices[0].message.content
    first, second = gateway.sim.records
    assert (first.status, second.status) == (429, 200)
    # The SDK waited for the Retry-After (1 s), not its own backoff (at most 0.5 s here); a
    # lower bound with a margin for timer granularity, never an upper bound.
    assert second.received_at - first.received_at >= 0.9
    rows = gateway.records()
    assert [(r["status"], r["outcome"]) for r in rows] == [(429, "client_error"), (200, "ok")]


def test_sdk_retries_a_503_that_outlasts_the_gateways_own_retries(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(upstream={"max_retries": 1})
    gateway.sim.enqueue(SimScript(status=503, retry_after_s=1))
    gateway.sim.enqueue(SimScript(status=503, retry_after_s=1))
    reply = gateway.client(max_retries=2).responses.create(model="mavera-1", input="hi")
    assert reply.output_text
    statuses = [r.status for r in gateway.sim.records]
    assert statuses == [503, 503, 200]
    first, second, _ = gateway.sim.records
    # The gateway waited for the Retry-After (1 s), not its own backoff (at most 0.25 s here).
    assert second.received_at - first.received_at >= 0.9
    rows = gateway.records()
    assert [(r["status"], r["error_code"]) for r in rows] == [
        (502, "upstream_unavailable"),
        (200, None),
    ]


def test_tool_calls_pass_through_untouched(gateway: RunningGateway) -> None:
    client = gateway.client()
    raw = client.chat.completions.with_raw_response.create(
        model="mavera-1",
        messages=[{"role": "user", "content": "Weather in Lyon?"}],
        tools=[WEATHER_TOOL_CHAT],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    body, seen = sent(raw), gateway.sim.records[-1].body
    for name in ("tools", "tool_choice", "parallel_tool_calls", "messages"):
        assert seen[name] == body[name], name
    [call] = raw.parse().choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"

    answered = client.chat.completions.create(
        model="mavera-1",
        messages=[
            {"role": "user", "content": "Weather in Lyon?"},
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'},
        ],
        tools=[WEATHER_TOOL_CHAT],
    )
    assert answered.choices[0].message.content
    assert gateway.sim.records[-1].body["messages"][-1]["tool_call_id"] == call.id

    raw_responses = client.responses.with_raw_response.create(
        model="mavera-1", input="Weather in Lyon?", tools=[WEATHER_TOOL_RESPONSES]
    )
    assert gateway.sim.records[-1].body["tools"] == sent(raw_responses)["tools"]
    [item] = raw_responses.parse().output
    assert item.type == "function_call" and item.name == "get_weather"


def test_structured_output_passes_through_untouched(gateway: RunningGateway) -> None:
    client = gateway.client()
    raw = client.chat.completions.with_raw_response.parse(
        model="mavera-1", messages=QUESTION, response_format=Verdict
    )
    assert gateway.sim.records[-1].body["response_format"] == sent(raw)["response_format"]
    assert sent(raw)["response_format"]["type"] == "json_schema"
    parsed = raw.parse().choices[0].message.parsed
    assert isinstance(parsed, Verdict) and "bike subscription" in parsed.answer

    raw_responses = client.responses.with_raw_response.parse(
        model="mavera-1", input="Would you buy it?", text_format=Verdict
    )
    assert gateway.sim.records[-1].body["text"] == sent(raw_responses)["text"]
    assert isinstance(raw_responses.parse().output_parsed, Verdict)

    client.chat.completions.create(
        model="mavera-1", messages=QUESTION, response_format={"type": "json_object"}
    )
    assert gateway.sim.records[-1].body["response_format"] == {"type": "json_object"}
