"""The ledger's disk fills up: requests are still served, records wait in the bounded buffer,
/readyz says why, and once space is back every record is written exactly once.

The disk is real: a 2 MiB tmpfs mounted for the test (root only, as CI runs), filled with a file
until SQLite cannot grow its database or its write-ahead log.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        if os.environ.get("GATEWAY_REQUIRE_SERVICES") == "1":
            pytest.fail(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    """Write zeros until the disk refuses (unbuffered, so nothing is left to fail at close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_delays_records_but_loses_none(
    make_gateway: GatewayFactory, small_disk: Path
) -> None:
    gateway = make_gateway(
        ledger={"database_url": f"sqlite:///{small_disk / 'ledger.db'}", "flush_interval_ms": 20}
    )
    client = gateway.client()
    client.chat.completions.create(model="mavera-1", messages=HI)
    gateway.flush()
    filler = small_disk / "filler"
    _fill(filler)

    big = "x" * 20_000  # long end-user names make records big enough to need new pages
    served = 0
    deadline = time.monotonic() + 20
    while httpx.get(gateway.url + "/readyz", timeout=10).status_code == 200:
        assert time.monotonic() < deadline, "the ledger never reported the full disk"
        client.chat.completions.create(model="mavera-1", messages=HI, user=big)
        served += 1
        time.sleep(0.05)
    readyz = httpx.get(gateway.url + "/readyz", timeout=10).json()
    assert any("ledger writes failing" in p for p in readyz["problems"]), readyz
    for _ in range(5):  # still served while records wait
        client.chat.completions.create(model="mavera-1", messages=HI, user=big)
        served += 1
    assert gateway.state.writer.depth() > 0

    filler.unlink()
    deadline = time.monotonic() + 20
    while httpx.get(gateway.url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the ledger did not recover"
        time.sleep(0.1)
    rows = gateway.records()
    assert len(rows) == served + 1
    assert len({r["id"] for r in rows}) == len(rows), "each record once"
    assert all(r["outcome"] == "ok" for r in rows)


def test_an_overflowing_buffer_drops_the_oldest_loudly(
    make_gateway: GatewayFactory, small_disk: Path, no_key_in_logs: Any
) -> None:
    gateway = make_gateway(
        ledger={
            "database_url": f"sqlite:///{small_disk / 'ledger.db'}",
            "flush_interval_ms": 20,
            "max_buffer": 3,
        }
    )
    client = gateway.client()
    client.chat.completions.create(model="mavera-1", messages=HI)
    gateway.flush()
    _fill(small_disk / "filler")
    for _ in range(12):
        client.chat.completions.create(model="mavera-1", messages=HI, user="x" * 20_000)
    deadline = time.monotonic() + 20
    while gateway.state.writer.dropped == 0:
        assert time.monotonic() < deadline, "nothing was dropped"
        time.sleep(0.05)
    readyz = httpx.get(gateway.url + "/readyz", timeout=10)
    assert readyz.status_code == 503
    assert any("records dropped" in p for p in readyz.json()["problems"])
    assert any("LEDGER BUFFER FULL" in line for line in no_key_in_logs.lines)
    metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert (
        f"mavera_gateway_ledger_dropped_records_total {gateway.state.writer.dropped}.0" in metrics
    )
    assert gateway.state.writer.depth() <= 3
