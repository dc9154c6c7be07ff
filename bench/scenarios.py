"""The scenarios, each bounded in count and time, each returning plain data for the report.

- `sequential`: one keep-alive connection, N non-streaming chat requests one after another.
- `throughput`: wrk at C connections for S seconds, plus the target's CPU time per request;
  `throughput_rounds` repeats it, alternating between the targets of a group.
- `streams`: N streams opened at once (chat or Responses), TTFB, total time, completeness.
- `soak`: wrk until N requests (or a time limit), RSS before and after.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import orjson

from bench import procs
from bench.client import Connection, Reply, encode_request
from bench.sse_check import check_stream
from bench.targets import Target
from bench.wire import CHAT, RESPONSES
from bench.wrk import run_wrk

ENDPOINTS = {CHAT: "chat/completions", RESPONSES: "responses"}

_MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]
CHAT_BODY = orjson.dumps({"model": "mavera-1", "messages": _MESSAGES})
STREAM_BODIES = {
    CHAT: orjson.dumps({"model": "mavera-1", "messages": _MESSAGES, "stream": True}),
    RESPONSES: orjson.dumps({"model": "mavera-1", "input": "Say hello.", "stream": True}),
}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(seconds: list[float], q: float) -> float:
    return round(percentile(seconds, q) * 1000, 3)


class _Sequence:
    """One keep-alive connection sending the same non-streaming chat request again and again."""

    def __init__(self, target: Target) -> None:
        path = target.path(ENDPOINTS[CHAT])
        self.request = encode_request(target.port, path, CHAT_BODY, target.token)
        self.port = target.port
        self.timings: list[float] = []
        self.errors = 0

    async def send(self, connection: Connection, measured: bool, limit_s: float) -> None:
        reply = await asyncio.wait_for(connection.exchange(self.request), limit_s)
        if reply.status != 200:
            self.errors += 1
        elif measured:
            self.timings.append(reply.total)


def _summary(t: list[float], errors: int, prefix: str = "") -> dict[str, Any]:
    return {
        f"{prefix}requests": len(t),
        f"{prefix}errors": errors,
        f"{prefix}p50_ms": _ms(t, 50),
        f"{prefix}p99_ms": _ms(t, 99),
        f"{prefix}mean_ms": round(sum(t) / len(t) * 1000, 3) if t else math.nan,
    }


async def sequential(
    targets: list[Target], count: int, warmup: int, limit_s: float, baseline: Target | None = None
) -> list[dict[str, Any]]:
    """Latency at concurrency 1: p50/p99 of `count` requests after `warmup` unmeasured ones.

    With a `baseline` (direct), requests alternate between it and the target, so both are
    measured in the same seconds and "added latency" is not skewed by the machine's drift
    (CPU wake-ups alone moved direct's p50 between 0.014 and 0.085 ms from one run to the next).
    Several targets (two gateway builds) take turns the same way, their order swapped every
    round so neither always follows `direct`. One summary per target, in the order given.
    """
    sequences = [_Sequence(t) for t in targets]
    checks = [_Sequence(baseline)] if baseline else []
    connections = {id(s): await Connection.open(s.port) for s in sequences + checks}
    deadline = time.perf_counter() + limit_s
    try:
        for index in range(warmup + count):
            if time.perf_counter() > deadline:
                break
            turn = sequences if index % 2 == 0 else sequences[::-1]
            for sequence in turn + checks:
                await sequence.send(connections[id(sequence)], index >= warmup, limit_s)
    finally:
        for connection in connections.values():
            connection.close()
    base = (checks[0].timings, checks[0].errors) if checks else None
    return [latency_summary(s.timings, s.errors, base) for s in sequences]


def latency_summary(
    timings: list[float], errors: int, baseline: tuple[list[float], int] | None = None
) -> dict[str, Any]:
    """p50/p99 of `timings` (s) and, with the interleaved baseline's, the added latency.

    The raw timings are kept (`timings_s`), so the runs of several starts can be pooled.
    """
    data = _summary(timings, errors)
    data["timings_s"] = [round(t, 7) for t in timings]
    if baseline is not None:
        data.update(_summary(*baseline, "baseline_"))
        data["baseline_timings_s"] = [round(t, 7) for t in baseline[0]]
        for q in ("p50", "p99"):
            data[f"added_{q}_ms"] = round(data[f"{q}_ms"] - data[f"baseline_{q}_ms"], 3)
    return data


def throughput(
    target: Target,
    body_file: Path,
    connections: int,
    seconds: float,
    upstream: tuple[int, ...] = (),
    idle: tuple[int, ...] = (),
) -> dict[str, Any]:
    """wrk at `connections` for `seconds`; the target's CPU microseconds per request.

    `upstream` and `idle` are the pids of the benchmark's other processes (the fake upstream,
    targets not under load): with them, `cpu_share` says how the cores were shared (target,
    upstream, PostgreSQL, Redis, wrk) and `foreign_cpu_pct` is the CPU the machine spent on
    anything else meanwhile (% of a core).
    """
    pids = target.pids()
    meter = procs.CpuShares(
        {"target": pids, "upstream": upstream, **procs.service_pids(), "idle": idle},
        procs.service_pids,
    )
    result = run_wrk(
        target.url(ENDPOINTS[CHAT]),
        body_file,
        connections=connections,
        seconds=seconds,
        token=target.token,
    )
    shares = meter.cores()
    cpu = procs.cpu_seconds(pids) - meter.before["target"]
    data: dict[str, Any] = result.as_dict()
    if pids and result.requests:
        data["cpu_us_per_request"] = round(cpu / result.requests * 1e6, 1)
        data["cpu_cores"] = round(cpu / result.seconds, 2)
        later, data["settle_s"] = procs.settle(pids)
        data["cpu_us_per_request_settled"] = round((cpu + later) / result.requests * 1e6, 1)
    if upstream:
        data["cpu_share"] = shares
        data["foreign_cpu_pct"] = round(100 * shares["others"], 1)
    return data


def throughput_rounds(
    group: list[Target],
    upstream: Target,
    body_file: Path,
    connections: int,
    seconds: float,
    rounds: int,
) -> dict[str, list[dict[str, Any]]]:
    """`throughput` `rounds` times per target, the group's order swapped every round (ABBA).

    Round i of one target and round i of the other ran back to back, so two targets can be
    compared round by round. Every round's figures, per target.
    """
    done: dict[str, list[dict[str, Any]]] = {target.name: [] for target in group}
    for index in range(rounds):
        for target in group if index % 2 == 0 else group[::-1]:
            idle = tuple(p for other in group if other is not target for p in other.pids())
            done[target.name].append(
                throughput(target, body_file, connections, seconds, tuple(upstream.pids()), idle)
            )
    return done


async def streams(
    target: Target,
    endpoint: str,
    count: int,
    chunks: int,
    limit_s: float,
    upstream: tuple[int, ...] = (),
) -> dict[str, Any]:
    """`count` streams opened together; every loop bounded by `limit_s`.

    With the `upstream` pids, `cpu_share` says how the cores were shared meanwhile.
    """
    path = target.path(ENDPOINTS[endpoint])
    request = encode_request(target.port, path, STREAM_BODIES[endpoint], target.token)
    connections = await asyncio.wait_for(
        asyncio.gather(*(Connection.open(target.port) for _ in range(count))), limit_s
    )
    pids = target.pids()
    procs.reset_peak_rss(pids)
    cpu_before = procs.cpu_seconds(pids)
    meter = procs.CpuShares(
        {"target": pids, "upstream": upstream, **procs.service_pids()}, procs.service_pids
    )
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(c.exchange(request)) for c in connections]
    finished, unfinished = await asyncio.wait(tasks, timeout=limit_s)
    wall = time.perf_counter() - started
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    for connection in connections:
        connection.close()
    replies = [t.result() for t in finished if not t.cancelled() and t.exception() is None]
    data = summarize_streams(endpoint, chunks, count, replies)
    data["wall_s"] = round(wall, 3)
    if pids:
        data["peak_rss_mb"] = round(procs.peak_rss_mb(pids), 1)
        data["cpu_ms_per_stream"] = round((procs.cpu_seconds(pids) - cpu_before) / count * 1e3, 2)
    if upstream:
        data["cpu_share"] = meter.cores()
    return data


def summarize_streams(
    endpoint: str, chunks: int, count: int, replies: list[Reply]
) -> dict[str, Any]:
    """TTFB/total percentiles and the completeness counts of a stream scenario."""
    ok = [r for r in replies if r.status == 200]
    checks = [check_stream(endpoint, r.frames) for r in ok]
    complete = [c.complete(endpoint, chunks) for c in checks]
    return {
        "streams": count,
        "finished": len(replies),
        "ttfb_p50_ms": _ms([r.ttfb for r in ok], 50),
        "ttfb_p99_ms": _ms([r.ttfb for r in ok], 99),
        "total_p50_ms": _ms([r.total for r in ok], 50),
        "total_p99_ms": _ms([r.total for r in ok], 99),
        "incomplete": count - sum(complete),
        "not_intact": count - sum(c.intact(endpoint, chunks) for c in checks),
        "missing_event_names": sum(
            1 for c in checks if c.events and all(n is None for n in c.names)
        )
        if endpoint == RESPONSES
        else 0,
        "missing_credits": sum(1 for c in checks if not c.credits) if endpoint == RESPONSES else 0,
        "usage_leaked": sum(c.usage_leaked for c in checks),
        "events_per_stream": sorted({c.events for c in checks}),
        "frames_merged": sum(c.frames_merged for c in checks),
        "frames_split": sum(c.frames_split for c in checks),
    }


def soak(
    target: Target, body_file: Path, requests: int, rps_hint: float, limit_s: float
) -> dict[str, Any]:
    """About `requests` non-streaming requests at 64 connections; RSS growth across them."""
    pids = target.pids()
    seconds = min(limit_s, max(2.0, requests / max(rps_hint, 1.0) * 1.05 + 1))
    rss_before = procs.rss_mb(pids)
    result = run_wrk(
        target.url(ENDPOINTS[CHAT]),
        body_file,
        connections=64,
        seconds=seconds,
        token=target.token,
        max_requests=requests,
    )
    time.sleep(1.0)  # let the ledger writer drain what the last requests queued
    rss_after = procs.rss_mb(pids)
    return {
        "requests": result.requests,
        "seconds": result.seconds,
        "errors": result.errors,
        "error_detail": result.error_detail,
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "growth_pct": round((rss_after - rss_before) / rss_before * 100, 2) if rss_before else None,
    }
