"""Usage extraction from Mavera bodies and stream events; unknown stays None, never 0."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from app.sse import SSEEvent, SSEScanner
from app.usage import (
    CHAT,
    RESPONSES,
    Usage,
    ask_for_stream_usage,
    usage_from_body,
    usage_from_event,
    usage_from_object,
)


def event(data: Any, name: str | None = None) -> SSEEvent:
    """A real scanned event, as the relay would see it."""
    head = f"event: {name}\n" if name else ""
    text = data if isinstance(data, str) else json.dumps(data)
    (found,) = SSEScanner().feed(f"{head}data: {text}\n\n".encode())
    return found


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


# --- non-streamed bodies --------------------------------------------------------------------


def test_chat_body_prompt_and_completion_tokens() -> None:
    payload = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 34,
            "total_tokens": 46,
            "credits_used": 3,
        },
    }
    assert usage_from_body(body(payload)) == Usage(
        credits_used=3, input_tokens=12, output_tokens=34
    )


def test_responses_body_input_and_output_tokens() -> None:
    payload = {
        "object": "response",
        "output": [],
        "usage": {"input_tokens": 42, "output_tokens": 68, "total_tokens": 110, "credits_used": 5},
    }
    assert usage_from_body(body(payload)) == Usage(
        credits_used=5, input_tokens=42, output_tokens=68
    )


def test_body_without_usage_is_none() -> None:
    assert usage_from_body(body({"object": "chat.completion", "choices": []})) is None


def test_body_with_null_usage_is_none() -> None:
    assert usage_from_body(body({"object": "chat.completion", "usage": None})) is None


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b'{"usage": {"credits_used": 3}', b"<html>usage</html>", b'"usage"'],
)
def test_non_json_or_truncated_body_is_none(raw: bytes) -> None:
    assert usage_from_body(raw) is None


def test_json_that_is_not_an_object_is_none() -> None:
    assert usage_from_body(b'["usage", {"credits_used": 1}]') is None


def test_credits_absent_stays_none_not_zero() -> None:
    usage = usage_from_body(body({"usage": {"prompt_tokens": 1, "completion_tokens": 2}}))
    assert usage is not None
    assert usage.credits_used is None
    assert (usage.input_tokens, usage.output_tokens) == (1, 2)


def test_tokens_absent_stay_none() -> None:
    assert usage_from_body(body({"usage": {"credits_used": 7}})) == Usage(credits_used=7)


def test_zero_credits_stays_zero() -> None:
    usage = usage_from_body(body({"usage": {"credits_used": 0}}))
    assert usage is not None
    assert usage.credits_used == 0


def test_float_credits_are_kept() -> None:
    usage = usage_from_body(body({"usage": {"credits_used": 2.5}}))
    assert usage is not None
    assert usage.credits_used == 2.5
    assert isinstance(usage.credits_used, float)


@pytest.mark.parametrize("bad", ["3", True, None, [3], {"n": 3}])
def test_non_numeric_credits_are_unknown(bad: Any) -> None:
    usage = usage_from_body(body({"usage": {"credits_used": bad, "prompt_tokens": 1}}))
    assert usage is not None
    assert usage.credits_used is None


def test_non_integer_tokens_are_unknown() -> None:
    usage = usage_from_object({"prompt_tokens": 1.5, "completion_tokens": "2", "credits_used": 1})
    assert usage == Usage(credits_used=1)


def test_usage_from_object_rejects_non_objects() -> None:
    assert usage_from_object(None) is None
    assert usage_from_object([1, 2]) is None
    assert usage_from_object(3) is None


# --- stream events --------------------------------------------------------------------------


def test_chat_usage_only_chunk() -> None:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "credits_used": 2},
    }
    usage, usage_only = usage_from_event(CHAT, event(chunk))
    assert usage == Usage(credits_used=2, input_tokens=5, output_tokens=9)
    assert usage_only is True


def test_chat_chunk_with_usage_and_choices_is_not_usage_only() -> None:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"credits_used": 2},
    }
    usage, usage_only = usage_from_event(CHAT, event(chunk))
    assert usage == Usage(credits_used=2)
    assert usage_only is False


def test_chat_chunk_with_null_usage() -> None:
    chunk: dict[str, Any] = {
        "object": "chat.completion.chunk",
        "choices": [{"delta": {}}],
        "usage": None,
    }
    assert usage_from_event(CHAT, event(chunk)) == (None, False)


def test_chat_chunk_without_usage() -> None:
    chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}]}
    assert usage_from_event(CHAT, event(chunk)) == (None, False)


def test_chat_content_that_mentions_usage_is_not_usage() -> None:
    chunk = {"choices": [{"delta": {"content": 'the "usage" field'}}]}
    assert usage_from_event(CHAT, event(chunk)) == (None, False)


@pytest.mark.parametrize("data", ["[DONE]", '{"usage": ', '["usage"]'])
def test_chat_done_and_garbage_events(data: str) -> None:
    assert usage_from_event(CHAT, event(data)) == (None, False)


def test_comment_event_has_no_usage() -> None:
    (ping,) = SSEScanner().feed(b": ping\n\n")
    assert usage_from_event(CHAT, ping) == (None, False)
    assert usage_from_event(RESPONSES, ping) == (None, False)


def completed(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "response.completed",
        "response": {"id": "resp_1", "status": "completed", "usage": usage},
    }


def test_responses_completed_event_carries_usage() -> None:
    data = completed({"input_tokens": 42, "output_tokens": 68, "credits_used": 3})
    usage, usage_only = usage_from_event(RESPONSES, event(data, "response.completed"))
    assert usage == Usage(credits_used=3, input_tokens=42, output_tokens=68, upstream_id="resp_1")
    assert usage_only is False


def test_responses_completed_without_event_line() -> None:
    data = completed({"credits_used": 1.25})
    assert usage_from_event(RESPONSES, event(data)) == (
        Usage(credits_used=1.25, upstream_id="resp_1"),
        False,
    )


@pytest.mark.parametrize(
    ("name", "data"),
    [
        (
            "response.created",
            {"type": "response.created", "response": {"usage": {"credits_used": 9}}},
        ),
        (
            "response.in_progress",
            {"type": "response.in_progress", "response": {"usage": {"credits_used": 9}}},
        ),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "usage"}),
        # the type field decides when the event line is missing
        (None, {"type": "response.created", "response": {"usage": {"credits_used": 9}}}),
        # an event line that disagrees with the payload is not trusted
        ("response.created", completed({"credits_used": 9})),
    ],
)
def test_other_responses_events_carry_no_usage(name: str | None, data: dict[str, Any]) -> None:
    assert usage_from_event(RESPONSES, event(data, name)) == (None, False)


@pytest.mark.parametrize(
    ("kind", "status"),
    [("response.failed", "failed"), ("response.incomplete", "incomplete")],
)
@pytest.mark.parametrize("with_event_line", [True, False])
def test_responses_failed_and_incomplete_events_carry_usage(
    kind: str, status: str, with_event_line: bool
) -> None:
    # Both end the stream in place of response.completed, with the whole response: credits
    # spent on a run that failed or stopped at max_output_tokens are still spent.
    usage = {"input_tokens": 7, "output_tokens": 3, "credits_used": 2}
    data = {"type": kind, "response": {"id": "resp_2", "status": status, "usage": usage}}
    found = usage_from_event(RESPONSES, event(data, kind if with_event_line else None))
    assert found == (
        Usage(credits_used=2, input_tokens=7, output_tokens=3, upstream_id="resp_2"),
        False,
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("response.failed", "response.completed"),
        ("response.completed", "response.incomplete"),
        (None, ["response.failed"]),
        (None, {"response": "failed"}),
    ],
)
def test_closing_events_whose_line_and_type_disagree_carry_no_usage(
    name: str | None, kind: Any
) -> None:
    data = {"type": kind, "response": {"usage": {"credits_used": 9}}}
    assert usage_from_event(RESPONSES, event(data, name)) == (None, False)


def test_responses_failed_with_null_usage_is_unknown() -> None:
    data = {"type": "response.failed", "response": {"status": "failed", "usage": None}}
    assert usage_from_event(RESPONSES, event(data, "response.failed")) == (None, False)


def test_responses_completed_without_response_object() -> None:
    data = {"type": "response.completed", "usage": {"credits_used": 3}}
    assert usage_from_event(RESPONSES, event(data, "response.completed")) == (None, False)


# --- asking for stream usage ----------------------------------------------------------------


def test_ask_adds_include_usage_when_absent() -> None:
    request: dict[str, Any] = {"model": "m", "stream": True}
    assert ask_for_stream_usage(request) is True
    assert request == {"model": "m", "stream": True, "stream_options": {"include_usage": True}}


def test_ask_overrides_include_usage_false() -> None:
    request: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": False}}
    assert ask_for_stream_usage(request) is True
    assert request["stream_options"] == {"include_usage": True}


def test_ask_replaces_null_stream_options() -> None:
    request: dict[str, Any] = {"stream": True, "stream_options": None}
    assert ask_for_stream_usage(request) is True
    assert request["stream_options"] == {"include_usage": True}


def test_ask_keeps_other_stream_options() -> None:
    request: dict[str, Any] = {"stream": True, "stream_options": {"include_obfuscation": False}}
    assert ask_for_stream_usage(request) is True
    assert request["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_client_asked_itself_body_unchanged() -> None:
    request: dict[str, Any] = {
        "stream": True,
        "stream_options": {"include_usage": True, "other": 1},
        "extra": [1, 2],
    }
    before = copy.deepcopy(request)
    assert ask_for_stream_usage(request) is False
    assert request == before


def test_the_answer_id_comes_with_the_usage() -> None:
    # Mavera documents no request-id header: its answer id is what its support can look up.
    chat = body({"id": "chatcmpl_abc", "object": "chat.completion", "usage": {"credits_used": 2}})
    assert usage_from_body(chat) == Usage(credits_used=2, upstream_id="chatcmpl_abc")
    chunk = '{"id":"chatcmpl_s","choices":[],"usage":{"credits_used":1}}'
    assert usage_from_event(CHAT, event(chunk)) == (
        Usage(credits_used=1, upstream_id="chatcmpl_s"),
        True,
    )
    not_a_string = body({"id": 7, "usage": {"credits_used": 2}})
    assert usage_from_body(not_a_string) == Usage(credits_used=2)
