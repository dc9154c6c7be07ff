"""A chat UI's model picker (Open WebUI, LibreChat and the like): list GET /v1/models, let the
user pick a persona alias by name, then stream a chat with it. Plain HTTP, as those UIs do."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import PERSONAS, GatewayFactory


def stream_chat(client: httpx.Client, model: str, question: str) -> str:
    """POST a streaming chat completion and join the deltas, reading SSE lines as a UI would."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": question}]}
    text = []
    with client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk: dict[str, Any] = json.loads(line.removeprefix("data: "))
            text += [choice["delta"].get("content") or "" for choice in chunk["choices"]]
    return "".join(text)


def test_picker_lists_aliases_and_chats_with_the_chosen_persona(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(
        models={
            "gen-z": {"persona_id": PERSONAS[1]},
            "boomer": {"persona_id": PERSONAS[2]},
        }
    )
    headers = {"Authorization": "Bearer sk-webui"}
    with httpx.Client(base_url=gateway.url + "/v1", headers=headers) as client:
        listing = client.get("/models").json()
        assert listing["object"] == "list"
        assert all(entry["object"] == "model" for entry in listing["data"])
        names = [entry["id"] for entry in listing["data"]]
        assert {"mavera-1", "gen-z", "boomer"} <= set(names)

        picked = next(name for name in names if name == "boomer")
        answer = stream_chat(client, picked, "Is streaming TV worth it?")

    assert "Is streaming TV worth it?" in answer
    seen = gateway.sim.records[-1]
    assert (seen.persona_id, seen.model) == (PERSONAS[2], "mavera-1")
    assert gateway.records()[-1]["requested_model"] == "boomer"
