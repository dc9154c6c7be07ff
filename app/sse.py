"""Incremental server-sent-events scanner: finds event boundaries in a byte stream as it arrives.

It only observes. The relay forwards the upstream's bytes itself; the scanner tells it where each
event starts and ends (so usage can be read, or one event dropped) without re-framing anything.
Follows the WHATWG rules: lines end in CRLF, LF or CR; a blank line ends an event; lines that
start with ':' are comments; several `data:` lines join with '\\n'.

The cost is linear in the bytes fed: each chunk is searched once, from where the last line ended,
and the unfinished event is kept as the chunks it arrived in, joined once when it completes (a
line spanning chunks is joined once, when it ends). With `max_event_bytes` set, an event larger
than that, or an unfinished one already larger, raises EventTooLarge, so memory stays bounded by
about that limit even when no newline ever comes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")
_CR = 0x0D
_LF = 0x0A


@dataclass(slots=True)
class SSEEvent:
    """One blank-line-terminated block of the stream, with its exact bytes."""

    raw: bytes
    event: str | None = None
    data: str | None = None


class EventTooLarge(Exception):
    """An event, or the unfinished event still arriving, is larger than the scanner's limit.

    `events` are the ones the chunk completed before the limit was passed, in order; the scanner
    must not be fed again afterwards.
    """

    def __init__(self, size: int, limit: int, events: list[SSEEvent]) -> None:
        super().__init__(f"a stream event of {size} bytes or more, over the limit of {limit}")
        self.size = size
        self.limit = limit
        self.events = events


class SSEScanner:
    """Feed it chunks; it returns the events each chunk completes."""

    __slots__ = ("_limit", "_parts", "_size", "_line", "_cr", "_blank", "_event", "_data")

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._limit = max_event_bytes
        self._parts: list[bytes] = []  # the unfinished event's bytes, in the pieces they came in
        self._size = 0
        # Where the unfinished line starts (index into _parts, offset) when it began in an
        # earlier chunk; None when it starts in the next chunk fed.
        self._line: tuple[int, int] | None = None
        # The last byte received is a CR: a line end for sure, but whether it is one byte or the
        # first of a CRLF is decided by the next byte. _blank: the line it ended was blank, so it
        # also ends an event whose last byte is not known yet.
        self._cr = False
        self._blank = False
        self._event: str | None = None
        self._data: list[str] | None = None

    @property
    def pending(self) -> bytes:
        """Bytes received that do not yet belong to a complete event."""
        return b"".join(self._parts)

    @property
    def pending_size(self) -> int:
        """How many bytes `pending` holds, without joining them."""
        return self._size

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume one chunk; return the events it completed, in order.

        Raises EventTooLarge when the scanner has a limit and an event passes it.
        """
        events: list[SSEEvent] = []
        if not chunk:
            return events
        end = len(chunk)
        position = start = 0  # where the next line and the unfinished event start in `chunk`
        if self._cr:
            self._cr = False
            if chunk[0] == _LF:
                position = 1  # the second half of a CRLF whose line was already read
            if self._blank:
                self._blank = False
                self._complete(events, chunk, 0, position)
                start = position
        while (match := _LINE_END.search(chunk, position)) is not None:
            line = self._take_line(chunk, position, match.start())
            position = match.end()
            if position == end and chunk[-1] == _CR:
                self._cr = True
                if line:
                    self._field(line)
                else:
                    self._blank = True
                break
            if line:
                self._field(line)
                continue
            self._complete(events, chunk, start, position)
            start = position
        self._keep(chunk, start, position)
        if self._limit is not None and self._size > self._limit:
            raise EventTooLarge(self._size, self._limit, events)
        return events

    def _take_line(self, chunk: bytes, position: int, stop: int) -> bytes:
        """The line that ends at `stop` in `chunk`, joined with its start in earlier chunks."""
        if self._line is None:
            return chunk[position:stop]
        index, offset = self._line
        self._line = None
        first = self._parts[index]
        head = first[offset:] if offset else first
        return b"".join([head, *self._parts[index + 1 :], chunk[:stop]])

    def _complete(self, events: list[SSEEvent], chunk: bytes, start: int, stop: int) -> None:
        """Append the event that ends at `stop` in `chunk` (and began at `start` or earlier)."""
        if self._parts:
            raw = b"".join([*self._parts, chunk[:stop]])
            self._parts = []
            self._size = 0
        else:
            raw = chunk[start:stop]
        if self._limit is not None and len(raw) > self._limit:
            raise EventTooLarge(len(raw), self._limit, events)
        events.append(SSEEvent(raw, self._event, self._joined()))
        self._event = None
        self._data = None

    def _keep(self, chunk: bytes, start: int, position: int) -> None:
        """Hold the bytes of `chunk` from `start` on: they belong to an unfinished event."""
        if start == len(chunk):
            return
        if position < len(chunk) and self._line is None:
            self._line = (len(self._parts), position - start)
        self._parts.append(chunk[start:] if start else chunk)
        self._size += len(chunk) - start

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
