"""What one run of the benchmark is told (`python -m bench`'s options, as `harness` takes them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.setups import POSTGRES_URL, REDIS_URL, Setup
from bench.targets import BASELINE

ALL_TARGETS = ("direct", "nginx", "gateway", "litellm")  # and BASELINE, with --baseline-venv
ALL_SCENARIOS = ("startup", "latency", "throughput", "streams", "soak")


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
    baseline_venv: Path | None = None  # another build's venv: measured as BASELINE
    baseline_durability: str | None = None  # e.g. "strict": BASELINE with that ledger durability
    rounds: int = 1  # wrk runs per target and connection count (the median is reported)
    instances: int = 1  # fresh starts of each target; latency and wrk rounds pooled over them
    profile: bool = False
    # gateway: a keyed client with budgets, rpm, max_concurrent and gateway_rpm on (none
    # refuses); BASELINE: the same client keyed, no limits
    limits: bool = False
    baseline_limits: bool = False  # BASELINE counts every limit too (compare setups, not limits)
    # each side's ledger backend, counters and workers (`bench.setups`)
    ledger: str = "sqlite"
    counters: str | None = None  # None: as the environment says
    workers: int = 1
    baseline_ledger: str = "sqlite"
    baseline_counters: str | None = None
    baseline_workers: int = 1
    postgres_url: str = POSTGRES_URL
    redis_url: str = REDIS_URL
    command: str = ""

    def setup(self, name: str) -> Setup:
        """The ledger, counters and workers of `gateway` or BASELINE."""
        side = "baseline_" if name == BASELINE else ""
        return Setup(
            getattr(self, f"{side}ledger"),
            getattr(self, f"{side}counters"),
            getattr(self, f"{side}workers"),
            self.postgres_url,
            self.redis_url,
        )

    def again(self) -> Options:
        """For the 2nd and later start of a target: only the scenarios that are pooled."""
        kept = tuple(s for s in self.scenarios if s in ("latency", "throughput"))
        return dataclasses.replace(self, scenarios=kept, profile=False)

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
