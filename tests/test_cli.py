"""The `mavera-gateway usage` report, run in-process against a SQLite file; `--version`."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.ledger.sqlite import SqliteLedger
from app.records import UsageRecord
from tests.cliruns import run
from tests.conftest import LedgerUnderTest, free_port

NOW = time.time()
HOUR = 3600.0
DAY = 86400.0
COLUMNS = [
    "requests",
    "errors",
    "credits",
    "unknown_credits",
    "input_tokens",
    "output_tokens",
    "p50_ms",
    "p95_ms",
]


def record(ago_s: float, client: str, **fields: Any) -> UsageRecord:
    fields.setdefault("endpoint", "chat.completions")
    fields.setdefault("status", 200)
    fields.setdefault("outcome", "ok")
    fields.setdefault("latency_ms", 100.0)
    received = NOW - ago_s
    return UsageRecord(
        client=client,
        request_id=f"{client}-{ago_s}",
        received_at=received,
        finished_at=received + 0.1,
        **fields,
    )


# Within the default 24 h: alice 3 requests (one stream whose cost Mavera never reported, credits
# 0.1 + 0.2 elsewhere to check exact sums), bob 2 (one rejected). Older ones for --since.
RECENT = [
    record(1 * HOUR, "alice", credits_used=0.1, input_tokens=10, output_tokens=20,
           persona_id="clx_a", requested_model="mavera-1", route="support", latency_ms=100.0),
    record(2 * HOUR, "alice", credits_used=0.2, input_tokens=5, output_tokens=5,
           persona_id="clx_a", requested_model="fast", latency_ms=300.0),
    record(3 * HOUR, "alice", stream=True, credits_used=None, persona_id="clx_b",
           requested_model="mavera-1", route="support", latency_ms=200.0),
    record(4 * HOUR, "bob", endpoint="responses", credits_used=3, input_tokens=7,
           output_tokens=9, persona_id="clx_b", requested_model="mavera-1", latency_ms=50.0),
    record(5 * HOUR, "bob", status=401, outcome="rejected", credits_used=None, latency_ms=1.0),
]  # fmt: skip
OLDER = [
    record(3 * DAY, "alice", credits_used=4, persona_id="clx_a", requested_model="mavera-1"),
    record(10 * DAY, "carol", credits_used=5, persona_id="clx_c", requested_model="mavera-1"),
]


@pytest.fixture
def filled(database: str, ledger: SqliteLedger) -> str:
    """The configured database, holding RECENT and OLDER."""
    assert ledger.path == database.removeprefix("sqlite:///")
    ledger.write_sync([*RECENT, *OLDER])
    return database


# --- usage ------------------------------------------------------------------------------------


def test_usage_json_totals_are_exact(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "usage", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [row["client"] for row in rows] == ["alice", "bob"]
    alice, bob = rows
    assert alice == {
        "client": "alice",
        "requests": 3,
        "errors": 0,
        "credits": 0.3,  # 0.1 + 0.2, summed without float noise; the unknown one not as 0
        "unknown_credits": 1,
        "input_tokens": 15,
        "output_tokens": 25,
        "p50_ms": 200.0,
        "p95_ms": pytest.approx(290.0),
    }
    assert (bob["requests"], bob["errors"], bob["credits"], bob["unknown_credits"]) == (2, 1, 3, 0)
    assert isinstance(bob["credits"], int)


def test_usage_table_is_aligned_with_a_header(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "usage", "--since", "7d")
    assert code == 0, err
    lines = out.rstrip("\n").split("\n")
    header = lines[0].split()
    assert header == ["client", *COLUMNS]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert [line.split()[0] for line in lines[2:]] == ["alice", "bob"]
    header_ends = [m.end() for m in re.finditer(r"\S+", lines[0])]
    for line in lines[1:]:
        cells = list(re.finditer(r"\S+", line))
        assert len(cells) == len(header)
        assert cells[0].start() == 0, "the first column is left-aligned"
        assert [m.end() for m in cells[1:]] == header_ends[1:], f"misaligned: {line!r}"
    alice = lines[2].split()
    assert alice[1:5] == ["4", "0", "4.3", "1"], "7d includes alice's 3-day-old request"


def test_usage_csv_parses(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "usage", "--format", "csv", "--by", "client")
    assert code == 0, err
    assert out.splitlines()[0] == ",".join(["client", *COLUMNS])
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["client"], r["requests"], r["credits"]) for r in rows] == [
        ("alice", "3", "0.3"),
        ("bob", "2", "3"),
    ]
    code, json_out, _ = run(capsys, "usage", "--format", "json")
    for row, expected in zip(rows, json.loads(json_out), strict=True):
        assert row == {k: "" if v is None else str(v) for k, v in expected.items()}


@pytest.mark.parametrize(
    ("by", "groups"),
    [
        ("persona", {"-": 1, "clx_a": 2, "clx_b": 2}),
        ("model", {"-": 1, "fast": 1, "mavera-1": 3}),
        ("route", {"-": 3, "support": 2}),
        ("client", {"alice": 3, "bob": 2}),
    ],
)
def test_usage_by(
    filled: str, capsys: pytest.CaptureFixture[str], by: str, groups: dict[str, int]
) -> None:
    code, out, err = run(capsys, "usage", "--by", by, "--format", "json")
    assert code == 0, err
    assert {row[by]: row["requests"] for row in json.loads(out)} == groups


def test_usage_by_day(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "usage", "--by", "day", "--since", "30d", "--format", "json")
    assert code == 0, err
    expected: dict[str, int] = {}
    for item in [*RECENT, *OLDER]:
        day = datetime.fromtimestamp(item.received_at, UTC).strftime("%Y-%m-%d")
        expected[day] = expected.get(day, 0) + 1
    rows = json.loads(out)
    assert {row["day"]: row["requests"] for row in rows} == expected
    assert [row["day"] for row in rows] == sorted(expected)


def test_usage_since_relative_and_date(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    def clients(*argv: str) -> dict[str, int]:
        code, out, err = run(capsys, "usage", "--format", "json", *argv)
        assert code == 0, err
        return {row["client"]: row["requests"] for row in json.loads(out)}

    assert clients() == {"alice": 3, "bob": 2}
    assert clients("--since", "7d") == {"alice": 4, "bob": 2}
    assert clients("--since", "30d") == {"alice": 4, "bob": 2, "carol": 1}
    five_days_ago = datetime.fromtimestamp(NOW - 5 * DAY, UTC).date().isoformat()
    assert clients("--since", five_days_ago) == {"alice": 4, "bob": 2}
    until = datetime.fromtimestamp(NOW - 2 * DAY, UTC).isoformat()
    assert clients("--since", "30d", "--until", until) == {"alice": 1, "carol": 1}


def test_usage_with_nothing_in_the_period(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "usage", "--since", "30m")
    assert code == 0
    assert out.strip() == "no requests in this period"
    assert run(capsys, "usage", "--since", "30m", "--format", "json")[1].strip() == "[]"


@pytest.mark.parametrize("since", ["yesterday", "7x", "2026-13-45", ""])
def test_usage_bad_since_exits_2_with_a_clear_message(
    filled: str, capsys: pytest.CaptureFixture[str], since: str
) -> None:
    code, out, err = run(capsys, "usage", "--since", since)
    assert code == 2
    assert out == ""
    assert err.startswith("mavera-gateway: ")
    assert "cannot read time" in err and "24h" in err and "2026-11-01" in err
    assert "Traceback" not in err


def test_usage_bad_grouping_is_an_argument_error(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["usage", "--by", "colour"])
    assert exited.value.code == 2
    assert "colour" in capsys.readouterr().err


def test_an_unreachable_postgres_ledger_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nobody listens there
    url = f"postgresql://gw:pg-s3cret@127.0.0.1:{port}/usage"
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", url)
    code, out, err = run(capsys, "usage")
    assert code == 2 and out == ""
    assert f"cannot connect to the PostgreSQL database 127.0.0.1:{port}/usage" in err
    assert "pg-s3cret" not in err


def test_usage_says_which_database_it_read_on_stderr(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "usage", "--format", "json")
    assert code == 0, err
    path = Path(filled.removeprefix("sqlite:///")).resolve()
    assert f"ledger: SQLite file {path}" in err.splitlines()
    assert "ledger:" not in out
    json.loads(out)  # stdout is the report alone


def test_usage_refuses_a_ledger_file_that_does_not_exist(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(database.removeprefix("sqlite:///"))
    code, out, err = run(capsys, "usage")
    assert code == 1
    assert out == ""
    assert f"there is no ledger at SQLite file {path}" in err
    assert "MAVERA_GATEWAY_DATABASE_URL" in err
    assert not path.exists(), "a read-only command created an empty database"


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"mavera-gateway {version('mavera-gateway')}"


def test_usage_on_a_postgres_ledger_is_the_report_sqlite_gives(
    filled: str,
    store: LedgerUnderTest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.write([*RECENT, *OLDER])
    reports = {}
    for url in (filled, store.url):
        monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", url)
        for by in ("client", "day", "persona"):
            code, out, err = run(capsys, "usage", "--since", "30d", "--by", by, "--format", "json")
            assert code == 0, err
            reports[url, by] = json.loads(out)
    for by in ("client", "day", "persona"):
        assert reports[store.url, by] == reports[filled, by] != []
