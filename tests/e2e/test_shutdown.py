"""SIGTERM on a real gateway process: in-flight streams finish, new connections are refused, and
every request is in the SQLite ledger afterwards, exactly once.

The gateway runs as `python -m app serve` in a subprocess (signals and process exit are the point);
the simulator runs in this process, so its records say what Mavera charged for each request.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ledger.sqlite import SqliteLedger
from app.ledger.writer import LedgerWriter
from app.records import UsageRecord
from app.simulator import Simulator
from tests.conftest import DEFAULT_PERSONA, UPSTREAM_KEY, free_port, ledger_rows
from tests.processes import GatewayProcess, gateway_env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start gateway subprocesses; each is terminated when the test ends, however it ends."""
    started: list[GatewayProcess] = []

    def start(args: list[str], env: dict[str, str], port: int = 0) -> GatewayProcess:
        log = tmp_path / f"gateway-{len(started)}.log"
        process = GatewayProcess(args, env, log, port=port)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def serve_subprocess(spawn: Any, tmp_path: Path, sim_url: str, *, grace_s: float) -> GatewayProcess:
    """A ready gateway process in front of the simulator at `sim_url`."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[server]\nshutdown_grace_s = {grace_s}\n\n"
        f'[defaults]\npersona_id = "{DEFAULT_PERSONA}"\n\n'
        "[ledger]\nflush_interval_ms = 50\n"
    )
    env = gateway_env(tmp_path, MAVERA_BASE_URL=sim_url + "/api/v1", MAVERA_API_KEY=UPSTREAM_KEY)
    port = free_port()
    process = spawn(["serve", "--port", str(port), "--config", str(config)], env, port)
    process.wait_ready()
    return process


class StreamReader(threading.Thread):
    """One streaming POST, read to its end (or its cut) on a thread of its own."""

    def __init__(self, url: str, path: str, body: dict[str, Any], request_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.body, self.request_id = url, path, body, request_id
        self.first_chunk = threading.Event()
        self.content = b""
        self.status = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        headers = {"x-request-id": self.request_id}
        try:
            with httpx.stream(
                "POST", self.url + self.path, json=self.body, headers=headers, timeout=30
            ) as response:
                self.status = response.status_code
                for chunk in response.iter_raw():
                    self.content += chunk
                    self.first_chunk.set()
        except BaseException as exc:  # reported by the test, never swallowed
            self.error = exc
        finally:
            self.first_chunk.set()


def _body(endpoint: str, script: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if endpoint == "chat":
        messages = [{"role": "user", "content": "a long answer, please"}]
        body = {"model": "mavera-1", "stream": True, "messages": messages}
        return "/v1/chat/completions", {**body, "mavera_sim": script}
    body = {"model": "mavera-1", "stream": True, "input": "a long answer, please"}
    return "/v1/responses", {**body, "mavera_sim": script}


def _expected_stream(record: Any, path: str) -> bytes:
    """What the client should have received: Mavera's bytes, minus the usage chunk the gateway
    asked for on chat streams."""
    events = [data for _, data in record.events]
    if path == "/v1/chat/completions":
        events = [e for e in events if b'"choices":[]' not in e]
    return b"".join(events)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_in_flight_streams_and_flushes_the_ledger(
    simulator: tuple[Simulator, str], spawn: Any, tmp_path: Path
) -> None:
    sim, sim_url = simulator
    grace_s = 10
    gateway = serve_subprocess(spawn, tmp_path, sim_url, grace_s=grace_s)
    script = {"chunks": 30, "chunk_delay_ms": 100}  # about 3 s per stream
    readers = []
    for i in range(10):
        path, body = _body("chat" if i % 2 == 0 else "responses", script)
        readers.append(StreamReader(gateway.url, path, body, f"shutdown-{i:02d}"))
    for reader in readers:
        reader.start()
    for reader in readers:
        assert reader.first_chunk.wait(10), "a stream did not start"
        assert reader.error is None, reader.error

    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    deadline = signalled + 5
    while not _refused(gateway.port):
        assert time.monotonic() < deadline, "the gateway still accepted connections after SIGTERM"
        time.sleep(0.05)
    assert any(r.is_alive() for r in readers), "streams ended before the listener closed"

    for reader in readers:
        reader.join(grace_s + 5)
        assert not reader.is_alive()
    returncode = gateway.proc.wait(timeout=grace_s + 5)
    assert time.monotonic() - signalled < grace_s + 5
    log = gateway.log()
    assert returncode == 0, log
    assert UPSTREAM_KEY not in log

    sent = {r.headers.get("x-request-id"): r for r in sim.records}
    for reader in readers:
        assert reader.error is None, f"{reader.request_id}: {reader.error!r}"
        assert reader.status == 200
        record = sent[reader.request_id]
        assert record.completed
        assert reader.content == _expected_stream(record, reader.path), reader.request_id
        if reader.path == "/v1/chat/completions":
            assert reader.content.endswith(b"data: [DONE]\n\n")
        else:
            assert b"event: response.completed\n" in reader.content
        assert reader.content.count(b"delta") >= 30

    rows = ledger_rows(f"sqlite:///{tmp_path / 'ledger.db'}")
    by_id = {row["request_id"]: row for row in rows}
    assert len(rows) == len(by_id) == len(readers), [r["request_id"] for r in rows]
    for reader in readers:
        row = by_id[reader.request_id]
        assert row["outcome"] == "ok"
        assert row["status"] == 200
        assert row["credits_used"] == sent[reader.request_id].credits_charged > 0


def test_stream_longer_than_the_grace_period_is_cut_but_recorded(
    simulator: tuple[Simulator, str], spawn: Any, tmp_path: Path
) -> None:
    sim, sim_url = simulator
    gateway = serve_subprocess(spawn, tmp_path, sim_url, grace_s=1)
    path, body = _body("responses", {"chunks": 50, "chunk_delay_ms": 100})  # about 5 s
    reader = StreamReader(gateway.url, path, body, "too-long-for-grace")
    reader.start()
    assert reader.first_chunk.wait(10), "the stream did not start"

    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    returncode = gateway.proc.wait(timeout=10)
    reader.join(10)
    assert not reader.is_alive()
    log = gateway.log()
    assert returncode == 0, log

    [record] = [r for r in sim.records if r.headers.get("x-request-id") == reader.request_id]
    assert not record.completed, "the stream should have been cut at the end of the grace period"
    assert b"response.completed" not in reader.content
    assert reader.content.endswith(b"\n\n") and b'"code":"shutdown"' in reader.content

    rows = ledger_rows(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert [r["request_id"] for r in rows] == [reader.request_id]
    [row] = rows
    assert row["outcome"] == "shutdown"
    assert row["error_code"] == "shutdown"
    assert row["stream"] == 1
    assert row["credits_used"] is None  # Mavera reports usage only in response.completed
    assert record.credits_charged == 0


def test_a_batch_being_written_when_shutdown_begins_is_not_lost(tmp_path: Path) -> None:
    """Shutdown cancels the writer's drain; a batch it had taken must still reach the database.

    The event loop gets a one-thread executor whose thread is kept busy, so the drain's write is
    queued, not running, when `close()` cancels it: the write then never runs by itself.
    """

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        ledger = SqliteLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
        ledger.open_sync()
        writer = LedgerWriter(ledger, batch_size=10, flush_interval_s=0.001, max_buffer=100)
        gate = threading.Event()
        busy = loop.run_in_executor(None, gate.wait)
        writer.start()
        writer.submit(UsageRecord(endpoint="chat.completions", client="c", request_id="last"))
        await asyncio.sleep(0.2)  # the drain has taken the batch and waits for the executor
        closing = asyncio.create_task(writer.close(timeout_s=5))
        await asyncio.sleep(0.05)
        gate.set()
        await busy
        await closing
        ledger.close_sync()
        return sum(r["request_id"] == "last" for r in ledger_rows(f"sqlite:///{ledger.path}"))

    assert asyncio.run(scenario()) == 1


def test_a_request_still_waiting_for_mavera_at_the_end_of_grace_gets_a_503(
    spawn: Any, tmp_path: Path, simulator: tuple[Simulator, str]
) -> None:
    sim, sim_url = simulator
    gateway = serve_subprocess(spawn, tmp_path, sim_url, grace_s=1)
    body = {
        "model": "mavera-1",
        "messages": [{"role": "user", "content": "hi"}],
        "mavera_sim": {"first_byte_delay_ms": 8000},
    }
    answer: dict[str, Any] = {}

    def ask() -> None:
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json=body,
            headers={"x-request-id": "waiting"},
            timeout=30,
        )
        answer.update(status=response.status_code, body=response.content)

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    deadline = time.monotonic() + 10
    while not any(r.headers.get("x-request-id") == "waiting" for r in sim.records):
        assert time.monotonic() < deadline, "the request never reached the simulator"
        time.sleep(0.02)
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=15) == 0, gateway.log()
    asker.join(10)
    assert answer["status"] == 503, answer
    error = json.loads(answer["body"])["error"]
    assert error["code"] == "shutdown" and set(error) == {"message", "type", "param", "code"}
    rows = ledger_rows(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert [(r["request_id"], r["outcome"], r["status"]) for r in rows] == [
        ("waiting", "shutdown", 503)
    ]
