"""The ledger's side of cost attribution: migration 0005 on an older database, tags stored once
per record and grouped by, persona names, and the totals reconciliation reads."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from app import reports
from app.ledger.migrations import MIGRATIONS
from app.ledger.sqlite import SqliteLedger
from app.records import UsageRecord, cost_unknown

NOW = time.time()


def record(**fields: Any) -> UsageRecord:
    fields.setdefault("endpoint", "chat.completions")
    fields.setdefault("status", 200)
    fields.setdefault("client", "alice")
    fields.setdefault("received_at", NOW)
    return UsageRecord(**fields)


def by(ledger: SqliteLedger, group: str) -> dict[str, tuple[int, Any]]:
    rows = asyncio.run(reports.summarize(ledger, since=NOW - 60, until=NOW + 60, by=group))
    return {row[group]: (row["requests"], row["credits"]) for row in rows}


def test_an_older_database_gets_0005_even_with_a_later_migration_recorded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        for name, statements in MIGRATIONS[:3]:
            for statement in statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (name,))
        # a migration numbered after ours, applied first (branches merged in another order)
        db.execute("INSERT INTO schema_migrations VALUES ('0006_elsewhere', 0)")
        db.execute(
            "INSERT INTO usage_records (id, request_id, received_at, client, endpoint, stream, "
            "status, outcome, credits_used) VALUES ('old-1', 'r', ?, 'bob', 'responses', 0, 200, "
            "'ok', 4)",
            (NOW,),
        )
        db.commit()
    ledger = SqliteLedger(f"sqlite:///{path}")
    ledger.open_sync()
    try:
        applied = asyncio.run(ledger.applied_migrations())
        assert "0005_attribution" in applied and "0006_elsewhere" in applied
        ledger.write_sync([record(id="new-1", tags="proj-a", credits_used=2)])
        assert by(ledger, "tag") == {"(none)": (1, 4), "proj-a": (1, 2)}
    finally:
        ledger.close_sync()


def test_tags_are_stored_once_and_a_record_counts_under_each(ledger: SqliteLedger) -> None:
    both = record(tags="proj-a,exp-1", credits_used=3)
    batch = [both, record(tags="proj-a", credits_used=2), record(credits_used=1)]
    ledger.write_sync(batch)
    ledger.write_sync(batch)  # a retried batch changes nothing
    assert by(ledger, "tag") == {"(none)": (1, 1), "exp-1": (1, 3), "proj-a": (2, 5)}
    assert by(ledger, "client") == {"alice": (3, 6)}, "other groupings count each request once"
    assert asyncio.run(reports.summarize(ledger, since=0, by="client"))[0]["requests"] == 3


def test_end_user_grouping_shows_none_for_no_user(ledger: SqliteLedger) -> None:
    ledger.write_sync([record(end_user="u-1", credits_used=2), record(credits_used=5)])
    assert by(ledger, "end_user") == {"(none)": (1, 5), "u-1": (1, 2)}


def test_persona_names_are_replaced_by_newer_ones(ledger: SqliteLedger) -> None:
    asyncio.run(ledger.store_persona_names({"p1": "Old name", "p2": "Two"}, 1.0))
    asyncio.run(ledger.store_persona_names({"p1": "New name"}, 2.0))
    assert asyncio.run(ledger.persona_names()) == {"p1": "New name", "p2": "Two"}
    ledger.write_sync([record(persona_id="p1"), record(persona_id="p9")])
    rows = asyncio.run(reports.summarize(ledger, since=0, by="persona"))
    assert [(r["persona"], r["persona_name"]) for r in rows] == [("p1", "New name"), ("p9", None)]


def test_period_totals_count_unknown_costs_as_records_cost_unknown_does(
    ledger: SqliteLedger,
) -> None:
    cases = [
        record(credits_used=2.5),
        record(credits_used=None, status=200, outcome="upstream_error"),  # a cut stream
        record(credits_used=None, status=499, outcome="client_disconnected"),
        record(credits_used=None, status=503, outcome="shutdown"),
        record(credits_used=None, status=400, outcome="client_error"),  # never billed
        record(credits_used=None, status=200, endpoint="personas"),  # free
        record(credits_used=0.5, received_at=NOW - 7200),  # before the period
    ]
    for number, case in enumerate(cases):
        case.request_id = f"r{number}"
    ledger.write_sync(cases)
    totals = asyncio.run(ledger.period_totals(NOW - 60, NOW + 60))
    unknown = [
        r for r in cases[:6] if cost_unknown(r.endpoint, r.status, r.outcome, r.credits_used)
    ]
    assert (totals.credits, totals.requests, totals.unknown_cost) == (2.5, 6, len(unknown))
    listed = asyncio.run(ledger.unknown_cost_records(NOW - 60, NOW + 60, 2))
    assert len(listed) == 2 and {r["request_id"] for r in listed} <= {u.request_id for u in unknown}
    assert set(listed[0]) == {"received_at", "client", "request_id", "status", "endpoint"}
