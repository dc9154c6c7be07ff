"""Run the chosen scenarios against the chosen targets, one target at a time, and save results.

Targets run one after another against the same fake upstream, so each has the two cores to
itself apart from the load generator and the upstream. The order of scenarios per target is
start-up, latency, throughput, idle memory, streams, soak, and (with --profile) a profiled load.
Two gateway builds (`gateway` and `gateway-base`, from --baseline-venv) run side by side instead,
taking turns in every scenario, so machine drift reaches both alike; `--instances` starts them
(any target) several times afresh and pools the latency and wrk rounds (`pooling`).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from bench import gateways, meta, pooling, procs, profile, scenarios, targets
from bench.options import Options
from bench.targets import BASELINE, Target, Unavailable
from bench.wire import CHAT, RESPONSES

GATEWAYS = ("gateway", BASELINE)


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(options: Options) -> dict[str, Any]:
    """Run everything; return the results (also written under bench/results/)."""
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="mavera-bench-"))
    body_file = workdir / "chat.json"
    body_file.write_bytes(scenarios.CHAT_BODY)
    results: dict[str, Any] = {"meta": meta.describe(options), "targets": {}, "unavailable": {}}
    busy, own = procs.machine_busy_seconds(), procs.own_cpu_seconds()
    log(f"fake upstream: {options.upstream_workers} workers, work dir {workdir}")
    upstream = targets.start_upstream(
        workdir, options.upstream_workers, options.chunks, options.delay_ms
    )
    try:
        for group in groups(options.targets):
            _check_alone(upstream, results["meta"]["warnings"], f"before {', '.join(group)}")
            for instance in range(options.instances):
                again = options if instance == 0 else options.again()
                measure(group, upstream, workdir, body_file, again, results)
        _check_alone(upstream, results["meta"]["warnings"], "at the end")
    finally:
        upstream.stop()
    duration = time.perf_counter() - began
    results["meta"]["duration_s"] = round(duration, 1)
    foreign = (procs.machine_busy_seconds() - busy) - (procs.own_cpu_seconds() - own)
    results["meta"]["foreign_cpu_pct"] = max(0.0, round(100 * foreign / duration, 1))
    meta.save(results)
    shutil.rmtree(workdir, ignore_errors=True)
    return results


def groups(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    """One target at a time, except the two gateway builds: those run together, interleaved."""
    if "gateway" not in names or BASELINE not in names:
        return [(name,) for name in names]
    return [("gateway", BASELINE) if n == "gateway" else (n,) for n in names if n != BASELINE]


def _check_alone(upstream: Target, warnings: list[str], when: str) -> None:
    """Note another benchmark on the machine: it shares the 2 cores and skews every number."""
    others = procs.others_running("bench.fake_upstream", upstream.pids())
    if others:
        warning = f"another benchmark was running {when} (pids {others}): numbers are skewed"
        log(warning)
        warnings.append(warning)


def _starter(name: str, upstream: Target, workdir: Path, options: Options) -> Callable[[], Target]:
    starters: dict[str, Callable[[], Target]] = {
        "direct": lambda: targets.direct(upstream),
        "nginx": lambda: targets.start_nginx(workdir, upstream),
        "gateway": lambda: gateways.start_gateway(
            workdir,
            upstream,
            client="limits" if options.limits else None,
            setup=options.setup("gateway"),
        ),
        BASELINE: lambda: gateways.start_gateway(
            workdir,
            upstream,
            BASELINE,
            targets.baseline_command(options.baseline_venv),
            durability=options.baseline_durability,
            client=_baseline_client(options),
            setup=options.setup(BASELINE),
        ),
        "litellm": lambda: targets.start_litellm(workdir, upstream, options.litellm_venv),
    }
    return starters[name]


def _baseline_client(options: Options) -> str | None:
    if options.baseline_limits:
        return "limits"
    return "keyed" if options.limits else None


def start(name: str, upstream: Target, workdir: Path, options: Options) -> Target:
    """Start the target (several times for the gateway's start-up timing); keep the last one."""
    starter = _starter(name, upstream, workdir, options)
    runs = options.startup_runs if name in GATEWAYS and "startup" in options.scenarios else 1
    timings: list[float] = []
    for attempt in range(runs):
        target = starter()
        timings += target.startup_s
        if attempt < runs - 1:
            target.stop()
    target.startup_s = timings
    return target


def measure(
    group: tuple[str, ...],
    upstream: Target,
    workdir: Path,
    body_file: Path,
    options: Options,
    results: dict[str, Any],
) -> None:
    """Every chosen scenario against a group of targets (all running at once) into `results`."""
    started: list[Target] = []
    try:
        for name in group:
            log(f"{name}: starting")
            try:
                started.append(start(name, upstream, workdir, options))
            except Unavailable as exc:
                log(f"{name}: not measured: {exc}")
                results["unavailable"][name] = str(exc)
        data = {target.name: _ready(target, options) for target in started}
        if started:
            _load_scenarios(started, upstream, body_file, options, data)
        if "gateway" in data and options.profile:
            data["gateway"]["profile"] = profile_gateway(started[0], body_file, options)
        for name, figures in data.items():
            results["targets"][name] = pooling.pool(results["targets"].get(name), figures)
    finally:
        for target in started:
            target.stop()


def _ready(target: Target, options: Options) -> dict[str, Any]:
    """Start-up timings and RSS at ready."""
    data: dict[str, Any] = {}
    if target.name in GATEWAYS:
        data["setup"] = options.setup(target.name).label()
    if target.process is not None and "startup" in options.scenarios:
        data["startup_s"] = [round(s, 3) for s in target.startup_s]
        data["startup_median_s"] = round(statistics.median(target.startup_s), 3)
        data["startup_max_s"] = round(max(target.startup_s), 3)
        log(f"{target.name}: ready in {', '.join(f'{s:.3f}' for s in target.startup_s)} s")
    pids = target.pids()
    if pids:
        data["rss_ready_mb"] = round(procs.rss_mb(pids), 1)
    return data


def _load_scenarios(
    group: list[Target],
    upstream: Target,
    body_file: Path,
    options: Options,
    data: dict[str, dict[str, Any]],
) -> None:
    """The load scenarios; the targets of a group take turns, their order swapped each time."""
    names = ", ".join(t.name for t in group)
    if "latency" in options.scenarios:
        log(f"{names}: {options.latency_requests} sequential requests")
        baseline = None if group[0].name == "direct" else targets.direct(upstream)
        latencies = _async(
            scenarios.sequential(
                group, options.latency_requests, options.latency_warmup, 120.0, baseline
            )
        )
        for target, latency in zip(group, latencies, strict=True):
            data[target.name]["latency"] = latency
    for conns in options.connections if "throughput" in options.scenarios else ():
        log(f"{names}: wrk {conns} connections, {options.rounds} x {options.wrk_seconds:g} s")
        runs = scenarios.throughput_rounds(
            group, upstream, body_file, conns, options.wrk_seconds, options.rounds
        )
        for target in group:
            summary = pooling.rounds_summary(runs[target.name])
            data[target.name].setdefault("throughput", {})[str(conns)] = summary
    if any(target.process is not None for target in group):
        time.sleep(1.0)
    for target in group:
        if target.process is not None:
            data[target.name]["rss_idle_mb"] = round(procs.rss_mb(target.pids()), 1)
    if "streams" in options.scenarios:
        for index, endpoint in enumerate((CHAT, RESPONSES)):
            for target in group if index % 2 == 0 else group[::-1]:
                log(f"{target.name}: {options.streams} concurrent {endpoint} streams")
                data[target.name].setdefault("streams", {})[endpoint] = _async(
                    scenarios.streams(
                        target,
                        endpoint,
                        options.streams,
                        options.chunks,
                        options.stream_limit_s,
                        tuple(upstream.pids()),
                    )
                )
        for target in group:
            peaks = [s.get("peak_rss_mb") for s in data[target.name]["streams"].values()]
            if all(p is not None for p in peaks):
                data[target.name]["peak_rss_streams_mb"] = max(peaks)
    for target in group if "soak" in options.scenarios else []:
        if target.name in GATEWAYS:
            figures = data[target.name]
            rps = figures.get("throughput", {}).get("64", {}).get("rps", 1000.0)
            log(f"{target.name}: soak of {options.soak_requests} requests")
            figures["soak"] = scenarios.soak(
                target, body_file, options.soak_requests, rps, options.soak_limit_s
            )


def profile_gateway(target: Target, body_file: Path, options: Options) -> dict[str, Any]:
    """py-spy on the gateway during a 64-connection wrk run and during the chat streams."""
    assert target.process is not None
    out: dict[str, Any] = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta.RESULTS_DIR.mkdir(exist_ok=True)
    for label in ("throughput", "streams"):
        raw = meta.RESULTS_DIR / f"profile-{stamp}-{label}.txt"
        seconds = options.wrk_seconds if label == "throughput" else 3.0
        log(f"gateway: profiling {label} with py-spy -> {raw}")
        spy = profile.start(target.process.pid, raw, seconds)
        time.sleep(0.5)  # let py-spy attach before the load starts
        if label == "throughput":
            scenarios.throughput(target, body_file, 64, seconds)
        else:
            _async(scenarios.streams(target, CHAT, options.streams, options.chunks, 60.0))
        spy.wait(timeout=seconds + 60)
        out[label] = {"file": raw.name, **profile.hot_spots(raw)} if raw.exists() else {}
    return out


def _async(coroutine: Any) -> Any:
    return uvloop.run(coroutine)
