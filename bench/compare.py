"""Two gateway builds in one run: `gateway` (this checkout) against `gateway-base` (another venv).

A change must keep added latency and req/s within 5% of the build before it. Both builds ran
side by side (see `harness`): latency requests alternate between them one by one, wrk runs
round by round. Each fresh start of the pair (`--instances`) gives one ratio per figure:
gateway / gateway-base of that start's added latency, and the median over that start's rounds
of gateway / gateway-base in the same round for req/s. Starts are the independent repeats
(a process keeps its own small speed offset for life, so rounds within one start are not), so
the report gives the median over starts with its ~95% interval, and a verdict only with at
least MIN_STARTS starts and the whole interval on one side of the goal.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench.targets import BASELINE

Results = dict[str, Any]
LIMIT_PCT = 5.0
MIN_STARTS = 5  # [min, max] of 5 starts holds the median with 94% confidence
Ratio = tuple[float, float, float, int]  # median, low, high, starts


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def median_interval(values: list[float]) -> Ratio | None:
    """Median, its ~95% interval from order statistics, and the count (None for no values).

    For n values the interval runs from the k-th smallest to the k-th largest, k the binomial
    (normal approximation) rank; up to 7 values it is just the smallest to the largest.
    """
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, math.floor((len(ordered) - 1.96 * math.sqrt(len(ordered))) / 2))
    return statistics.median(ordered), ordered[k], ordered[-1 - k], len(ordered)


def _ratio(a: Any, b: Any) -> float | None:
    x, y = _number(a), _number(b)
    return x / y if x is not None and y else None


def rounds_by_start(new: Results, old: Results, key: str) -> Ratio | None:
    """Per start, the median over its wrk rounds of new / old; then across starts."""
    starts: dict[int, list[float]] = {}
    for a, b in zip(new.get("runs", []), old.get("runs", []), strict=False):
        ratio = _ratio(a.get(key), b.get(key))
        if ratio is not None:
            starts.setdefault(int(a.get("start", 0)), []).append(ratio)
    return median_interval([statistics.median(r) for _, r in sorted(starts.items())])


def latency_by_start(new: Results, old: Results, key: str) -> Ratio | None:
    """Per start, new / old of that start's added latency; then across starts."""
    pairs = zip(new.get("per_start", []), old.get("per_start", []), strict=False)
    ratios = (_ratio(a.get(key), b.get(key)) for a, b in pairs)
    return median_interval([r for r in ratios if r is not None and r > 0])


def _cell(ratio: Ratio | None) -> str:
    if ratio is None:
        return "n/a"
    median, low, high, count = ratio
    if count == 1:
        return f"{median:.3f}x (1 start)"
    return f"{median:.3f}x ({low:.3f}-{high:.3f}, {count} starts)"


def _verdict(ratio: Ratio | None, limit: float, at_most: bool) -> str:
    """met / missed when the whole interval is on one side of `limit`, else inconclusive."""
    if ratio is None:
        return "not measured"
    _, low, high, count = ratio
    if count < MIN_STARTS:
        return f"no verdict: needs --instances {MIN_STARTS} or more"
    inside, outside = (high <= limit, low > limit) if at_most else (low >= limit, high < limit)
    if inside:
        return "met"
    return "**missed**" if outside else "inconclusive: the noise spans the goal"


def _latency_rows(new: Results, old: Results) -> list[str]:
    limit = 1 + LIMIT_PCT / 100
    rows = []
    for q in ("p50", "p99"):
        key = f"added_{q}_ms"
        a, b = new.get("latency", {}).get(key), old.get("latency", {}).get(key)
        if _number(a) is None or _number(b) is None:
            continue
        ratio = latency_by_start(new["latency"], old["latency"], key)
        rows.append(
            f"| added latency {q} over direct (ms) | {a:.3f} | {b:.3f} | {_cell(ratio)} "
            f"| <= {limit:.2f}x | {_verdict(ratio, limit, at_most=True)} |"
        )
    return rows


def _throughput_rows(new: Results, old: Results) -> list[str]:
    rows, floor = [], 1 - LIMIT_PCT / 100
    for conns, runs in new.get("throughput", {}).items():
        base = old.get("throughput", {}).get(conns)
        if base is None:
            continue
        rps = rounds_by_start(runs, base, "rps")
        cpu = rounds_by_start(runs, base, "cpu_us_per_request")
        settled = rounds_by_start(runs, base, "cpu_us_per_request_settled")
        rows += [
            f"| req/s, {conns} conns ({len(runs['runs'])} rounds) | {runs['rps']:,.0f} "
            f"| {base['rps']:,.0f} | {_cell(rps)} | >= {floor:.2f}x "
            f"| {_verdict(rps, floor, at_most=False)} |",
            f"| CPU per request, {conns} conns (us) | {_cpu(runs)} | {_cpu(base)} "
            f"| {_cell(cpu)} | - | - |",
        ]
        if settled is not None:
            key = "cpu_us_per_request_settled"
            rows.append(
                f"| CPU per request with the work deferred past wrk, {conns} conns (us) "
                f"| {_cpu(runs, key)} | {_cpu(base, key)} | {_cell(settled)} | - | - |"
            )
    return rows


def _cpu(runs: Results, key: str = "cpu_us_per_request") -> str:
    values = [float(r[key]) for r in runs["runs"] if key in r]
    return f"{statistics.median(values):.0f}" if values else "n/a"


def _foreign(targets: list[Results]) -> list[str]:
    values = [
        float(run["foreign_cpu_pct"])
        for target in targets
        for runs in target.get("throughput", {}).values()
        for run in runs.get("runs", [])
        if _number(run.get("foreign_cpu_pct")) is not None
    ]
    if not values:
        return []
    return [
        "",
        f"CPU the machine spent outside the benchmark during these wrk rounds: median "
        f"{statistics.median(values):.0f}%, max {max(values):.0f}% of one core.",
    ]


def comparison(targets: dict[str, Results]) -> list[str]:
    """The report's lines comparing `gateway` with `gateway-base`; none unless both ran."""
    new, old = targets.get("gateway"), targets.get(BASELINE)
    if new is None or old is None:
        return []
    return [
        "",
        f"gateway against {BASELINE} (--baseline-venv), measured side by side. Figures: all "
        f"starts pooled (req/s: the median round). Ratio gateway / {BASELINE}: the median over "
        f"starts of each start's ratio, with its interval (~95% from {MIN_STARTS} starts on):",
        "",
        f"| metric | gateway | {BASELINE} | gateway / {BASELINE} | goal | verdict |",
        "|---|---|---|---|---|---|",
        *_latency_rows(new, old),
        *_throughput_rows(new, old),
        *_foreign([new, old]),
    ]
