"""The HTTP surface as the app declares it: /openapi.json, /docs, and a short fuzz run."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from app.background import BackgroundServer
from app.server import create_app
from tests.conftest import GatewayFactory, RunningGateway, gateway_settings

ADMIN_KEY = "admin-key-for-the-openapi-tests"
EXPECTED = {
    ("post", "/v1/chat/completions"),
    ("post", "/v1/responses"),
    ("get", "/v1/models"),
    ("get", "/v1/personas"),
    ("post", "/{route}/v1/chat/completions"),
    ("post", "/{route}/v1/responses"),
    ("get", "/{route}/v1/models"),
    ("get", "/{route}/v1/personas"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/admin/usage"),
    ("get", "/admin/usage/records"),
    ("get", "/admin/reconcile"),
    ("get", "/admin/keys"),
    ("post", "/admin/keys"),
    ("delete", "/admin/keys/{name}"),
    ("get", "/admin/clients/{name}/spend"),
    ("patch", "/admin/keys/{name}"),
    ("get", "/admin/audit"),
    ("get", "/dashboard"),
}


@pytest.fixture
def documented(make_gateway: GatewayFactory) -> RunningGateway:
    return make_gateway(admin={"key": ADMIN_KEY}, routes={"sales": {}})


def test_openapi_lists_every_endpoint_with_its_models(documented: RunningGateway) -> None:
    spec = httpx.get(documented.url + "/openapi.json", timeout=10).json()
    found = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert found == EXPECTED
    for path, ops in spec["paths"].items():
        for method, operation in ops.items():
            answers = operation["responses"]
            ok = answers.get("200") or answers.get("201")
            assert ok and ok.get("content"), f"{method} {path} documents no answer"
            assert "422" not in answers, f"{method} {path}: bad input is a 400 here, not 422"
            if path.startswith(("/v1/", "/{route}/", "/admin/")):
                error = answers["400"]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ErrorResponse"}
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages", "stream", "persona_id"} <= set(body["properties"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    new_key = spec["components"]["schemas"]["NewKey"]["properties"]
    assert new_key["rpm"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert spec["paths"]["/{route}/v1/models"]["get"]["parameters"][0]["name"] == "route"


def test_docs_page_is_served(documented: RunningGateway) -> None:
    page = httpx.get(documented.url + "/docs", timeout=10)
    assert page.status_code == 200
    assert "/openapi.json" in page.text


FUZZ_EXAMPLES = 15


def _openai_error(content: bytes) -> bool:
    try:
        error = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


def test_fuzzed_requests_never_get_a_500(documented: RunningGateway) -> None:
    """Schemathesis cases for every operation, admin key included: no answer is a gateway 500,
    and every error is in the OpenAI shape."""
    schema = schemathesis.openapi.from_url(documented.url + "/openapi.json")
    failures: list[str] = []
    calls = 0
    statuses: dict[int, int] = {}
    for found in schema.get_all_operations():
        operation = found.ok()

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            nonlocal calls
            case.headers = {**(case.headers or {}), "authorization": f"Bearer {ADMIN_KEY}"}
            response = case.call(base_url=documented.url, timeout=10)
            calls += 1
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500 and response.status_code not in (502, 503, 504):
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")
            if response.status_code >= 400 and not _openai_error(response.content):
                failures.append(f"{case.method} {case.formatted_path}: not an OpenAI error")

        call()
    assert calls >= FUZZ_EXAMPLES * len(EXPECTED) // 2, calls
    assert not failures, failures[:5]
    booked = {record["outcome"] for record in documented.records()}
    assert "gateway_error" not in booked, "a fuzzed request found a gateway bug"
    assert statuses.get(200) and statuses.get(400), statuses  # both kinds of case were made


def test_generation_posts_take_the_fast_path_past_middleware(
    simulator: tuple[Any, str], tmp_path: Any
) -> None:
    """As documented: middleware added to the app does not see the two generation endpoints
    (they skip FastAPI's stack for speed), and sees everything else."""
    _, sim_url = simulator
    app = create_app(gateway_settings(sim_url, tmp_path, routes={"sales": {}}))
    seen: list[str] = []

    @app.middleware("http")
    async def note(request: Any, call_next: Any) -> Any:
        seen.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    chat = {"model": "mavera-1", "messages": [{"role": "user", "content": "hi"}]}
    with BackgroundServer(app) as server:
        for path in ("/v1/chat/completions", "/sales/v1/chat/completions"):
            assert httpx.post(server.url + path, json=chat, timeout=10).status_code == 200
        response = httpx.post(
            server.url + "/v1/responses", json={"model": "m", "input": "hi"}, timeout=10
        )
        assert response.status_code == 200
        assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 200
        assert httpx.post(server.url + "/v1/models", timeout=10).status_code == 405
    assert seen == ["GET /v1/models", "POST /v1/models"]
