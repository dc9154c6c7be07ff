"""A request's account: filled in as the request goes, its outcome decided in one place."""

from __future__ import annotations

import asyncio

import pytest

from app.accounting import ClientGone, RequestAccount
from app.clients import Client
from app.errors import BudgetExceeded, InvalidRequest, UpstreamBusy, UpstreamTimeout
from app.records import UsageRecord
from app.routing import Target
from app.usage import Usage


def account() -> tuple[RequestAccount, list[UsageRecord]]:
    closed: list[UsageRecord] = []
    return RequestAccount("chat.completions", "req-1", closed.append), closed


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (201, "ok"),
        (400, "client_error"),
        (429, "client_error"),
        (503, "upstream_error"),
    ],
)
def test_an_answer_is_booked_by_maveras_status(status: int, outcome: str) -> None:
    acc, closed = account()
    acc.answered(status)
    assert (closed[0].status, closed[0].outcome) == (status, outcome)


@pytest.mark.parametrize(
    ("failure", "status", "outcome", "code"),
    [
        (InvalidRequest("bad"), 400, "client_error", "invalid_request_error"),
        (BudgetExceeded("spent"), 402, "rejected", "budget_exceeded"),
        (UpstreamBusy("busy"), 503, "rejected", "upstream_busy"),
        (UpstreamTimeout("slow"), 504, "upstream_error", "upstream_timeout"),
        (ClientGone(), 499, "client_disconnected", "client_disconnected"),
        (asyncio.CancelledError(), 503, "shutdown", "shutdown"),
        (KeyError("a bug"), 500, "gateway_error", "internal_error"),
    ],
)
def test_a_failure_is_booked_to_whoever_caused_it(
    failure: BaseException, status: int, outcome: str, code: str
) -> None:
    acc, closed = account()
    acc.failed(failure)
    [record] = closed
    assert (record.status, record.outcome, record.error_code) == (status, outcome, code)


def test_a_gateway_bug_answers_500_naming_the_request_id() -> None:
    acc, _ = account()
    error = acc.failed(ValueError("boom"))
    assert error is not None and error.status == 500
    assert "req-1" in error.message and "boom" not in error.message


def test_a_stream_keeps_the_status_its_client_already_got() -> None:
    acc, closed = account()
    acc.failed(UpstreamTimeout("quiet mid-stream"), 200)
    assert (closed[0].status, closed[0].outcome) == (200, "upstream_error")


def test_the_record_is_handed_on_exactly_once() -> None:
    acc, closed = account()
    acc.answered(200)
    acc.failed(KeyError("late"))
    acc.answered(500)
    assert len(closed) == 1 and closed[0].outcome == "ok"
    assert acc.closed


def test_what_the_request_was_is_kept() -> None:
    acc, closed = account()
    acc.caller("sales", Client("alice"))
    acc.request({"user": "u-7", "stream": True})
    acc.target(Target("p-1", "model", "fast", "mavera-1"))
    acc.first_byte()
    acc.usage(Usage(credits_used=2, input_tokens=3, output_tokens=4, upstream_id="chatcmpl_9"))
    acc.answered(200)
    record = closed[0]
    assert (record.client, record.route, record.end_user, record.stream) == (
        "alice",
        "sales",
        "u-7",
        True,
    )
    assert (record.persona_id, record.persona_source, record.requested_model) == (
        "p-1",
        "model",
        "fast",
    )
    assert (record.credits_used, record.upstream_request_id) == (2, "chatcmpl_9")
    assert record.ttfb_ms is not None and record.latency_ms is not None
    assert record.latency_ms >= record.ttfb_ms
