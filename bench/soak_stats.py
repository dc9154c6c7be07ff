"""The fault soak's figures: memory over the run, CPU, and the markdown tables of the report."""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.soak_mix import GATEWAY_ENV, KINDS, fault_share

if TYPE_CHECKING:
    from bench.soak_report import Facts, LedgerCheck

Pairs = Counter[tuple[int, str]]  # (status, end) or (status, outcome): requests
SIMULATORS = {
    "recent": "`python -m bench.soak_sim` (the simulator app, last 1,000 request records kept)",
    "cli": "`mavera-gateway simulate` (every request's record kept)",
}
WARM_UP_SHARE = 0.1  # RSS "start" is the first sample after this share of the run
FLAT_GROWTH = 0.05  # flat: end over start, and the second half's trend, each under 5% of start


@dataclass
class Memory:
    """The gateway's RSS over the run, in MB (MiB)."""

    start: float
    start_t: float
    end: float
    peak: float
    peak_after_warm_up: float
    idle: float
    slope_per_min: float  # second half, least squares against time
    slope_per_100k: float  # second half, against requests done
    second_half_s: float
    simulator_start: float
    simulator_end: float

    @property
    def flat(self) -> bool:
        """Growth from start to end, and the second half's trend over it, both under 5%."""
        trend = self.slope_per_min * self.second_half_s / 60
        return (
            self.end - self.start <= FLAT_GROWTH * self.start and trend <= FLAT_GROWTH * self.start
        )


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def memory(samples: list[dict[str, float]], requests: int, max_seconds: float) -> Memory:
    """RSS figures: start after warm-up, end, peak, idle after the load, the second half's slope."""
    load = [s for s in samples if "idle" not in s]
    idle = samples[-1]["gateway_rss_mb"] if "idle" in samples[-1] else load[-1]["gateway_rss_mb"]
    last = load[-1]
    warm = next(
        (s for s in load if s["done"] >= WARM_UP_SHARE * min(requests, last["done"] or 1)),
        load[0],
    )
    half = [s for s in load if s["t"] >= last["t"] / 2]
    rss = [s["gateway_rss_mb"] for s in half]
    return Memory(
        start=warm["gateway_rss_mb"],
        start_t=warm["t"],
        end=last["gateway_rss_mb"],
        peak=max(s["gateway_rss_mb"] for s in load),
        peak_after_warm_up=max(s["gateway_rss_mb"] for s in load if s["t"] >= warm["t"]),
        idle=idle,
        slope_per_min=_slope([s["t"] / 60 for s in half], rss),
        slope_per_100k=_slope([s["done"] / 100_000 for s in half], rss),
        second_half_s=last["t"] - half[0]["t"],
        simulator_start=warm["simulator_rss_mb"],
        simulator_end=last["simulator_rss_mb"],
    )


def _cpu_lines(samples: list[dict[str, float]], done: int) -> list[str]:
    load = [s for s in samples if "idle" not in s]
    first, last = load[0], load[-1]
    spent = {k: last[f"{k}_cpu_s"] - first[f"{k}_cpu_s"] for k in ("gateway", "simulator", "own")}
    busy = last["machine_busy_s"] - first["machine_busy_s"]
    others = busy - sum(spent.values())
    wall = last["t"] - first["t"] or 1.0
    avg_load = sum(s["load_avg"] for s in load) / len(load)
    per = 1e6 / max(done, 1)
    middle = min(load, key=lambda s: abs(s["t"] - last["t"] / 2))
    halves = [
        (middle["done"] - first["done"]) / (middle["t"] - first["t"] or 1.0),
        (last["done"] - middle["done"]) / (last["t"] - middle["t"] or 1.0),
    ]
    return [
        f"- Throughput: {halves[0]:,.0f} req/s in the first half, {halves[1]:,.0f} in the second",
        f"- CPU per request: gateway {spent['gateway'] * per:.0f} us, simulator "
        f"{spent['simulator'] * per:.0f} us, soak client {spent['own'] * per:.0f} us",
        f"- Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"shared; CPU used by other processes during the load: {others:.0f} s "
        f"({others / wall:.2f} cores on average); 1-min load average {avg_load:.2f} on average",
        f"- Ledger queue depth: max {max(s['queue_depth'] for s in load):.0f} records",
    ]


def _count_cells(counts: Pairs) -> str:
    return ", ".join(f"{s} {e}: {n:,}" for (s, e), n in sorted(counts.items())) or "-"


