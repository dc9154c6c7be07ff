"""SIGHUP reads the config file again: a valid file takes effect, an invalid one is refused."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.simulator import Simulator
from tests.conftest import PERSONAS, UPSTREAM_KEY, free_port
from tests.processes import GatewayProcess, gateway_env

HI = [{"role": "user", "content": "hi"}]


def _config(persona: str, port: int, extra: str = "") -> str:
    return (
        f"[server]\nport = {port}\n\n"
        f'[defaults]\npersona_id = "{persona}"\n\n'
        f'[models.second]\npersona_id = "{PERSONAS[2]}"\n' + extra
    )


@pytest.fixture
def running(
    tmp_path: Path, simulator: tuple[Simulator, str]
) -> Iterator[tuple[GatewayProcess, Path, Simulator]]:
    sim, sim_url = simulator
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(_config(PERSONAS[0], port))
    env = gateway_env(tmp_path, MAVERA_BASE_URL=sim_url + "/api/v1", MAVERA_API_KEY=UPSTREAM_KEY)
    process = GatewayProcess(["serve", "--config", str(config)], env, tmp_path / "g.log", port=port)
    process.start()
    try:
        process.wait_ready()
        yield process, config, sim
    finally:
        process.stop()


def _persona_of_next_request(gateway: GatewayProcess, sim: Simulator, model: str) -> str | None:
    response = httpx.post(
        gateway.url + "/v1/chat/completions", json={"model": model, "messages": HI}, timeout=10
    )
    assert response.status_code == 200, response.text
    return sim.records[-1].persona_id


def _hang_up_and_wait(gateway: GatewayProcess, line: str, seen: int) -> None:
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gateway.log().count(line) <= seen:
        assert time.monotonic() < deadline, f"no {line!r} in the log:\n{gateway.log()}"
        time.sleep(0.05)


def test_sighup_applies_a_valid_config_and_refuses_an_invalid_one(
    running: tuple[GatewayProcess, Path, Simulator],
) -> None:
    gateway, config, sim = running
    assert _persona_of_next_request(gateway, sim, "mavera-1") == PERSONAS[0]

    config.write_text(_config(PERSONAS[1], gateway.port))
    _hang_up_and_wait(gateway, "config reloaded on SIGHUP", 0)
    assert _persona_of_next_request(gateway, sim, "mavera-1") == PERSONAS[1]
    assert _persona_of_next_request(gateway, sim, "second") == PERSONAS[2]

    config.write_text(_config(PERSONAS[0], gateway.port) + '\n[defaults]\nmodel = "dup"\n')
    _hang_up_and_wait(gateway, "config reload refused", 0)
    refused = [line for line in gateway.log().splitlines() if "config reload refused" in line]
    assert len(refused) == 1 and "TOML" in refused[0], refused
    assert _persona_of_next_request(gateway, sim, "mavera-1") == PERSONAS[1], "old config kept"

    config.write_text(_config(PERSONAS[1], gateway.port) + "\n[upstream]\nmax_retries = 5\n")
    _hang_up_and_wait(gateway, "config reloaded on SIGHUP", 1)
    assert "changes to [upstream] need a restart" in gateway.log()
    assert gateway.proc is not None and gateway.proc.poll() is None, "still serving"

    hook = "https://hooks.slack.com/services/T0001/B0002/XsecretTOKENx"
    config.write_text(_config(PERSONAS[1], gateway.port) + f'\n[alerts]\nwebhook_url = "{hook}"\n')
    _hang_up_and_wait(gateway, "config reloaded on SIGHUP", 2)
    assert "changes to [alerts] need a restart" in gateway.log()
    assert "XsecretTOKENx" not in gateway.log()
