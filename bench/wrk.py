"""Non-streaming throughput with wrk (Debian's `wrk` package) and `bench/post.lua`.

wrk is bounded by `-d`; the soak also bounds the count per thread through the Lua script. wrk
keeps running until `-d` even after its threads stop, so the harness sizes `-d` to the count.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("post.lua")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one wrk run measured."""

    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors (connect, read, write, timeout) plus non-2xx/3xx responses
    error_detail: str  # wrk's own lines about them, if any

    def as_dict(self) -> dict[str, float | int]:
        """Plain data for the JSON results."""
        return asdict(self)


def wrk_version() -> str:
    """The version `wrk -v` prints (`debian/4.1.0-3+b2`), or why there is none."""
    if shutil.which("wrk") is None:
        return "not installed"
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    words = (done.stdout or done.stderr).split()
    return words[1] if len(words) > 1 else "unknown"


def run_wrk(
    url: str,
    body_file: Path,
    *,
    connections: int,
    seconds: float,
    token: str | None = None,
    threads: int = 1,
    max_requests: int = 0,
) -> WrkResult:
    """Run wrk against a loopback URL and parse its report."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"refusing to load anything but 127.0.0.1: {url}")
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(body_file),
        "BENCH_TOKEN": token or "",
        "BENCH_MAX_REQUESTS": str(-(-max_requests // threads) if max_requests else 0),
    }
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(SCRIPT),
        url,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=seconds + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_report(done.stdout, connections)


def parse_report(text: str, connections: int) -> WrkResult:
    """The numbers of a `wrk --latency` report."""
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    if total is None:
        raise RuntimeError(f"unexpected wrk output:\n{text}")
    seconds = float(total.group(2)) * _UNITS[total.group(3)] / 1000
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non_ok = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(non_ok.group(1)) if non_ok else 0
    detail = "; ".join(
        line.strip() for line in text.splitlines() if "errors:" in line or "Non-2xx" in line
    )
    return WrkResult(
        connections=connections,
        seconds=seconds,
        requests=int(total.group(1)),
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        p50_ms=_latency(text, "50%"),
        p99_ms=_latency(text, "99%"),
        errors=errors,
        error_detail=detail,
    )


def _latency(text: str, label: str) -> float:
    found = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    return float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")
