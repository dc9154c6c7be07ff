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
