"""Reconciliation against the simulator's GET /usage on a real socket: the CLI and
GET /admin/reconcile agree with Mavera's bill, say so when it differs (credits spent outside the
gateway, requests of unknown cost), and report an upstream that is down or refuses the key."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.cli import main
from tests.conftest import UPSTREAM_KEY, GatewayFactory, RunningGateway, free_port
from tests.processes import gateway_env

ADMIN_KEY = "admin-key-for-reconcile-tests-012345"
HI = [{"role": "user", "content": "hi"}]
OUTSIDE = "spent outside this gateway, or by requests with unknown cost"


def _reconcile(gateway: RunningGateway) -> httpx.Response:
    return httpx.get(
        gateway.url + "/admin/reconcile",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )


def _cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    gateway: RunningGateway,
    *argv: str,
    base_url: str | None = None,
) -> tuple[int, str, str]:
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", gateway.settings.ledger.database_url)
    monkeypatch.setenv("MAVERA_BASE_URL", base_url or gateway.settings.upstream.base_url)
    monkeypatch.setenv("MAVERA_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("MAVERA_GATEWAY_UPSTREAM__MAX_RETRIES", "0")
    capsys.readouterr()
    code = main(["reconcile", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _traffic(gateway: RunningGateway) -> None:
    client = gateway.client()
    client.chat.completions.create(model="mavera-1", messages=HI)
    list(client.chat.completions.create(model="mavera-1", messages=HI, stream=True))
    client.responses.create(model="mavera-1", input="a few more words to cost a bit more")


def _month() -> tuple[str, str]:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-01T00:00:00.000Z"), now.strftime("%Y-%m-")


def test_reconcile_agrees_with_what_the_simulator_charged(
    make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    _traffic(gateway)
    gateway.flush()
    charged = gateway.sim.total_credits_charged()
    assert charged > 0

    response = _reconcile(gateway)
    assert response.status_code == 200, response.text
    result = response.json()
    start, month = _month()
    assert result["billing_period"]["start"] == start
    assert result["billing_period"]["end"].startswith(month)
    assert result["mavera"] == {
        "credits_used": charged,
        "credits_included": 1_000_000,
        "credits_remaining": 1_000_000 - charged,
    }
    assert result["ledger"] == {"credits_used": charged, "requests": 3, "unknown_cost_requests": 0}
    assert (result["difference"], result["agrees"], result["unknown_cost"]) == (0, True, [])
    assert result["ledger_description"].startswith("SQLite file ")

    code, out, err = _cli(capsys, monkeypatch, gateway)
    assert code == 0
    assert (
        f"agrees: Mavera billed {charged} credits this period and the gateway recorded {charged}."
        in out
    )
    assert "difference       0" in out
    assert (
        "ledger: SQLite file" in err
        and str(Path(gateway.settings.ledger.database_url[10:]).name) in err
    )
    code, out, _ = _cli(capsys, monkeypatch, gateway, "--format", "json")
    assert code == 0
    printed = json.loads(out)
    assert printed.pop("verdict").startswith("agrees")
    assert printed == result


def test_reconcile_says_when_mavera_billed_more(
    make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    _traffic(gateway)
    gateway.sim.spend_elsewhere(7)  # e.g. someone used Mavera's web app with the same account
    gateway.flush()
    charged = gateway.sim.total_credits_charged()

    result = _reconcile(gateway).json()
    assert result["mavera"]["credits_used"] == charged + 7
    assert result["ledger"]["credits_used"] == charged
    assert (result["difference"], result["agrees"]) == (7, False)

    code, out, _ = _cli(capsys, monkeypatch, gateway)
    assert code == 0
    assert f"Mavera billed 7 more credits than the gateway recorded: {OUTSIDE}" in out
    assert "difference       7" in out


def test_requests_of_unknown_cost_are_listed(
    make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    client = gateway.client()
    client.chat.completions.create(model="mavera-1", messages=HI)
    # a stream Mavera cut before its usage arrived: the gateway cannot know what it cost
    with pytest.raises(openai.APIError, match="cut"):
        list(
            client.chat.completions.create(
                model="mavera-1",
                messages=HI,
                stream=True,
                extra_body={"mavera_sim": {"cut_after": 2}},
                extra_headers={"x-request-id": "cut-stream-1"},
            )
        )
    gateway.sim.spend_elsewhere(3)
    rows = gateway.records()
    cut = next(r for r in rows if r["request_id"] == "cut-stream-1")
    assert cut["credits_used"] is None and cut["status"] == 200

    result = _reconcile(gateway).json()
    assert result["ledger"]["unknown_cost_requests"] == 1
    assert result["unknown_cost"] == [
        {
            "received_at": cut["received_at"],
            "client": "local",
            "request_id": "cut-stream-1",
            "status": 200,
            "endpoint": "chat.completions",
        }
    ]
    assert (result["difference"], result["agrees"]) == (3, False)
    code, out, _ = _cli(capsys, monkeypatch, gateway)
    assert code == 0
    assert "(1 in this period, listed below)" in out
    listed = out.split("requests with unknown cost (newest first):")[1].split()
    assert listed[1:5] == ["local", "cut-stream-1", "chat.completions", "status"]


def test_reconcile_when_mavera_is_down(
    make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    down = f"http://127.0.0.1:{free_port()}/api/v1"
    gateway = make_gateway(admin={"key": ADMIN_KEY}, upstream={"base_url": down, "max_retries": 0})
    response = _reconcile(gateway)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"

    code, out, err = _cli(capsys, monkeypatch, gateway, base_url=down)
    assert code == 1 and out == ""
    assert "cannot reconcile: cannot reach Mavera at" in err


def test_reconcile_when_mavera_refuses_the_key(
    make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = "mvra_live_not_the_key_the_simulator_takes_0000"
    gateway = make_gateway(admin={"key": ADMIN_KEY}, upstream={"api_key": wrong})
    response = _reconcile(gateway)
    assert response.status_code == 502
    body: dict[str, Any] = response.json()
    assert body["error"]["code"] == "upstream_auth_failed"
    assert wrong not in response.text
    code, _, err = _cli(capsys, monkeypatch, gateway)
    assert code == 0, "the CLI uses the right key from the environment"
    monkeypatch.setenv("MAVERA_API_KEY", wrong)
    assert main(["reconcile"]) == 1
    err = capsys.readouterr().err
    assert "cannot reconcile: Mavera rejected the gateway's API key" in err and wrong not in err


def test_reconcile_needs_the_admin_key(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    response = httpx.get(gateway.url + "/admin/reconcile", headers={"authorization": "Bearer no"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_reconcile_without_a_mavera_key_says_what_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'l.db'}")
    assert main(["reconcile"]) == 2
    assert "set MAVERA_API_KEY" in capsys.readouterr().err


def test_simulate_with_credits_used_elsewhere_then_reconcile(tmp_path: Path) -> None:
    """What a user trying reconcile does: `simulate --credits-used-elsewhere N`, then
    `reconcile` with an empty ledger: Mavera billed N credits the gateway never saw."""
    port = free_port()
    log = tmp_path / "simulator.log"
    args = ["simulate", "--port", str(port), "--credits", "500", "--credits-used-elsewhere", "40"]
    with log.open("wb") as out:
        sim = subprocess.Popen([sys.executable, "-m", "app", *args], stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}/api/v1"
        _eventually_up(url + "/personas")
        usage = httpx.get(url + "/usage", headers={"authorization": f"Bearer {UPSTREAM_KEY}"})
        assert usage.json()["credits"] == {
            "used": 40, "included": 500, "remaining": 460, "percentage_used": 8,
        }  # fmt: skip
        env = {
            **gateway_env(tmp_path),
            "MAVERA_API_KEY": UPSTREAM_KEY,
            "MAVERA_BASE_URL": url,
        }
        done = subprocess.run(
            [sys.executable, "-m", "app", "reconcile"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    assert f"Mavera billed 40 more credits than the gateway recorded: {OUTSIDE}" in done.stdout
    assert "40 credits used, 500 included, 460 remaining" in done.stdout
    assert "ledger: SQLite file" in done.stderr and "ledger.db" in done.stderr


def _eventually_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"nothing answered at {url}"
            time.sleep(0.1)


def test_a_mavera_4xx_on_usage_is_passed_on(
    make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = make_gateway(admin={"key": ADMIN_KEY})
    gateway.sim.rpm = 1
    gateway.client().chat.completions.create(model="mavera-1", messages=HI)
    response = _reconcile(gateway)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    code, out, err = _cli(capsys, monkeypatch, gateway)
    assert (code, out) == (1, "")
    assert "cannot reconcile: Mavera answered GET /usage with 429" in err
