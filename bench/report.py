"""Results as markdown: one side-by-side table, ratios, and the issue's targets met or missed."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from bench import compare, shares
from bench.targets import BASELINE
from bench.wire import CHAT, RESPONSES

ORDER = ("direct", "nginx", "gateway", BASELINE, "litellm")
Results = dict[str, Any]


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _fmt(value: Any, digits: int = 2) -> str:
    number = _number(value)
    if number is None:
        return "n/a" if value is None else str(value)
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    return f"{number:.{digits}f}"


def _ratio(a: Any, b: Any) -> str:
    x, y = _number(a), _number(b)
    return f"{x / y:.2f}x" if x is not None and y else "n/a"


def _minus(a: Any, b: Any) -> float | None:
    x, y = _number(a), _number(b)
    return None if x is None or y is None else x - y


Row = tuple[str, Callable[[str], str]]


def _added(targets: dict[str, Results], name: str, q: str) -> float | None:
    """Latency over direct: the paired (interleaved) measurement if there is one."""
    latency = _get(targets.get(name), "latency")
    paired = _number(_get(latency, f"added_{q}_ms"))
    if paired is not None:
        return paired
    return _minus(_get(latency, f"{q}_ms"), _get(targets.get("direct"), "latency", f"{q}_ms"))


def _rows(targets: dict[str, Results]) -> list[Row]:
    def value(*keys: str, digits: int = 2) -> Callable[[str], str]:
        return lambda name: _fmt(_get(targets.get(name), *keys), digits)

    def added(q: str) -> Callable[[str], str]:
        return lambda name: "-" if name == "direct" else _fmt(_added(targets, name, q), 3)

    def ratio(keys: tuple[str, ...], base: str) -> Callable[[str], str]:
        return lambda name: _ratio(_get(targets.get(name), *keys), _get(targets.get(base), *keys))

    def pair(*keys: tuple[str, ...], digits: int = 1) -> Callable[[str], str]:
        return lambda name: " / ".join(_fmt(_get(targets.get(name), *k), digits) for k in keys)

    rows: list[Row] = [
        ("latency c=1 p50 (ms)", value("latency", "p50_ms", digits=3)),
        ("latency c=1 p99 (ms)", value("latency", "p99_ms", digits=3)),
        (
            "  direct, interleaved with it: p50 / p99 (ms)",
            pair(("latency", "baseline_p50_ms"), ("latency", "baseline_p99_ms"), digits=3),
        ),
        ("added p50 over direct (ms)", added("p50")),
        ("added p99 over direct (ms)", added("p99")),
    ]
    for conns in ("16", "64"):
        keys = ("throughput", conns, "rps")
        rows += [
            (f"non-stream req/s, {conns} conns", value(*keys, digits=0)),
            (f"  vs direct, {conns} conns", ratio(keys, "direct")),
            (f"  vs litellm, {conns} conns", ratio(keys, "litellm")),
            (f"  wrk p99 (ms), {conns} conns", value("throughput", conns, "p99_ms")),
        ]
    rows.append(
        (
            "target CPU per request, 64 conns (us)",
            value("throughput", "64", "cpu_us_per_request", digits=0),
        )
    )
    for endpoint, label in ((CHAT, "chat"), (RESPONSES, "responses")):
        base = ("streams", endpoint)
        rows += [
            (
                f"{label} streams: TTFB p50 / p99 (ms)",
                pair((*base, "ttfb_p50_ms"), (*base, "ttfb_p99_ms")),
            ),
            (
                f"{label} streams: total p50 / p99 (ms)",
                pair((*base, "total_p50_ms"), (*base, "total_p99_ms")),
            ),
            (
                f"{label} streams: incomplete / not intact",
                pair((*base, "incomplete"), (*base, "not_intact"), digits=0),
            ),
            (
                f"{label} streams: frames merged / split",
                pair((*base, "frames_merged"), (*base, "frames_split"), digits=0),
            ),
            (f"{label} streams: target CPU per stream (ms)", value(*base, "cpu_ms_per_stream")),
        ]
    rows += [
        ("start-up to ready, median (s)", value("startup_median_s", digits=3)),
        ("RSS at ready / idle after load (MB)", pair(("rss_ready_mb",), ("rss_idle_mb",))),
        ("peak RSS, 200 streams (MB)", value("peak_rss_streams_mb", digits=1)),
        (
            "soak: requests / RSS growth (%)",
            pair(("soak", "requests"), ("soak", "growth_pct"), digits=2),
        ),
    ]
    return rows


def results_table(targets: dict[str, Results]) -> str:
    """The side-by-side table of every measured target."""
    names = [n for n in ORDER if n in targets]
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, cell in _rows(targets):
        cells = [cell(n) for n in names]
        if all(not c.replace("n/a", "").strip(" -/") for c in cells):
            continue  # a scenario this run did not include
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


Check = tuple[str, str, str, bool | None]
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    "==": operator.eq,
}


def _check(name: str, measured: float | None, op: str, limit: float, unit: str = "") -> Check:
    goal = f"{op} {limit:g}{unit}"
    if measured is None:
        return (name, goal, "not measured", None)
    shown = f"{measured:.0f}" if op == "==" else f"{_fmt(measured, 3)}{unit}"
    return (name, goal, shown, _OPS[op](measured, limit))


def _share(part: Any, whole: Any, scale: float = 1.0) -> float | None:
    x, y = _number(part), _number(whole)
    return scale * x / y if x is not None and y else None


def target_checks(targets: dict[str, Results]) -> list[Check]:
    """(criterion, goal, measured, met) for each of the issue's targets; met None = not measured."""
    gw, direct = targets.get("gateway"), targets.get("direct")
    checks = [
        _check(f"added latency {q}, c=1", _added(targets, "gateway", q), "<=", limit, " ms")
        for q, limit in (("p50", 0.5), ("p99", 1.5))
    ]
    for conns in ("16", "64"):
        rps = _get(gw, "throughput", conns, "rps")
        lite = _get(targets.get("litellm"), "throughput", conns, "rps")
        ngx = _get(targets.get("nginx"), "throughput", conns, "rps")
        checks.append(_check(f"req/s vs litellm, {conns} conns", _share(rps, lite), ">=", 25, "x"))
        checks.append(
            _check(f"req/s vs nginx, {conns} conns", _share(rps, ngx, 100), ">=", 15, "%")
        )
    for endpoint in (CHAT, RESPONSES):
        s, d = _get(gw, "streams", endpoint), _get(direct, "streams", endpoint)
        ttfb = _minus(_get(s, "ttfb_p99_ms"), _get(d, "ttfb_p99_ms"))
        over = _share(
            _minus(_get(s, "total_p50_ms"), _get(d, "total_p50_ms")), _get(d, "total_p50_ms"), 100
        )
        checks += [
            _check(f"{endpoint} streams: TTFB p99 over direct", ttfb, "<=", 5, " ms"),
            _check(f"{endpoint} streams: total p50 over direct", over, "<=", 1, "%"),
            _check(f"{endpoint} streams: incomplete", _number(_get(s, "incomplete")), "==", 0),
            _check(
                f"{endpoint} streams: events merged/split vs direct",
                _number(_get(s, "not_intact")),
                "==",
                0,
            ),
        ]
    return checks + [
        _check("RSS idle", _number(_get(gw, "rss_idle_mb")), "<=", 80, " MB"),
        _check(
            "peak RSS at 200 streams", _number(_get(gw, "peak_rss_streams_mb")), "<=", 150, " MB"
        ),
        _check("RSS growth across soak", _number(_get(gw, "soak", "growth_pct")), "<", 5, "%"),
        _check(
            "start-up to ready (slowest run)", _number(_get(gw, "startup_max_s")), "<=", 1, " s"
        ),
    ]


