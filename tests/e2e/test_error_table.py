"""Every row of the design's error table, as the OpenAI SDK sees it."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from app.auth import key_digest
from app.simulator import SimScript
from tests.conftest import GatewayFactory, RunningGateway

HI = [{"role": "user", "content": "hi"}]
ALICE_KEY = "mgw_alice_test_key_0123456789abcdefghijkl"


def _keyed(make_gateway: GatewayFactory, **client: object) -> RunningGateway:
    return make_gateway(clients={"alice": {"key_sha256": key_digest(ALICE_KEY), **client}})


def test_missing_and_unknown_gateway_key(make_gateway: GatewayFactory) -> None:
    gateway = _keyed(make_gateway)
    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.client("mgw_wrong").chat.completions.create(model="mavera-1", messages=HI)
    assert caught.value.code == "invalid_api_key"
    missing = httpx.post(gateway.url + "/v1/chat/completions", json={"messages": HI})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    reply = gateway.client(ALICE_KEY).chat.completions.create(model="mavera-1", messages=HI)
    assert reply.choices
    assert [r["client"] for r in gateway.records()] == ["unknown", "unknown", "alice"]


def test_body_not_json_not_object_and_too_large(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(server={"max_body_bytes": 2000})
    url = gateway.url + "/v1/chat/completions"
    for body in (b"{not json", b"[1, 2]", b""):
        answer = httpx.post(url, content=body)
        assert answer.status_code == 400
        assert answer.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().chat.completions.create(
            model="mavera-1", messages=[{"role": "user", "content": "x" * 5000}]
        )
    assert caught.value.status_code == 413
    assert gateway.sim.records == []
    assert [r["status"] for r in gateway.records()] == [400, 400, 400, 413]


def test_persona_required(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(defaults={"persona_id": None})
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().responses.create(model="mavera-1", input="hi")
    assert caught.value.code == "persona_required"
    assert "persona" in caught.value.message


def test_budget_exceeded(make_gateway: GatewayFactory) -> None:
    gateway = _keyed(make_gateway, credit_budget=1)
    client = gateway.client(ALICE_KEY)
    client.chat.completions.create(model="mavera-1", messages=HI)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="mavera-1", messages=HI)
    assert (caught.value.status_code, caught.value.code) == (402, "budget_exceeded")
    assert len(gateway.sim.records) == 1


def test_gateway_rate_limit(make_gateway: GatewayFactory) -> None:
    gateway = _keyed(make_gateway, rpm=2)
    client = gateway.client(ALICE_KEY)
    client.responses.create(model="mavera-1", input="hi")
    client.responses.create(model="mavera-1", input="hi")
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="mavera-1", input="hi")
    assert caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert gateway.records()[-1]["outcome"] == "rejected"


def test_upstream_rejects_our_key_is_502_not_401(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream={"api_key": "mvra_live_wrong_wrong_wrong_wrong_wrong"})
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(model="mavera-1", messages=HI)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth_failed"
    assert "wrong_wrong" not in caught.value.message


@pytest.mark.parametrize(
    ("script", "exception", "code"),
    [
        ({"status": 402}, openai.APIStatusError, "credits_exhausted"),
        ({"status": 429, "retry_after_s": 7}, openai.RateLimitError, "rate_limit_exceeded"),
        ({"status": 404}, openai.NotFoundError, None),
    ],
)
def test_upstream_4xx_passes_through(
    gateway: RunningGateway, script: dict[str, int], exception: type[Exception], code: str | None
) -> None:
    with pytest.raises(exception) as caught:
        gateway.client().chat.completions.create(
            model="mavera-1", messages=HI, extra_body={"mavera_sim": script}
        )
    error = caught.value
    assert isinstance(error, openai.APIStatusError)
    assert error.status_code == script["status"]
    if code:
        assert error.code == code
    if "retry_after_s" in script:
        assert error.response.headers["retry-after"] == "7"
    assert len(gateway.sim.records) == 1, "4xx must not be retried"


def test_upstream_bad_persona_passes_through(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(defaults={"persona_id": "clx_no_such_persona_000000"})
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().responses.create(model="mavera-1", input="hi")
    assert caught.value.code == "invalid_persona"


def test_upstream_5xx_is_retried_then_502(gateway: RunningGateway) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(
            model="mavera-1", messages=HI, extra_body={"mavera_sim": {"status": 503}}
        )
    assert (caught.value.status_code, caught.value.code) == (502, "upstream_unavailable")
    assert len(gateway.sim.records) == 3  # the first try and max_retries=2


def test_retry_recovers_before_any_byte_reaches_the_client(gateway: RunningGateway) -> None:
    gateway.sim.enqueue(SimScript(status=503))
    gateway.sim.enqueue(SimScript(status=502))
    reply = gateway.client().chat.completions.create(model="mavera-1", messages=HI)
    assert reply.choices
    assert [r.status for r in gateway.sim.records] == [503, 502, 200]
    assert len(gateway.records()) == 1


def test_upstream_500_is_not_retried(gateway: RunningGateway) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(
            model="mavera-1", messages=HI, extra_body={"mavera_sim": {"status": 500}}
        )
    assert caught.value.code == "upstream_unavailable"
    assert len(gateway.sim.records) == 1


def test_upstream_unreachable(make_gateway: GatewayFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    gateway = make_gateway(
        upstream={"base_url": f"http://127.0.0.1:{closed_port}/api/v1", "max_retries": 1}
    )
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(model="mavera-1", messages=HI)
    assert (caught.value.status_code, caught.value.code) == (502, "upstream_unavailable")


def test_upstream_too_slow(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream={"read_timeout_s": 0.3})
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().responses.create(
            model="mavera-1", input="hi", extra_body={"mavera_sim": {"first_byte_delay_ms": 3000}}
        )
    assert (caught.value.status_code, caught.value.code) == (504, "upstream_timeout")
    [row] = gateway.records()
    assert (row["outcome"], row["error_code"]) == ("upstream_error", "upstream_timeout")


def test_strict_models_rejects_unknown_names(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(defaults={"strict_models": True})
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o", messages=HI)
    assert caught.value.code == "model_not_found"


def test_unknown_paths_answer_in_openai_shape(gateway: RunningGateway) -> None:
    for method, path in (("GET", "/v1/nothing"), ("GET", "/v1/chat/completions")):
        answer = httpx.request(method, gateway.url + path)
        assert answer.status_code in (404, 405)
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
