"""Strict durability: no answer a client saw complete is missing from the ledger after SIGKILL."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from app.simulator import Simulator
from tests.conftest import DEFAULT_PERSONA, UPSTREAM_KEY, free_port, ledger_rows
from tests.processes import GatewayProcess, gateway_env

WORKERS = 8
LOAD_S = 1.5


def _serve(tmp_path: Path, sim_url: str, durability: str) -> GatewayProcess:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[defaults]\npersona_id = "{DEFAULT_PERSONA}"\n\n'
        f'[ledger]\ndurability = "{durability}"\nflush_interval_ms = 200\n'
    )
    env = gateway_env(tmp_path, MAVERA_BASE_URL=sim_url + "/api/v1", MAVERA_API_KEY=UPSTREAM_KEY)
    port = free_port()
    args = ["serve", "--port", str(port), "--config", str(config), "--log-format", "json"]
    process = GatewayProcess(args, env, tmp_path / "gateway.log", port=port).start()
    process.wait_ready()
    return process


def _load(url: str, stop: threading.Event, seen: list[str], worker: int) -> None:
    """Requests one after another; note each whose answer the client received whole."""
    stream = worker % 2 == 1
    body: dict[str, Any] = {"model": "mavera-1", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=10) as client:
        for n in range(100_000):
            if stop.is_set():
                return
            request_id = f"w{worker}-{n}"
            headers = {"x-request-id": request_id}
            try:
                with client.stream(
                    "POST",
                    url + "/v1/chat/completions",
                    json={**body, "stream": stream},
                    headers=headers,
                ) as response:
                    content = response.read()
            except httpx.HTTPError:
                return  # the gateway is gone
            whole = b"data: [DONE]" in content if stream else content.endswith(b"}")
            if response.status_code == 200 and whole:
                seen.append(request_id)


def _kill_under_load(process: GatewayProcess) -> list[str]:
    seen: list[str] = []
    stop = threading.Event()
    workers = [
        threading.Thread(target=_load, args=(process.url, stop, seen, i), daemon=True)
        for i in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    time.sleep(LOAD_S)
    assert process.proc is not None
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait(timeout=10)
    stop.set()
    for worker in workers:
        worker.join(10)
    return seen


def test_sigkill_loses_no_answer_the_client_saw_in_strict_mode(
    tmp_path: Path, simulator: tuple[Simulator, str]
) -> None:
    _, sim_url = simulator
    process = _serve(tmp_path, sim_url, "strict")
    try:
        seen = _kill_under_load(process)
    finally:
        process.stop()
    assert len(seen) > 50, "the load did not get going"
    stored = {row["request_id"] for row in ledger_rows(f"sqlite:///{tmp_path / 'ledger.db'}")}
    missing = [request_id for request_id in seen if request_id not in stored]
    assert missing == [], f"{len(missing)} of {len(seen)} completed answers have no record"


def test_sigkill_in_batched_mode_loses_only_the_last_answers(
    tmp_path: Path, simulator: tuple[Simulator, str]
) -> None:
    """Batched mode trades a flush window for throughput: what is lost is what finished last."""
    _, sim_url = simulator
    process = _serve(tmp_path, sim_url, "batched")
    try:
        seen = _kill_under_load(process)
    finally:
        process.stop()
    stored = {row["request_id"] for row in ledger_rows(f"sqlite:///{tmp_path / 'ledger.db'}")}
    missing = {request_id for request_id in seen if request_id not in stored}
    assert len(seen) > 50
    # Each worker's requests run one after another: a lost record is always among the last
    # ones that worker finished, never one followed by stored records.
    for worker in range(WORKERS):
        mine = [r for r in seen if r.startswith(f"w{worker}-")]
        kept = [r in stored for r in mine]
        assert kept == sorted(kept, reverse=True), f"worker {worker} lost a record mid-run"
    assert len(missing) < len(seen)
