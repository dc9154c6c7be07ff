"""One SQLite ledger file shared by several processes, as `serve --workers N` and the CLI share it.

Each process opens the file, writes a batch and closes it, over and over, while the others do
the same from the start: so processes open a new file at once (racing to switch it to WAL and to
migrate it), and open it while another one closes it (the last connection to close a WAL file
checkpoints and removes it). Some batches are written twice, as a batch retried after a failed
commit is. Every record must be there exactly once, and every migration applied once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
from multiprocessing.synchronize import Barrier
from pathlib import Path

from app.ledger.migrations import MIGRATIONS
from app.ledger.sqlite import SqliteLedger
from app.records import UsageRecord
from tests.conftest import ledger_rows

PROCESSES = 3
BATCHES = 40
BATCH = 50


def _write(url: str, start: Barrier, writer: int) -> None:
    start.wait(30)
    for batch in range(BATCHES):
        ledger = SqliteLedger(url)
        ledger.open_sync()
        try:
            records = [
                UsageRecord(
                    endpoint="chat.completions",
                    client=f"worker-{writer}",
                    request_id=f"{writer}-{batch}-{i}",
                    credits_used=1,
                )
                for i in range(BATCH)
            ]
            ledger.write_sync(records)
            if batch % 3 == 0:
                ledger.write_sync(records)
        finally:
            ledger.close_sync()


def test_processes_sharing_a_file_store_every_record_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(PROCESSES)
    writers = [
        spawn.Process(target=_write, args=(f"sqlite:///{path}", start, n)) for n in range(PROCESSES)
    ]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
    assert [process.exitcode for process in writers] == [0] * PROCESSES

    rows = ledger_rows(f"sqlite:///{path}")
    expected = {
        f"{n}-{batch}-{i}"
        for n in range(PROCESSES)
        for batch in range(BATCHES)
        for i in range(BATCH)
    }
    assert len(rows) == len(expected)
    assert {row["request_id"] for row in rows} == expected
    assert sum(row["credits_used"] for row in rows) == len(expected)
    with contextlib.closing(sqlite3.connect(path)) as db:
        applied = db.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
        mode = db.execute("PRAGMA journal_mode").fetchone()
    assert [name for (name,) in applied] == [name for name, _ in MIGRATIONS]
    assert mode == ("wal",)
