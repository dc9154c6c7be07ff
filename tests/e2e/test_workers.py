"""`serve --workers N`: several gateway processes on one port, run as a real `python -m app`.

Which worker serves a connection is read from /proc (the kernel's socket table), so the gateway
needs no test hook to show it; the simulator is `--simulate`'s, one for all the workers.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.workers import limits_need_sharing
from tests.conftest import PERSONAS, free_port, ledger_rows
from tests.e2e.test_shutdown import StreamReader
from tests.processes import (
    GatewayProcess,
    connection_owners,
    gateway_env,
    pid_alive,
    ready_workers,
)

STREAMS = 16  # over 2 workers, all on one by chance: 1 in 32,768


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start `python -m app` processes; each is stopped when the test ends, however it ends."""
    started: list[GatewayProcess] = []

    def start(args: list[str], env: dict[str, str], port: int = 0) -> GatewayProcess:
        process = GatewayProcess(args, env, tmp_path / f"gateway-{len(started)}.log", port=port)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def _workers(spawn: Any, tmp_path: Path, count: int = 2) -> tuple[GatewayProcess, list[int]]:
    config = tmp_path / "gateway.toml"
    config.write_text("[server]\nshutdown_grace_s = 10\n\n[ledger]\nflush_interval_ms = 50\n")
    port = free_port()
    args = ["serve", "--simulate", "--workers", str(count), "--port", str(port)]
    gateway = spawn([*args, "--config", str(config)], gateway_env(tmp_path), port)
    return gateway, ready_workers(gateway, count)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_two_workers_share_the_connections_and_drain_them_on_sigterm(
    spawn: Any, tmp_path: Path
) -> None:
    gateway, pids = _workers(spawn, tmp_path)
    assert len(set(pids)) == 2
    messages = [{"role": "user", "content": "a long answer, please"}]
    body = {"model": "mavera-1", "stream": True, "messages": messages}
    body["mavera_sim"] = {"chunks": 20, "chunk_delay_ms": 100}  # about 2 s per stream
    readers = [
        StreamReader(gateway.url, "/v1/chat/completions", body, f"worker-stream-{i:02d}")
        for i in range(STREAMS)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        assert reader.first_chunk.wait(15), "a stream did not start"
        assert reader.error is None, reader.error

    owners = connection_owners(gateway.port, pids)
    assert len(owners) == STREAMS, owners
    assert set(owners.values()) == set(pids), "one worker served every connection"

    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not _refused(gateway.port):
        assert time.monotonic() < deadline, "the workers still accepted connections after SIGTERM"
        time.sleep(0.05)
    for reader in readers:
        reader.join(15)
        assert not reader.is_alive()
        assert reader.error is None, f"{reader.request_id}: {reader.error!r}"
        assert reader.status == 200
        assert reader.content.count(b"delta") >= 20
        assert reader.content.endswith(b"data: [DONE]\n\n"), reader.request_id
    assert gateway.proc.wait(timeout=15) == 0, gateway.log()
    assert not any(pid_alive(pid) for pid in pids)

    rows = ledger_rows(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert sorted(row["request_id"] for row in rows) == sorted(r.request_id for r in readers)
    assert len({row["id"] for row in rows}) == STREAMS
    for row in rows:
        assert row["outcome"] == "ok" and row["status"] == 200
        assert row["credits_used"] > 0


def test_a_worker_that_dies_is_not_restarted_and_the_gateway_stops(
    spawn: Any, tmp_path: Path
) -> None:
    gateway, (first, second) = _workers(spawn, tmp_path)
    answer = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "mavera-1", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert answer.status_code == 200
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    deadline = time.monotonic() + 10
    while not ledger_rows(database):  # batched: a record still in a killed worker's buffer is lost
        assert time.monotonic() < deadline, "the request was not written to the ledger"
        time.sleep(0.05)
    os.kill(first, signal.SIGKILL)  # from outside, as the OOM killer would
    assert gateway.proc is not None
    assert gateway.proc.wait(timeout=20) == 1
    log = gateway.log()
    assert f"worker 1 (pid {first}) exited with code -9" in log
    assert "nothing is restarted" in log
    assert not pid_alive(second)
    assert len(ledger_rows(database)) == 1


def test_a_worker_that_cannot_start_makes_serve_exit_non_zero(spawn: Any, tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    unusable = f"sqlite:///{tmp_path / 'not-a-directory' / 'ledger.db'}"
    port = free_port()
    env = gateway_env(tmp_path, MAVERA_GATEWAY_DATABASE_URL=unusable)
    gateway = spawn(["serve", "--simulate", "--workers", "2", "--port", str(port)], env, port)
    assert gateway.proc is not None
    assert gateway.proc.wait(timeout=60) == 1
    log = gateway.log()
    assert "exited with code 3 before it was ready" in log, log
    assert "ready (pid" not in log
    assert _refused(port)


def _config_with_limits(tmp_path: Path) -> Path:
    digest = hashlib.sha256(b"team-key").hexdigest()
    config = tmp_path / "limits.toml"
    config.write_text(
        f'[clients.team]\nkey_sha256 = "{digest}"\nrpm = 60\ncredit_budget = 1000\n\n'
        f'[clients.free]\nkey_sha256 = "{hashlib.sha256(b"free").hexdigest()}"\n'
    )
    return config


def test_several_workers_with_limits_and_no_redis_are_refused(spawn: Any, tmp_path: Path) -> None:
    config = _config_with_limits(tmp_path)
    port = free_port()
    args = ["serve", "--simulate", "--workers", "3", "--port", str(port), "--config", str(config)]
    gateway = spawn(args, gateway_env(tmp_path), port)
    assert gateway.proc is not None
    assert gateway.proc.wait(timeout=30) == 2
    log = gateway.log()
    assert "--workers 3 with limits configured" in log, log
    assert "clients.team.rpm, clients.team.credit_budget" in log
    assert "clients.free" not in log
    assert "MAVERA_GATEWAY_REDIS_URL" in log and "run one worker" in log
    assert _refused(port)


def test_limits_need_sharing_names_client_and_gateway_limits(tmp_path: Path) -> None:
    def digest(key: bytes) -> str:
        return hashlib.sha256(key).hexdigest()

    settings = Settings(
        clients={
            "b": {"key_sha256": digest(b"b"), "credit_budget": 5, "max_concurrent": 2},
            "a": {"key_sha256": digest(b"a"), "rpm": 10},
            "open": {"key_sha256": digest(b"o"), "persona_id": "p", "weight": 3},
        },
        limits={"gateway_rpm": 600, "gateway_credit_budget": 10_000},
    )
    assert limits_need_sharing(settings) == [
        "clients.a.rpm",
        "clients.b.credit_budget",
        "clients.b.max_concurrent",
        "limits.gateway_rpm",
        "limits.gateway_credit_budget",
    ]
    assert limits_need_sharing(Settings()) == []


def test_sighup_reloads_the_config_in_every_worker(spawn: Any, tmp_path: Path) -> None:
    gateway, _ = _workers(spawn, tmp_path)
    config = tmp_path / "gateway.toml"
    persona = PERSONAS[1]  # --simulate started with the first
    config.write_text(config.read_text() + f'\n[defaults]\npersona_id = "{persona}"\n')
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while gateway.log().count("config reloaded on SIGHUP") < 2:
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.05)
    body = {"model": "mavera-1", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(STREAMS):  # a new connection each: both workers answer some
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=15) == 0, gateway.log()
    rows = ledger_rows(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert [row["persona_id"] for row in rows] == [persona] * STREAMS


def test_a_port_already_in_use_is_refused_before_any_worker_starts(
    spawn: Any, tmp_path: Path
) -> None:
    with socket.socket() as taken:  # another server on the port, without SO_REUSEPORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--simulate", "--workers", "2", "--port", str(port)]
        gateway = spawn(args, gateway_env(tmp_path), port)
        assert gateway.proc is not None
        assert gateway.proc.wait(timeout=30) == 2
    log = gateway.log()
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in log, log
    assert "ready (pid" not in log
