"""The SQL both backends share for usage reports: what a report group adds up.

`app.records.cost_unknown` says in Python which requests Mavera may have charged for without
reporting a cost; `UNKNOWN_COST` says the same in SQL, so reports count them in the database.
"""

from __future__ import annotations

from app.records import GENERATION_ENDPOINTS

UNKNOWN_COST = (
    "credits_used IS NULL AND endpoint IN ("
    + ", ".join(f"'{endpoint}'" for endpoint in GENERATION_ENDPOINTS)
    + ") AND (status < 300 OR outcome IN ('client_disconnected', 'shutdown'))"
)

# requests, errors, known credits (NULL when none is known), unknown-cost requests, tokens
TOTALS = (
    "COUNT(*), COUNT(*) FILTER (WHERE outcome <> 'ok'), SUM(credits_used), "
    f"COUNT(*) FILTER (WHERE {UNKNOWN_COST}), "
    "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0)"
)
