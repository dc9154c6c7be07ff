"""Is a received stream complete and intact? Pure functions over the chunk frames a client saw.

Two levels are checked. Events (blank-line-terminated SSE blocks) must match what the fake
upstream sends in count, `event:` names and order: that is the "no chunk merged or split" target.
Transfer frames are also counted: a frame holding two events (merged) or ending inside one
(split) shows how a proxy re-framed the stream. The upstream sends one event per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from bench.wire import CHAT, RESPONSES, SHAPES


@dataclass(frozen=True, slots=True)
class StreamCheck:
    """What one stream delivered."""

    events: int
    deltas: int
    names: tuple[str | None, ...]
    done: bool  # ended with `data: [DONE]`
    credits: bool  # a response.completed event carried usage.credits_used
    usage_leaked: bool  # a chat usage-only chunk the client never asked for
    frames: int
    frames_merged: int  # events beyond the first completed within one frame
    frames_split: int  # frames that ended inside an event

    def complete(self, endpoint: str, chunks: int) -> bool:
        """Every delta, the end marker, and on Responses the credits; nothing extra."""
        credits_ok = self.credits or endpoint != RESPONSES
        return self.deltas == chunks and self.done and credits_ok and not self.usage_leaked

    def intact(self, endpoint: str, chunks: int) -> bool:
        """Same events, same names, same order as the upstream sent (as `direct` receives)."""
        expected = SHAPES[endpoint].names(chunks)
        return self.events == len(expected) and self.names == expected


def check_stream(endpoint: str, frames: list[bytes]) -> StreamCheck:
    """Split the frames into events and inspect each one."""
    events: list[bytes] = []
    pending = b""
    merged = split = 0
    for frame in frames:
        pending += frame.replace(b"\r\n", b"\n")
        *finished, pending = pending.split(b"\n\n")
        events.extend(finished)
        merged += max(0, len(finished) - 1)
        split += bool(pending)
    if pending.strip():
        events.append(pending)
    names: list[str | None] = []
    deltas = 0
    credits = leaked = False
    for block in events:
        name, data = _fields(block)
        names.append(name)
        payload = _json(data)
        if payload is None:
            continue
        if endpoint == CHAT:
            deltas += _chat_delta(payload)
            leaked = leaked or (payload.get("choices") == [] and "usage" in payload)
        elif payload.get("type") == "response.output_text.delta":
            deltas += 1
        elif payload.get("type") == "response.completed":
            usage = (payload.get("response") or {}).get("usage") or {}
            credits = credits or usage.get("credits_used") is not None
    done = bool(events) and _fields(events[-1])[1] == "[DONE]"
    return StreamCheck(
        events=len(events),
        deltas=deltas,
        names=tuple(names),
        done=done,
        credits=credits,
        usage_leaked=leaked,
        frames=len(frames),
        frames_merged=merged,
        frames_split=split,
    )


def _fields(block: bytes) -> tuple[str | None, str | None]:
    name: str | None = None
    data: list[str] = []
    for line in block.decode("utf-8", "replace").split("\n"):
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return name, "\n".join(data) if data else None


def _json(data: str | None) -> dict[str, Any] | None:
    if data is None or data == "[DONE]":
        return None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _chat_delta(payload: dict[str, Any]) -> int:
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return 0
    delta = choices[0].get("delta")
    return int(isinstance(delta, dict) and bool(delta.get("content")))
