"""What the gateway tells its operators: /metrics in the Prometheus text format, and one JSON log
line per request. Both carry counts, credits and timings; neither a key nor message content."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.logs import REQUEST_FIELDS
from app.simulator import PERSONAS
from tests.conftest import UPSTREAM_KEY, GatewayFactory, RunningGateway, free_port
from tests.processes import GatewayProcess, gateway_env

PHRASE = "purple elephants whisper at midnight"
KEYS = {
    "alice": "mgw_alice_metrics_test_key_0123456789abcdef",
    "bob": "mgw_bob_metrics_test_key_0123",
}
CLIENTS = {
    name: {"key_sha256": hashlib.sha256(key.encode()).hexdigest()} for name, key in KEYS.items()
}
ASK = [{"role": "user", "content": f"Tell me: {PHRASE}"}]
METRICS_KEY = "metrics-key-for-tests-9f8e7d"
ADMIN_KEY = "admin-key-for-metrics-tests-1a2b3c"
BY_CLIENT = {"authorization": f"Bearer {METRICS_KEY}"}


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)], from a Prometheus text exposition."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _value(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(v for found, v in samples if all(found.get(k) == w for k, w in labels.items()))


def _wait_for_records(gateway: RunningGateway, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while len(rows := gateway.records()) < count:
        assert time.monotonic() < deadline, f"{len(rows)} of {count} records after 5 s"
        time.sleep(0.05)
    return rows


def _every_outcome(gateway: RunningGateway) -> int:
    """Requests ending in each outcome, from two clients; how many requests were made."""
    alice = gateway.client(KEYS["alice"])
    bob = gateway.client(KEYS["bob"])
    alice.chat.completions.create(model="mavera-1", messages=ASK)
    list(alice.chat.completions.create(model="mavera-1", messages=ASK, stream=True))
    list(bob.responses.create(model="mavera-1", input=PHRASE, stream=True))
    bob.responses.create(model="mavera-1", input=PHRASE)
    with pytest.raises(openai.BadRequestError):  # client_error, passed through from Mavera
        alice.chat.completions.create(
            model="mavera-1", messages=ASK, extra_body={"persona_id": "clx_nope"}
        )
    with pytest.raises(openai.APIStatusError) as failed:  # upstream_error
        bob.chat.completions.create(
            model="mavera-1", messages=ASK, extra_body={"mavera_sim": {"status": 500}}
        )
    assert failed.value.status_code >= 500
    with pytest.raises(openai.AuthenticationError):  # rejected
        gateway.client("mgw_unknown_key_for_metrics_00000000000").models.list()
    body = {
        "model": "mavera-1",
        "messages": ASK,
        "stream": True,
        "mavera_sim": {"chunks": 200, "chunk_delay_ms": 50},
    }
    headers = {"authorization": f"Bearer {KEYS['alice']}"}
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=10
    ) as response:
        next(response.iter_raw())  # then hang up: client_disconnected
    bob.models.list()
    return 9


def test_metrics_count_requests_credits_latency_and_streams(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(
        clients=CLIENTS, defaults={"allow_persona_override": True}, metrics={"key": METRICS_KEY}
    )
    made = _every_outcome(gateway)
    rows = _wait_for_records(gateway, made)
    assert {r["outcome"] for r in rows} == {
        "ok",
        "client_error",
        "upstream_error",
        "rejected",
        "client_disconnected",
    }
    response = httpx.get(gateway.url + "/metrics", headers=BY_CLIENT, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    samples = _samples(text)

    requests = samples["mavera_gateway_requests_total"]
    expected = Counter((r["client"], r["endpoint"], r["outcome"]) for r in rows)
    assert {(s["client"], s["endpoint"], s["outcome"]): v for s, v in requests} == expected
    assert _value(requests, client="alice", outcome="client_disconnected") == 1
    assert _value(requests, client="unknown", outcome="rejected") == 1

    credits = samples["mavera_gateway_credits_total"]
    for client in KEYS:
        for endpoint in ("chat.completions", "responses"):
            ledger = sum(
                r["credits_used"] or 0
                for r in rows
                if r["client"] == client and r["endpoint"] == endpoint
            )
            assert _value(credits, client=client, endpoint=endpoint) == ledger
    assert sum(v for _, v in credits) == gateway.sim.total_credits_charged() > 0

    streams = samples["mavera_gateway_streams_total"]
    assert _value(streams) == sum(1 for r in rows if r["stream"]) == 3
    assert _value(streams, client="alice", outcome="client_disconnected") == 1

    for name in ("mavera_gateway_request_seconds", "mavera_gateway_first_byte_seconds"):
        counts = samples[name + "_count"]
        buckets = samples[name + "_bucket"]
        for endpoint in ("chat.completions", "responses"):
            timed = [
                r
                for r in rows
                if r["endpoint"] == endpoint
                and r["latency_ms" if name.endswith("request_seconds") else "ttfb_ms"] is not None
            ]
            assert _value(counts, endpoint=endpoint) == len(timed) > 0
            assert _value(buckets, endpoint=endpoint, le="+Inf") == len(timed)
        assert len({labels["le"] for labels, _ in buckets}) > 5

    assert samples["mavera_gateway_ledger_queue_depth"] == [({}, 0.0)]
    assert samples["mavera_gateway_ledger_write_failures_total"] == [({}, 0.0)]
    assert "mavera_gateway_ledger_dropped_records_total" in samples


def test_metrics_without_a_key_show_no_client_names_or_spend(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(
        clients=CLIENTS,
        defaults={"allow_persona_override": True},
        metrics={"key": METRICS_KEY},
        admin={"key": ADMIN_KEY},
    )
    made = _every_outcome(gateway)
    rows = _wait_for_records(gateway, made)
    public = httpx.get(gateway.url + "/metrics", timeout=10)
    assert public.status_code == 200
    for name in (*KEYS, "unknown"):
        assert f'client="{name}"' not in public.text
    samples = _samples(public.text)
    assert "mavera_gateway_credits_total" not in samples
    assert "mavera_gateway_requests_unknown_credits_total" not in samples
    requests = samples["mavera_gateway_requests_total"]
    assert all("client" not in labels for labels, _ in requests)
    expected = Counter((r["endpoint"], r["outcome"]) for r in rows)
    assert {(s["endpoint"], s["outcome"]): v for s, v in requests} == expected, "summed exactly"
    assert "mavera_gateway_request_seconds_count" in samples

    for key in (METRICS_KEY, ADMIN_KEY):
        full = httpx.get(gateway.url + "/metrics", headers={"authorization": f"Bearer {key}"})
        assert 'client="alice"' in full.text and "mavera_gateway_credits_total" in full.text
    wrong = httpx.get(gateway.url + "/metrics", headers={"authorization": "Bearer guess"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    gateway_key = httpx.get(
        gateway.url + "/metrics", headers={"authorization": f"Bearer {KEYS['alice']}"}
    )
    assert gateway_key.status_code == 401, "a client's gateway key does not unlock the others"


def test_client_labels_can_be_made_public_on_a_private_network(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway(clients=CLIENTS, metrics={"public_client_labels": True})
    alice = gateway.client(KEYS["alice"])
    alice.chat.completions.create(model="mavera-1", messages=ASK)
    _wait_for_records(gateway, 1)
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert 'client="alice"' in text and "mavera_gateway_credits_total" in text


def test_streams_the_sdk_reads_to_the_end_count_as_ok(gateway: RunningGateway) -> None:
    """The SDK hangs up as soon as it has read `[DONE]`, often before the gateway has seen
    Mavera's stream end: such a stream was delivered whole and must not count as a disconnect."""
    client = gateway.client()
    for _ in range(30):
        list(client.chat.completions.create(model="mavera-1", messages=ASK, stream=True))
        list(client.responses.create(model="mavera-1", input=PHRASE, stream=True))
    rows = _wait_for_records(gateway, 60)
    assert Counter(r["outcome"] for r in rows) == {"ok": 60}
    assert all(r["credits_used"] for r in rows)
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    streams = _samples(text)["mavera_gateway_streams_total"]
    assert _value(streams, outcome="ok") == 60
    assert _value(streams, outcome="client_disconnected") == 0


