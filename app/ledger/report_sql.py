"""The SQL of usage reports: what a report group adds up, shared by both backends.

`app.records.cost_unknown` says in Python which requests Mavera may have charged for without
reporting a cost; `UNKNOWN_COST` says the same in SQL, so reports count them in the database.
`{group}` is a backend's expression of the report group, `{source}` the table (or join) read.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.ledger.attribution import UNKNOWN_COST
from app.ledger.protocol import UsageTotals

# requests, errors, known credits (NULL when none is known), unknown-cost requests, tokens
TOTALS = (
    "COUNT(*), COUNT(*) FILTER (WHERE outcome <> 'ok'), SUM(credits_used), "
    f"COUNT(*) FILTER (WHERE {UNKNOWN_COST}), "
    "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0)"
)

# SQLite has no percentile aggregate: rank each group's latencies and interpolate between the
# two closest ranks with the arithmetic of Python's statistics.quantiles(method="inclusive").
_PICK = (
    "MAX(CASE WHEN i = {p} * (m - 1) / 100 THEN v END) AS lo{p}, "
    "MAX(CASE WHEN i = {p} * (m - 1) / 100 + 1 THEN v END) AS hi{p}"
)
_INTERPOLATE = (
    "CASE WHEN p.m = 1 THEN p.lo{p} ELSE (p.lo{p} * (100 - {p} * (p.m - 1) % 100) "
    "+ p.hi{p} * ({p} * (p.m - 1) % 100)) / 100.0 END"
)
SQLITE_TOTALS = (
    "WITH base AS (SELECT {group} AS g, * FROM {source} "
    "WHERE received_at >= ? AND received_at < ?{client}), "
    f"totals AS (SELECT g, {TOTALS} FROM base GROUP BY g), "
    "ranked AS (SELECT g, latency_ms AS v, COUNT(*) OVER (PARTITION BY g) AS m, "
    "ROW_NUMBER() OVER (PARTITION BY g ORDER BY latency_ms) - 1 AS i "
    "FROM base WHERE latency_ms IS NOT NULL), "
    f"picks AS (SELECT g, m, {_PICK.format(p=50)}, {_PICK.format(p=95)} FROM ranked GROUP BY g, m) "
    f"SELECT t.*, {_INTERPOLATE.format(p=50)}, {_INTERPOLATE.format(p=95)} "
    "FROM totals t LEFT JOIN picks p ON p.g IS t.g"
)


def sqlite_totals(row: tuple[Any, ...]) -> UsageTotals:
    """A report group; a sum of fractional credits loses float noise (SQLite adds in binary)."""
    group, requests, errors, credits, *rest = row
    if isinstance(credits, float):
        credits = Decimal(format(credits, ".15g"))
    return UsageTotals(group, requests, errors, 0 if credits is None else credits, *rest)
