"""Budget alerts: which thresholds a settlement crossed, and one webhook POST for each.

`observe` runs on the request path after every settlement, so it only compares numbers and puts
an alert on a queue; a background task POSTs them to `[alerts] webhook_url` (app/webhooks.py),
retrying with exponential backoff and jitter on connection errors, 429 and 5xx for about a
minute, then giving up with one log line. Each threshold alerts once per budget period: the
decision and its record happen with no await in between, so concurrent settlements on the event
loop cannot both send it. A new period, or a changed budget, arms the thresholds again.

What was alerted lives in this process. At start-up `seed` marks the thresholds already crossed
in the current period, so a restart does not send them again; an alert that would have been sent
while the gateway was down is not sent. Alerts still queued at shutdown get a few seconds.
The webhook URL is a secret (Slack's carries a token): logs name only its scheme and host.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from app.webhooks import WebhookFailed, check_url, post_json, where

logger = logging.getLogger("mavera_gateway.alerts")

SOURCE = "mavera-gateway"  # how the text names the sender
GATEWAY = "gateway"  # the subject of the gateway-wide budget
PERIOD_WORDS = {"day": "daily", "week": "weekly", "month": "monthly", "total": "total"}
MAX_QUEUED = 1000  # alerts waiting to be sent; beyond this new ones are dropped (logged)
ATTEMPTS = 7  # retries after 1, 2, 4, 8, 16 and 32 s (each 50-100% of that): a minute at most
RETRY_BASE_S = 1.0
POST_TIMEOUT_S = 5.0  # per attempt; Slack answers in well under a second
FLUSH_TIMEOUT_S = 3.0  # at shutdown, for what is still queued


@dataclass(frozen=True, slots=True)
class Alert:
    """One threshold crossed: `subject` (a client or GATEWAY) has spent `spent` of `budget`."""

    subject: str
    threshold: float
    spent: float
    budget: float
    period: str
    period_start: float


def alert_text(alert: Alert) -> str:
    """The sentence a Slack incoming webhook shows for an alert."""
    who = "the gateway" if alert.subject == GATEWAY else f"client {alert.subject}"
    period = PERIOD_WORDS.get(alert.period, alert.period)
    return (
        f"{SOURCE}: {who} has used {alert.threshold * 100:g}% of its "
        f"{_credits(alert.budget)}-credit {period} budget ({_credits(alert.spent)} credits)"
    )


def alert_body(alert: Alert, zone: ZoneInfo) -> dict[str, object]:
    """The JSON POSTed for an alert; `period_start` is null for a `total` budget."""
    began = None
    if alert.period != "total":
        began = datetime.fromtimestamp(alert.period_start, zone).isoformat()
    return {
        "text": alert_text(alert),
        "client": alert.subject,
        "threshold": alert.threshold,
        "spent": alert.spent,
        "budget": alert.budget,
        "period": alert.period,
        "period_start": began,
        "gateway": alert.subject == GATEWAY,
    }


def _credits(amount: float) -> str:
    if float(amount).is_integer():
        return f"{int(amount):,}"
    return f"{amount:,.2f}".rstrip("0").rstrip(".")


class Alerts:
    """Decides which budget alerts are due and sends them, off the request path."""

    def __init__(
        self,
        webhook_url: str,
        thresholds: tuple[float, ...],
        *,
        timezone: str = "UTC",
        retry_base_s: float = RETRY_BASE_S,
        post_timeout_s: float = POST_TIMEOUT_S,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        check_url(webhook_url)
        self._url = webhook_url
        self._where = where(webhook_url)
        self._thresholds = tuple(sorted(thresholds))
        self._zone = ZoneInfo(timezone)
        self._retry_base_s = retry_base_s
        self._post_timeout_s = post_timeout_s
        # subject -> (period start, budget, how many of the lowest thresholds were alerted)
        self._alerted: dict[str, tuple[float, float, int]] = {}
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(max_queued)
        self._unsent = 0  # queued or being sent
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Alerts(webhook={self._where}/..., thresholds={self._thresholds})"

    def observe(
        self, subject: str, spent: float, budget: float, period: str, period_start: float
    ) -> None:
        """After a settlement: queue one alert for each threshold this spend newly crossed.

        Cheap and never blocks; a settlement of an earlier period than the last one seen is
        ignored. Budgets of 0 (nothing may be spent) never alert.
        """
        already = self._armed(subject, budget, period_start)
        if already is None:
            return
        crossed = self._crossed(spent, budget)
        if crossed <= already:
            return
        self._alerted[subject] = (period_start, budget, crossed)
        for threshold in self._thresholds[already:crossed]:
            self._put(Alert(subject, threshold, spent, budget, period, period_start))

    def seed(
        self, subject: str, spent: float, budget: float, period: str, period_start: float
    ) -> None:
        """At start-up: the thresholds this spend has crossed count as alerted already."""
        if self._armed(subject, budget, period_start) is not None:
            self._alerted[subject] = (period_start, budget, self._crossed(spent, budget))

    def _armed(self, subject: str, budget: float, period_start: float) -> int | None:
        """How many thresholds were alerted for this period and budget; None: do not alert."""
        if budget <= 0:
            return None
        seen = self._alerted.get(subject)
        if seen is None:
            return 0
        began, seen_budget, count = seen
        if period_start < began:
            return None
        return count if (period_start, budget) == (began, seen_budget) else 0

    def _crossed(self, spent: float, budget: float) -> int:
        """How many thresholds `spent` has reached (thresholds are sorted)."""
        return bisect.bisect_right(self._thresholds, spent / budget)

    def _put(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            logger.warning(
                "%d budget alerts are waiting to be sent to %s: dropped the %g alert for %s",
                self._queue.qsize(),
                self._where,
                alert.threshold,
                alert.subject,
            )
            return
        self._unsent += 1

    def start(self) -> None:
        """Start sending (in the lifespan, on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="alerts")

    async def aclose(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Send what is queued, for at most `timeout_s`, then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        except TimeoutError:
            pass
        unsent = self._unsent  # counted before the cancelled delivery, if any, counts itself out
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if unsent:
            logger.warning("%d budget alerts were not sent before shutdown", unsent)

    async def _run(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                await self._deliver(alert)
            except Exception:  # a bug here must not stop every later alert
                logger.exception("budget alert for %s could not be sent", alert.subject)
            finally:
                self._unsent -= 1
                self._queue.task_done()

    async def _deliver(self, alert: Alert) -> None:
        """POST one alert; retry while the receiver may yet take it, else log once."""
        body = alert_body(alert, self._zone)
        problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                delay = self._retry_base_s * (1 << (attempt - 1)) * (0.5 + random.random() / 2)
                logger.debug("%s; retrying in %.1f s", problem, delay)
                await asyncio.sleep(delay)
            try:
                status = await post_json(self._url, body, self._post_timeout_s)
            except WebhookFailed as exc:
                problem = str(exc)
                continue
            if 200 <= status < 300:
                logger.info("budget alert sent to %s: %s", self._where, body["text"])
                return
            problem = f"{self._where} answered {status}"
            if status != 429 and status < 500:
                break  # the receiver refuses it (a revoked Slack hook answers 404): no retry
        logger.error(
            "budget alert not sent after %d attempt(s): %s (%s)",
            attempt + 1,
            problem,
            body["text"],
        )
