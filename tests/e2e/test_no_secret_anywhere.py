"""Everything the gateway emits under faults and fuzzing, gathered in one place, holds no key.

Response bodies and headers, every log line at every level with its traceback, both views of
/metrics, and every file the gateway wrote: none may contain the Mavera key, a gateway key, the
admin key or the metrics key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import UPSTREAM_KEY, GatewayFactory

ADMIN_KEY = "admin-key-never-shown-3f9a1c77e2"
METRICS_KEY = "metrics-key-never-shown-81bd02aa"
CLIENT_KEY = "mgw_client_key_never_shown_5c0ffee0d00d0123456789"
HI = [{"role": "user", "content": "hi"}]
ECHO = "rejected: Authorization: Bearer {api_key}"


def _faults() -> list[tuple[str, str, dict[str, str], Any]]:
    """(method, path, headers, json body) for every fault the gateway should answer cleanly."""
    chat = {"model": "mavera-1", "messages": HI}
    me = {"authorization": f"Bearer {CLIENT_KEY}"}
    calls: list[tuple[str, str, dict[str, str], Any]] = []
    for status in (400, 401, 403, 429, 500, 502, 503):
        for content_type in ("application/json", "text/html"):
            body = ECHO if content_type == "text/html" else '{"error": {"message": "' + ECHO + '"}}'
            script = {"status": status, "error_body": body, "error_content_type": content_type}
            for stream in (False, True):
                calls.append(
                    (
                        "POST",
                        "/v1/chat/completions",
                        me,
                        {**chat, "stream": stream, "mavera_sim": script},
                    )
                )
    for script in ({"cut_after": 3}, {"hang_after": 2}, {"status": 503, "retry_after_s": 0}):
        calls.append(
            ("POST", "/v1/chat/completions", me, {**chat, "stream": True, "mavera_sim": script})
        )
        calls.append(
            ("POST", "/v1/responses", me, {"model": "m", "input": "x", "mavera_sim": script})
        )
    calls += [
        ("POST", "/v1/chat/completions", {"authorization": "Bearer mgw_wrong"}, chat),
        ("POST", "/v1/chat/completions", {}, chat),
        ("POST", "/v1/chat/completions", me, {"model": "m", "messages": "[" * 400}),
        ("POST", "/v1/chat/completions", me, {**chat, "seed": 10**30}),
        ("GET", "/admin/keys", {"authorization": "Bearer wrong-admin"}, None),
        ("GET", "/metrics", {"authorization": "Bearer wrong-metrics"}, None),
        ("GET", "/admin/keys", {"authorization": f"Bearer {ADMIN_KEY}"}, None),
        ("GET", "/admin/usage/records", {"authorization": f"Bearer {ADMIN_KEY}"}, None),
        ("GET", "/metrics", {"authorization": f"Bearer {METRICS_KEY}"}, None),
        ("GET", "/metrics", {}, None),
        ("GET", "/v1/personas", me, None),
        ("GET", "/nowhere/v1/models", me, None),
    ]
    return calls


def test_no_key_in_anything_the_gateway_emits(
    make_gateway: GatewayFactory, tmp_path: Path, no_key_in_logs: Any
) -> None:
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    gateway = make_gateway(
        clients={"app": {"key_sha256": digest}},
        admin={"key": ADMIN_KEY},
        metrics={"key": METRICS_KEY},
        upstream={"max_retries": 0, "read_timeout_s": 1},
    )
    emitted: list[bytes] = []
    for method, path, headers, body in _faults():
        with httpx.stream(method, gateway.url + path, headers=headers, json=body, timeout=10) as r:
            try:
                emitted.append(r.read())
            except httpx.HTTPError:
                emitted.append(b"".join(r.iter_raw()) if not r.is_closed else b"")
            emitted.append(repr(r.headers.raw).encode())

    schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
    for found in schema.get_all_operations():
        operation = found.ok()

        @settings(
            max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            case.headers = {**(case.headers or {}), "authorization": f"Bearer {ADMIN_KEY}"}
            response = case.call(base_url=gateway.url, timeout=10)
            emitted.append(response.content)
            emitted.append(repr(dict(response.headers)).encode())

        call()

    gateway.flush()
    emitted += [line.encode("utf-8", "replace") for line in no_key_in_logs.lines]
    emitted += [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    everything = b"\n".join(emitted)
    assert len(no_key_in_logs.lines) > 50 and len(everything) > 100_000, "too little to judge"
    for secret in (UPSTREAM_KEY, CLIENT_KEY, ADMIN_KEY, METRICS_KEY):
        assert secret.encode() not in everything, f"{secret[:12]}... was emitted"
    assert UPSTREAM_KEY.removeprefix("mvra_live_").encode() not in everything
