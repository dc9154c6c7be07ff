"""SSEScanner under hypothesis: any chunking of any stream, against a whole-input reference parse.

Also the scanner's cost, counted rather than timed: a spy around the line-end pattern the scanner
searches with counts the bytes each search looks at. Every byte is looked at once, whatever the
chunking, and no search runs over anything larger than the chunk just fed (the old scanner
re-joined and re-searched the unfinished line on every chunk: quadratic).
"""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import given, settings
from hypothesis import strategies as st

import app.sse
from app.sse import EventTooLarge, SSEEvent, SSEScanner

LINE_END = re.compile(rb"\r\n|\r|\n")
Parsed = tuple[bytes, str | None, str | None]
PROPERTIES = settings(max_examples=150, deadline=None, database=None)


def reference(stream: bytes) -> tuple[list[Parsed], bytes]:
    """The events of a whole stream, parsed in one pass over all of it (WHATWG rules)."""
    events: list[Parsed] = []
    event_start = position = 0
    name: str | None = None
    data: list[str] | None = None
    for match in LINE_END.finditer(stream):
        if match.group() == b"\r" and match.end() == len(stream):
            break  # undecided: it may be the CR of a CRLF
        line, position = stream[position : match.start()], match.end()
        if not line:
            events.append(
                (stream[event_start:position], name, None if data is None else "\n".join(data))
            )
            event_start, name, data = position, None, None
        elif not line.startswith(b":"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                data = [*(data or []), value.decode("utf-8", "replace")]
            elif field == b"event":
                name = value.decode("utf-8", "replace")
    return events, stream[event_start:]


def _no_line_ends(value: bytes) -> bytes:
    return value.replace(b"\r", b"").replace(b"\n", b"")


values = st.one_of(st.binary(max_size=12), st.text(max_size=8).map(str.encode)).map(_no_line_ends)
lines = st.builds(
    lambda name, colon, value: name + colon + value,
    st.sampled_from([b"data", b"event", b"", b"id", b"retry", b"x"]),
    st.sampled_from([b":", b": ", b""]),
    values,
)
line_ends = st.sampled_from([b"\n", b"\r", b"\r\n"])
events = st.builds(
    lambda body, end: b"".join(line + term for line, term in body) + end,
    st.lists(st.tuples(lines, line_ends), max_size=4),
    line_ends,
)
streams = st.builds(lambda whole, tail: b"".join(whole) + tail, st.lists(events, max_size=6), lines)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A stream and one way of cutting it into chunks (empty chunks included)."""
    stream = draw(streams)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return stream, [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def parsed(found: list[SSEEvent]) -> list[Parsed]:
    return [(e.raw, e.event, e.data) for e in found]


def feed_all(scanner: SSEScanner, chunks: list[bytes]) -> list[SSEEvent]:
    found: list[SSEEvent] = []
    for chunk in chunks:
        found += scanner.feed(chunk)
    return found


@PROPERTIES
@given(chunked())
def test_any_chunking_gives_the_events_of_the_whole_stream(case: tuple[bytes, list[bytes]]) -> None:
    stream, chunks = case
    whole = SSEScanner()
    in_one = parsed(whole.feed(stream))
    scanner = SSEScanner()
    in_pieces = parsed(feed_all(scanner, chunks))
    assert in_pieces == in_one
    assert scanner.pending == whole.pending and scanner.pending_size == len(scanner.pending)
    assert (in_one, whole.pending) == reference(stream)


@PROPERTIES
@given(chunked())
def test_raw_bytes_of_the_events_rejoin_to_the_input(case: tuple[bytes, list[bytes]]) -> None:
    stream, chunks = case
    scanner = SSEScanner()
    found = feed_all(scanner, chunks)
    assert b"".join(e.raw for e in found) + scanner.pending == stream


@PROPERTIES
@given(chunked(), st.integers(1, 48))
def test_the_limit_stops_at_the_first_oversized_event_whatever_the_chunking(
    case: tuple[bytes, list[bytes]], limit: int
) -> None:
    stream, chunks = case
    expected, tail = reference(stream)
    oversized = [i for i, (raw, _, _) in enumerate(expected) if len(raw) > limit]
    first = oversized[0] if oversized else len(expected)
    scanner = SSEScanner(max_event_bytes=limit)
    found: list[SSEEvent] = []
    refused = False
    for chunk in chunks:
        try:
            found += scanner.feed(chunk)
        except EventTooLarge as exc:
            found += exc.events
            refused = True
            break
    assert refused == (bool(oversized) or len(tail) > limit)
    assert parsed(found) == expected[:first]


class CountingPattern:
    """Delegates to the real line-end pattern and counts the bytes each search looks at."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.examined = 0
        self.largest_subject = 0

    def search(self, subject: bytes, position: int = 0) -> re.Match[bytes] | None:
        match = self.pattern.search(subject, position)
        self.examined += (match.end() if match else len(subject)) - position
        self.largest_subject = max(self.largest_subject, len(subject))
        return match


@contextmanager
def counting_searches() -> Iterator[CountingPattern]:
    real = app.sse._LINE_END
    spy = CountingPattern(real)
    app.sse._LINE_END = spy  # type: ignore[assignment]  # same search() as the pattern
    try:
        yield spy
    finally:
        app.sse._LINE_END = real


@PROPERTIES
@given(chunked())
def test_every_byte_is_searched_once_whatever_the_chunking(case: tuple[bytes, list[bytes]]) -> None:
    stream, chunks = case
    with counting_searches() as spy:
        feed_all(SSEScanner(), chunks)
    assert spy.examined <= len(stream)
    assert spy.largest_subject <= max(map(len, chunks), default=0)


def test_an_8_mib_line_without_newline_is_searched_once_in_4_kib_chunks() -> None:
    chunk_count, size = 2048, 4096
    with counting_searches() as spy:
        scanner = SSEScanner()
        scanner.feed(b"data: ")
        for i in range(chunk_count):
            scanner.feed(bytes([65 + i % 26]) * size)
    assert spy.examined == 6 + chunk_count * size
    assert spy.largest_subject == size
    assert scanner.pending_size == 6 + chunk_count * size


def test_memory_stays_near_the_limit_when_no_newline_comes() -> None:
    limit, size = 1 << 20, 4096
    scanner = SSEScanner(max_event_bytes=limit)
    fed = 0
    tracemalloc.start()
    try:
        for i in range(2048):  # 8 MiB, if it were all taken
            chunk = bytes([65 + i % 26]) * size
            fed += size
            scanner.feed(chunk)
    except EventTooLarge as exc:
        assert (exc.size, exc.limit, exc.events) == (fed, limit, [])
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert fed == limit + size, "refused at the first chunk past the limit"
    assert peak < limit + 64 * 1024
