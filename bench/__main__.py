"""`python -m bench`: run the benchmark. `--help` lists the options."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import harness, meta, report
from bench.options import ALL_SCENARIOS, ALL_TARGETS, Options
from bench.setups import COUNTERS, LEDGERS, choice
from bench.targets import BASELINE


def _names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(allowed)}")
        return names

    return parse


def _with_baseline(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` with BASELINE right after `gateway` (at the end if there is no `gateway`)."""
    if BASELINE in names:
        return names
    if "gateway" not in names:
        return (*names, BASELINE)
    at = names.index("gateway") + 1
    return (*names[:at], BASELINE, *names[at:])


# Options that override a default of `Options` (the field is the flag's name).
_OVERRIDES: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("--streams", int, "concurrent streams"),
    ("--latency-requests", int, "measured requests at c=1"),
    ("--wrk-seconds", float, "seconds per wrk run"),
    ("--soak-requests", int, "soak length"),
    ("--upstream-workers", int, "fake upstream processes"),
    ("--litellm-venv", Path, "venv with litellm[proxy] installed"),
    ("--baseline-venv", Path, f"also measure its mavera-gateway as {BASELINE}, beside gateway"),
    ("--rounds", int, "wrk runs per target and connection count, the median reported"),
    ("--instances", int, "fresh starts of each target; latency and wrk rounds pooled"),
    ("--baseline-durability", str, f"[ledger] durability of {BASELINE} (batched or strict)"),
    ("--ledger", choice(LEDGERS), "gateway's ledger: a new SQLite file or PostgreSQL database"),
    ("--counters", choice(COUNTERS), "where gateway counts limits (None: as the env says)"),
    ("--workers", int, "gateway's `serve --workers`"),
    ("--baseline-ledger", choice(LEDGERS), f"{BASELINE}'s ledger"),
    ("--baseline-counters", choice(COUNTERS), f"{BASELINE}'s counters"),
    ("--baseline-workers", int, f"{BASELINE}'s `serve --workers`"),
    ("--postgres-url", str, "server for --ledger postgres (a database per start, dropped)"),
    ("--redis-url", str, "Redis for --counters redis (a key prefix per start, deleted)"),
)


def _parser(defaults: Options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=harness.__doc__)
    parser.add_argument(
        "--targets",
        type=_names((*ALL_TARGETS, BASELINE)),
        default=defaults.targets,
        help="comma-separated, from " + ",".join(ALL_TARGETS) + " (default: all)",
    )
    parser.add_argument(
        "--scenarios",
        type=_names(ALL_SCENARIOS),
        default=defaults.scenarios,
        help="comma-separated, from " + ",".join(ALL_SCENARIOS) + " (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs: a smoke test")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway under load")
    parser.add_argument(
        "--limits",
        action="store_true",
        help="load as a keyed client; gateway with budgets, rpm, max_concurrent and gateway_rpm "
        f"on (too large to refuse), {BASELINE} with none (give --baseline-venv)",
    )
    parser.add_argument(
        "--baseline-limits",
        action="store_true",
        help=f"{BASELINE} counts every limit too, as gateway does with --limits (to compare "
        "where the counters live, not whether they count)",
    )
    for flag, kind, text in _OVERRIDES:
        default = getattr(defaults, flag[2:].replace("-", "_"))
        parser.add_argument(flag, type=kind, help=f"{text} (default: {default})")
    return parser


def parse_args(argv: list[str]) -> Options:
    """Options from the command line."""
    args = _parser(Options()).parse_args(argv)
    options = Options(
        targets=_with_baseline(args.targets) if args.baseline_venv else args.targets,
        scenarios=args.scenarios,
        profile=args.profile,
        limits=args.limits,
        baseline_limits=args.baseline_limits,
        command=meta.command_line(argv),
    )
    if args.quick:
        options = options.quick()
    fields = (flag[2:].replace("-", "_") for flag, _, _ in _OVERRIDES)
    overrides = {field: getattr(args, field) for field in fields}
    return dataclasses.replace(options, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    """Run and print the markdown report."""
    results = harness.run(parse_args(sys.argv[1:] if argv is None else argv))
    print(report.render(results))


if __name__ == "__main__":
    main()
