"""Budget alerts against a real webhook receiver on a loopback socket."""

from __future__ import annotations

import asyncio
import calendar
import logging
import socket
import ssl
from typing import Any

import pytest
import trustme

from app.alerts import Alerts
from app.config import ConfigError, load_settings
from app.webhooks import WebhookFailed, post_json
from tests.upstream_servers import http_proxy, origin, run
from tests.webhook_receiver import receiver

DECEMBER = float(calendar.timegm((2026, 12, 1, 0, 0, 0)))
JANUARY = float(calendar.timegm((2027, 1, 1, 0, 0, 0)))
SECRET_PATH = "/services/T0001/B0002/XsecretTOKENx"
SECRET_QUERY = "sig=QsecretQUERYq"


def alerts_for(url: str, **options: Any) -> Alerts:
    """Alerts with fast retries, so tests of retrying do not wait seconds."""
    options.setdefault("retry_base_s", 0.01)
    options.setdefault("post_timeout_s", 2.0)
    return Alerts(url + SECRET_PATH, (0.8, 1.0), **options)


def thresholds(bodies: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(body["client"], body["threshold"]) for body in bodies]


def test_one_post_per_threshold_however_many_settlements_cross_it() -> None:
    with receiver() as (seen, url):

        async def main() -> None:
            alerts = alerts_for(url)
            alerts.start()
            spent = 0.0

            async def settle(credits: float) -> None:
                nonlocal spent
                await asyncio.sleep(0)
                spent += credits
                alerts.observe("alice", spent, 100, "month", DECEMBER)

            await asyncio.gather(*(settle(3) for _ in range(60)))  # 0 -> 180 credits
            await alerts.aclose()

        run(main)
        assert thresholds(seen.delivered()) == [("alice", 0.8), ("alice", 1.0)]
        assert len(seen.posts) == 2


def test_one_settlement_crossing_both_thresholds_sends_both() -> None:
    with receiver() as (seen, url):

        async def main() -> None:
            alerts = alerts_for(url)
            alerts.start()
            alerts.observe("bob", 20, 100, "day", DECEMBER)  # below every threshold
            alerts.observe("bob", 130, 100, "day", DECEMBER)
            alerts.observe("bob", 140, 100, "day", DECEMBER)
            await alerts.aclose()

        run(main)
        assert thresholds(seen.delivered()) == [("bob", 0.8), ("bob", 1.0)]
        assert [b["spent"] for b in seen.delivered()] == [130, 130]


def test_a_new_period_or_budget_rearms_and_a_late_settlement_does_not() -> None:
    with receiver() as (seen, url):

        async def main() -> None:
            alerts = alerts_for(url)
            alerts.start()
            alerts.observe("alice", 85, 100, "month", DECEMBER)
            alerts.observe("alice", 20, 100, "month", JANUARY)
            alerts.observe("alice", 99, 100, "month", DECEMBER)  # December's last request
            alerts.observe("alice", 90, 100, "month", JANUARY)
            alerts.observe("alice", 95, 100, "month", JANUARY)
            alerts.observe("alice", 95, 200, "month", JANUARY)  # raised: 47.5%
            alerts.observe("alice", 170, 200, "month", JANUARY)
            await alerts.aclose()

        run(main)
        assert [(b["period_start"], b["budget"], b["spent"]) for b in seen.delivered()] == [
            ("2026-12-01T00:00:00+00:00", 100, 85),
            ("2027-01-01T00:00:00+00:00", 100, 90),
            ("2027-01-01T00:00:00+00:00", 200, 170),
        ]


def test_the_json_and_the_slack_text() -> None:
    with receiver() as (seen, url):

        async def main() -> None:
            alerts = alerts_for(url, timezone="Europe/Berlin")
            alerts.start()
            alerts.observe("alice", 82, 100, "month", DECEMBER)
            alerts.observe("ci-bot", 2.5, 2, "total", 0)
            await alerts.aclose()

        run(main)
        first, total, reached = seen.delivered()
        assert first == {
            "text": "mavera-gateway: client alice has used 80% of its 100-credit monthly budget "
            "(82 credits)",
            "client": "alice",
            "threshold": 0.8,
            "spent": 82,
            "budget": 100,
            "period": "month",
            "period_start": "2026-12-01T01:00:00+01:00",
            "gateway": False,
        }
        assert total["period_start"] is None
        assert reached["text"] == (
            "mavera-gateway: client ci-bot has used 100% of its 2-credit total budget (2.5 credits)"
        )
        post = seen.posts[0]
        assert (post.path, post.headers["content-type"]) == (SECRET_PATH, "application/json")


def test_the_gateway_wide_budget_alerts_as_the_gateway() -> None:
    with receiver() as (seen, url):

        async def main() -> None:
            alerts = alerts_for(url)
            alerts.start()
            alerts.observe("gateway", 4100, 5000, "week", DECEMBER)
            alerts.observe("alice", 4100, 5000, "week", DECEMBER)  # a client's is separate
            await alerts.aclose()

        run(main)
        gateway, alice = seen.delivered()
        assert (gateway["client"], gateway["gateway"], alice["gateway"]) == ("gateway", True, False)
        assert gateway["text"] == (
            "mavera-gateway: the gateway has used 80% of its 5,000-credit weekly budget "
            "(4,100 credits)"
        )