def _by_kind(facts: Facts, check: LedgerCheck) -> list[tuple[Pairs, Pairs, Pairs]]:
    """Per kind: what the client saw, what the ledger holds, and the results off expectation."""
    seen = [Pairs() for _ in KINDS]
    for (k, status, end), n in facts.load.seen.items():
        seen[k][(status, end)] += n
    booked = [Pairs() for _ in KINDS]
    for (k, status, outcome), n in (check.by_kind or Counter()).items():
        booked[k][(status, outcome)] += n
    rows = []
    for kind, mine, ledger in zip(KINDS, seen, booked, strict=True):
        off = Counter({pair: n for pair, n in mine.items() if pair not in kind.client})
        off.update({pair: n for pair, n in ledger.items() if pair not in kind.ledger})
        rows.append((mine, ledger, off))
    return rows


def off_total(facts: Facts, check: LedgerCheck) -> int:
    """Client or ledger results, over all kinds, other than those their kind calls for."""
    return sum(sum(off.values()) for _, _, off in _by_kind(facts, check))


def _kind_rows(facts: Facts, check: LedgerCheck) -> list[str]:
    rows = [
        "| kind | % | sent | client saw (status end: n) | ledger (status outcome: n) | off |",
        "|---|---|---|---|---|---|",
    ]
    for kind, (mine, ledger, off) in zip(KINDS, _by_kind(facts, check), strict=True):
        rows.append(
            f"| {kind.name} | {kind.weight:g} | {sum(mine.values()):,} | {_count_cells(mine)} "
            f"| {_count_cells(ledger)} | {sum(off.values()):,} |"
        )
    return rows


def render(
    facts: Facts, check: LedgerCheck, mem: Memory, verdicts: dict[str, bool], command: str
) -> list[str]:
    """The report's markdown lines, up to the log section."""
    load = facts.load
    statuses = Counter[int]()
    for (_, status, _), n in load.seen.items():
        statuses[status] += n
    settings = ", ".join(f"{k}={v}" for k, v in GATEWAY_ENV.items())
    return [
        "# Fault soak",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(facts.started_at))} (start of "
        f"the load); command: `{command}`; gateway code: {facts.version}",
        f"- Requests: {load.done:,} answered or abandoned of {facts.requests:,} asked "
        f"({load.connect_failures} not sent: connect failed), in {facts.duration_s:.0f} s "
        f"({load.done / facts.duration_s:,.0f} req/s) at concurrency {facts.concurrency}, "
        f"seed {facts.seed}, limit {facts.max_seconds:g} s",
        f"- Fault mix: {fault_share():.1f}% of requests inject a fault (kinds below); gateway "
        f"env {settings}, upstream max_retries default (2), SQLite ledger, batched durability; "
        f"simulator: {SIMULATORS[facts.simulator]}",
        *_cpu_lines(facts.samples, load.done),
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {name} | {'PASS' if ok else 'FAIL'} |" for name, ok in verdicts.items()),
        "",
        "## Gateway memory (RSS, MiB)",
        "",
        f"start {mem.start:.1f} (after warm-up, at {mem.start_t:.0f} s), end {mem.end:.1f}, "
        f"peak {mem.peak:.1f} ({mem.peak_after_warm_up:.1f} after warm-up), idle after the "
        f"load {mem.idle:.1f}; second-half slope {mem.slope_per_min:+.3f} MiB/min "
        f"({mem.slope_per_100k:+.3f} MiB per 100k requests) over {mem.second_half_s:.0f} s. "
        f"Simulator RSS {mem.simulator_start:.0f} to {mem.simulator_end:.0f} MiB.",
        "",
        "## Ledger",
        "",
        f"{check.rows:,} rows ({check.other_rows} not the soak's); lost {check.lost}, doubled "
        f"{check.doubled}, recorded but never sent {check.unsent_recorded}; gateway_error "
        f"{check.gateway_errors}, status 500 {check.status_500}."
        + (f" Lost, first: {', '.join(check.lost_examples)}." if check.lost_examples else ""),
        "",
        "| outcome | records |",
        "|---|---|",
        *(f"| {o} | {n:,} |" for o, n in (check.outcomes or Counter()).most_common()),
        "",
        "## Client-visible statuses",
        "",
        "| status | requests |",
        "|---|---|",
        *(f"| {s or 'none (gave up first)'} | {n:,} |" for s, n in sorted(statuses.items())),
        "",
        "## By kind (`off`: client or ledger results other than the expected one)",
        "",
        *_kind_rows(facts, check),
    ]


def render_log(levels: Counter[str], tracebacks: int, errors: list[str]) -> list[str]:
    """The gateway log's section of the report."""
    counts = ", ".join(f"{level} {n:,}" for level, n in levels.most_common()) or "no lines"
    return ["", "## Gateway log", "", f"{counts}; tracebacks: {tracebacks}.", "", *errors]
