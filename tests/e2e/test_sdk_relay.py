"""The real OpenAI SDK against the gateway against the simulator: the happy paths."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_PERSONA, PERSONAS, UPSTREAM_KEY, GatewayFactory, RunningGateway

CLIENT_KEY = "sk-client-side-key-that-must-stay-here"


def test_chat_completion_gets_persona_and_key_injected(gateway: RunningGateway) -> None:
    client = gateway.client(CLIENT_KEY)
    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "What about oat milk?"}]
    )
    assert "oat milk" in (reply.choices[0].message.content or "")
    assert reply.usage is not None
    seen = gateway.sim.records[-1]
    assert seen.persona_id == DEFAULT_PERSONA
    assert seen.model == "mavera-1"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert all(CLIENT_KEY not in value for value in seen.headers.values())
    assert not any(name.startswith("x-stainless") for name in seen.headers)


def test_chat_stream_arrives_whole_without_the_gateways_usage_chunk(
    gateway: RunningGateway,
) -> None:
    client = gateway.client()
    chunks = list(
        client.chat.completions.create(
            model="mavera-1", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("As a")
    assert all(c.choices for c in chunks), "the usage-only chunk the gateway asked for leaked"
    seen = gateway.sim.records[-1]
    assert seen.body["stream_options"] == {"include_usage": True}
    [row] = [r for r in gateway.records() if r["endpoint"] == "chat.completions"]
    assert row["credits_used"] == seen.credits_reported and row["credits_used"] > 0


def test_chat_stream_keeps_usage_when_the_client_asks(gateway: RunningGateway) -> None:
    chunks = list(
        gateway.client().chat.completions.create(
            model="mavera-1",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hi"}],
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_extra is not None
    assert chunks[-1].usage.model_extra["credits_used"] == gateway.sim.records[-1].credits_charged


def test_responses_plain_and_streamed(gateway: RunningGateway) -> None:
    client = gateway.client()
    reply = client.responses.create(model="mavera-1", input="Tell me about trains")
    assert "trains" in reply.output_text
    events = list(client.responses.create(model="mavera-1", input="trains", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text
    rows = [r for r in gateway.records() if r["endpoint"] == "responses"]
    assert [r["stream"] for r in rows] == [0, 1]
    assert [r["credits_used"] for r in rows] == [s.credits_charged for s in gateway.sim.records]


def test_responses_stream_helper(gateway: RunningGateway) -> None:
    with gateway.client().responses.stream(model="mavera-1", input="bikes") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text


def test_persona_override_allowed(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(defaults={"allow_persona_override": True})
    client = gateway.client()
    client.chat.completions.create(
        model="mavera-1",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"persona_id": PERSONAS[3]},
    )
    client.responses.create(
        model="mavera-1", input="hi", extra_headers={"X-Mavera-Persona": PERSONAS[4]}
    )
    assert [r.persona_id for r in gateway.sim.records] == [PERSONAS[3], PERSONAS[4]]
    assert "x-mavera-persona" not in gateway.sim.records[-1].headers


def test_persona_override_refused(gateway: RunningGateway) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        gateway.client().chat.completions.create(
            model="mavera-1",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"persona_id": PERSONAS[3]},
        )
    assert refused.value.code == "persona_override_forbidden"
    assert gateway.sim.records == []


def test_model_alias_chooses_persona_and_defaults(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(models={"gen-z": {"persona_id": PERSONAS[1], "reasoning_effort": "low"}})
    gateway.client().chat.completions.create(
        model="gen-z", messages=[{"role": "user", "content": "hi"}]
    )
    seen = gateway.sim.records[-1]
    assert (seen.persona_id, seen.model, seen.body["reasoning_effort"]) == (
        PERSONAS[1],
        "mavera-1",
        "low",
    )
    [row] = gateway.records()
    assert (row["requested_model"], row["upstream_model"]) == ("gen-z", "mavera-1")


def test_route_prefix_chooses_persona(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(routes={"marketing": {"persona_id": PERSONAS[2]}})
    client = openai.OpenAI(base_url=gateway.url + "/marketing/v1", api_key="x", max_retries=0)
    client.responses.create(model="mavera-1", input="hi")
    assert gateway.sim.records[-1].persona_id == PERSONAS[2]
    assert gateway.records()[-1]["route"] == "marketing"


def test_models_list_offers_aliases(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(models={"gen-z": {"persona_id": PERSONAS[1]}, "boomer": {}})
    names = [m.id for m in gateway.client().models.list()]
    assert names == ["mavera-1", "gen-z", "boomer"]


def test_personas_pass_through_and_are_cached(gateway: RunningGateway) -> None:
    first = httpx.get(gateway.url + "/v1/personas", params={"category": "Generational"})
    second = httpx.get(gateway.url + "/v1/personas", params={"category": "Generational"})
    assert first.status_code == 200
    assert first.content == second.content
    assert {p["category"] for p in first.json()["data"]} == {"Generational"}
    assert len(gateway.sim.records) == 1, "the second listing should come from the cache"


def test_request_id_is_propagated_both_ways(gateway: RunningGateway) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="mavera-1",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Request-Id": "trace-abc.123"},
    )
    assert raw.headers["x-request-id"] == "trace-abc.123"
    assert gateway.sim.records[-1].headers["x-request-id"] == "trace-abc.123"
    assert raw.headers["x-ratelimit-limit"]
    assert gateway.records()[-1]["request_id"] == "trace-abc.123"
