"""The `mavera-gateway` command for keys and usage reports, run in-process against a SQLite file."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from app.cli import main
from app.records import UsageRecord
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


@pytest.fixture
def database(store: LedgerUnderTest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ledger the commands use (each test runs on SQLite and on PostgreSQL)."""
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", store.url)
    return store.url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


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
def filled(database: str, store: LedgerUnderTest) -> str:
    """The configured database, holding RECENT and OLDER."""
    store.write([*RECENT, *OLDER])
    return database


# --- keys -------------------------------------------------------------------------------------


def test_keys_create_prints_the_key_once_and_list_never_shows_it(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "keys", "create", "alice", "--persona", "clx_a", "--rpm", "60")
    assert code == 0, err
    keys = re.findall(r"mgw_[A-Za-z0-9_\-]+", out)
    assert len(keys) == 1 and len(keys[0]) >= 4 + 32
    assert out.count(keys[0]) == 1
    key = keys[0]

    code, out, err = run(capsys, "keys", "list")
    assert code == 0, err
    assert "alice" in out and "clx_a" in out
    assert key not in out and key[4:] not in out
    assert hashlib.sha256(key.encode()).hexdigest() not in out
    assert "mgw_" not in out

    code, _, err = run(capsys, "keys", "create", "alice")
    assert code == 2
    assert "alice" in err and "already has an active key" in err


def test_keys_list_when_there_are_none(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    assert "keys create" in out


def test_keys_revoke(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keys", "create", "bob")[0] == 0
    code, out, _ = run(capsys, "keys", "revoke", "bob")
    assert code == 0 and "bob" in out
    code, out, err = run(capsys, "keys", "revoke", "bob")
    assert code == 1
    assert "no active key named 'bob'" in err


def test_keys_revoke_unknown_name_fails_with_a_message(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "keys", "revoke", "nobody")
    assert code == 1
    assert out == ""
    assert "no active key named 'nobody'" in err


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--rpm", "0"], "rpm"),
        (["--rpm", "-3"], "rpm"),
        (["--budget", "-5"], "credit_budget"),
        (["--persona", ""], "persona_id"),
    ],
)
def test_keys_create_validates_the_settings_and_stores_nothing(
    database: str, capsys: pytest.CaptureFixture[str], flags: list[str], field: str
) -> None:
    code, out, err = run(capsys, "keys", "create", "carol", *flags)
    assert code == 2
    assert "created key" not in out and "mgw_" not in out
    assert field in err and "invalid client settings" in err
    assert run(capsys, "keys", "list")[1].startswith("no keys yet")


def test_keys_create_refuses_an_unusable_name(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "keys", "create", "carol smith")
    assert code == 2
    assert "client name 'carol smith' is not valid" in err
    assert run(capsys, "keys", "list")[1].startswith("no keys yet")


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
