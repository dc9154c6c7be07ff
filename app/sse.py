"""Incremental server-sent-events scanner: finds event boundaries in a byte stream as it arrives.

It only observes. The relay forwards the upstream's bytes itself; the scanner tells it where each
event starts and ends (so usage can be read, or one event dropped) without re-framing anything.
Follows the WHATWG rules: lines end in CRLF, LF or CR; a blank line ends an event; lines that
start with ':' are comments; several `data:` lines join with '\\n'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class SSEEvent:
    """One blank-line-terminated block of the stream, with its exact bytes."""

    raw: bytes
    event: str | None = None
    data: str | None = None


class SSEScanner:
    """Feed it chunks; it returns the events each chunk completes."""

    __slots__ = ("_buffer", "_line_start", "_event", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._line_start = 0
        self._event: str | None = None
        self._data: list[str] | None = None

    @property
    def pending(self) -> bytes:
        """Bytes received that do not yet belong to a complete event."""
        return self._buffer

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume one chunk; return the events it completed, in order."""
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        event_start = 0
        position = self._line_start
        while True:
            match = _LINE_END.search(buffer, position)
            if match is None:
                break
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # a CR at the end may be the first half of a CRLF still in flight
            line = buffer[position : match.start()]
            position = match.end()
            if line:
                self._field(line)
                continue
            events.append(SSEEvent(buffer[event_start:position], self._event, self._joined()))
            event_start = position
            self._event = None
            self._data = None
        self._buffer = buffer[event_start:]
        self._line_start = position - event_start
        return events

    def _field(self, line: bytes) -> None:
        if line.startswith(b":"):
            return
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            text = value.decode("utf-8", "replace")
            if self._data is None:
                self._data = [text]
            else:
                self._data.append(text)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

    def _joined(self) -> str | None:
        if self._data is None:
            return None
        return self._data[0] if len(self._data) == 1 else "\n".join(self._data)
