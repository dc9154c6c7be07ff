"""Usage reports over a real ledger (SQLite and PostgreSQL), and the ledger's own guarantees."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app import reports
from app.ledger import migrations
from app.ledger.backends import open_ledger
from app.ledger.postgres import PostgresLedger
from app.ledger.sqlite import SqliteLedger
from app.records import COLUMNS, UsageRecord
from app.reports import parse_time, render
from tests.conftest import POSTGRES_ADDRESS, LedgerUnderTest, raw_query, through_port


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)[:6]))


NOW = utc(2026, 11, 4, 12)
HOUR = 3600.0
DAY = 86400.0


def summarize(store: LedgerUnderTest, **options: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = store.run(reports.summarize(store.ledger, **options))
    return rows


def fetch_records(store: LedgerUnderTest, **options: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = store.run(reports.fetch_records(store.ledger, **options))
    return rows


MIGRATIONS = [
    "0001_usage_records",
    "0002_gateway_keys",
    "0003_persona_source",
    "0004_reservation",
    "0005_attribution",
    "0006_audit",
]


def record(**fields: Any) -> UsageRecord:
    fields.setdefault("endpoint", "chat.completions")
    fields.setdefault("status", 200)
    return UsageRecord(**fields)


def dataset() -> list[UsageRecord]:
    return [
        # alice: two priced, one stream cut by the upstream (cost unknown), one refusal
        record(
            client="alice",
            persona_id="p1",
            requested_model="fast",
            upstream_model="mavera-1",
            received_at=NOW - 1 * HOUR,
            credits_used=3,
            input_tokens=10,
            output_tokens=20,
            latency_ms=100.0,
        ),
        record(
            client="alice",
            persona_id="p1",
            upstream_model="mavera-1",
            route="sales",
            endpoint="responses",
            received_at=NOW - 2 * HOUR,
            credits_used=2.5,
            input_tokens=5,
            output_tokens=5,
            latency_ms=200.0,
            stream=True,
        ),
        record(
            client="alice",
            persona_id="p2",
            upstream_model="mavera-1",
            status=200,
            outcome="upstream_error",  # the upstream cut the stream: billed, cost unknown
            received_at=NOW - 3 * HOUR,
            latency_ms=300.0,
            stream=True,
        ),
        record(
            client="alice",
            status=402,
            outcome="rejected",
            received_at=NOW - 4 * HOUR,
            latency_ms=1.0,
        ),
        # bob: a client error, a free endpoint, a cut-off stream, one priced-but-unreported
        record(
            client="bob",
            status=400,
            outcome="client_error",
            received_at=NOW - 5 * HOUR,
            latency_ms=2.0,
        ),
        record(client="bob", endpoint="models", received_at=NOW - 6 * HOUR, latency_ms=3.0),
        record(
            client="bob",
            persona_id="p1",
            requested_model="gpt-4o",
            upstream_model="mavera-1",
            outcome="client_disconnected",
            received_at=NOW - 25 * HOUR,
            credits_used=1,
            input_tokens=7,
            latency_ms=50.0,
            stream=True,
        ),
        record(
            client="bob",
            persona_id="p2",
            upstream_model="mavera-1",
            received_at=NOW - 26 * HOUR,
            output_tokens=4,
            latency_ms=60.0,
        ),
        # outside the window used below
        record(client="carol", received_at=NOW - 10 * DAY, credits_used=1000, latency_ms=1.0),
    ]


@pytest.fixture
def filled(store: LedgerUnderTest) -> LedgerUnderTest:
    store.write(dataset())
    return store


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks, computed independently of app.reports."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * pct / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 2)


# --- parse_time -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("24h", 86400),
        ("7d", 7 * 86400),
        ("2w", 14 * 86400),
        (" 1h ", 3600),
        ("0m", 0),
    ],
)
def test_parse_relative(text: str, seconds: int) -> None:
    assert parse_time(text, now=NOW) == NOW - seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", utc(2026, 11, 1)),
        ("2026-11-01T12:30:00", utc(2026, 11, 1, 12, 30)),
        ("2026-11-01 12:30", utc(2026, 11, 1, 12, 30)),
        ("2026-11-01T12:00:00+02:00", utc(2026, 11, 1, 10)),
        ("2026-11-01T12:00:00-05:00", utc(2026, 11, 1, 17)),
        ("2026-11-01T12:00:00Z", utc(2026, 11, 1, 12)),
    ],
)
def test_parse_iso(text: str, expected: float) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "24x", "1y", "", "-5d", "2026-13-01", "h24"])
def test_parse_bad_input_explains(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_time(text, now=NOW)
    message = str(caught.value)
    assert repr(text) in message
    assert "24h" in message and "7d" in message and "2026-11-01" in message


# --- summarize ------------------------------------------------------------------------------


def test_summarize_by_client(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 2 * DAY, until=NOW + 1)
    assert rows == [
        {
            "client": "alice",
            "requests": 4,
            "errors": 2,
            "credits": 5.5,
            "unknown_credits": 1,
            "input_tokens": 15,
            "output_tokens": 25,
            "p50_ms": percentile([100, 200, 300, 1], 50),
            "p95_ms": percentile([100, 200, 300, 1], 95),
        },
        {
            "client": "bob",
            "requests": 4,
            "errors": 2,
            "credits": 1,
            "unknown_credits": 1,
            "input_tokens": 7,
            "output_tokens": 4,
            "p50_ms": percentile([2, 3, 50, 60], 50),
            "p95_ms": percentile([2, 3, 50, 60], 95),
        },
    ]
    assert rows[0]["p50_ms"] == 150.0
    assert type(rows[1]["credits"]) is int  # integers stay integers


def test_summarize_one_client_by_day(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 2 * DAY, until=NOW + 1, by="day", client="bob")
    assert [(r["day"], r["requests"], r["credits"]) for r in rows] == [
        ("2026-11-03", 2, 1),
        ("2026-11-04", 2, 0),
    ]
    assert summarize(filled, since=NOW - 2 * DAY, until=NOW + 1, client="nobody") == []


def test_summarize_window_bounds(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 10 * DAY, until=NOW - 25 * HOUR)
    # `since` is inclusive, `until` exclusive
    assert [(r["client"], r["requests"]) for r in rows] == [("bob", 1), ("carol", 1)]
    assert summarize(filled, since=NOW + HOUR) == []


def test_summarize_without_until_includes_recent_records(filled: LedgerUnderTest) -> None:
    filled.write([record(client="dave", received_at=time.time())])
    rows = summarize(filled, since=NOW - 2 * DAY)
    assert "dave" in [r["client"] for r in rows]


def test_credits_are_summed_exactly(store: LedgerUnderTest) -> None:
    store.write(
        [record(client="a", credits_used=c, received_at=NOW) for c in (1, 2, 0.5, 0.25, 10**9)]
    )
    (row,) = summarize(store, since=NOW - 1, until=NOW + 1)
    assert row["credits"] == 1_000_000_003.75


def test_all_unknown_credits_are_counted_not_zeroed(store: LedgerUnderTest) -> None:
    store.write([record(client="a", received_at=NOW) for _ in range(3)])
    (row,) = summarize(store, since=NOW - 1, until=NOW + 1)
    assert (row["requests"], row["unknown_credits"], row["credits"]) == (3, 3, 0)


def test_unknown_credits_only_where_mavera_may_have_charged(store: LedgerUnderTest) -> None:
    unknown = [
        record(client="a", received_at=NOW, outcome="ok", status=200),
        record(client="a", received_at=NOW, outcome="upstream_error", status=200, stream=True),
        record(
            client="a",
            received_at=NOW,
            outcome="client_disconnected",
            status=200,
            endpoint="responses",
        ),
        record(client="a", received_at=NOW, outcome="client_disconnected", status=0),
    ]
    known_or_free = [
        record(client="a", received_at=NOW, outcome="upstream_error", status=502),
        record(client="a", received_at=NOW, outcome="upstream_error", status=504),
        record(client="a", received_at=NOW, outcome="client_error", status=402),
        record(client="a", received_at=NOW, outcome="rejected", status=429),
        record(client="a", received_at=NOW, outcome="client_error", status=400),
        record(client="a", received_at=NOW, endpoint="models"),
        record(client="a", received_at=NOW, endpoint="personas"),
        record(client="a", received_at=NOW, credits_used=0),
    ]
    store.write(unknown + known_or_free)
    (row,) = summarize(store, since=NOW - 1, until=NOW + 1)
    assert row["unknown_credits"] == len(unknown)
    assert row["requests"] == len(unknown) + len(known_or_free)
    assert row["errors"] == 8
    assert row["credits"] == 0


def test_summarize_by_persona(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 2 * DAY, until=NOW + 1, by="persona")
    assert [(r["persona"], r["requests"], r["credits"]) for r in rows] == [
        ("-", 3, 0),
        ("p1", 3, 6.5),
        ("p2", 2, 0),
    ]


def test_summarize_by_model_prefers_requested_name(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 2 * DAY, until=NOW + 1, by="model")
    assert [(r["model"], r["requests"]) for r in rows] == [
        ("-", 3),
        ("fast", 1),
        ("gpt-4o", 1),
        ("mavera-1", 3),
    ]


def test_summarize_by_route(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 2 * DAY, until=NOW + 1, by="route")
    assert [(r["route"], r["requests"], r["credits"]) for r in rows] == [
        ("-", 7, 4),
        ("sales", 1, 2.5),
    ]


def test_summarize_by_endpoint(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 2 * DAY, until=NOW + 1, by="endpoint")
    assert [(r["endpoint"], r["requests"]) for r in rows] == [
        ("chat.completions", 6),
        ("models", 1),
        ("responses", 1),
    ]


def test_summarize_by_day_in_utc(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 20 * DAY, until=NOW + 1, by="day")
    assert [(r["day"], r["requests"], r["credits"]) for r in rows] == [
        ("2026-10-25", 1, 1000),
        ("2026-11-03", 2, 1),
        ("2026-11-04", 6, 5.5),
    ]


def test_summarize_by_tag_and_end_user(store: LedgerUnderTest) -> None:
    batch = [
        record(client="a", received_at=NOW, tags="proj-a,exp-1", credits_used=2, end_user="u1"),
        record(client="a", received_at=NOW, tags="proj-a", credits_used=3),
        record(client="a", received_at=NOW, credits_used=5),
    ]
    store.write(batch)
    store.write(batch)  # a retried batch: its records and their tags are stored once
    by_tag = summarize(store, since=NOW - 1, until=NOW + 1, by="tag")
    assert [(r["tag"], r["requests"], r["credits"]) for r in by_tag] == [
        ("(none)", 1, 5),
        ("exp-1", 1, 2),
        ("proj-a", 2, 5),
    ]
    by_user = summarize(store, since=NOW - 1, until=NOW + 1, by="end_user")
    assert [(r["end_user"], r["requests"], r["credits"]) for r in by_user] == [
        ("(none)", 2, 8),
        ("u1", 1, 2),
    ]


def test_persona_names_and_the_reconciliation_totals(store: LedgerUnderTest) -> None:
    store.run(store.ledger.store_persona_names({"p1": "Old name", "p2": "Two"}, NOW))
    store.run(store.ledger.store_persona_names({"p1": "Gen Z"}, NOW + 1))
    store.write(
        [
            record(client="a", received_at=NOW, persona_id="p1", credits_used=0.1),
            record(client="a", received_at=NOW, persona_id="p1", credits_used=0.2),
            record(client="a", received_at=NOW, persona_id="p3"),  # cost unknown
        ]
    )
    rows = summarize(store, since=NOW - 1, until=NOW + 1, by="persona")
    assert [(r["persona"], r["persona_name"], r["requests"]) for r in rows] == [
        ("p1", "Gen Z", 2),
        ("p3", None, 1),
    ]
    totals = store.run(store.ledger.period_totals(NOW - 1, NOW + 1))
    assert (totals.credits, totals.requests, totals.unknown_cost) == (Decimal("0.3"), 3, 1)
    (unknown,) = store.run(store.ledger.unknown_cost_records(NOW - 1, NOW + 1, 10))
    assert (unknown["client"], unknown["status"], unknown["endpoint"]) == (
        "a",
        200,
        "chat.completions",
    )


def test_summarize_rejects_unknown_grouping(filled: LedgerUnderTest) -> None:
    with pytest.raises(ValueError, match="client"):
        summarize(filled, since=0, by="colour")


def test_percentiles_single_and_missing_latency(store: LedgerUnderTest) -> None:
    store.write(
        [
            record(client="one", received_at=NOW, latency_ms=12.345),
            record(client="none", received_at=NOW, latency_ms=None),
        ]
    )
    rows = {r["client"]: r for r in summarize(store, since=NOW - 1, until=NOW + 1)}
    assert (rows["one"]["p50_ms"], rows["one"]["p95_ms"]) == (12.35, 12.35)
    assert (rows["none"]["p50_ms"], rows["none"]["p95_ms"]) == (None, None)


def test_percentiles_over_many_requests(store: LedgerUnderTest) -> None:
    latencies = [float(n) for n in range(1, 101)]
    store.write([record(client="a", received_at=NOW, latency_ms=v) for v in latencies])
    (row,) = summarize(store, since=NOW - 1, until=NOW + 1)
    assert row["p50_ms"] == percentile(latencies, 50) == 50.5
    assert row["p95_ms"] == percentile(latencies, 95) == 95.05


# --- render ---------------------------------------------------------------------------------


def test_render_json_parses_back(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 20 * DAY, until=NOW + 1)
    assert json.loads(render(rows, "json")) == rows
    assert json.loads(render([], "json")) == []


def test_render_csv(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 20 * DAY, until=NOW + 1)
    text = render(rows, "csv")
    lines = text.splitlines()
    assert lines[0] == ",".join(rows[0])
    assert len(lines) == 1 + len(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [p["client"] for p in parsed] == ["alice", "bob", "carol"]
    assert parsed[0]["credits"] == "5.5"
    assert parsed[0]["unknown_credits"] == "1"


def test_render_table_aligns_columns(filled: LedgerUnderTest) -> None:
    rows = summarize(filled, since=NOW - 20 * DAY, until=NOW + 1)
    lines = render(rows, "table").splitlines()
    assert len(lines) == 2 + len(rows)
    spans = [m.span() for m in re.finditer(r"-+", lines[1])]
    headers = list(rows[0])
    assert len(spans) == len(headers)
    width = len(lines[1])
    for line in lines:
        assert len(line) <= width
    for line, values in zip(
        [lines[0], *lines[2:]],
        [headers, *[[r[h] for h in headers] for r in rows]],
        strict=True,
    ):
        padded = line.ljust(width)
        for column, ((start, end), value) in enumerate(zip(spans, values, strict=True)):
            cell = padded[start:end]
            assert padded[end : end + 2].strip() == "", (line, column)
            if column == 0:
                assert cell[0] != " ", line  # first column left-aligned
            else:
                assert cell[-1] != " ", line  # numbers right-aligned
            shown = cell.strip()
            if value is None:
                assert shown == "-"
            elif isinstance(value, float):
                assert float(shown) == pytest.approx(value, abs=0.05)
            else:
                assert shown == str(value)


def test_render_table_empty() -> None:
    assert render([], "table") == "no requests in this period"


def test_render_unknown_format() -> None:
    with pytest.raises(ValueError, match="table, json or csv"):
        render([], "xml")


# --- fetch_records --------------------------------------------------------------------------


def test_fetch_records_newest_first_with_all_columns(filled: LedgerUnderTest) -> None:
    records = fetch_records(filled, since=NOW - 2 * DAY)
    assert [r["received_at"] for r in records] == sorted(
        (r.received_at for r in dataset() if r.received_at >= NOW - 2 * DAY), reverse=True
    )
    assert all(set(r) == {*COLUMNS, "persona_name"} for r in records)
    first = records[0]
    assert first["client"] == "alice"
    assert first["credits_used"] == 3 and type(first["credits_used"]) is int
    assert first["stream"] is False
    assert records[1]["stream"] is True
    assert records[1]["credits_used"] == 2.5


def test_fetch_records_round_trips_a_record(store: LedgerUnderTest) -> None:
    original = record(
        client="alice",
        received_at=NOW,
        first_byte_at=NOW + 0.1,
        finished_at=NOW + 0.5,
        end_user="u-1",
        route="sales",
        requested_model="fast",
        upstream_model="mavera-1",
        persona_id="p1",
        stream=True,
        status=200,
        outcome="ok",
        credits_used=4,
        input_tokens=1,
        output_tokens=2,
        latency_ms=500.0,
        ttfb_ms=100.0,
        upstream_request_id="up-1",
        request_id="req-1",
        error_code=None,
        persona_source="model",
        tags="proj-a,exp-1",
    )
    store.write([original])
    (stored,) = fetch_records(store, since=0)
    assert stored == {**dict(zip(COLUMNS, original.values(), strict=True)), "persona_name": None}


def test_fetch_records_filters_by_client_and_since(filled: LedgerUnderTest) -> None:
    bob = fetch_records(filled, since=NOW - 2 * DAY, client="bob")
    assert [r["client"] for r in bob] == ["bob"] * 4
    recent = fetch_records(filled, since=NOW - 2 * DAY, client="carol")
    assert recent == []
    assert len(fetch_records(filled, since=0, client="carol")) == 1
    assert fetch_records(filled, since=0, client="nobody") == []


def test_fetch_records_paginates(filled: LedgerUnderTest) -> None:
    everything = fetch_records(filled, since=0)
    assert len(everything) == 9
    pages = [fetch_records(filled, since=0, limit=4, offset=o) for o in (0, 4, 8, 12)]
    assert [len(p) for p in pages] == [4, 4, 1, 0]
    assert [r["id"] for p in pages for r in p] == [r["id"] for r in everything]


def test_fetch_records_ties_are_stable(store: LedgerUnderTest) -> None:
    store.write([record(client="a", received_at=NOW) for _ in range(10)])
    pages = [fetch_records(store, since=0, limit=3, offset=o) for o in range(0, 12, 3)]
    ids = [r["id"] for p in pages for r in p]
    assert len(ids) == len(set(ids)) == 10


# --- the ledger -----------------------------------------------------------------------------


def test_spent_since_counts_kept_reservations_and_all_clients(store: LedgerUnderTest) -> None:
    store.write(
        [
            record(client="a", received_at=NOW, credits_used=3),
            record(client="a", received_at=NOW, credits_used=None, credits_reserved=5),
            record(client="a", received_at=NOW - 10, credits_used=100),
            record(client="b", received_at=NOW, credits_used=2),
        ]
    )
    assert store.run(store.ledger.spent_since("a", NOW - 1)) == 8
    assert store.run(store.ledger.spent_since(None, NOW - 1)) == 10
    assert store.run(store.ledger.spent_since(None, 0)) == 110


def test_migrations_are_recorded_in_order(store: LedgerUnderTest) -> None:
    assert store.run(store.ledger.applied_migrations()) == MIGRATIONS


def test_reopening_applies_nothing_twice(store: LedgerUnderTest) -> None:
    store.write([record(client="a", received_at=NOW)])
    applied = store.query("SELECT name, applied_at FROM schema_migrations ORDER BY name")
    store.run(store.ledger.close())

    again = open_ledger(store.url)
    store.run(again.open())
    store.run(again.open())  # a second open on the same object is a no-op
    try:
        assert store.run(again.applied_migrations()) == MIGRATIONS
    finally:
        store.run(again.close())
    assert store.query("SELECT name, applied_at FROM schema_migrations ORDER BY name") == applied
    assert store.query("SELECT COUNT(*) FROM usage_records") == [(1,)]


def test_same_record_written_twice_is_stored_once(store: LedgerUnderTest) -> None:
    one = record(client="a", received_at=NOW, credits_used=5)
    store.write([one])
    store.write([one])
    store.write([one, one])
    assert store.query("SELECT COUNT(*) FROM usage_records") == [(1,)]
    (row,) = summarize(store, since=NOW - 1, until=NOW + 1)
    assert row["credits"] == 5


def test_a_retried_batch_adds_only_what_is_new(store: LedgerUnderTest) -> None:
    batch = [record(client="a", received_at=NOW, credits_used=2) for _ in range(50)]
    store.write(batch[:30])  # a batch that was stored, though its writer never heard back
    store.write(batch)  # the writer's retry, with what arrived meanwhile
    assert store.query("SELECT COUNT(*) FROM usage_records") == [(50,)]
    (row,) = summarize(store, since=NOW - 1, until=NOW + 1)
    assert (row["requests"], row["credits"]) == (50, 100)


def test_closed_ledger_refuses_queries(store: LedgerUnderTest) -> None:
    fresh = open_ledger(store.url)
    with pytest.raises(RuntimeError, match="not open"):
        store.run(fresh.records(0, None, 10, 0))
    store.run(store.ledger.close())
    with pytest.raises(RuntimeError, match="not open"):
        store.write([record(client="a")])


def test_failed_batch_writes_nothing(store: LedgerUnderTest) -> None:
    good = record(client="a", received_at=NOW)
    bad = record(client="b", received_at=NOW)
    bad.endpoint = None  # type: ignore[assignment]  # violates NOT NULL
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)):
        store.write([good, bad])
    assert store.query("SELECT COUNT(*) FROM usage_records") == [(0,)]
    store.write([good])  # the connection is usable again
    assert store.query("SELECT COUNT(*) FROM usage_records") == [(1,)]


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    async def start_replicas() -> list[list[str]]:
        ledgers = [PostgresLedger(postgres_url) for _ in range(6)]
        await asyncio.gather(*(ledger.open() for ledger in ledgers))
        try:
            return [await ledger.applied_migrations() for ledger in ledgers]
        finally:
            await asyncio.gather(*(ledger.close() for ledger in ledgers))

    assert asyncio.run(start_replicas()) == [MIGRATIONS] * 6
    applied = raw_query(postgres_url, "SELECT name FROM schema_migrations ORDER BY name")
    assert [name for (name,) in applied] == MIGRATIONS  # each recorded once
    indexes = raw_query(
        postgres_url,
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'usage_records' ORDER BY indexname",
    )
    definitions = " ".join(definition for (definition,) in indexes)
    assert "(client, received_at)" in definitions and "(received_at)" in definitions


_WITHOUT_PSYCOPG = """
import sys
sys.modules["psycopg"] = None  # as if the [postgres] extra were not installed
from app.cli import main
from app.ledger.backends import open_ledger
from app.ledger.protocol import LedgerUnavailable
from app.server import create_app
open_ledger("sqlite:///:memory:")
try:
    open_ledger("postgresql://postgres@127.0.0.1:5432/test")
