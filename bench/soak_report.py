"""The fault soak's checks and report: the ledger against what was sent, memory, logs, statuses.

The ledger is opened read-only after the gateway has exited. The report is printed as markdown
and written, with every sample, to `bench/results/soak-<time>.md` and `.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from bench import soak_stats
from bench.soak_mix import KINDS, fault_share

if TYPE_CHECKING:
    from bench.soak_faults import Load

RESULTS = Path(__file__).resolve().parent / "results"
QUEUE_METRIC = b"mavera_gateway_ledger_queue_depth "


@dataclass
class Facts:
    """Everything a soak run produced, for the checks."""

    requests: int
    concurrency: int
    seed: int
    duration_s: float
    load: Load
    samples: list[dict[str, float]]
    workdir: Path
    gateway_exit: int | None
    max_seconds: float
    started_at: float  # time.time() when the load began
    simulator: str  # recent or cli (see soak_faults._start_simulator)
    version: str  # the gateway's commit when it started


@dataclass
class LedgerCheck:
    """The ledger read against the request ids the client wrote."""

    rows: int = 0
    other_rows: int = 0  # rows whose request id is not one of the soak's
    lost: int = 0
    doubled: int = 0
    unsent_recorded: int = 0  # ids the client never wrote, found anyway
    gateway_errors: int = 0
    status_500: int = 0
    by_kind: Counter[tuple[int, int, str]] | None = None  # (kind, status, outcome)
    outcomes: Counter[str] | None = None
    lost_examples: tuple[str, ...] = ()


async def queue_depth(port: int) -> float:
    """The gateway's ledger queue depth from its public /metrics, or -1 if it did not answer."""
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            text = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return -1.0
    for line in text.splitlines():
        if line.startswith(QUEUE_METRIC):
            return float(line[len(QUEUE_METRIC) :])
    return -1.0


def check_ledger(database: Path, load: Load) -> LedgerCheck:
    """Count every soak request id in the ledger: each written one must be there exactly once."""
    found = bytearray(len(load.kinds))
    check = LedgerCheck(by_kind=Counter(), outcomes=Counter())
    assert check.by_kind is not None and check.outcomes is not None
    prefix, cut = load.prefix, len(load.prefix)
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT request_id, status, outcome FROM usage_records")
        for request_id, status, outcome in rows:
            check.rows += 1
            check.outcomes[outcome] += 1
            check.gateway_errors += outcome == "gateway_error"
            check.status_500 += status == 500
            if not request_id.startswith(prefix):
                check.other_rows += 1
                continue
            seq = int(request_id[cut:])
            found[seq] = min(found[seq] + 1, 255)
            check.by_kind[(load.kinds[seq], status, outcome)] += 1
    lost = [seq for seq, sent in enumerate(load.written) if sent and not found[seq]]
    check.lost = len(lost)
    check.lost_examples = tuple(
        f"{prefix}{seq} ({KINDS[load.kinds[seq]].name})" for seq in lost[:5]
    )
    check.doubled = sum(1 for n in found if n > 1)
    check.unsent_recorded = sum(1 for seq, n in enumerate(found) if n and not load.written[seq])
    return check


def scan_log(path: Path) -> tuple[Counter[str], int, list[str]]:
    """Lines per level in a text-format log, tracebacks, and the first few error lines."""
    levels: Counter[str] = Counter()
    tracebacks, errors = 0, list[str]()
    with path.open("rb") as log:
        for raw in log:
            line = raw.decode("utf-8", "replace")
            parts = line.split(" ", 3)
            if len(parts) > 2 and parts[2].isupper():
                levels[parts[2]] += 1
                if parts[2] in ("ERROR", "CRITICAL") and len(errors) < 5:
                    errors.append(line.strip()[:240])
            tracebacks += line.startswith("Traceback")
    return levels, tracebacks, errors


def report(facts: Facts, command: str) -> bool:
    """Check, print and save the run; True when every check passed."""
    check = check_ledger(facts.workdir / "ledger.db", facts.load)
    levels, tracebacks, errors = scan_log(facts.workdir / "gateway.log")
    memory = soak_stats.memory(facts.samples, facts.requests, facts.max_seconds)
    client_500 = sum(n for (_, status, _), n in facts.load.seen.items() if status == 500)
    verdicts = {
        "zero records lost": check.lost == 0,
        "zero records doubled": check.doubled == 0 and check.unsent_recorded == 0,
        "zero gateway 500s (client and ledger)": client_500 + check.status_500 == 0,
        "zero gateway_error outcomes": check.gateway_errors == 0,
        "memory flat": memory.flat,
        "gateway exited cleanly": facts.gateway_exit == 0,
        "every result as its fault calls for (`off` 0)": soak_stats.off_total(facts, check) == 0,
    }
    lines = soak_stats.render(facts, check, memory, verdicts, command)
    lines += soak_stats.render_log(levels, tracebacks, errors)
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    (RESULTS / f"soak-{stamp}.md").write_text(text)
    raw = {
        "command": command,
        "fault_share_pct": fault_share(),
        "samples": facts.samples,
        "verdicts": verdicts,
        "seen": [[KINDS[k].name, s, e, n] for (k, s, e), n in sorted(facts.load.seen.items())],
        "ledger": [
            [KINDS[k].name, s, o, n] for (k, s, o), n in sorted((check.by_kind or {}).items())
        ],
    }
    (RESULTS / f"soak-{stamp}.json").write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))
    print(f"written: {RESULTS}/soak-{stamp}.md and .json")
    return all(verdicts.values())


def remove(workdir: Path) -> None:
    """Delete the run's directory (ledger, logs)."""
    shutil.rmtree(workdir, ignore_errors=True)
