"""What a run records about itself: the machine, the versions of everything measured, the options.

The report prints this above the tables, so a result can be traced to the code that produced it;
`save` writes the results under bench/results/.
With a baseline build (`--baseline-venv`) its version and the place its `app` package is imported
from are recorded too: that shows the two gateways really are two different installs.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report, targets
from bench.wrk import wrk_version

RESULTS_DIR = Path(__file__).with_name("results")


def describe(options: Any) -> dict[str, Any]:
    """The `meta` section of the results: date, machine, versions, options (a `harness.Options`)."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    versions = {
        "python": platform.python_version(),
        "mavera-gateway": gateway_version(),
        "uvicorn": importlib.metadata.version("uvicorn"),
        "fastapi": importlib.metadata.version("fastapi"),
        "litellm": targets.litellm_version(options.litellm_venv),
        "nginx": targets.nginx_version(),
        "wrk": wrk_version(),
    }
    warnings = []
    if options.baseline_venv is not None:
        versions[f"{targets.BASELINE} (baseline)"] = targets.baseline_version(options.baseline_venv)
        warnings += _package_differences(options.baseline_venv)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "warnings": warnings,
        "command": options.command,
        "machine": f"{len(os.sched_getaffinity(0))} x {cpu}, Linux {platform.release()}",
        "versions": versions,
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in options.__dict__.items()
            if k != "command"
        },
    }


def _package_differences(venv: Path) -> list[str]:
    """A warning when the two gateways run on different third-party packages.

    Then the comparison measures those too: anyio, for one, takes another code path when
    sniffio is installed. Build the baseline from the same packages (bench/README.md).
    """
    ours, theirs = targets.packages(Path(sys.executable)), targets.packages(venv / "bin" / "python")
    if ours == theirs:
        return []
    only = [f"only gateway's: {' '.join(sorted(ours - theirs)) or 'none'}"]
    only.append(f"only {targets.BASELINE}'s: {' '.join(sorted(theirs - ours)) or 'none'}")
    return [f"the two gateways' venvs hold different packages ({'; '.join(only)})"]


def gateway_version() -> str:
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


def command_line(argv: list[str]) -> str:
    """The exact command, for the report."""
    return shlex.join(["python", "-m", "bench", *argv])


def save(results: dict[str, Any]) -> Path:
    """Write the JSON and the markdown report under bench/results/; return the markdown path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS_DIR / f"{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    markdown = RESULTS_DIR / f"{stamp}.md"
    markdown.write_text(report.render(results))
    (RESULTS_DIR / "latest.md").write_text(markdown.read_text())
    return markdown
