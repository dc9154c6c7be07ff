"""Cost tags of a request: where they come from, their order, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from app.clients import MAX_TAGS
from app.errors import InvalidRequest
from app.tags import TAG_RULE, request_tags


def tags(header: str | None = None, metadata: Any = None, own: tuple[str, ...] = ()) -> Any:
    headers = [] if header is None else [header]
    body = {} if metadata is None else {"metadata": metadata}
    return request_tags(headers, body, own)


def test_no_tags_anywhere_is_none() -> None:
    assert tags() is None
    assert tags(header=" , ", metadata={"tags": ""}) is None
    assert tags(metadata={"user_ref": "x"}) is None


def test_own_then_header_then_metadata_without_repeats() -> None:
    got = tags(header="proj-a, exp-1", metadata={"tags": "exp-1,team:ml"}, own=("team-x",))
    assert got == "team-x,proj-a,exp-1,team:ml"


def test_every_header_counts() -> None:
    assert request_tags(["a,b", "c"], {}) == "a,b,c"


def test_metadata_tags_may_be_a_json_array() -> None:
    assert tags(metadata={"tags": ["a", " b ", ""]}) == "a,b"


@pytest.mark.parametrize(
    ("header", "metadata", "bad", "param"),
    [
        ("ok,has space", None, "has space", "X-Mavera-Tags"),
        (None, {"tags": "-leading-dash"}, "-leading-dash", "metadata.tags"),
        (None, {"tags": ["fine", "x" * 65]}, "x" * 65, "metadata.tags"),
        ("semi;colon", None, "semi;colon", "X-Mavera-Tags"),
    ],
)
def test_a_bad_tag_is_named_with_the_rule(
    header: str | None, metadata: Any, bad: str, param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        tags(header=header, metadata=metadata)
    assert repr(bad) in refused.value.message and TAG_RULE in refused.value.message
    assert refused.value.param == param and refused.value.status == 400


@pytest.mark.parametrize("value", [3, {"a": "b"}, ["a", 1], None])
def test_metadata_tags_of_another_type_is_refused(value: Any) -> None:
    with pytest.raises(InvalidRequest, match="comma-separated string"):
        tags(metadata={"tags": value})


def test_at_most_max_tags_counting_the_clients_own() -> None:
    own = tuple(f"own-{i}" for i in range(MAX_TAGS - 1))
    assert tags(header="one-more", own=own) is not None
    with pytest.raises(InvalidRequest, match=f"at most {MAX_TAGS}") as refused:
        tags(header="one-more,and-another", own=own)
    assert refused.value.param == "X-Mavera-Tags"
