"""The Mavera wire formats the fake upstream speaks, encoded once at import.

Bodies and stream events follow `shared/mavera-api.md` sections 5 and 6, with the fields the
OpenAI SDK (and so LiteLLM) insists on. A stream is a head (sent at once), `chunks` content deltas
spaced `delay` apart, and a tail sent right after the last delta. Every event is pre-framed as one
HTTP/1.1 chunk, so the upstream only concatenates bytes at request time.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

CHAT = "chat"
RESPONSES = "responses"
DELTA_TEXT = "tok "
CREDITS = 3
CREATED = 1706345678
MODEL = "mavera-1"

_CHAT_USAGE = {"prompt_tokens": 12, "completion_tokens": 50, "total_tokens": 62}
_RESPONSES_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 50,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 62,
    "credits_used": CREDITS,
}
_MESSAGE_ID = "msg_benchbenchbench"


def _chat_completion() -> dict[str, object]:
    message = {"role": "assistant", "content": "Hello from the fake Mavera upstream."}
    return {
        "id": "chatcmpl_benchbenchbench",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {**_CHAT_USAGE, "credits_used": CREDITS},
    }


def _response(status: str, text: str | None) -> dict[str, object]:
    """A Responses API object; `text=None` leaves output empty (for in-progress events)."""
    output: list[object] = []
    if text is not None:
        content = [{"type": "output_text", "text": text, "annotations": []}]
        output = [
            {
                "id": _MESSAGE_ID,
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": content,
            }
        ]
    body: dict[str, object] = {
        "id": "resp_benchbenchbench",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": MODEL,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    if status == "completed":
        body["usage"] = _RESPONSES_USAGE
    return body


def http_head(status: str, content_type: str, extra: str) -> bytes:
    """A response status line and headers, ending with the blank line."""
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{extra}"
        "server: bench-fake-mavera\r\n\r\n"
    ).encode()


def json_reply(body: bytes, status: str = "200 OK") -> bytes:
    """A whole keep-alive JSON response, head and body."""
    return http_head(status, "application/json", f"content-length: {len(body)}\r\n") + body


def chunk(payload: bytes) -> bytes:
    """`payload` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def sse(data: object, event: str | None = None) -> bytes:
    """One SSE event: optional `event:` line, one `data:` line, blank line."""
    encoded = data.encode() if isinstance(data, str) else orjson.dumps(data)
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + encoded + b"\n\n"


def _chat_chunk(delta: dict[str, object], finish: str | None) -> dict[str, object]:
    return {
        "id": "chatcmpl_benchbenchbench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _typed(kind: str, **fields: object) -> bytes:
    return sse({"type": kind, **fields}, kind)


@dataclass(frozen=True, slots=True)
class StreamShape:
    """The pre-framed events of one stream format."""

    head: tuple[bytes, ...]
    delta: bytes
    tail: tuple[bytes, ...]
    usage: bytes | None  # chat only: the usage-only chunk sent for `include_usage`
    head_names: tuple[str | None, ...]
    delta_name: str | None
    tail_names: tuple[str | None, ...]

    def names(self, chunks: int) -> tuple[str | None, ...]:
        """The `event:` names a client should see, in order (None: unnamed event)."""
        return self.head_names + (self.delta_name,) * chunks + self.tail_names


def _chat_shape() -> StreamShape:
    usage = {**_CHAT_USAGE, "credits_used": CREDITS}
    usage_chunk = {**_chat_chunk({}, None), "choices": [], "usage": usage}
    return StreamShape(
        head=(chunk(sse(_chat_chunk({"role": "assistant", "content": ""}, None))),),
        delta=chunk(sse(_chat_chunk({"content": DELTA_TEXT}, None))),
        tail=(chunk(sse(_chat_chunk({}, "stop"))), chunk(sse("[DONE]"))),
        usage=chunk(sse(usage_chunk)),
        head_names=(None,),
        delta_name=None,
        tail_names=(None, None),
    )


def _responses_shape() -> StreamShape:
    part = {"type": "output_text", "text": "", "annotations": []}
    item = {
        "id": _MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    done_item = _response("completed", DELTA_TEXT * 50)["output"]
    assert isinstance(done_item, list)
    where = {"item_id": _MESSAGE_ID, "output_index": 0, "content_index": 0}
    head = (
        _typed("response.created", response=_response("in_progress", None)),
        _typed("response.output_item.added", output_index=0, item=item),
        _typed("response.content_part.added", part=part, **where),
    )
    tail = (
        _typed("response.output_text.done", text=DELTA_TEXT * 50, **where),
        _typed("response.output_item.done", output_index=0, item=done_item[0]),
        _typed("response.completed", response=_response("completed", DELTA_TEXT * 50)),
        sse("[DONE]"),
    )
    return StreamShape(
        head=tuple(chunk(e) for e in head),
        delta=chunk(_typed("response.output_text.delta", delta=DELTA_TEXT, **where)),
        tail=tuple(chunk(e) for e in tail),
        usage=None,
        head_names=(
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
        ),
        delta_name="response.output_text.delta",
        tail_names=(
            "response.output_text.done",
            "response.output_item.done",
            "response.completed",
            None,
        ),
    )


CHAT_REPLY = json_reply(orjson.dumps(_chat_completion()))
RESPONSES_REPLY = json_reply(orjson.dumps(_response("completed", "Hello from the fake Mavera.")))
STREAM_HEAD = http_head(
    "200 OK", "text/event-stream", "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
)
STREAM_END = b"0\r\n\r\n"
SHAPES = {CHAT: _chat_shape(), RESPONSES: _responses_shape()}
