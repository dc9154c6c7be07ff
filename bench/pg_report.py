"""Usage reports on a large PostgreSQL ledger: generate rows, EXPLAIN ANALYZE the report query.

    python -m bench.pg_report --rows 10000000 [--url postgresql://postgres@127.0.0.1:5432/test]

Makes a schema of its own (`bench_report`), migrates it with the gateway's own ledger, fills it
with `INSERT ... SELECT generate_series` (records spread evenly over 90 days, 50 clients, in
time order as a gateway appends them), then runs the exact query `Ledger.usage_totals` sends
for a 7-day and a 30-day window, by client and by day, under EXPLAIN (ANALYZE, BUFFERS): with
the server's default settings, then with the ledger's report settings. It also times each
whole report through the ledger as the CLI calls it. The schema is dropped at the end (`--keep`
leaves it) so the rows do not stay on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import quote

import psycopg

from app import reports
from app.ledger.postgres import REPORT_SETTINGS, PostgresLedger, totals_sql

SCHEMA = "bench_report"
DAY = 86400.0
SPAN_DAYS = 90
CHUNK = 1_000_000

# Columns not named here stay NULL. Latency is skewed (most fast, a long tail).
_FILL = """
INSERT INTO usage_records (id, request_id, received_at, client, endpoint, persona_id,
    requested_model, upstream_model, stream, status, outcome, credits_used, input_tokens,
    output_tokens, latency_ms)
SELECT 'bench-' || n, 'req-' || n, %(start)s + n * %(step)s, 'client-' || (n * 7919 %% 50),
    CASE WHEN n %% 20 = 0 THEN 'models' ELSE 'chat.completions' END, 'persona-' || (n %% 20),
    'fast', 'mavera-1', n %% 3 = 0, CASE WHEN n %% 50 = 0 THEN 429 ELSE 200 END,
    CASE WHEN n %% 50 = 0 THEN 'rejected' ELSE 'ok' END,
    CASE WHEN n %% 50 = 0 OR n %% 97 = 0 THEN NULL ELSE 1 + n %% 9 END,
    (n %% 500), (n %% 700), 20 + 2000 * power(random(), 3)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
"""


def schema_url(url: str) -> str:
    """The URL with the bench schema first on the search_path."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options={quote(f'-csearch_path={SCHEMA}')}"


async def migrate(url: str) -> None:
    """Create the ledger's tables and indexes in the bench schema, as the gateway would."""
    ledger = PostgresLedger(schema_url(url))
    await ledger.open()
    await ledger.close()


def fill(url: str, rows: int, end: float) -> float:
    """Generate `rows` records ending at `end`; seconds taken (insert plus ANALYZE)."""
    start = end - SPAN_DAYS * DAY
    began = time.perf_counter()
    with psycopg.connect(schema_url(url), autocommit=True) as db:
        for first in range(0, rows, CHUNK):
            last = min(first + CHUNK, rows) - 1
            params = {"start": start, "step": SPAN_DAYS * DAY / rows, "first": first, "last": last}
            db.execute(_FILL, params)
            print(f"  {last + 1:,} rows", flush=True)
        db.execute("VACUUM ANALYZE usage_records")
    return time.perf_counter() - began


def explain(url: str, by: str, days: int, end: float, *, tuned: bool) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the report query for the last `days` days: with the
    settings the ledger applies to a report (`tuned`), or with the server's defaults."""
    sql = "EXPLAIN (ANALYZE, BUFFERS) " + totals_sql(by)  # type: ignore[arg-type]
    with psycopg.connect(schema_url(url), autocommit=True) as db, db.transaction():
        for setting in REPORT_SETTINGS if tuned else ():
            db.execute(setting)
        rows = db.execute(sql.encode(), (end - days * DAY, end)).fetchall()
    return "\n".join(row[0] for row in rows)


async def timed_report(url: str, by: str, days: int, end: float) -> tuple[float, int]:
    """Seconds the whole report takes through the ledger, and the number of groups."""
    ledger = PostgresLedger(schema_url(url))
    await ledger.open()
    try:
        began = time.perf_counter()
        rows = await reports.summarize(ledger, since=end - days * DAY, until=end, by=by)
        return time.perf_counter() - began, len(rows)
    finally:
        await ledger.close()


def main() -> None:
    """Fill, explain, time, drop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", action="store_true", help="leave the bench schema in place")
    parser.add_argument(
        "--reuse", action="store_true", help="use the rows a --keep run left instead of filling"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed reports per query")
    args = parser.parse_args()
    end = time.time()
    if args.reuse:
        with psycopg.connect(schema_url(args.url), autocommit=True) as db:
            end = db.execute("SELECT max(received_at) FROM usage_records").fetchone()[0] + 1
    else:
        with psycopg.connect(args.url, autocommit=True) as db:
            db.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            db.execute(f"CREATE SCHEMA {SCHEMA}")
    try:
        if not args.reuse:
            asyncio.run(migrate(args.url))
            print(f"filling {args.rows:,} rows over {SPAN_DAYS} days")
            print(f"filled in {fill(args.url, args.rows, end):.1f} s")
        for by in ("client", "day"):
            for days in (7, 30):
                for tuned in (False, True):
                    how = "as the ledger runs it" if tuned else "server defaults"
                    plan = explain(args.url, by, days, end, tuned=tuned)
                    print(f"\n## by {by}, last {days} days, {how}\n{plan}")
                runs = [
                    asyncio.run(timed_report(args.url, by, days, end)) for _ in range(args.repeat)
                ]
                times = sorted(seconds * 1000 for seconds, _ in runs)
                print(
                    f"report through the ledger, {args.repeat} runs: fastest {times[0]:.0f} ms, "
                    f"median {times[len(times) // 2]:.0f} ms, {runs[0][1]} groups"
                )
    finally:
        if not args.keep:
            with psycopg.connect(args.url, autocommit=True) as db:
                db.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


if __name__ == "__main__":
    main()
