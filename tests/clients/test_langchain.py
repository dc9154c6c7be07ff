"""LangChain's ChatOpenAI pointed at the gateway with `base_url`: invoke and stream, chat and
Responses API, a persona by model alias and by `extra_body`."""

from __future__ import annotations

from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from tests.conftest import DEFAULT_PERSONA, PERSONAS, GatewayFactory, RunningGateway


def chat_model(gateway: RunningGateway, **options: object) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=gateway.url + "/v1",
        api_key="sk-langchain",
        max_retries=0,
        **options,
    )


def test_invoke_and_stream(gateway: RunningGateway) -> None:
    llm = chat_model(gateway, model="gpt-4o")
    reply = llm.invoke("Is a four-day week appealing?")
    assert isinstance(reply.content, str) and "four-day week" in reply.content
    assert reply.usage_metadata is not None and reply.usage_metadata["total_tokens"] > 0

    pieces = list(llm.stream("Is a four-day week appealing?"))
    assert all(isinstance(piece, AIMessageChunk) for piece in pieces)
    assert "".join(str(piece.content) for piece in pieces) == reply.content

    seen = gateway.sim.records
    assert [(r.path, r.stream, r.persona_id) for r in seen] == [
        ("/api/v1/chat/completions", False, DEFAULT_PERSONA),
        ("/api/v1/chat/completions", True, DEFAULT_PERSONA),
    ]
    assert [r["outcome"] for r in gateway.records()] == ["ok", "ok"]


def test_responses_api_and_persona_choice(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(
        models={"gen-z": {"persona_id": PERSONAS[1]}},
        defaults={"allow_persona_override": True},
    )
    llm = chat_model(gateway, model="gen-z", use_responses_api=True)
    reply = llm.invoke("Thoughts on vinyl records?")
    assert "vinyl records" in reply.text
    streamed = "".join(chunk.text for chunk in llm.stream("Thoughts on vinyl records?"))
    assert streamed.startswith("As a")

    chosen = chat_model(gateway, model="mavera-1", extra_body={"persona_id": PERSONAS[2]})
    chosen.invoke("hi")

    seen = gateway.sim.records
    assert [(r.path, r.stream) for r in seen] == [
        ("/api/v1/responses", False),
        ("/api/v1/responses", True),
        ("/api/v1/chat/completions", False),
    ]
    assert [r.persona_id for r in seen] == [PERSONAS[1], PERSONAS[1], PERSONAS[2]]