def test_retried_after_two_500s_and_delivered_once() -> None:
    with receiver(500, 503) as (seen, url):

        async def main() -> None:
            alerts = alerts_for(url)
            alerts.start()
            alerts.observe("alice", 80, 100, "month", DECEMBER)
            await alerts.aclose()

        run(main)
        assert [p.status for p in seen.posts] == [500, 503, 200]
        assert len({str(p.body) for p in seen.posts}) == 1, "the same alert each time"
        assert thresholds(seen.delivered()) == [("alice", 0.8)]


def test_429_is_retried_and_a_refusal_is_not(caplog: pytest.LogCaptureFixture) -> None:
    with receiver(429, 404) as (seen, url):

        async def main() -> None:
            alerts = alerts_for(url)
            alerts.start()
            alerts.observe("alice", 80, 100, "month", DECEMBER)
            await alerts.aclose()

        run(main)
        assert [p.status for p in seen.posts] == [429, 404]
    given_up = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(given_up) == 1
    assert "answered 404" in given_up[0].getMessage()


def test_the_webhook_secret_never_reaches_a_log(caplog: pytest.LogCaptureFixture) -> None:
    with receiver(*[500] * 20) as (seen, url):

        async def main() -> None:
            alerts = Alerts(
                f"{url}{SECRET_PATH}?{SECRET_QUERY}", (0.8,), retry_base_s=0.001, post_timeout_s=2
            )
            alerts.start()
            alerts.observe("alice", 80, 100, "month", DECEMBER)
            await alerts.aclose()
            assert "XsecretTOKENx" not in repr(alerts)

        run(main)
        assert len(seen.posts) == 7, "a few attempts, then it gives up"
        assert seen.posts[0].query == SECRET_QUERY
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"not sent after 7 attempt(s): {url} answered 500" in text
    assert "XsecretTOKENx" not in text and "QsecretQUERYq" not in text


def test_an_unreachable_receiver_is_logged_without_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> None:
        alerts = alerts_for(f"http://127.0.0.1:{port}", retry_base_s=0.001)
        alerts.start()
        alerts.observe("alice", 80, 100, "month", DECEMBER)
        await alerts.aclose()
        with pytest.raises(WebhookFailed) as caught:
            await post_json(f"http://127.0.0.1:{port}{SECRET_PATH}", {}, 2.0)
        assert "XsecretTOKENx" not in str(caught.value)

    run(main)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"http://127.0.0.1:{port}: cannot connect" in errors[0]
    assert not any("XsecretTOKENx" in r.getMessage() for r in caplog.records)


def test_seeded_thresholds_are_not_sent_again() -> None:
    with receiver() as (seen, url):

        async def main() -> None:
            alerts = alerts_for(url)
            alerts.seed("alice", 85, 100, "month", DECEMBER)  # at start-up, from the ledger
            alerts.start()
            alerts.observe("alice", 90, 100, "month", DECEMBER)
            alerts.observe("alice", 101, 100, "month", DECEMBER)
            await alerts.aclose()

        run(main)
        assert [b["threshold"] for b in seen.delivered()] == [1.0]


def test_a_zero_budget_never_alerts_and_a_full_queue_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with receiver() as (seen, url):

        async def main() -> None:
            alerts = alerts_for(url, max_queued=3)
            alerts.observe("zero", 5, 0, "month", DECEMBER)
            for name in ("a", "b", "c"):
                alerts.observe(name, 100, 100, "month", DECEMBER)  # two alerts each
            alerts.start()
            await alerts.aclose()

        run(main)
        assert thresholds(seen.delivered()) == [("a", 0.8), ("a", 1.0), ("b", 0.8)]
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 3 and "dropped the 1 alert for b" in dropped[0]


def test_a_webhook_over_tls_through_https_proxy(
    ca: trustme.CA, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hooks.slack.com as Slack serves it: TLS verified, reached through HTTPS_PROXY's tunnel."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.slack.com").configure_cert(context)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async def main() -> None:
        async with origin(answer, context) as seen, http_proxy() as proxy:
            monkeypatch.setenv("SSL_CERT_FILE", ca_file)
            monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
            url = f"https://hooks.slack.com:{seen.port}{SECRET_PATH}"
            assert await post_json(url, {"text": "hi"}, 5.0) == 200
            monkeypatch.delenv("SSL_CERT_FILE")  # the system store does not know the test CA
            with pytest.raises(WebhookFailed, match="certificate verification failed"):
                await post_json(url, {"text": "hi"}, 5.0)
        assert proxy.connect_lines[0] == f"CONNECT hooks.slack.com:{seen.port} HTTP/1.1"
        assert seen.requests[0].startswith(f"POST {SECRET_PATH} HTTP/1.1\r\n".encode())
        assert seen.requests[0].endswith(b'{"text":"hi"}')

    run(main)


def test_a_webhook_url_that_is_not_http_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(alerts={"webhook_url": "hooks.slack.com/services/T0001/B0002/XsecretTOKENx"})
    assert "alerts.webhook_url" in str(caught.value)
    assert "XsecretTOKENx" not in str(caught.value)


def test_shutdown_waits_briefly_then_says_what_was_not_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with receiver() as (seen, url):
        seen.release.clear()  # the receiver holds every POST unanswered

        async def main() -> None:
            alerts = alerts_for(url)
            alerts.start()
            alerts.observe("alice", 100, 100, "month", DECEMBER)
            await alerts.aclose(timeout_s=0.2)

        run(main)
        seen.release.set()
    assert "2 budget alerts were not sent before shutdown" in caplog.text
