"""Two gateway containers from the one image, as deploy/ runs them: one PostgreSQL ledger and key
store, one Redis for the budgets, one Mavera (the simulator on the host) behind both.

The containers share the host network; the test's own schema in the test database and its own
Redis key prefix keep them apart from everything else on those servers.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg

from tests.conftest import REDIS_URL, free_port
from tests.containers.conftest import MAVERA_KEY, loopback_env, start_simulator, stop
from tests.podman import Container, Workspace

BUDGET = 12  # credits, for all time
RESERVE = 5  # [limits] budget_reserve_credits, the default: the most one request may overshoot
REQUESTS = 24  # far more than the budget allows, half through each replica


def test_two_replicas_share_the_ledger_the_keys_and_the_budget(
    work: Workspace, postgres_url: str, redis_prefix: str
) -> None:
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}/api/v1"
    shared = {
        "MAVERA_GATEWAY_DATABASE_URL": postgres_url,
        "MAVERA_GATEWAY_REDIS_URL": REDIS_URL,
        "MAVERA_GATEWAY_LIMITS__REDIS_PREFIX": redis_prefix,
    }
    created = work.run(
        "keys", "create", "team", "--budget", str(BUDGET), "--period", "total", env=shared
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[-1]  # printed once, on the last line

    with tempfile.TemporaryDirectory(prefix="mgw-sim-") as logs:
        sim = start_simulator(sim_port, Path(logs) / "simulator.log")
        try:
            mavera = {"Authorization": f"Bearer {MAVERA_KEY}"}
            persona = httpx.get(sim_url + "/personas", headers=mavera).json()["data"][0]["id"]
            replicas = [
                _replica(work, free_port(), shared, sim_url, persona),
                _replica(work, free_port(), shared, sim_url, persona),
            ]
            statuses = _hammer([url for url, _ in replicas], key)
            for _, container in replicas:
                stop(container)
            billed = httpx.get(sim_url + "/usage", headers=mavera).json()["credits"]["used"]
        finally:
            sim.terminate()
            sim.wait(timeout=15)

    served = [url for url, status in statuses if status == 200]
    assert {url for url, _ in replicas} <= set(served), "both replicas served the shared key"
    assert {status for _, status in statuses} <= {200, 402}
    assert 402 in {status for _, status in statuses}, "the shared budget ran out"
    with psycopg.connect(postgres_url) as db:
        (records, credits) = db.execute(
            "SELECT count(*), coalesce(sum(credits_used), 0) FROM usage_records"
            " WHERE client = 'team'"
        ).fetchone() or (0, 0)
    assert records == REQUESTS, "one record per request, from both replicas, in one ledger"
    assert credits == billed, "the ledger holds what Mavera charged"
    assert billed <= BUDGET + RESERVE, "both replicas together kept to the budget"


def _replica(
    work: Workspace, port: int, shared: dict[str, str], sim_url: str, persona: str
) -> tuple[str, Container]:
    env = loopback_env(
        port, MAVERA_BASE_URL=sim_url, MAVERA_GATEWAY_DEFAULTS__PERSONA_ID=persona, **shared
    )
    container = work.start("serve", env=env)
    url = f"http://127.0.0.1:{port}"
    container.wait_healthy(url)
    return url, container


def _hammer(urls: list[str], key: str) -> list[tuple[str, int]]:
    """REQUESTS chat completions, four at a time, alternating between the replicas."""

    def one(n: int) -> tuple[str, int]:
        url = urls[n % len(urls)]
        answer = httpx.post(
            url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": f"request {n}"}]},
            timeout=30,
        )
        return url, answer.status_code

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(REQUESTS)))
