"""The stream relay on its own: a scripted upstream answer, ASGI send/receive, no server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from app.accounting import RequestAccount
from app.errors import UpstreamStreamCut, UpstreamTimeout
from app.records import UsageRecord
from app.relay import StreamRelay
from app.usage import CHAT, RESPONSES


def chat_chunk(text: str) -> bytes:
    payload = {"id": "chatcmpl_1", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


USAGE_CHUNK = b'data: {"id":"chatcmpl_1","choices":[],"usage":{"credits_used":3}}\n\n'
DONE = b"data: [DONE]\n\n"


class ScriptedReply:
    """An upstream answer that yields the given chunks, then raises `failure` if one is set."""

    def __init__(
        self, chunks: list[bytes], failure: BaseException | None = None, hold: bool = False
    ) -> None:
        self.status_code = 200
        self.headers = {"content-type": "text/event-stream"}
        self._chunks = chunks
        self._failure = failure
        self._hold = hold  # after the chunks, wait forever (an upstream still working)
        self.closed = False
        self.taken = 0  # chunks the relay has asked for

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            await asyncio.sleep(0)
            self.taken += 1
            yield chunk
        if self._failure is not None:
            raise self._failure
        if self._hold:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


class Client:
    """The ASGI side: what was sent, and a switch that makes the client hang up."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.got_body = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if message.get("body"):
            self.got_body.set()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def ended(self) -> bool:
        return self.messages[-1].get("more_body") is False


def relay(
    reply: ScriptedReply,
    endpoint: str = CHAT,
    drop_usage_chunk: bool = False,
    max_event_bytes: int = 1 << 20,
) -> tuple[StreamRelay, list[UsageRecord]]:
    closed: list[UsageRecord] = []
    account = RequestAccount(endpoint, "req-1", closed.append)
    response = StreamRelay(
        reply,  # type: ignore[arg-type]  # the relay needs only status, headers, chunks, aclose
        {"x-request-id": "req-1"},
        account,
        endpoint=endpoint,
        drop_usage_chunk=drop_usage_chunk,
        max_event_bytes=max_event_bytes,
    )
    return response, closed


def run(response: StreamRelay, client: Client) -> None:
    asyncio.run(response({"type": "http"}, client.receive, client.send))