except LedgerUnavailable as exc:
    print(exc)
"""


def test_sqlite_needs_no_driver_and_postgres_names_the_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PSYCOPG], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'mavera-gateway[postgres]'" in done.stdout


def test_the_description_names_the_database_without_its_password() -> None:
    ledger = open_ledger("postgresql://gw:s3cret-pw@db.internal:6543/usage?sslmode=require")
    assert ledger.description == "PostgreSQL database db.internal:6543/usage"
    assert open_ledger("postgres://gw@db/usage").description == "PostgreSQL database db:5432/usage"


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, opened: list[asyncio.StreamWriter]
) -> None:
    """One TCP connection relayed to the real PostgreSQL, until either side closes."""
    up_reader, up_writer = await asyncio.open_connection(*POSTGRES_ADDRESS)
    opened += [writer, up_writer]

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        sink.close()

    with contextlib.suppress(ConnectionError):
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_a_postgres_gone_away_is_not_ready(postgres_url: str) -> None:
    """/readyz's ping: True while the server answers, False once the network to it is cut."""

    async def ping_before_and_after_the_cut() -> tuple[bool, bool]:
        opened: list[asyncio.StreamWriter] = []
        relay = await asyncio.start_server(lambda r, w: _forward(r, w, opened), "127.0.0.1", 0)
        port = relay.sockets[0].getsockname()[1]
        ledger = PostgresLedger(through_port(postgres_url, port))
        await ledger.open()
        try:
            before = await ledger.ping()
            relay.close()
            for writer in opened:
                writer.transport.abort()
            return before, await ledger.ping()
        finally:
            await ledger.close()

    assert asyncio.run(ping_before_and_after_the_cut()) == (True, False)


def test_a_migration_missing_from_the_sequence_is_applied_when_it_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Numbers may be reserved for another branch: a database that had 0006 first takes 0004
    # when a later version adds it, and applies nothing twice.
    url = "sqlite:///" + str(tmp_path / "l.db")
    first = SqliteLedger(url)
    first.open_sync()
    first.close_sync()
    later = (*migrations.MIGRATIONS, ("0004_later", ("CREATE TABLE later (x INTEGER)",)))
    monkeypatch.setattr("app.ledger.sqlite.MIGRATIONS", later)
    again = SqliteLedger(url)
    again.open_sync()
    assert asyncio.run(again.applied_migrations()) == sorted([*MIGRATIONS, "0004_later"])
    assert raw_query(url, "SELECT COUNT(*) FROM later") == [(0,)]
    again.close_sync()