def test_metrics_never_show_keys_content_or_persona_text(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(
        clients=CLIENTS, defaults={"allow_persona_override": True}, metrics={"key": METRICS_KEY}
    )
    made = _every_outcome(gateway)
    personas = httpx.get(
        gateway.url + "/v1/personas",
        headers={"authorization": f"Bearer {KEYS['bob']}"},
        timeout=10,
    )
    assert personas.status_code == 200
    _wait_for_records(gateway, made + 1)
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    text += httpx.get(gateway.url + "/metrics", headers=BY_CLIENT, timeout=10).text
    secrets = [UPSTREAM_KEY, "mvra_", "mgw_", *KEYS.values(), METRICS_KEY]
    secrets += [c["key_sha256"] for c in CLIENTS.values()]
    for secret in secrets:
        assert secret not in text
    for phrase in (PHRASE, "elephant", "Tell me"):
        assert phrase not in text
    for persona in PERSONAS:
        assert persona.description not in text
        assert persona.id not in text
    labels = {k for samples in _samples(text).values() for s, _ in samples for k in s}
    assert labels <= {"client", "endpoint", "outcome", "le"}


def test_json_logs_one_line_per_request_without_content_or_keys(tmp_path: Path) -> None:
    port = free_port()
    env = gateway_env(tmp_path)
    args = ["serve", "--log-format", "json", "--simulate", "--port", str(port)]
    process = GatewayProcess(args, env, tmp_path / "serve.log", port).start()
    try:
        process.wait_ready()
        client = openai.OpenAI(base_url=process.url + "/v1", api_key="local", max_retries=0)
        chat = client.chat.completions.with_raw_response.create(
            model="mavera-1", messages=ASK, user="dev-7", extra_headers={"x-request-id": "log-1"}
        )
        assert PHRASE in (chat.parse().choices[0].message.content or ""), "echoed in the answer"
        streamed = list(
            client.responses.create(
                model="mavera-1",
                input=PHRASE,
                stream=True,
                extra_headers={"x-request-id": "log-2"},
            )
        )
        assert streamed[-1].type == "response.completed"
        assert process.proc is not None
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=15) == 0
    finally:
        process.stop()

    log = process.log()
    lines = [line for line in log.splitlines() if line.strip()]
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry)
        entries.append(entry)
    assert "mvra_" not in log
    assert PHRASE not in log and "elephant" not in log
    assert "dev-7" in log, "the end user is a record field and belongs in the line"

    requests = [e for e in entries if "request_id" in e]
    assert [e["request_id"] for e in requests] == ["log-1", "log-2"]
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.row_factory = sqlite3.Row
        stored = {r["request_id"]: dict(r) for r in db.execute("SELECT * FROM usage_records")}
    assert set(stored) == {"log-1", "log-2"}, log
    for entry in requests:
        assert set(REQUEST_FIELDS) <= set(entry)
        row = stored[entry["request_id"]]
        for field in ("client", "end_user", "endpoint", "status", "outcome", "credits_used"):
            assert entry[field] == row[field], field
        assert entry["stream"] == bool(row["stream"])
        assert entry["latency_ms"] == pytest.approx(row["latency_ms"], abs=0.001)
        assert entry["client"] == "local"
        assert entry["status"] == 200 and entry["outcome"] == "ok"
        assert isinstance(entry["credits_used"], int) and entry["credits_used"] > 0
        assert entry["latency_ms"] > 0
    assert [e["endpoint"] for e in requests] == ["chat.completions", "responses"]
    assert requests[0]["end_user"] == "dev-7"