def leave_after_first_body(response: StreamRelay, client: Client) -> None:
    """Run the relay until the client has some of the body, then make the client hang up."""

    async def scenario() -> None:
        task = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        await client.got_body.wait()
        client.gone.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_a_stream_goes_through_byte_for_byte_and_is_booked_once() -> None:
    chunks = [chat_chunk("Hel"), chat_chunk("lo") + USAGE_CHUNK[:20], USAGE_CHUNK[20:], DONE]
    reply = ScriptedReply(chunks)
    response, closed = relay(reply)
    client = Client()
    run(response, client)
    start = client.messages[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert [m["body"] for m in client.messages[1:-1]] == chunks, "chunk boundaries kept"
    assert client.ended and client.messages[-1]["body"] == b""
    [record] = closed
    assert (record.outcome, record.status, record.credits_used) == ("ok", 200, 3)
    assert record.upstream_request_id == "chatcmpl_1"
    assert record.ttfb_ms is not None and record.latency_ms is not None
    assert reply.closed


def test_the_usage_chunk_the_gateway_asked_for_is_dropped_but_counted() -> None:
    reply = ScriptedReply([chat_chunk("Hi"), USAGE_CHUNK, DONE])
    response, closed = relay(reply, drop_usage_chunk=True)
    client = Client()
    run(response, client)
    assert client.body == chat_chunk("Hi") + DONE
    assert closed[0].credits_used == 3


def test_a_cut_between_events_ends_with_an_error_event_in_the_stream_format() -> None:
    cut = UpstreamStreamCut("Mavera cut its answer short: connection reset")
    reply = ScriptedReply([chat_chunk("Hi")], failure=cut)
    response, closed = relay(reply)
    client = Client()
    run(response, client)
    assert client.ended
    last = client.messages[-1]["body"]
    assert last.startswith(b"data: ") and last.endswith(b"\n\n")
    error = orjson.loads(last[6:])["error"]
    assert error["code"] == "upstream_stream_cut" and "connection reset" in error["message"]
    [record] = closed
    assert (record.outcome, record.error_code) == ("upstream_error", "upstream_stream_cut")
    assert reply.closed


def test_a_responses_stream_cut_gets_an_error_event_line() -> None:
    reply = ScriptedReply([b"event: response.created\ndata: {}\n\n"], failure=UpstreamTimeout("x"))
    response, closed = relay(reply, endpoint=RESPONSES)
    client = Client()
    run(response, client)
    assert client.messages[-1]["body"].startswith(b"event: error\ndata: ")
    assert (closed[0].outcome, closed[0].error_code) == ("upstream_error", "upstream_timeout")


def test_a_cut_inside_an_event_leaves_the_body_incomplete() -> None:
    reply = ScriptedReply([chat_chunk("Hi")[:10]], failure=UpstreamStreamCut("reset"))
    response, closed = relay(reply)
    client = Client()
    run(response, client)
    assert not client.ended, "appending to a half-sent event would corrupt it"
    assert client.body == chat_chunk("Hi")[:10]
    assert closed[0].outcome == "upstream_error"


def test_a_client_that_leaves_mid_stream_is_booked_as_disconnected() -> None:
    reply = ScriptedReply([chat_chunk("Hi")], hold=True)
    response, closed = relay(reply)
    client = Client()
    leave_after_first_body(response, client)
    [record] = closed
    assert (record.outcome, record.error_code) == ("client_disconnected", "client_disconnected")
    assert record.credits_used is None
    assert reply.closed, "the upstream answer is closed when the client goes"


def test_a_client_that_hangs_up_after_the_last_event_is_ok() -> None:
    reply = ScriptedReply([chat_chunk("Hi"), USAGE_CHUNK, DONE], hold=True)
    response, closed = relay(reply)
    client = Client()

    async def scenario() -> None:
        task = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        while DONE not in client.body:
            await asyncio.sleep(0.001)
        client.gone.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert (closed[0].outcome, closed[0].credits_used) == ("ok", 3)


def test_a_bug_inside_the_pump_is_the_gateways_fault() -> None:
    reply = ScriptedReply([chat_chunk("Hi")], failure=KeyError("a gateway bug"))
    response, closed = relay(reply)
    run(response, Client())
    [record] = closed
    assert (record.outcome, record.error_code) == ("gateway_error", "internal_error")
    assert reply.closed


def test_a_stream_cancelled_by_shutdown_is_booked_as_shutdown() -> None:
    reply = ScriptedReply([chat_chunk("Hi")], hold=True)
    response, closed = relay(reply)
    client = Client()

    async def scenario() -> None:
        task = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        await client.got_body.wait()
        task.cancel()  # what uvicorn does when a shutdown runs past its grace period
        await asyncio.wait_for(task, 5)  # the relay says so to the client and ends cleanly

    asyncio.run(scenario())
    [record] = closed
    assert (record.outcome, record.status, record.error_code) == ("shutdown", 200, "shutdown")
    assert reply.closed
    assert client.ended
    error = orjson.loads(client.messages[-1]["body"][len(b"data: ") :])["error"]
    assert (error["code"], error["type"]) == ("shutdown", "server_error")


def test_an_event_over_the_limit_across_chunks_cuts_the_stream_and_the_upstream() -> None:
    big = b"data: " + b"x" * 5000 + b"\n\n"
    chunks = [chat_chunk("Hi"), big[:2000], big[2000:4000], big[4000:], DONE]
    reply = ScriptedReply(chunks)
    response, closed = relay(reply, max_event_bytes=3000)
    client = Client()
    run(response, client)
    assert client.body == chat_chunk("Hi") + big[:2000], "forwarded as it came, until the limit"
    assert not client.ended, "the half-sent event is not completed with an error event"
    assert reply.taken == 3, "nothing more is read from the upstream"
    assert reply.closed
    [record] = closed
    assert (record.outcome, record.error_code) == ("upstream_error", "upstream_event_too_large")


def test_no_newline_ever_is_cut_at_the_limit() -> None:
    chunks = [b"data: "] + [b"y" * 4096] * 100
    reply = ScriptedReply(chunks)
    response, closed = relay(reply, max_event_bytes=16 * 1024)
    run(response, Client())
    assert reply.taken == 5, "cut at the first chunk past 16 KiB"
    assert reply.closed
    assert closed[0].error_code == "upstream_event_too_large"


@pytest.mark.parametrize("drop_usage_chunk", [False, True])
def test_an_oversized_event_that_arrives_whole_gets_an_error_event(drop_usage_chunk: bool) -> None:
    big = b"data: " + b"x" * 5000 + b"\n\n"
    reply = ScriptedReply([chat_chunk("Hi"), USAGE_CHUNK + chat_chunk("there") + big, DONE])
    response, closed = relay(reply, drop_usage_chunk=drop_usage_chunk, max_event_bytes=3000)
    client = Client()
    run(response, client)
    assert client.ended
    kept = b"" if drop_usage_chunk else USAGE_CHUNK
    error_event = client.messages[-1]["body"]
    assert client.body == chat_chunk("Hi") + kept + chat_chunk("there") + error_event
    error = orjson.loads(error_event.removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_event_too_large" and "3000 bytes" in error["message"]
    [record] = closed
    assert (record.outcome, record.error_code) == ("upstream_error", "upstream_event_too_large")
    assert record.credits_used == 3, "usage seen before the cut is kept"
    assert reply.closed


def test_a_responses_stream_with_an_oversized_event_gets_an_error_event_line() -> None:
    created = b'event: response.created\ndata: {"type":"response.created"}\n\n'
    big = b"event: response.output_text.delta\ndata: " + b"x" * 5000 + b"\n\n"
    reply = ScriptedReply([created, big])
    response, closed = relay(reply, endpoint=RESPONSES, max_event_bytes=3000)
    client = Client()
    run(response, client)
    last = client.messages[-1]["body"]
    assert client.body == created + last
    assert last.startswith(b"event: error\ndata: ")
    assert orjson.loads(last.split(b"data: ", 1)[1])["code"] == "upstream_event_too_large"
    assert closed[0].error_code == "upstream_event_too_large"


def closing_event(kind: str) -> bytes:
    status = kind.removeprefix("response.")
    usage = {"input_tokens": 4, "output_tokens": 2, "credits_used": 2}
    payload = {"type": kind, "response": {"id": "resp_9", "status": status, "usage": usage}}
    return f"event: {kind}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


@pytest.mark.parametrize("kind", ["response.failed", "response.incomplete"])
def test_a_responses_stream_that_fails_or_stops_early_books_its_usage(kind: str) -> None:
    created = b'event: response.created\ndata: {"type":"response.created"}\n\n'
    reply = ScriptedReply([created, closing_event(kind)])
    response, closed = relay(reply, endpoint=RESPONSES)
    client = Client()
    run(response, client)
    assert client.body == created + closing_event(kind)
    [record] = closed
    assert (record.credits_used, record.input_tokens, record.output_tokens) == (2, 4, 2)
    assert record.upstream_request_id == "resp_9"


@pytest.mark.parametrize("kind", ["response.failed", "response.incomplete"])
def test_a_client_that_hangs_up_after_a_failed_or_incomplete_event_is_ok(kind: str) -> None:
    reply = ScriptedReply([closing_event(kind)], hold=True)
    response, closed = relay(reply, endpoint=RESPONSES)
    client = Client()
    leave_after_first_body(response, client)
    [record] = closed
    assert (record.outcome, record.credits_used) == ("ok", 2)
    assert reply.closed
