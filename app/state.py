"""What one running gateway holds: settings, upstream pool, keys, limits, ledger writer."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from app.accounting import RequestAccount
from app.alerts import Alerts
from app.auth import KeyStore
from app.config import Settings
from app.errors import RouteNotFound
from app.ledger.protocol import Ledger
from app.ledger.writer import LedgerWriter
from app.limits import Limits
from app.limits.admission import SpendHook
from app.limits.holds import GATEWAY
from app.limits.spend import seed_budget
from app.metrics import Metrics
from app.personas import PersonaNames
from app.records import UsageRecord
from app.upstream import Upstream

logger = logging.getLogger("mavera_gateway.requests")

PERSONAS_CACHE_TTL_S = 30.0
RESTART_SECTIONS = ("server", "upstream", "ledger", "limits", "alerts")


@dataclass
class TtlCache:
    """A tiny time-limited cache for upstream answers that cost nothing and change rarely."""

    ttl_s: float = PERSONAS_CACHE_TTL_S
    entries: dict[str, tuple[float, bytes]] = field(default_factory=dict)

    def get(self, key: str) -> bytes | None:
        """The cached value, if it is still fresh."""
        found = self.entries.get(key)
        if found is None or time.monotonic() - found[0] > self.ttl_s:
            return None
        return found[1]

    def put(self, key: str, value: bytes) -> None:
        """Remember a value from now on."""
        if len(self.entries) > 256:
            self.entries.clear()
        self.entries[key] = (time.monotonic(), value)


@dataclass
class Gateway:
    """The gateway's live resources, created in the lifespan and reached via app.state."""

    settings: Settings
    upstream: Upstream
    keys: KeyStore
    limits: Limits
    writer: LedgerWriter
    metrics: Metrics
    ledger: Ledger
    persona_names: PersonaNames
    personas_cache: TtlCache = field(default_factory=TtlCache)
    alerts: Alerts | None = None  # set when [alerts] webhook_url is; settlements observe it
    # Also called after each settlement, per budget the request counted against, with
    # (subject: client name or "gateway", spent, budget, period, period start); must not block.
    on_spend: SpendHook | None = None

    def __post_init__(self) -> None:
        self.limits.on_spend = self._spent

    def _spent(self, subject: str, spent: float, budget: float, period: str, began: float) -> None:
        if self.alerts is not None:
            self.alerts.observe(subject, spent, budget, period, began)
        if self.on_spend is not None:
            self.on_spend(subject, spent, budget, period, began)

    def route_of(self, request: Request) -> str | None:
        """The configured route a request came in under, if any."""
        route = request.path_params.get("route")
        if route is None:
            return None
        if route not in self.settings.routes:
            known = ", ".join(sorted(self.settings.routes)) or "none configured"
            raise RouteNotFound(f"no route {route!r} on this gateway (routes: {known})")
        return str(route)

    in_flight: int = 0

    def begin(self, endpoint: str, request_id: str) -> RequestAccount:
        """Open the account of a request that just arrived; it is closed exactly once."""
        self.in_flight += 1
        return RequestAccount(endpoint, request_id, self.finish)

    async def reload_keys(self) -> None:
        """Pick up the keys stored in the ledger now (created or revoked elsewhere)."""
        self.keys.replace_stored(await self.ledger.keys(include_revoked=False))
        await self.seed_budgets()

    async def rebuild_budgets(self) -> None:
        """Load every budget afresh from the ledger (shared counters that restarted empty)."""
        self.limits.seeded.clear()
        await self.seed_budgets()

    async def seed_budgets(self) -> None:
        """Start each budget not yet counted (each client's, the gateway's) from the ledger.

        At start, and for clients that appear or change budget period on a reload.
        """
        limits = self.settings.limits
        budgets = [
            (client.name, client.spec.credit_budget, client.spec.budget_period)
            for client in self.keys.clients()
        ]
        budgets.append((GATEWAY, limits.gateway_credit_budget, limits.gateway_budget_period))
        for subject, budget, period in budgets:
            if budget is None:
                continue
            who = None if subject == GATEWAY else subject
            seeded = await seed_budget(
                self.limits, subject, period, functools.partial(self.ledger.spent_since, who)
            )
            if seeded is not None and self.alerts is not None:
                # thresholds crossed before a restart count as alerted already
                self.alerts.seed(subject, seeded, budget, period, self.limits.period_of(period)[0])

    def reconfigure(self, new: Settings) -> list[str]:
        """Take on a reloaded config; return the sections that only a restart can change.

        Personas, models, routes, clients, admin and metrics settings apply to the next request;
        the server, the upstream connection and the ledger keep what they started with.
        """
        fixed = [
            name for name in RESTART_SECTIONS if getattr(new, name) != getattr(self.settings, name)
        ]
        kept = {name: getattr(self.settings, name) for name in RESTART_SECTIONS}
        self.settings = new.model_copy(update=kept)
        self.keys.replace_configured(self.settings.clients)
        self.personas_cache.entries.clear()
        return fixed

    async def settle(self, timeout_s: float) -> None:
        """Wait (bounded) until every request has handed on its record.

        After a shutdown past its grace period the server cancels the requests left and goes
        straight on; their records are booked as the cancellations unwind, a moment later.
        """
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.in_flight:
            logger.error("%d requests still unaccounted for at shutdown", self.in_flight)

    def finish(self, record: UsageRecord) -> asyncio.Future[bool] | None:
        """Account for a finished request: ledger, budget, metrics, and one log line.

        Returns the future of the record's commit in strict durability, else None.
        """
        self.in_flight -= 1
        self.limits.finish(record)
        stored = self.writer.submit(record)
        self.metrics.observe(record)
        if logger.isEnabledFor(logging.INFO):
            logger.info("request", extra={"record": record})
        return stored
