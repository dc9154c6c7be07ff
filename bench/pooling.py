"""One target's results over several wrk rounds and several fresh starts of its process.

A build comparison (`--rounds`, `--instances`) repeats the measurement; this folds the repeats
into one result per target, keeping each repeat's figures so `compare` can pair them.
"""

from __future__ import annotations

from typing import Any

from bench.scenarios import latency_summary


def rounds_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median round's figures (by req/s), and every round's under `runs`."""
    median = sorted(runs, key=lambda r: float(r["rps"]))[len(runs) // 2]
    return {**median, "runs": runs}


def pool_latency(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One `latency_summary` over several runs of the same targets (fresh starts)."""
    timings = [t for part in parts for t in part["timings_s"]]
    errors = sum(part["errors"] for part in parts)
    if not all("baseline_timings_s" in part for part in parts):
        return latency_summary(timings, errors)
    direct = [t for part in parts for t in part["baseline_timings_s"]]
    return latency_summary(timings, errors, (direct, sum(p["baseline_errors"] for p in parts)))


def pool(before: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any]:
    """A target's results over fresh starts: latency and wrk rounds pooled, the rest kept.

    CPython's speed moves a little from one process to the next (hash seed, memory layout),
    and that stays for the process's life: only fresh processes average it out. Each wrk
    round is tagged with its start, and each start's added latency kept (`per_start`), so a
    comparison can treat starts as the independent repeats they are.
    """
    start = 0 if before is None else before["instances"]
    for runs in data.get("throughput", {}).values():
        for run in runs["runs"]:
            run["start"] = start
    if "latency" in data:
        latency = data["latency"]
        latency["per_start"] = [{k: latency.get(k) for k in ("added_p50_ms", "added_p99_ms")}]
    if before is None:
        return {**data, "instances": 1}
    if "latency" in before:
        starts = before["latency"]["per_start"] + data["latency"]["per_start"]
        before["latency"] = pool_latency([before["latency"], data["latency"]])
        before["latency"]["per_start"] = starts
    for conns, runs in before.get("throughput", {}).items():
        pooled = runs["runs"] + data["throughput"][conns]["runs"]
        before["throughput"][conns] = rounds_summary(pooled)
    before["instances"] += 1
    return before
