"""Upstream error bodies, scrubbed of keys and put in the OpenAI error shape."""

from __future__ import annotations

import orjson
import pytest

from app.scrub import Scrubber, error_body

KEY = "sk-configured-key-not-shaped-like-mavera-0123"


def test_the_configured_key_and_anything_key_shaped_are_removed() -> None:
    scrub = Scrubber(KEY)
    dirty = f"bad key {KEY}; also mvra_live_abcdef123456 and mvra_test_x-y_z".encode()
    clean = scrub.bytes(dirty)
    assert KEY.encode() not in clean and b"abcdef123456" not in clean and b"x-y_z" not in clean
    assert clean.count(b"mvra_[redacted]") == 3
    assert scrub.text("Bearer mvra_live_q") == "Bearer mvra_[redacted]"


def test_maveras_json_error_stays_json_and_keeps_its_fields() -> None:
    raw = orjson.dumps({"error": {"message": f"no for {KEY}", "code": "persona_not_enabled"}})
    body = orjson.loads(error_body(403, raw, Scrubber(KEY)))
    assert body == {"error": {"message": "no for mvra_[redacted]", "code": "persona_not_enabled"}}


@pytest.mark.parametrize(
    "raw",
    [b"<html>502 Bad Gateway</html>", b'{"detail": "not the OpenAI shape"}', b"[1]", b""],
)
def test_anything_else_is_wrapped(raw: bytes) -> None:
    body = orjson.loads(error_body(429, raw, Scrubber("")))
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_http_429" and error["type"] == "upstream_error"
    assert (raw.decode() or "no body") in error["message"]


def test_a_wrapped_body_is_cut_to_a_summary() -> None:
    body = orjson.loads(error_body(400, b"y" * 100_000, Scrubber("")))
    assert len(body["error"]["message"]) < 700
