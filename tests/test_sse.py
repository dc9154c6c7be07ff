"""SSEScanner: event boundaries and fields must not depend on how the bytes were chunked."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from app.sse import EventTooLarge, SSEEvent, SSEScanner

# Every feature at once: a comment-only block, named events, `data:` without a space, LF, CRLF and
# lone CR line endings, multi-line data, a bare `data` field, a field with no colon, non-ASCII text
# (so single-byte feeding splits a UTF-8 sequence), and an unfinished event at the end.
STREAM = (
    b": ping\n\n"
    b'event: message\ndata: {"a":1}\n\n'
    b"data:nospace\r\n\r\n"
    b"data: line1\rdata: line2\r\r"
    b"data: x\r\ndata\r\nfoo\r\n\r\n"
    b"data: h\xc3\xa9llo \xe2\x9c\x93\n\n"
    b'event: response.completed\ndata: {"usage":{}}\r\n\r\n'
    b"data: tail"
)
EXPECTED = [
    (None, None),
    ("message", '{"a":1}'),
    (None, "nospace"),
    (None, "line1\nline2"),
    (None, "x\n"),
    (None, "h\u00e9llo \u2713"),
    ("response.completed", '{"usage":{}}'),
]
EXPECTED_PENDING = b"data: tail"


def scan(chunks: Iterable[bytes]) -> tuple[list[SSEEvent], SSEScanner]:
    scanner = SSEScanner()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(scanner.feed(chunk))
    return events, scanner


def pairs(events: list[SSEEvent]) -> list[tuple[str | None, str | None]]:
    return [(e.event, e.data) for e in events]


def check(chunks: list[bytes]) -> None:
    events, scanner = scan(chunks)
    assert b"".join(e.raw for e in events) + scanner.pending == STREAM, chunks
    assert pairs(events) == EXPECTED, chunks
    assert scanner.pending == EXPECTED_PENDING, chunks


def test_whole_stream_in_one_chunk() -> None:
    check([STREAM])


def test_raw_bytes_of_each_event() -> None:
    events, _ = scan([STREAM])
    assert [e.raw for e in events] == [
        b": ping\n\n",
        b'event: message\ndata: {"a":1}\n\n',
        b"data:nospace\r\n\r\n",
        b"data: line1\rdata: line2\r\r",
        b"data: x\r\ndata\r\nfoo\r\n\r\n",
        b"data: h\xc3\xa9llo \xe2\x9c\x93\n\n",
        b'event: response.completed\ndata: {"usage":{}}\r\n\r\n',
    ]


def test_one_byte_at_a_time() -> None:
    check([STREAM[i : i + 1] for i in range(len(STREAM))])


def test_every_two_way_split() -> None:
    for cut in range(len(STREAM) + 1):
        check([STREAM[:cut], STREAM[cut:]])


def test_every_three_way_split_of_the_line_ending_events() -> None:
    # The CR/CRLF part is where a split can go wrong; try every pair of cut points in it.
    start = STREAM.index(b"data:nospace")
    end = STREAM.index(b"data: h\xc3\xa9llo")
    for first in range(start, end + 1):
        for second in range(first, end + 1):
            check([STREAM[:first], STREAM[first:second], STREAM[second:]])


def test_empty_chunks_change_nothing() -> None:
    chunks: list[bytes] = []
    for i in range(len(STREAM)):
        chunks += [b"", STREAM[i : i + 1]]
    check(chunks + [b""])


def test_events_are_returned_as_soon_as_they_are_complete() -> None:
    """After any prefix, every complete event is out (a trailing CR may still await its LF)."""
    events, _ = scan([STREAM])
    ends = []
    offset = 0
    for event in events:
        offset += len(event.raw)
        ends.append(offset)
    scanner = SSEScanner()
    emitted = 0
    for k in range(1, len(STREAM) + 1):
        emitted += len(scanner.feed(STREAM[k - 1 : k]))
        complete = sum(1 for end in ends if end <= k)
        waiting = STREAM[k - 1 : k] == b"\r"
        lowest = sum(1 for end in ends if end <= k - 1) if waiting else complete
        assert lowest <= emitted <= complete, k


def test_crlf_split_between_cr_and_lf_at_event_end() -> None:
    scanner = SSEScanner()
    assert scanner.feed(b"data: a\r\n\r") == []
    assert scanner.pending == b"data: a\r\n\r"
    events = scanner.feed(b"\ndata: b\r\n\r\n")
    assert [(e.raw, e.data) for e in events] == [
        (b"data: a\r\n\r\n", "a"),
        (b"data: b\r\n\r\n", "b"),
    ]
    assert scanner.pending == b""


def test_crlf_split_between_cr_and_lf_inside_event() -> None:
    scanner = SSEScanner()
    assert scanner.feed(b"data: a\r") == []
    assert scanner.feed(b"\ndata: b\r") == []
    events = scanner.feed(b"\n\r\n")
    assert [(e.raw, e.data) for e in events] == [(b"data: a\r\ndata: b\r\n\r\n", "a\nb")]


def test_lone_cr_followed_by_other_bytes_is_a_line_end() -> None:
    scanner = SSEScanner()
    assert scanner.feed(b"data: a\r") == []
    assert scanner.feed(b"\r") == []  # still might be the CR of a CRLF
    events = scanner.feed(b"data: b\r\r")
    assert [(e.raw, e.data) for e in events] == [(b"data: a\r\r", "a")]
    assert scanner.pending == b"data: b\r\r"
    events = scanner.feed(b":")
    assert [(e.raw, e.data) for e in events] == [(b"data: b\r\r", "b")]
    assert scanner.pending == b":"


def test_lf_line_endings() -> None:
    events, scanner = scan([b"data: one\n\ndata: two\n\n"])
    assert pairs(events) == [(None, "one"), (None, "two")]
    assert scanner.pending == b""


def test_comment_lines_are_ignored_inside_an_event() -> None:
    events, _ = scan([b": keep-alive\ndata: x\n: another\n\n"])
    assert pairs(events) == [(None, "x")]


def test_comment_only_block_is_an_event_without_data() -> None:
    events, _ = scan([b": ping\n\n", b":\n\n"])
    assert [(e.raw, e.event, e.data) for e in events] == [
        (b": ping\n\n", None, None),
        (b":\n\n", None, None),
    ]


def test_multi_line_data_joined_with_newline() -> None:
    events, _ = scan([b"data: a\ndata: b\ndata: c\n\n"])
    assert pairs(events) == [(None, "a\nb\nc")]


def test_data_without_space_and_only_one_space_stripped() -> None:
    events, _ = scan([b"data:x\n\n", b"data:  two spaces\n\n", b"data: \n\n"])
    assert pairs(events) == [(None, "x"), (None, " two spaces"), (None, "")]


def test_event_name_applies_to_its_own_event_only() -> None:
    events, _ = scan([b"event: response.created\ndata: {}\n\ndata: {}\n\n"])
    assert pairs(events) == [("response.created", "{}"), (None, "{}")]


def test_event_name_without_data() -> None:
    events, _ = scan([b"event:ping\n\n"])
    assert pairs(events) == [("ping", None)]


def test_field_without_colon() -> None:
    # `data` alone is a data line with an empty value; any other bare name is ignored.
    events, _ = scan([b"data\n\n", b"data: a\ndata\n\n", b"retry\nid\nfoo\ndata: z\n\n"])
    assert pairs(events) == [(None, ""), (None, "a\n"), (None, "z")]


def test_unknown_fields_are_ignored() -> None:
    events, _ = scan([b"id: 7\nretry: 1000\nfoo: bar\ndata: d\n\n"])
    assert pairs(events) == [(None, "d")]


def test_incomplete_trailing_event_stays_pending() -> None:
    scanner = SSEScanner()
    events = scanner.feed(b"data: a\n\ndata: b\n")
    assert pairs(events) == [(None, "a")]
    assert scanner.pending == b"data: b\n"
    assert scanner.feed(b"data: c") == []
    assert scanner.pending == b"data: b\ndata: c"
    events = scanner.feed(b"\n\n")
    assert [(e.raw, e.data) for e in events] == [(b"data: b\ndata: c\n\n", "b\nc")]
    assert scanner.pending == b""


def test_nothing_fed_nothing_pending() -> None:
    scanner = SSEScanner()
    assert scanner.pending == b""
    assert scanner.feed(b"") == []
    assert scanner.pending == b""


def test_invalid_utf8_is_replaced_not_raised() -> None:
    events, _ = scan([b"data: \xff\xfe\n\n"])
    assert pairs(events) == [(None, "\ufffd\ufffd")]


def test_an_event_of_exactly_the_limit_is_taken() -> None:
    event = b"data: " + b"x" * 10 + b"\n\n"  # 18 bytes
    scanner = SSEScanner(max_event_bytes=18)
    assert pairs(scanner.feed(event[:9]) + scanner.feed(event[9:])) == [(None, "x" * 10)]


def test_an_event_over_the_limit_is_refused_after_the_events_before_it() -> None:
    scanner = SSEScanner(max_event_bytes=18)
    with pytest.raises(EventTooLarge) as refused:
        scanner.feed(b"data: a\n\ndata: b\n\ndata: " + b"x" * 11 + b"\n\ndata: c\n\n")
    assert pairs(refused.value.events) == [(None, "a"), (None, "b")]
    assert (refused.value.size, refused.value.limit) == (19, 18)


def test_an_unfinished_event_is_refused_as_soon_as_it_passes_the_limit() -> None:
    scanner = SSEScanner(max_event_bytes=18)
    assert scanner.feed(b"data: a\n\n: ping\ndata: 0123") == [SSEEvent(b"data: a\n\n", None, "a")]
    assert scanner.pending_size == 17
    with pytest.raises(EventTooLarge) as refused:
        scanner.feed(b"45")  # no line end yet, but 19 bytes of one event already
    assert (refused.value.size, refused.value.events) == (19, [])
