"""Cost tags of a request: the client's own, `X-Mavera-Tags`, and OpenAI `metadata.tags`.

OpenAI's `metadata` maps string keys to string values, so `metadata.tags` is a comma-separated
string like the header; a JSON array of strings is accepted too. The body goes to Mavera as it
came (`metadata` included: Mavera ignores fields it does not know). Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from app.clients import MAX_TAGS, TAG_PATTERN
from app.errors import InvalidRequest

TAGS_HEADER = "x-mavera-tags"
TAG_RULE = "1-64 characters: letters, digits and . _ : / @ -, starting with a letter or digit"
_TAG = re.compile(TAG_PATTERN)


def request_tags(
    headers: Iterable[str], body: Mapping[str, Any], own: Iterable[str] = ()
) -> str | None:
    """The request's tags, comma-joined in order without repeats (None for none).

    `headers` are the values of every `X-Mavera-Tags` header the request carried. The client's
    own tags come first, then the headers', then `metadata.tags`. A tag that breaks the rule,
    or more than MAX_TAGS in all, is a 400 that names the tag and the rule.
    """
    tags = dict.fromkeys(own)
    for header in headers:
        tags.update(dict.fromkeys(_checked(_split(header), "X-Mavera-Tags")))
    metadata = body.get("metadata")
    in_metadata = isinstance(metadata, dict) and "tags" in metadata
    if isinstance(metadata, dict) and in_metadata:
        tags.update(dict.fromkeys(_checked(_metadata_tags(metadata["tags"]), "metadata.tags")))
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(
            f"a request may carry at most {MAX_TAGS} cost tags (its client's own included); "
            f"this one has {len(tags)}",
            param="metadata.tags" if in_metadata else "X-Mavera-Tags",
        )
    return ",".join(tags) or None


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _metadata_tags(value: Any) -> list[str]:
    if isinstance(value, str):
        return _split(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise InvalidRequest(
        'metadata.tags must be a comma-separated string ("proj-a,exp-1") or an array of strings',
        param="metadata.tags",
    )


def _checked(tags: list[str], where: str) -> list[str]:
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise InvalidRequest(
                f"cost tag {tag[:80]!r} in {where} is not valid: {TAG_RULE}", param=where
            )
    return tags
