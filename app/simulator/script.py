"""Scripts that steer the simulator's timing and faults, and the record it keeps of each request.

A script is chosen per generation request with this priority (highest first):

1. fields of the request body's ``"mavera_sim"`` object (this request only),
2. the next one-shot script queued with ``Simulator.enqueue`` (FIFO),
3. the instance-wide ``Simulator.script``.

Body overrides win because they are the only knob a test has when it talks to the simulator
through the gateway, which forwards unknown body fields but not arbitrary headers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from app.simulator.errors import SimError


@dataclass
class SimScript:
    """Timing and fault settings for generation requests (see the module docstring for priority).

    They apply to ``/chat/completions`` and ``/responses`` only, after authentication, rate
    limiting and validation. ``status`` answers with that error instead of generating (still
    subject to the delays and hangs); ``error_body`` replaces that error's JSON with a raw body
    of type ``error_content_type`` (an HTML page from a proxy in front of Mavera, say), in which
    ``{api_key}`` becomes the key the request carried, the way a careless upstream echoes
    credentials. For non-stream responses ``cut_after`` and ``hang_after`` count body bytes, not
    SSE events; ``cut_after`` wins when both are set.
    """

    first_byte_delay_ms: float = 0
    chunk_delay_ms: float = 0
    chunks: int = 8
    status: int | None = None
    cut_after: int | None = None
    hang: bool = False
    hang_after: int | None = None
    retry_after_s: int | None = None
    error_body: str | None = None
    error_content_type: str = "text/plain; charset=utf-8"


@dataclass
class SimRecord:
    """What the simulator saw and did for one request; updated in place while it is answered.

    ``status`` is 0 until the response head is sent (a hung request that the client abandoned
    keeps 0). ``events`` holds ``(time.monotonic(), bytes)`` per SSE event, or one entry with
    the whole body for a non-stream response.
    """

    id: str = ""
    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    api_key: str | None = None
    persona_id: str | None = None
    model: str | None = None
    stream: bool = False
    status: int = 0
    error_code: str | None = None
    credits_charged: int = 0
    credits_reported: int | None = None
    events: list[tuple[float, bytes]] = field(default_factory=list)
    completed: bool = False
    client_disconnected_at: float | None = None
    received_at: float = 0.0


_OPTIONAL_INTS = ("status", "cut_after", "hang_after", "retry_after_s")
_NUMBERS = ("first_byte_delay_ms", "chunk_delay_ms")


def _check_field(name: str, value: Any) -> bool:
    """Whether ``value`` has an acceptable type for the SimScript field ``name``."""
    if name == "hang":
        return isinstance(value, bool)
    if name in ("error_body", "error_content_type"):
        return isinstance(value, str) or (name == "error_body" and value is None)
    if isinstance(value, bool):
        return False
    if name in _NUMBERS:
        return isinstance(value, int | float) and value >= 0
    if name == "chunks":
        return isinstance(value, int) and value >= 0
    if name in _OPTIONAL_INTS:
        return value is None or (isinstance(value, int) and value >= 0)
    return False


def apply_overrides(base: SimScript, overrides: Any) -> SimScript:
    """Return ``base`` with the known fields of a ``mavera_sim`` body object applied.

    Unknown keys are ignored; a known key with a wrong type is a 400, so a typo in a test's
    value fails loudly instead of silently running the default script.
    """
    if overrides is None:
        return base
    if not isinstance(overrides, dict):
        raise SimError.invalid(
            "mavera_sim must be an object.", code="invalid_field", param="mavera_sim"
        )
    known = {f.name for f in dataclasses.fields(SimScript)}
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in known:
            continue
        if not _check_field(name, value):
            raise SimError.invalid(
                f"mavera_sim.{name} has an invalid value.",
                code="invalid_field",
                param=f"mavera_sim.{name}",
            )
        changes[name] = value
    return dataclasses.replace(base, **changes)
