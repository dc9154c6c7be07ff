"""`mavera-gateway keys create|list|update|revoke` and `mavera-gateway audit`.

Flags are turned into ClientSpec fields and validated by it, exactly as the admin API's JSON is
(app/key_admin.py); a flag given the value `none` clears its field. Times are shown in UTC with
the zone and how long ago, e.g. `2026-12-01 21:50 UTC (3 days ago)`.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from app import key_admin
from app.clients import BUDGET_PERIODS, ClientSpec
from app.ledger.protocol import AuditEntry, Ledger, StoredKey

# flag destination -> ClientSpec field
_FIELDS = {
    "persona": "persona_id",
    "budget": "credit_budget",
    "period": "budget_period",
    "rpm": "rpm",
    "max_concurrent": "max_concurrent",
    "weight": "weight",
    "tags": "tags",
    "allow_override": "allow_persona_override",
}
_NUMBERS = ("budget", "rpm", "max_concurrent", "weight")


def add_commands(commands: Any, config_option: Any) -> None:
    """The `keys` and `audit` subcommands, on the top-level subparsers."""
    keys_cmd = commands.add_parser("keys", help="manage gateway keys")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key for a client (printed once)")
    create.add_argument("name")
    _spec_flags(create)
    update = keys_sub.add_parser("update", help="change a client's settings (same key)")
    update.add_argument("name")
    _spec_flags(update)
    update.add_argument(
        "--default-override",
        dest="allow_override",
        action="store_const",
        const="none",
        help="clear allow_persona_override: [defaults] decides again",
    )
    listing = keys_sub.add_parser("list", help="list clients with keys (never the keys)")
    listing.add_argument("--format", choices=["table", "json"], default="table")
    revoke = keys_sub.add_parser("revoke", help="revoke a client's key (effective within seconds)")
    revoke.add_argument("name")
    audit = commands.add_parser("audit", help="admin changes to keys, newest first")
    audit.add_argument("--since", help="30m, 24h, 7d or a date (default: all)")
    audit.add_argument("--limit", type=_positive, default=100, help="at most this many (100)")
    audit.add_argument("--format", choices=["table", "json"], default="table")
    for parser in (create, update, listing, revoke, audit):
        config_option(parser)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def _spec_flags(parser: argparse.ArgumentParser) -> None:
    none = " (none: clear)"
    parser.add_argument("--persona", help="the client's default persona_id" + none)
    parser.add_argument("--budget", metavar="CREDITS", help="credit budget per period" + none)
    parser.add_argument("--period", metavar="|".join(BUDGET_PERIODS), help="budget period")
    parser.add_argument("--rpm", metavar="N", help="requests per minute" + none)
    parser.add_argument("--max-concurrent", metavar="N", help="requests in flight at once" + none)
    parser.add_argument("--weight", metavar="N", help="share of gateway_rpm (default 1)")
    parser.add_argument("--tags", metavar="A,B", help="cost tags on every request" + none)
    parser.add_argument(
        "--allow-override",
        "--allow-persona-override",
        dest="allow_override",
        action=argparse.BooleanOptionalAction,
        help="whether the client may choose another persona per request",
    )


def spec_patch(args: argparse.Namespace) -> dict[str, Any]:
    """The ClientSpec fields the flags set (None for `none`), left for ClientSpec to check."""
    patch: dict[str, Any] = {}
    for flag, field in _FIELDS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if isinstance(value, str) and value.strip().lower() == "none":
            patch[field] = None
        elif flag in _NUMBERS:
            patch[field] = int(value) if value.strip().lstrip("-").isdigit() else value
        elif flag == "tags":
            patch[field] = [tag.strip() for tag in value.split(",") if tag.strip()]
        else:
            patch[field] = value
    return patch


async def run_keys(args: argparse.Namespace, ledger: Ledger, configured: list[str]) -> int:
    """Carry out one `keys` subcommand; the exit status."""
    actor = key_admin.cli_actor()
    if args.keys_command == "create":
        spec = key_admin.apply_patch(ClientSpec(), spec_patch(args))
        key = await key_admin.create_key(ledger, args.name, spec, actor, configured)
        print(f"created key for client {args.name!r}; it is shown only this once:\n{key}")
    elif args.keys_command == "list":
        print(_listing(await ledger.keys(), args.format))
    elif args.keys_command == "update":
        patch = spec_patch(args)
        _, changes = await key_admin.update_key(ledger, args.name, patch, actor, configured)
        if not changes:
            print(f"client {args.name!r}: nothing to change")
        else:
            print(f"updated client {args.name!r}: {_changes(changes)}")
            print("a running gateway applies it within seconds")
    else:
        await key_admin.revoke_key(ledger, args.name, actor, configured)
        print(
            f"revoked the key of client {args.name!r}; "
            "a running gateway stops accepting it within seconds"
        )
    return 0


async def run_audit(args: argparse.Namespace, ledger: Ledger, since: float) -> int:
    """`mavera-gateway audit`: the admin changes since `since`, newest first."""
    entries = await ledger.audit(since, args.limit)
    if args.format == "json":
        print(json.dumps([entry.public() for entry in entries], indent=2))
    elif not entries:
        print("no admin changes recorded in this period")
    else:
        print(_table([_audit_row(entry) for entry in entries]))
    return 0


def _listing(keys: list[StoredKey], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([key.public() for key in keys], indent=2)
    if not keys:
        return "no keys yet: mavera-gateway keys create NAME"
    now = time.time()
    rows = []
    for key in keys:
        spec = key.spec
        budget = f"{spec.credit_budget}/{spec.budget_period}"
        override = spec.allow_persona_override
        rows.append(
            {
                "name": key.name,
                "persona": spec.persona_id,
                "budget": None if spec.credit_budget is None else budget,
                "rpm": spec.rpm,
                "max_concurrent": spec.max_concurrent,
                "weight": spec.weight,
                "tags": ",".join(spec.tags) or None,
                "override": None if override is None else ("yes" if override else "no"),
                "created": when(key.created_at, now),
                "revoked": None if key.revoked_at is None else when(key.revoked_at, now),
            }
        )
    return _table(rows)


def _table(rows: list[dict[str, Any]]) -> str:
    """Left-aligned columns with a header; the last column is not padded."""
    headers = list(rows[0])
    cells = [["-" if row[h] is None else str(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * width for width in widths], *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "when": when(entry.at, time.time()),
        "actor": entry.actor,
        "action": entry.action,
        "client": entry.client,
        "changes": _changes(entry.changes) or None,
    }


def _changes(changes: dict[str, dict[str, Any]]) -> str:
    return "; ".join(
        f"{field} {json.dumps(change['before'])} -> {json.dumps(change['after'])}"
        for field, change in changes.items()
    )


def when(at: float, now: float) -> str:
    """A time for people: UTC with the zone, and how long ago (`2026-12-01 21:50 UTC (3 days
    ago)`)."""
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{stamp} ({_ago(now - at)})"


def _ago(seconds: float) -> str:
    if abs(seconds) < 45:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        count = round(abs(seconds) / size)
        if abs(seconds) >= size * (1.5 if unit != "minute" else 0.75):
            words = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"{words} ago" if seconds > 0 else f"in {words}"
    return "just now"
