"""Usage reports from the ledger: grouped totals for the CLI and the admin API.

Credits are summed only where Mavera reported them; requests whose cost is unknown are counted
separately, never as zero.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from app.ledger.protocol import REPORT_GROUPS, Ledger, ReportGroup, UsageTotals

GROUPS: tuple[ReportGroup, ...] = REPORT_GROUPS
# Groups where a missing value is a choice the caller made (no tag, no `user` sent), shown so.
_NONE_SHOWN = {"tag": "(none)", "end_user": "(none)"}
_TEXT_COLUMNS = {"persona_name"}
TAG_FOOTNOTE = (
    "A request with several tags counts under each of them, so the column totals exceed "
    "the real total; untagged requests are under (none)."
)
_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix time for `24h`, `7d`, `30m`, `2w` ago, or an ISO date/datetime (UTC if no zone)."""
    now = time.time() if now is None else now
    relative = _RELATIVE.match(text.strip())
    if relative:
        return now - int(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use 30m, 24h, 7d, 2w or a date like 2026-11-01"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


async def summarize(
    ledger: Ledger,
    *,
    since: float,
    until: float | None = None,
    by: str = "client",
    client: str | None = None,
) -> list[dict[str, Any]]:
    """Per group: requests, errors, known credits, unknown-credit requests, tokens, p50/p95;
    of one client's requests only when `client` is given.

    By persona, each row also has the persona's name (`persona_name`, None when not known).
    """
    group = _group(by)
    totals = await ledger.usage_totals(
        since, until if until is not None else time.time() + 86400, group, client
    )
    missing = _NONE_SHOWN.get(by, "-")
    rows = sorted((_row(by, row, missing) for row in totals), key=lambda row: str(row[by]))
    if by == "persona":
        names = await ledger.persona_names()
        rows = [
            {"persona": r["persona"], "persona_name": names.get(r["persona"]), **r} for r in rows
        ]
    return rows


def footnote(by: str) -> str | None:
    """What a reader must know about a report grouped `by` this, if anything."""
    return TAG_FOOTNOTE if by == "tag" else None


def _group(by: str) -> ReportGroup:
    for group in GROUPS:
        if group == by:
            return group
    raise ValueError(f"cannot group by {by!r}: choose one of {', '.join(GROUPS)}")


def _row(by: str, totals: UsageTotals, missing: str) -> dict[str, Any]:
    row = asdict(totals)
    del row["group"]
    row["credits"] = _exact(totals.credits)
    for name in ("p50_ms", "p95_ms"):
        row[name] = None if row[name] is None else round(float(row[name]), 2)
    return {by: missing if totals.group is None else str(totals.group), **row}


def _exact(value: Any) -> int | float:
    """Credits as stored, without float noise: integers stay integers."""
    number = Decimal(str(value))
    return int(number) if number == number.to_integral_value() else float(number)


async def fetch_records(
    ledger: Ledger,
    *,
    since: float,
    client: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Raw records, newest first, for the admin API; each with its persona's name if known."""
    records = await ledger.records(since, client, limit, offset)
    names = await ledger.persona_names() if records else {}
    for record in records:
        record["persona_name"] = names.get(record["persona_id"])
        if record["credits_used"] is not None:
            record["credits_used"] = _exact(record["credits_used"])
    return records


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """The report as an aligned table, JSON, or CSV."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: use table, json or csv")
    return _table(rows)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no requests in this period"
    headers = list(rows[0])
    cells = [[_cell(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    # the group and names read left to right; numbers line up on the right
    left = [i == 0 or h in _TEXT_COLUMNS for i, h in enumerate(headers)]
    lines = [_line(headers, widths, left), _line(["-" * w for w in widths], widths, left)]
    lines += [_line(c, widths, left) for c in cells]
    return "\n".join(lines)


def _line(values: Iterable[str], widths: list[int], left: list[bool]) -> str:
    parts = [
        v.ljust(w) if flush else v.rjust(w)
        for v, w, flush in zip(values, widths, left, strict=True)
    ]
    return "  ".join(parts).rstrip()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
