"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright, against a
gateway whose ledger was seeded with known records."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from app.ledger.sqlite import SqliteLedger
from app.records import UsageRecord
from app.simulator import PERSONAS as SIM_PERSONAS
from tests import rawhttp
from tests.conftest import PERSONAS, GatewayFactory, RunningGateway, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_KEY = "dash-browser-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
REFUSED = "That admin key was refused by the gateway."
NOW = time.time()
HOUR = 3600.0
DAY = 86400.0


def _record(client: str, ago: float, credits: float | None, **fields: object) -> UsageRecord:
    fields.setdefault("status", 200)
    fields.setdefault("persona_id", PERSONAS[0])
    return UsageRecord(
        endpoint="chat.completions",
        client=client,
        received_at=NOW - ago,
        credits_used=credits,
        latency_ms=100.0,
        **fields,  # type: ignore[arg-type]
    )


SEEDED = [
    _record("alice", 1 * HOUR, 2.5),
    _record("alice", 2 * HOUR, None, status=400, outcome="client_error"),
    _record("alice", 26 * HOUR, 4),
    _record("alice", 3 * DAY, 10, persona_id=PERSONAS[1]),
    _record("bob", 0.5 * HOUR, 1, persona_id=PERSONAS[1]),
    _record("bob", 5 * DAY, 7, persona_id=PERSONAS[1]),
    _record("carol", 10 * DAY, 3),  # only in the 30-day view
    _record("carol", 40 * DAY, 100),  # in no view
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless; missing is a failure when services are required."""
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("GATEWAY_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) that records script errors and CSP reports."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(str(error)))
    tab.on(
        "console",
        lambda message: (
            problems.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield tab
    context.close()
    assert problems == []


def seeded_gateway(
    make_gateway: GatewayFactory, tmp_path: Path, **overrides: object
) -> tuple[RunningGateway, str]:
    """A gateway whose ledger holds SEEDED, with a budget for alice; and alice's key."""
    store = SqliteLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    store.open_sync()
    store.write_sync(SEEDED)
    store.close_sync()
    overrides.setdefault("upstream", {"persona_names_at_start": True})
    assert isinstance(overrides["upstream"], dict)
    gateway = make_gateway(admin={"key": ADMIN_KEY}, **overrides)
    gateway.sim.spend_elsewhere(1000)  # Mavera's bill: only what was spent outside the gateway
    created = httpx.post(
        gateway.url + "/admin/keys",
        headers=ADMIN,
        json={"name": "alice", "credit_budget": 100, "budget_period": "month"},
    )
    assert created.status_code == 201
    deadline = time.monotonic() + 10  # the gateway reads the persona names as it starts
    while overrides["upstream"].get("persona_names_at_start") and not all(
        row["persona_name"] for row in usage(gateway, "persona")
    ):
        assert time.monotonic() < deadline, "the persona names never arrived"
        time.sleep(0.05)
    return gateway, created.json()["key"]


@contextlib.contextmanager
def held_open(gateway: RunningGateway, key: str) -> Iterator[None]:
    """One of alice's requests in flight (the simulator never answers it) until the block ends,
    when its client goes away."""
    body = orjson.dumps({"model": "mavera-1", "input": "hold", "mavera_sim": {"hang": True}})
    head = (
        f"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with contextlib.closing(rawhttp.connect(gateway.server.port)) as sock:
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 10
        while not gateway.state.in_flight:
            assert time.monotonic() < deadline, "the held request never reached the gateway"
            time.sleep(0.01)
        yield


def usage(gateway: RunningGateway, by: str) -> list[dict[str, Any]]:
    """The admin usage report for the last 30 days."""
    answer = httpx.get(
        gateway.url + "/admin/usage", params={"since": "30d", "by": by}, headers=ADMIN
    )
    rows: list[dict[str, Any]] = answer.json()["data"]
    return rows


def shown(value: float) -> str:
    """A number as the page writes it (en-US, at most two decimals)."""
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def sign_in(page: Page, gateway: RunningGateway, key: str = ADMIN_KEY) -> None:
    page.goto(gateway.url + "/dashboard")
    page.get_by_label("Admin key").fill(key)
    page.get_by_role("button", name="Open dashboard").click()


def cells(page: Page, client: str) -> dict[str, str]:
    row = page.locator(f'#clients tr[data-client="{client}"]')
    names = ["credits", "unknown", "requests", "error-rate"]
    return {name: row.locator(f"td.{name}").inner_text() for name in names}


def expected_segments(since: float) -> tuple[int, int]:
    """Bars (UTC days in the period) and segments (client-days with credits) the chart needs,
    as of now: the page has just counted its days the same way."""
    now = time.time()
    days = math.floor(now / DAY) - math.floor((now - since) / DAY) + 1
    spent = {
        (math.floor(r.received_at / DAY), r.client)
        for r in SEEDED
        if r.credits_used and r.received_at >= now - since
    }
    return days, len(spent)


def test_dashboard_shows_the_seeded_ledger(
    make_gateway: GatewayFactory, tmp_path: Path, page: Page
) -> None:
    gateway, alice_key = seeded_gateway(make_gateway, tmp_path)
    with held_open(gateway, alice_key):
        sign_in(page, gateway)
        page.locator('#budgets tr[data-client="alice"] svg').wait_for()
        spend = httpx.get(gateway.url + "/admin/clients/alice/spend", headers=ADMIN).json()
    assert spend["reserved"] == 5 and spend["in_flight"] == 1  # [limits] budget_reserve_credits
    budget = page.locator('#budgets tr[data-client="alice"]')
    assert budget.locator("td.budget").inner_text() == "100 / month"
    assert budget.locator("td.used").inner_text() == shown(spend["spent"])
    assert budget.locator("td.reserved").inner_text() == "5"
    assert budget.locator("td.remaining").inner_text() == shown(spend["remaining"])
    assert budget.locator("td.in-flight").inner_text() == "1"
    assert float(budget.locator("rect.reserved").get_attribute("width") or 0) > 0
    assert cells(page, "alice") == {
        "credits": "16.5",
        "unknown": "0",
        "requests": "4",
        "error-rate": "25%",
    }
    assert cells(page, "bob") == {
        "credits": "8",
        "unknown": "0",
        "requests": "2",
        "error-rate": "0%",
    }
    assert page.locator('#clients tr[data-client="carol"]').count() == 0
    assert page.locator("#total-credits").inner_text() == "24.5"
    assert page.locator("#total-requests").inner_text() == "6"
    bars, segments = expected_segments(7 * DAY)
    assert page.locator("#daily svg g.bar").count() == bars
    assert page.locator("#daily svg rect.segment").count() == segments
    assert page.locator("#client-chart svg rect.bar").count() == 2
    personas = page.locator("#personas tbody tr")
    names = {persona.id: persona.name for persona in SIM_PERSONAS}
    assert personas.locator("td.persona").all_inner_texts() == [
        names[PERSONAS[1]],
        names[PERSONAS[0]],
    ]
    assert personas.locator("td.credits").all_inner_texts() == ["18", "6.5"]
    reconciled = httpx.get(gateway.url + "/admin/reconcile", headers=ADMIN).json()
    assert reconciled["mavera"]["credits_used"] == 1000  # the seeded requests never reached it
    facts = page.locator("#reconcile dd").all_inner_texts()
    assert facts[1:4] == [
        "1,000",
        shown(reconciled["ledger"]["credits_used"]),
        f"{shown(reconciled['difference'])}: Mavera billed more than the ledger recorded",
    ]
    assert page.locator("#reconcile-figure").inner_text() == (
        f"differs by {shown(reconciled['difference'])}"
    )
    assert page.locator("#balance").inner_text() == shown(reconciled["mavera"]["credits_remaining"])
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    page.get_by_label("Period", exact=True).select_option("30d")
    page.locator('#clients tr[data-client="carol"]').wait_for()
    assert cells(page, "carol")["credits"] == "3"
    bars, segments = expected_segments(30 * DAY)
    assert page.locator("#daily svg g.bar").count() == bars
    assert page.locator("#daily svg rect.segment").count() == segments


def test_key_is_kept_for_the_tab_and_forgotten_on_request(
    make_gateway: GatewayFactory, tmp_path: Path, page: Page
) -> None:
    gateway, _ = seeded_gateway(make_gateway, tmp_path)
    sign_in(page, gateway)
    page.locator('#clients tr[data-client="bob"]').wait_for()
    page.reload()  # the same tab: the key is still there, no form
    page.locator('#clients tr[data-client="bob"]').wait_for()
    assert page.get_by_label("Admin key").is_hidden()
    page.get_by_role("button", name="Forget key").click()
    assert page.get_by_label("Admin key").is_visible()
    assert page.locator("#clients tbody tr").count() == 0
    assert page.evaluate("Object.keys(sessionStorage)") == []
    page.reload()
    assert page.locator("#data").is_hidden()


def test_a_wrong_key_is_refused_plainly_and_shows_no_data(
    make_gateway: GatewayFactory, tmp_path: Path, page: Page
) -> None:
    gateway, _ = seeded_gateway(make_gateway, tmp_path)
    sign_in(page, gateway, key="not-the-admin-key")
    message = page.locator("#message")
    message.filter(has_text=REFUSED).wait_for()
    assert message.inner_text() == REFUSED
    assert page.locator("#data").is_hidden()
    assert page.locator("#clients tbody tr").count() == 0
    assert page.evaluate("Object.keys(sessionStorage)") == []
    assert "alice" not in page.content()


def test_reconciliation_unavailable_while_the_rest_renders(
    make_gateway: GatewayFactory, tmp_path: Path, page: Page
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/v1"  # nothing listens: Mavera cannot be reached
    unreachable = {"base_url": dead, "max_retries": 0, "persona_names_at_start": False}
    gateway, _ = seeded_gateway(make_gateway, tmp_path, upstream=unreachable)
    sign_in(page, gateway)
    page.locator('#clients tr[data-client="alice"]').wait_for()
    assert page.locator("#reconcile .unavailable").inner_text() == "unavailable"
    assert page.locator("#balance").inner_text() == "unavailable"
    assert cells(page, "alice")["credits"] == "16.5"
