"""The ledger database becomes unwritable for a while: requests keep being served, /readyz says
why it is not ready, and once the database is back every record is written, exactly once.

The outage is real: a second SQLite connection holds `BEGIN EXCLUSIVE` on the gateway's ledger
file for longer than the gateway's busy timeout, so its batched writes fail and are retried.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ledger.sqlite import BUSY_TIMEOUT_S
from tests.conftest import RunningGateway

HI = [{"role": "user", "content": "hi"}]


def _ledger_path(gateway: RunningGateway) -> Path:
    return Path(gateway.settings.ledger.database_url.removeprefix("sqlite:///"))


def _exclusive_lock(path: Path) -> sqlite3.Connection:
    """A connection holding the database's write lock until it rolls back."""
    holder = sqlite3.connect(path, timeout=10, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def _readyz(client: httpx.Client) -> tuple[int, dict[str, Any]]:
    # /readyz may wait for a ledger write that is itself waiting on the lock
    response = client.get("/readyz", timeout=BUSY_TIMEOUT_S * 3)
    return response.status_code, response.json()


class Traffic(threading.Thread):
    """Requests one after another (streaming and plain, both endpoints) until told to stop."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.sent: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    self.one(client)
                except Exception as exc:  # reported by the test
                    self.failures.append(repr(exc))
                self.stop.wait(0.02)

    def one(self, client: httpx.Client) -> None:
        n = len(self.sent) + len(self.failures)
        request_id = f"outage-{n:03d}"
        kind = n % 4
        if kind in (0, 1):
            path, body = "/v1/chat/completions", {"model": "mavera-1", "messages": HI}
        else:
            path, body = "/v1/responses", {"model": "mavera-1", "input": "hi"}
        body["stream"] = kind % 2 == 1
        headers = {"x-request-id": request_id}
        with client.stream("POST", path, json=body, headers=headers) as response:
            content = response.read()
        if response.status_code != 200 or response.headers["x-request-id"] != request_id:
            self.failures.append(f"{request_id}: {response.status_code} {content[:200]!r}")
        else:
            self.sent.append(request_id)

    def served(self) -> int:
        return len(self.sent)


def test_requests_are_served_and_recorded_through_a_database_outage(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    traffic = Traffic(gateway.url)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        assert _readyz(http)[0] == 200
        traffic.start()
        holder = _exclusive_lock(_ledger_path(gateway))
        try:
            served_before = traffic.served()
            deadline = time.monotonic() + BUSY_TIMEOUT_S * 3
            status, body = _readyz(http)
            while status != 503:
                assert time.monotonic() < deadline, "/readyz never reported the failing ledger"
                time.sleep(0.05)
                status, body = _readyz(http)
            assert body["status"] == "not ready"
            assert any("ledger writes failing" in p for p in body["problems"]), body
            assert gateway.state.writer.depth() > 0
            # the gateway kept serving all along; make sure it still does while writes fail
            during = traffic.served()
            while traffic.served() < during + 4:
                assert not traffic.failures, traffic.failures
                assert time.monotonic() < deadline, "requests stalled during the outage"
                time.sleep(0.02)
            assert traffic.served() > served_before + 4
        finally:
            holder.rollback()
            holder.close()
            traffic.stop.set()
            traffic.join(30)
        assert not traffic.failures, traffic.failures

        deadline = time.monotonic() + BUSY_TIMEOUT_S * 2
        while _readyz(http)[0] != 200:
            assert time.monotonic() < deadline, "/readyz did not recover after the outage"
            time.sleep(0.05)

    failed = [r for r in caplog.records if r.getMessage().startswith("ledger write failed")]
    assert failed and all(r.levelname == "ERROR" for r in failed)
    assert any("ledger writes recovered" in r.getMessage() for r in caplog.records)

    rows = gateway.records()
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        assert row["request_id"] not in by_id, f"{row['request_id']} recorded twice"
        by_id[row["request_id"]] = row
    assert sorted(by_id) == sorted(traffic.sent)
    charged = {r.headers.get("x-request-id"): r.credits_charged for r in gateway.sim.records}
    for request_id, row in by_id.items():
        assert row["outcome"] == "ok"
        assert row["credits_used"] == charged[request_id] > 0
    assert gateway.state.writer.dropped == 0
