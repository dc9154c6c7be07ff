"""CPU of SSEScanner.feed on the worst streams an upstream can send, fed in 4 KiB chunks.

    python -m bench.sse_scanner                       # the scanner in app/sse.py
    python -m bench.sse_scanner --module OLD.py       # another version, e.g. the quadratic one:
        git show 752b014:app/sse.py > /tmp/old_sse.py  (it has no limit: measured without)

Cases: one event of exactly 1 MiB (the default `max_event_bytes`, so it is accepted), one of
3 MiB, and an 8 MiB line with no newline, each without a limit and with the 1 MiB limit (where
the scanner refuses the event and stops, as the relay then does). CPU time of this process.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

CHUNK = 4096
MIB = 1 << 20


def load(path: str | None) -> ModuleType:
    """app.sse, or the module at `path` loaded under a name of its own."""
    if path is None:
        import app.sse

        return app.sse
    spec = importlib.util.spec_from_file_location("sse_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def event_of(size: int) -> bytes:
    """One `data:` event of exactly `size` bytes, terminator included."""
    return b"data: " + b"x" * (size - 8) + b"\n\n"


def cpu_seconds(make: Callable[[], Any], payload: bytes) -> tuple[float, str]:
    """CPU to feed `payload` in CHUNK-byte pieces; and whether it was all taken or refused."""
    scanner = make()
    start = time.process_time()
    for offset in range(0, len(payload), CHUNK):
        try:
            scanner.feed(payload[offset : offset + CHUNK])
        except Exception as exc:  # EventTooLarge, from a scanner with a limit
            return time.process_time() - start, f"refused ({type(exc).__name__})"
    return time.process_time() - start, "taken"


def main(argv: list[str] | None = None) -> None:
    """Print one line per case and limit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", help="path of an sse.py to measure instead of app/sse.py")
    args = parser.parse_args(argv)
    module = load(args.module)
    cases = {
        "one 1 MiB event": event_of(MIB),
        "one 3 MiB event": event_of(3 * MIB),
        "8 MiB line, no newline": b"data: " + b"x" * (8 * MIB),
    }
    limits: list[int | None] = [None]
    if hasattr(module, "EventTooLarge"):
        limits.append(MIB)
    for name, payload in cases.items():
        for limit in limits:
            make = functools.partial(module.SSEScanner, *([] if limit is None else [limit]))
            seconds, outcome = cpu_seconds(make, payload)
            label = "no limit" if limit is None else "limit 1 MiB"
            print(f"{name:24} {label:12} {seconds * 1000:10.1f} ms CPU  {outcome}")


if __name__ == "__main__":
    main()
