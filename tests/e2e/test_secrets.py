"""The Mavera key never reaches a client, a file we write, or the config printout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import UPSTREAM_KEY, GatewayFactory

HI = [{"role": "user", "content": "hi"}]


def test_key_absent_from_every_response(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gateway = make_gateway(admin={"key": "admin-secret"})
    chat = {"model": "mavera-1", "messages": HI}
    calls: list[tuple[str, str, dict[str, object] | None]] = [
        ("POST", "/v1/chat/completions", chat),
        ("POST", "/v1/chat/completions", {**chat, "stream": True}),
        ("POST", "/v1/responses", {"model": "mavera-1", "input": "hi", "stream": True}),
        ("POST", "/v1/responses", {"model": "mavera-1", "input": "hi"}),
        ("POST", "/v1/chat/completions", {**chat, "mavera_sim": {"status": 401}}),
        ("POST", "/v1/chat/completions", {**chat, "mavera_sim": {"status": 503}}),
        ("POST", "/v1/chat/completions", {**chat, "mavera_sim": {"status": 429}}),
        ("POST", "/v1/chat/completions", {**chat, "stream": True, "mavera_sim": {"cut_after": 2}}),
        ("POST", "/v1/chat/completions", {**chat, "persona_id": "clx_unknown"}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/personas", None),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/nowhere", None),
    ]
    seen = 0
    for method, path, body in calls:
        with httpx.stream(method, gateway.url + path, json=body, timeout=10) as response:
            try:
                content = response.read()
            except httpx.RemoteProtocolError:
                content = b""
        text = content.decode("utf-8", "replace") + repr(response.headers.raw)
        assert UPSTREAM_KEY not in text, f"{method} {path} showed the Mavera key"
        seen += 1
    assert seen == len(calls)
    gateway.flush()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert UPSTREAM_KEY.encode() not in path.read_bytes(), f"{path} holds the key"


def _check_config(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m app check-config --config CONFIG` with `env` added to ours."""
    return subprocess.run(
        [sys.executable, "-m", "app", "check-config", "--config", str(config)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[defaults]\npersona_id = "clx1abc2d0001abcdef123456"\n')
    done = _check_config(
        config,
        MAVERA_API_KEY=UPSTREAM_KEY,
        MAVERA_GATEWAY_ADMIN_KEY="admin-secret-value",
        MAVERA_GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path / 'l.db'}",
    )
    assert done.returncode == 0, done.stderr
    assert UPSTREAM_KEY not in done.stdout + done.stderr
    assert "admin-secret-value" not in done.stdout + done.stderr
    assert 'api_key = "********"' in done.stdout
    assert 'persona_id = "clx1abc2d0001abcdef123456"' in done.stdout


def test_bad_config_names_the_key_and_file_without_secrets(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nport = "eighty"\n')
    done = _check_config(config, MAVERA_API_KEY=UPSTREAM_KEY)
    assert done.returncode == 2
    assert "server.port" in done.stderr and str(config) in done.stderr
    assert UPSTREAM_KEY not in done.stdout + done.stderr


ECHO_JSON = (
    '{"error": {"message": "persona not enabled for API key {api_key}", '
    '"type": "invalid_request_error", "code": "persona_not_enabled", "param": null}}'
)
ECHO_HTML = "<html><body><h1>403 Forbidden</h1><p>Bearer {api_key}</p></body></html>"


def _echoing(status: int, body: str, content_type: str, **extra: object) -> dict[str, object]:
    script = {"status": status, "error_body": body, "error_content_type": content_type, **extra}
    return {"model": "mavera-1", "messages": HI, "mavera_sim": script}


def test_an_upstream_error_that_echoes_the_key_is_scrubbed(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    for stream in (False, True):
        body = {**_echoing(403, ECHO_JSON, "application/json"), "stream": stream}
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
        assert response.status_code == 403
        assert UPSTREAM_KEY not in response.text
        assert UPSTREAM_KEY.removeprefix("mvra_live_") not in response.text
        error = response.json()["error"]
        assert error["code"] == "persona_not_enabled", "Mavera's own error otherwise passes"
        assert error["message"] == "persona not enabled for API key mvra_[redacted]"
    assert gateway.sim.records[-1].api_key == UPSTREAM_KEY, "the simulator did see the key"
    for record in gateway.records():
        assert UPSTREAM_KEY not in repr(record)


def test_a_non_json_upstream_error_is_wrapped_keeping_status_and_retry_after(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(upstream={"max_retries": 0})
    html = httpx.post(
        gateway.url + "/v1/chat/completions",
        json=_echoing(400, ECHO_HTML, "text/html"),
        timeout=10,
    )
    assert html.status_code == 400
    assert html.headers["content-type"] == "application/json"
    error = html.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_http_400"
    assert "403 Forbidden" in error["message"] and "Bearer mvra_[redacted]" in error["message"]
    assert UPSTREAM_KEY not in html.text

    limited = httpx.post(
        gateway.url + "/v1/chat/completions",
        json=_echoing(429, "slow down", "text/plain", retry_after_s=7),
        timeout=10,
    )
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.json()["error"]["message"].endswith("slow down")


def test_a_401_or_5xx_that_echoes_the_key_is_scrubbed(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(upstream={"max_retries": 0})
    for status in (401, 500, 503):
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json=_echoing(status, "denied for {api_key}", "text/plain"),
            timeout=10,
        )
        assert response.status_code == 502
        assert UPSTREAM_KEY not in response.text
        assert "mvra_[redacted]" in response.json()["error"]["message"]


def test_an_upstream_error_body_is_read_only_so_far(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    huge = "x" * (2 * 1024 * 1024)
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json=_echoing(400, huge, "text/plain"),
        timeout=10,
    )
    assert response.status_code == 400
    assert len(response.content) < 2048, "the client gets a bounded summary, not 2 MiB"
