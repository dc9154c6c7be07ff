"""Wire formats: OpenAI-shape JSON bodies and pre-encoded SSE events for both endpoints.

Streams are built up front as a list of ``Event``s so that timing and faults (delays, cuts,
hangs) are applied by the delivery code without knowing the format. The event that carries
the usage object, or that completes a stream without one, is marked ``bill`` so the delivery
code charges exactly when it hands that event to the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sse_starlette import ServerSentEvent

from app.simulator.generate import Completion, new_id
from app.simulator.validate import MODEL, GenerationRequest


@dataclass(frozen=True)
class Event:
    """One SSE event as written to the wire; ``bill`` says whether sending it charges credits."""

    data: bytes
    bill: Literal["reported", "silent"] | None = None


def encode_event(payload: Any, event: str | None = None) -> bytes:
    """``[event: <name>\\n]data: <compact json>\\n\\n`` (a str payload is written as is)."""
    data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return ServerSentEvent(data, event=event, sep="\n").encode()


DONE = encode_event("[DONE]")


# Chat Completions (mavera-api.md section 5)


def chat_usage(done: Completion) -> dict[str, int]:
    """The chat ``usage`` object, with Mavera's ``credits_used``."""
    return {
        "prompt_tokens": done.input_tokens,
        "completion_tokens": done.output_tokens,
        "total_tokens": done.total_tokens,
        "credits_used": done.cost,
    }


def chat_completion(rid: str, created: int, done: Completion) -> dict[str, Any]:
    """The non-stream ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": done.text}
    finish_reason = "stop"
    if done.tool_call is not None:
        call = done.tool_call
        function = {"name": call.name, "arguments": call.arguments}
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call.call_id, "type": "function", "function": function}],
        }
        finish_reason = "tool_calls"
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": chat_usage(done),
    }


def chat_stream(rid: str, created: int, done: Completion, include_usage: bool) -> list[Event]:
    """Role chunk, content chunks, finish chunk, optional usage chunk, ``[DONE]``."""
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": MODEL}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> Event:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return Event(encode_event({**head, "choices": [choice]}))

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": delta}) for delta in done.deltas]
    events.append(chunk({}, "stop"))
    if include_usage:
        usage = {**head, "choices": [], "usage": chat_usage(done)}
        events.append(Event(encode_event(usage), bill="reported"))
        events.append(Event(DONE))
    else:
        # The real API still charges a stream that reports no usage; bill when it completes.
        events.append(Event(DONE, bill="silent"))
    return events


# Responses (mavera-api.md section 6)


def response_usage(done: Completion) -> dict[str, int]:
    """The Responses ``usage`` object, with Mavera's ``credits_used``."""
    return {
        "input_tokens": done.input_tokens,
        "output_tokens": done.output_tokens,
        "total_tokens": done.total_tokens,
        "credits_used": done.cost,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _message_item(msg_id: str, text: str | None) -> dict[str, Any]:
    """An assistant message item; ``text=None`` gives the in-progress item with no content."""
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "status": "in_progress" if text is None else "completed",
        "content": [] if text is None else [_text_part(text)],
    }


def response_object(rid: str, created: int, msg_id: str, done: Completion) -> dict[str, Any]:
    """The completed ``response`` object (non-stream body and ``response.completed`` payload)."""
    if done.tool_call is not None:
        call = done.tool_call
        item = {
            "type": "function_call",
            "id": call.item_id,
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
    else:
        item = _message_item(msg_id, done.text)
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": "completed",
        "model": MODEL,
        "output": [item],
        "usage": response_usage(done),
    }


def responses_stream(rid: str, created: int, msg_id: str, done: Completion) -> list[Event]:
    """Named events from ``response.created`` to ``response.completed``, then ``[DONE]``."""
    started = {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "model": MODEL,
        "output": [],
    }
    where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.output_item.added", {"output_index": 0, "item": _message_item(msg_id, None)}),
        ("response.content_part.added", {**where, "part": _text_part("")}),
    ]
    steps += [
        ("response.output_text.delta", {**where, "delta": d, "logprobs": []}) for d in done.deltas
    ]
    steps += [
        ("response.output_text.done", {**where, "text": done.text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": _text_part(done.text)}),
        (
            "response.output_item.done",
            {"output_index": 0, "item": _message_item(msg_id, done.text)},
        ),
        ("response.completed", {"response": response_object(rid, created, msg_id, done)}),
    ]
    events = []
    for seq, (kind, fields) in enumerate(steps):
        payload = {"type": kind, "sequence_number": seq, **fields}
        bill: Literal["reported"] | None = "reported" if kind == "response.completed" else None
        events.append(Event(encode_event(payload, kind), bill=bill))
    events.append(Event(DONE))
    return events


def render(
    req: GenerationRequest, rid: str, done: Completion
) -> tuple[bytes | None, list[Event] | None]:
    """The non-stream body or the stream events for a planned answer."""
    created = int(time.time())
    if req.kind == "chat":
        if req.stream:
            return None, chat_stream(rid, created, done, req.include_usage)
        return orjson.dumps(chat_completion(rid, created, done)), None
    msg_id = new_id("msg_")
    if req.stream:
        return None, responses_stream(rid, created, msg_id, done)
    return orjson.dumps(response_object(rid, created, msg_id, done)), None
