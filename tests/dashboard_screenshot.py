"""Take the README's dashboard screenshot: a gateway in front of the simulator, a ledger seeded
with 30 days of made-up team usage, and Debian's chromium driven by Playwright.

    python -m tests.dashboard_screenshot docs/dashboard.png
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from app.background import BackgroundServer
from app.ledger.sqlite import SqliteLedger
from app.records import UsageRecord
from app.server import create_app
from app.simulator import Simulator
from tests.conftest import PERSONAS, UPSTREAM_KEY, RunningGateway, gateway_settings
from tests.e2e.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, held_open

ADMIN_KEY = "screenshot-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
# client: (requests a day, credits a request, its personas, its budget settings)
TEAM: dict[str, tuple[int, float, list[str], dict[str, object]]] = {
    "research": (14, 3.0, PERSONAS[0:2], {"credit_budget": 2000, "budget_period": "month"}),
    "marketing": (9, 2.0, PERSONAS[2:4], {"credit_budget": 150, "budget_period": "week"}),
    "ci-bot": (20, 0.5, PERSONAS[4:5], {}),
    "eval-suite": (5, 4.0, PERSONAS[1:4], {"credit_budget": 400, "budget_period": "total"}),
}


def seed(path: Path, now: float, rng: random.Random) -> list[UsageRecord]:
    """30 days of requests for TEAM, with a few errors and slow answers, stored and returned."""
    records = []
    for client, (per_day, cost, personas, _) in TEAM.items():
        for day in range(30):
            for _ in range(rng.randint(0, per_day)):
                failed = rng.random() < 0.04
                records.append(
                    UsageRecord(
                        endpoint="chat.completions",
                        client=client,
                        received_at=now - day * 86400 - rng.uniform(0, 86400),
                        persona_id=rng.choice(personas),
                        status=502 if failed else 200,
                        outcome="upstream_error" if failed else "ok",
                        credits_used=None if failed else round(cost * rng.uniform(0.5, 1.5)),
                        latency_ms=rng.lognormvariate(6.5, 0.4),
                    )
                )
    store = SqliteLedger(f"sqlite:///{path}")
    store.open_sync()
    store.write_sync(records)
    store.close_sync()
    return records


def month_credits(records: list[UsageRecord], now: float) -> int:
    """What the seeded requests cost in this calendar month (UTC): Mavera's billing period."""
    start = datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0)
    return sum(int(r.credits_used or 0) for r in records if r.received_at >= start.timestamp())


def wait_for_persona_names(url: str) -> None:
    """The gateway reads the persona names from the simulator as it starts; wait for them."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = httpx.get(
            url + "/admin/usage", params={"since": "30d", "by": "persona"}, headers=ADMIN
        ).json()["data"]
        if all(row["persona_name"] for row in rows):
            return
        time.sleep(0.05)
    raise RuntimeError("the gateway never learnt the persona names")


def main(target: str) -> None:
    """Serve the seeded gateway, open the dashboard with the admin key, save a screenshot."""
    workdir, now = Path(tempfile.mkdtemp(prefix="dashboard-shot-")), time.time()
    records = seed(workdir / "ledger.db", now, random.Random(7))
    mavera = Simulator(api_keys={UPSTREAM_KEY}, credits=5000)
    mavera.spend_elsewhere(month_credits(records, now) + 12)  # 12 spent outside the gateway
    with BackgroundServer(mavera.app) as simulator:
        settings = gateway_settings(
            simulator.url,
            workdir,
            admin={"key": ADMIN_KEY},
            upstream={"persona_names_at_start": True},
        )
        with BackgroundServer(create_app(settings), edge=settings.server) as gateway:
            keys = {}
            for client, (*_, budget) in TEAM.items():
                created = httpx.post(
                    gateway.url + "/admin/keys",
                    headers=ADMIN,
                    json={"name": client, **budget},
                )
                keys[client] = created.raise_for_status().json()["key"]
            wait_for_persona_names(gateway.url)
            running = RunningGateway(gateway.url, settings, mavera, gateway)
            with held_open(running, keys["marketing"]):  # its reservation shows in the bar
                shoot(gateway.url, target)
    print(f"{target}: {Path(target).stat().st_size} bytes")


def shoot(url: str, target: str) -> None:
    """The dashboard's 30-day view, whole page, in headless chromium."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url + "/dashboard")
        page.get_by_label("Admin key").fill(ADMIN_KEY)
        page.get_by_role("button", name="Open dashboard").click()
        page.get_by_label("Period", exact=True).select_option("30d")
        page.locator('#clients tr[data-client="eval-suite"]').wait_for()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=target, full_page=True)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png")
