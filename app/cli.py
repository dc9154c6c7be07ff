"""The `mavera-gateway` command: parse arguments, then hand off to a typed function."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Any

from app import cli_keys
from app.cli_ledger import LedgerMissing, with_ledger
from app.clients import InvalidClientSpec
from app.config import ConfigError, Settings, load_settings
from app.errors import GatewayError
from app.key_admin import DeclaredInConfig, NoActiveKey
from app.ledger.protocol import KeyExists, Ledger, LedgerUnavailable
from app.reconcile import UpstreamRefused, reconcile
from app.reconcile import render as render_reconciliation
from app.reports import GROUPS, footnote, parse_time, render, summarize
from app.runner import StartupRefused, serve, simulate
from app.settings_view import effective_config_toml
from app.simulator import SimScript
from app.upstream import Upstream


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mavera-gateway", description="OpenAI-compatible gateway in front of the Mavera API."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    _serve_parser(commands)

    _simulate_parser(commands)

    check_cmd = commands.add_parser("check-config", help="validate and print the effective config")
    _config_option(check_cmd)

    cli_keys.add_commands(commands, _config_option)

    usage_cmd = commands.add_parser("usage", help="report credit usage from the ledger")
    usage_cmd.add_argument("--since", default="24h", help="30m, 24h, 7d, or a date (default 24h)")
    usage_cmd.add_argument("--until", help="end of the period (default now)")
    usage_cmd.add_argument("--by", choices=list(GROUPS), default="client")
    usage_cmd.add_argument("--format", choices=["table", "json", "csv"], default="table")
    _config_option(usage_cmd)

    reconcile_cmd = commands.add_parser(
        "reconcile", help="the ledger's credits for Mavera's billing period next to Mavera's bill"
    )
    reconcile_cmd.add_argument("--format", choices=["table", "json"], default="table")
    _config_option(reconcile_cmd)
    return parser


def _simulate_parser(commands: Any) -> None:
    sim_cmd = commands.add_parser("simulate", help="run the Mavera simulator alone")
    sim_cmd.add_argument("--host", default="127.0.0.1")
    sim_cmd.add_argument("--port", type=int, default=8090)
    sim_cmd.add_argument("--chunks", type=int, default=8, help="text deltas per stream")
    sim_cmd.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="gap between stream events"
    )
    sim_cmd.add_argument(
        "--first-byte-delay-ms", type=float, default=0.0, help="delay before answering"
    )
    sim_cmd.add_argument("--rpm", type=int, help="per-key rate limit (default: none)")
    sim_cmd.add_argument("--credits", type=int, help="credit balance (default: unlimited)")
    sim_cmd.add_argument(
        "--credits-used-elsewhere",
        type=int,
        default=0,
        metavar="N",
        help="credits GET /usage reports as spent this period by something other than the "
        "gateway (to try reconcile)",
    )


def _serve_parser(commands: Any) -> None:
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    _config_option(serve_cmd)
    serve_cmd.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port (default 8080)")
    serve_cmd.add_argument(
        "--simulate", action="store_true", help="use the built-in Mavera simulator"
    )
    serve_cmd.add_argument(
        "--allow-open", action="store_true", help="allow a non-loopback bind with no client keys"
    )
    serve_cmd.add_argument("--log-format", choices=["text", "json"], help="log line format")
    serve_cmd.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes sharing the port (default 1; limits then need Redis)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("mavera-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (default: $MAVERA_GATEWAY_CONFIG)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (
        ConfigError,
        StartupRefused,
        KeyExists,
        LedgerUnavailable,
        InvalidClientSpec,
        DeclaredInConfig,
        ValueError,
    ) as exc:
        print(f"mavera-gateway: {exc}", file=sys.stderr)
        return 2
    except (LedgerMissing, NoActiveKey) as exc:
        print(f"mavera-gateway: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "simulate":
        script = SimScript(
            chunks=args.chunks,
            chunk_delay_ms=args.chunk_delay_ms,
            first_byte_delay_ms=args.first_byte_delay_ms,
        )
        simulate(
            args.host,
            args.port,
            script,
            rpm=args.rpm,
            credits=args.credits,
            credits_used_elsewhere=args.credits_used_elsewhere,
        )
        return 0
    settings = load_settings(args.config, **_overrides(args))
    if args.command == "serve":
        return serve(
            settings,
            simulate=args.simulate,
            # a partial, not a lambda: with --workers it is pickled into each worker
            reload_settings=functools.partial(load_settings, args.config, **_overrides(args)),
            workers=args.workers,
        )
    elif args.command == "check-config":
        print(effective_config_toml(settings))
    elif args.command == "keys":
        configured = list(settings.clients)
        return with_ledger(
            settings,
            lambda ledger: cli_keys.run_keys(args, ledger, configured),
            must_exist=args.keys_command != "create",
        )
    elif args.command == "audit":
        since = parse_time(args.since) if args.since else 0.0
        return with_ledger(
            settings, lambda ledger: cli_keys.run_audit(args, ledger, since), must_exist=True
        )
    elif args.command == "usage":
        since = parse_time(args.since)
        until = parse_time(args.until) if args.until else None
        rows = with_ledger(
            settings,
            lambda ledger: summarize(ledger, since=since, until=until, by=args.by),
            must_exist=True,
        )
        print(render(rows, args.format))
        note = footnote(args.by)
        if note and rows and args.format == "table":
            print("\n" + note)
        elif note and rows:  # JSON and CSV are for scripts: the note goes beside them
            print(note, file=sys.stderr)
    elif args.command == "reconcile":
        return _reconcile(settings, args.format)
    return 0


def _reconcile(settings: Settings, fmt: str) -> int:
    if settings.upstream.api_key is None:
        raise ValueError(
            "reconcile reads Mavera's GET /usage: set MAVERA_API_KEY (and MAVERA_BASE_URL)"
        )

    async def work(ledger: Ledger) -> dict[str, Any]:
        upstream = Upstream(settings.upstream)
        try:
            return await reconcile(upstream, ledger)
        finally:
            await upstream.aclose()

    try:
        # an empty ledger is an answer here: Mavera billed what the gateway never saw
        result = with_ledger(settings, work, must_exist=False)
    except (GatewayError, UpstreamRefused) as exc:
        print(f"mavera-gateway: cannot reconcile: {exc}", file=sys.stderr)
        return 1
    print(render_reconciliation(result, fmt))
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    server = {
        key: value
        for key, value in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("allow_open", getattr(args, "allow_open", None) or None),
            ("log_format", getattr(args, "log_format", None)),
        )
        if value is not None
    }
    return {"server": server} if server else {}
