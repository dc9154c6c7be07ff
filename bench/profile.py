"""Where the gateway's CPU time goes: py-spy attached during a load, folded into hot spots.

py-spy writes collapsed stacks (`frame;frame;frame count`); `hot_spots` totals them per function
(file and function, line numbers dropped): `self` counts samples where the function was running
itself (`self_by_module`: the same per source file), `total` samples where it was anywhere on
the stack; `worker_threads_pct` is the share spent outside the event loop's thread (the ledger
writer's `to_thread` calls). Only samples of the thread holding the GIL are kept (`--gil`): a
thread waiting for the GIL, or the loop waiting in epoll, is not busy, so the percentages are
shares of the Python work the process did.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")
RATE_HZ = 200


def py_spy() -> str | None:
    """The py-spy binary beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Attach py-spy to `pid` for `seconds`, writing collapsed stacks to `output`."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    command = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    command += ["--rate", str(RATE_HZ), "--gil", "--format", "raw", "--nonblocking"]
    command += ["-o", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _function(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)`, with site-packages paths shortened."""
    frame = _LINE.sub(")", frame)
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where.removeprefix('/work/main/')})"


def _module(function: str) -> str:
    """`name (path/file.py)` -> `path/file.py`."""
    return function.rpartition(" (")[2].rstrip(")")


def hot_spots(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """The functions with the most self and inclusive samples, as percentages of all samples."""
    self_samples: Counter[str] = Counter()
    module_samples: Counter[str] = Counter()
    total_samples: Counter[str] = Counter()
    samples = in_threads = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _function(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        samples += count
        in_threads += count if frames[0].startswith("Thread._bootstrap ") else 0
        self_samples[frames[-1]] += count
        module_samples[_module(frames[-1])] += count
        for function in set(frames):
            total_samples[function] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / samples, 1)) for f, n in counter.most_common(top)]

    return {
        "samples": samples,
        "worker_threads_pct": round(100 * in_threads / samples, 1) if samples else 0.0,
        "self": share(self_samples),
        "self_by_module": share(module_samples),
        "total": share(total_samples),
    }