def checks_table(targets: dict[str, Results]) -> str:
    """The issue's targets for the gateway, met or missed."""
    lines = ["| target | goal | measured | verdict |", "|---|---|---|---|"]
    for name, goal, measured, met in target_checks(targets):
        verdict = "not measured" if met is None else ("met" if met else "**missed**")
        lines.append(f"| {name} | {goal} | {measured} | {verdict} |")
    return "\n".join(lines)


def _profile(profile: Any, top: int = 8) -> list[str]:
    """The gateway's hot spots, if the run was profiled."""
    if not isinstance(profile, dict):
        return []
    lines = ["", "Gateway profile (py-spy --gil; share of GIL-holding samples, self time):"]
    for label, spots in profile.items():
        if not spots:
            continue
        modules = ", ".join(f"{m} {p}%" for m, p in spots.get("self_by_module", [])[:top])
        functions = ", ".join(f"{f} {p}%" for f, p in spots["self"][:top])
        lines.append(f"- {label}, {spots['samples']} samples, by file: {modules}")
        lines.append(f"- {label}, by function: {functions}")
    return lines


def render(results: Results) -> str:
    """The whole markdown report of one run."""
    meta = results["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    parts = [f"**Warning: {w}.**" for w in meta.get("warnings", [])]
    parts += [
        f"Run {meta['date']} on {meta['machine']}, {meta['duration_s']:.0f} s in all; "
        f"CPU not spent by the benchmark's own processes (others, interrupts): "
        f"{meta.get('foreign_cpu_pct', 'n/a')}% of one core.",
        f"Versions: {versions}.",
        f"Command: `{meta['command']}`",
        "",
        results_table(results["targets"]),
        "",
        checks_table(results["targets"]),
        *compare.comparison(results["targets"]),
        *shares.table(results["targets"]),
    ]
    parts += _profile(_get(results["targets"], "gateway", "profile"))
    for name, reason in results.get("unavailable", {}).items():
        parts.append(f"\n`{name}` was not measured: {reason.splitlines()[0]}")
    return "\n".join(parts) + "\n"
