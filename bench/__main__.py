"""`python -m bench`: run the benchmark. `--help` lists the options."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from bench import harness, report


def _names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(allowed)}")
        return names

    return parse


def parse_args(argv: list[str]) -> harness.Options:
    """Options from the command line."""
    defaults = harness.Options()
    parser = argparse.ArgumentParser(prog="python -m bench", description=harness.__doc__)
    parser.add_argument(
        "--targets",
        type=_names(harness.ALL_TARGETS),
        default=defaults.targets,
        help="comma-separated, from " + ",".join(harness.ALL_TARGETS) + " (default: all)",
    )
    parser.add_argument(
        "--scenarios",
        type=_names(harness.ALL_SCENARIOS),
        default=defaults.scenarios,
        help="comma-separated, from " + ",".join(harness.ALL_SCENARIOS) + " (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs: a smoke test")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway under load")
    parser.add_argument("--streams", type=int, help=f"concurrent streams ({defaults.streams})")
    parser.add_argument("--wrk-seconds", type=float, help=f"({defaults.wrk_seconds:g})")
    parser.add_argument("--soak-requests", type=int, help=f"({defaults.soak_requests})")
    parser.add_argument("--upstream-workers", type=int, help=f"({defaults.upstream_workers})")
    parser.add_argument(
        "--litellm-venv",
        type=Path,
        help=f"venv with litellm[proxy] installed (default: {defaults.litellm_venv})",
    )
    args = parser.parse_args(argv)
    options = harness.Options(
        targets=args.targets,
        scenarios=args.scenarios,
        profile=args.profile,
        command=harness.command_line(argv),
    )
    if args.quick:
        options = options.quick()
    overrides = {
        "streams": args.streams,
        "wrk_seconds": args.wrk_seconds,
        "soak_requests": args.soak_requests,
        "upstream_workers": args.upstream_workers,
        "litellm_venv": args.litellm_venv,
    }
    return dataclasses.replace(options, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    """Run and print the markdown report."""
    results = harness.run(parse_args(sys.argv[1:] if argv is None else argv))
    print(report.render(results))


if __name__ == "__main__":
    main()
