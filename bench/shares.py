"""How the cores were shared while a target was under load: the report's table of `cpu_share`.

On a small machine the load generator, the fake upstream, PostgreSQL, Redis and the gateway's
workers all take turns on the same cores, so a target's req/s says as much about what the
others left over as about the target. Each wrk round and each stream burst records the cores
each of them used (`procs.CpuShares`); this table gives the median over a target's wrk rounds.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.wire import CHAT, RESPONSES

Results = dict[str, Any]
_COLUMNS = (
    ("target", "target"),
    ("load", "load generator (wrk; streams: the harness)"),
    ("upstream", "fake upstream"),
    ("postgres", "PostgreSQL"),
    ("redis", "Redis"),
    ("idle", "other target, idle"),
    ("others", "outside the benchmark"),
)


def _cells(shares: list[dict[str, float]]) -> str:
    def median(key: str) -> str:
        values = [s[key] for s in shares if key in s]
        return f"{statistics.median(values):.2f}" if values else "-"

    return " | ".join(median(key) for key, _ in _COLUMNS)


def _rows(name: str, data: Results) -> list[str]:
    rows = []
    for conns, runs in data.get("throughput", {}).items():
        shares = [run["cpu_share"] for run in runs.get("runs", []) if "cpu_share" in run]
        if shares:
            label = f"wrk {conns} conns ({len(shares)} rounds)"
            rows.append(f"| {name} | {label} | {_cells(shares)} |")
    for endpoint, label in ((CHAT, "chat"), (RESPONSES, "responses")):
        share = data.get("streams", {}).get(endpoint, {}).get("cpu_share")
        if share:
            rows.append(f"| {name} | {label} streams | {_cells([share])} |")
    return rows


def table(targets: dict[str, Results]) -> list[str]:
    """Cores used by each party per target and scenario; none if nothing recorded them."""
    rows = [row for name, data in targets.items() for row in _rows(name, data)]
    if not rows:
        return []
    setups = [f"{name}: {data['setup']}" for name, data in targets.items() if "setup" in data]
    heading = " | ".join(label for _, label in _COLUMNS)
    return [
        "",
        "How the cores were shared (cores busy, 1.00 = one core the whole time; wrk: the median "
        "round" + (f"; {'; '.join(setups)}" if setups else "") + "):",
        "",
        f"| measured | scenario | {heading} |",
        "|---|---|" + "---|" * len(_COLUMNS),
        *rows,
    ]
