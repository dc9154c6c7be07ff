"""Read credits and token counts out of Mavera responses and stream events. Pure functions.

Chat bodies count tokens as prompt/completion, Responses bodies as input/output; both carry
`usage.credits_used`. Absent numbers stay None: "unknown" is never written down as 0.
A Responses stream ends with one of three events, each carrying the whole response and its usage:
`response.completed`, `response.failed` (the model run failed, possibly after spending credits)
or `response.incomplete` (stopped early, e.g. at max_output_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.sse import SSEEvent

CHAT = "chat.completions"
RESPONSES = "responses"
RESPONSES_FINAL_EVENTS = frozenset(("response.completed", "response.failed", "response.incomplete"))


@dataclass(frozen=True, slots=True)
class Usage:
    """What one request cost, as far as the upstream told us."""

    credits_used: int | float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    upstream_id: str | None = None  # Mavera's id of the answer (chatcmpl_..., resp_...)


def usage_from_object(usage: Any, answer_id: Any = None) -> Usage | None:
    """Usage from a `usage` object of either format; None if it is not one."""
    if not isinstance(usage, dict):
        return None
    return Usage(
        credits_used=_number(usage.get("credits_used")),
        input_tokens=_integer(usage.get("input_tokens", usage.get("prompt_tokens"))),
        output_tokens=_integer(usage.get("output_tokens", usage.get("completion_tokens"))),
        upstream_id=answer_id if isinstance(answer_id, str) else None,
    )


def usage_from_body(body: bytes) -> Usage | None:
    """Usage from a non-streamed response body (chat or responses)."""
    if b'"usage"' not in body:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    return usage_from_object(parsed.get("usage"), parsed.get("id"))


def usage_from_event(endpoint: str, event: SSEEvent) -> tuple[Usage | None, bool]:
    """Usage carried by one stream event, and whether the event is a usage-only chat chunk.

    A usage-only chunk (`choices: []` plus `usage`) is the one the upstream adds for
    `stream_options.include_usage`; the relay drops it when the gateway, not the client, asked.
    """
    data = event.data
    if data is None or '"usage"' not in data:
        return None, False
    if endpoint == RESPONSES and event.event not in (None, *RESPONSES_FINAL_EVENTS):
        return None, False
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, False
    if not isinstance(parsed, dict):
        return None, False
    if endpoint == RESPONSES:
        kind, response = parsed.get("type"), parsed.get("response")
        closing = isinstance(kind, str) and kind in RESPONSES_FINAL_EVENTS
        # an event line that disagrees with the payload's type is not trusted
        if not closing or event.event not in (None, kind) or not isinstance(response, dict):
            return None, False
        return usage_from_object(response.get("usage"), response.get("id")), False
    usage = usage_from_object(parsed.get("usage"), parsed.get("id"))
    return usage, usage is not None and parsed.get("choices") == []


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ask_for_stream_usage(body: dict[str, Any]) -> bool:
    """Make a chat stream request carry usage; True when the client had not asked for it itself."""
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    body["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return True
