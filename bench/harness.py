"""Run the chosen scenarios against the chosen targets, one target at a time, and save results.

Targets run one after another against the same fake upstream, so each has the two cores to
itself apart from the load generator and the upstream. The order of scenarios per target is
start-up, latency, throughput, idle memory, streams, soak, and (with --profile) a profiled load.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from bench import procs, profile, report, scenarios, targets
from bench.targets import Target, Unavailable
from bench.wire import CHAT, RESPONSES
from bench.wrk import wrk_version

ALL_TARGETS = ("direct", "nginx", "gateway", "litellm")
ALL_SCENARIOS = ("startup", "latency", "throughput", "streams", "soak")
RESULTS_DIR = Path(__file__).with_name("results")


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything one run is told; `quick()` gives the smaller variant."""

    targets: tuple[str, ...] = ALL_TARGETS
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    upstream_workers: int = 2
    chunks: int = 50
    delay_ms: float = 20.0
    streams: int = 200
    latency_requests: int = 500
    latency_warmup: int = 100
    wrk_seconds: float = 6.0
    connections: tuple[int, ...] = (16, 64)
    soak_requests: int = 100_000
    soak_limit_s: float = 120.0
    startup_runs: int = 3
    stream_limit_s: float = 90.0
    litellm_venv: Path = Path(__file__).with_name(".venv-litellm")
    profile: bool = False
    command: str = ""

    def quick(self) -> Options:
        """Fewer requests, shorter runs: a smoke test of the whole harness."""
        return dataclasses.replace(
            self,
            streams=50,
            latency_requests=200,
            latency_warmup=30,
            wrk_seconds=2.0,
            soak_requests=10_000,
            soak_limit_s=20.0,
            startup_runs=1,
            stream_limit_s=45.0,
        )


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(options: Options) -> dict[str, Any]:
    """Run everything; return the results (also written under bench/results/)."""
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="mavera-bench-"))
    body_file = workdir / "chat.json"
    body_file.write_bytes(scenarios.CHAT_BODY)
    results: dict[str, Any] = {"meta": _meta(options), "targets": {}, "unavailable": {}}
    busy, own = procs.machine_busy_seconds(), procs.own_cpu_seconds()
    log(f"fake upstream: {options.upstream_workers} workers, work dir {workdir}")
    upstream = targets.start_upstream(
        workdir, options.upstream_workers, options.chunks, options.delay_ms
    )
    try:
        for name in options.targets:
            _check_alone(upstream, results["meta"]["warnings"], f"before {name}")
            try:
                results["targets"][name] = measure(name, upstream, workdir, body_file, options)
            except Unavailable as exc:
                log(f"{name}: not measured: {exc}")
                results["unavailable"][name] = str(exc)
        _check_alone(upstream, results["meta"]["warnings"], "at the end")
    finally:
        upstream.stop()
    duration = time.perf_counter() - began
    results["meta"]["duration_s"] = round(duration, 1)
    foreign = (procs.machine_busy_seconds() - busy) - (procs.own_cpu_seconds() - own)
    results["meta"]["foreign_cpu_pct"] = max(0.0, round(100 * foreign / duration, 1))
    save(results)
    shutil.rmtree(workdir, ignore_errors=True)
    return results


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
        "gateway": lambda: targets.start_gateway(workdir, upstream),
        "litellm": lambda: targets.start_litellm(workdir, upstream, options.litellm_venv),
    }
    return starters[name]


def start(name: str, upstream: Target, workdir: Path, options: Options) -> Target:
    """Start the target (several times for the gateway's start-up timing); keep the last one."""
    starter = _starter(name, upstream, workdir, options)
    runs = options.startup_runs if name == "gateway" and "startup" in options.scenarios else 1
    timings: list[float] = []
    for attempt in range(runs):
        target = starter()
        timings += target.startup_s
        if attempt < runs - 1:
            target.stop()
    target.startup_s = timings
    return target


def measure(
    name: str, upstream: Target, workdir: Path, body_file: Path, options: Options
) -> dict[str, Any]:
    """Every chosen scenario against one target."""
    log(f"{name}: starting")
    target = start(name, upstream, workdir, options)
    data: dict[str, Any] = {}
    try:
        if target.process is not None and "startup" in options.scenarios:
            data["startup_s"] = [round(s, 3) for s in target.startup_s]
            data["startup_median_s"] = round(statistics.median(target.startup_s), 3)
            data["startup_max_s"] = round(max(target.startup_s), 3)
            log(f"{name}: ready in {', '.join(f'{s:.3f}' for s in target.startup_s)} s")
        pids = target.pids()
        if pids:
            data["rss_ready_mb"] = round(procs.rss_mb(pids), 1)
        _load_scenarios(target, upstream, body_file, options, data)
        if name == "gateway" and options.profile:
            data["profile"] = profile_gateway(target, body_file, options)
    finally:
        target.stop()
    return data


def _load_scenarios(
    target: Target, upstream: Target, body_file: Path, options: Options, data: dict[str, Any]
) -> None:
    name = target.name
    if "latency" in options.scenarios:
        log(f"{name}: {options.latency_requests} sequential requests")
        baseline = None if name == "direct" else targets.direct(upstream)
        data["latency"] = _async(
            scenarios.sequential(
                target, options.latency_requests, options.latency_warmup, 120.0, baseline
            )
        )
    if "throughput" in options.scenarios:
        data["throughput"] = {}
        for conns in options.connections:
            log(f"{name}: wrk {conns} connections, {options.wrk_seconds:g} s")
            data["throughput"][str(conns)] = scenarios.throughput(
                target, body_file, conns, options.wrk_seconds
            )
    if target.process is not None:
        time.sleep(1.0)
        data["rss_idle_mb"] = round(procs.rss_mb(target.pids()), 1)
    if "streams" in options.scenarios:
        data["streams"] = {}
        for endpoint in (CHAT, RESPONSES):
            log(f"{name}: {options.streams} concurrent {endpoint} streams")
            data["streams"][endpoint] = _async(
                scenarios.streams(
                    target, endpoint, options.streams, options.chunks, options.stream_limit_s
                )
            )
        peaks = [s.get("peak_rss_mb") for s in data["streams"].values()]
        if all(p is not None for p in peaks):
            data["peak_rss_streams_mb"] = max(peaks)
    if "soak" in options.scenarios and name == "gateway":
        rps = data.get("throughput", {}).get("64", {}).get("rps", 1000.0)
        log(f"{name}: soak of {options.soak_requests} requests")
        data["soak"] = scenarios.soak(
            target, body_file, options.soak_requests, rps, options.soak_limit_s
        )


def profile_gateway(target: Target, body_file: Path, options: Options) -> dict[str, Any]:
    """py-spy on the gateway during a 64-connection wrk run and during the chat streams."""
    assert target.process is not None
    out: dict[str, Any] = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(exist_ok=True)
    for label in ("throughput", "streams"):
        raw = RESULTS_DIR / f"profile-{stamp}-{label}.txt"
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


def _meta(options: Options) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "warnings": [],
        "command": options.command,
        "machine": f"{_cpus()} x {cpu}, Linux {platform.release()}",
        "versions": {
            "python": platform.python_version(),
            "mavera-gateway": _gateway_version(),
            "uvicorn": importlib.metadata.version("uvicorn"),
            "fastapi": importlib.metadata.version("fastapi"),
            "litellm": targets.litellm_version(options.litellm_venv),
            "nginx": targets.nginx_version(),
            "wrk": wrk_version(),
        },
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in options.__dict__.items()
            if k != "command"
        },
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _gateway_version() -> str:
    """The package version and the last commit that touched app/, flagged if app/ has edits."""
    version = importlib.metadata.version("mavera-gateway")
    repo = str(Path(__file__).resolve().parent.parent)
    commit = _git(repo, "log", "-1", "--format=%h", "--", "app")
    if not commit:
        return version
    edited = " + uncommitted app/ edits" if _git(repo, "status", "--porcelain", "--", "app") else ""
    return f"{version} (app/ at {commit}{edited})"


def _git(repo: str, *args: str) -> str:
    done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def save(results: dict[str, Any]) -> Path:
    """Write the JSON and the markdown report under bench/results/; return the markdown path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS_DIR / f"{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    markdown = RESULTS_DIR / f"{stamp}.md"
    markdown.write_text(report.render(results))
    (RESULTS_DIR / "latest.md").write_text(markdown.read_text())
    return markdown


def command_line(argv: list[str]) -> str:
    """The exact command, for the report."""
    return shlex.join(["python", "-m", "bench", *argv])
