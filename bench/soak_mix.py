"""The fault soak's request mix: each kind of request, its weight, and what it must end as.

Faults are asked of the simulator per request through the `mavera_sim` body field (the gateway
forwards unknown body fields), so one simulator process serves the whole mix. A kind also says
how the client behaves: how long it waits before it gives up (a client-side timeout is how a
hung request becomes a client disconnect) and whether it hangs up after the first body chunk.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

CHAT = "chat/completions"
RESPONSES = "responses"
PATIENT_S = 10.0  # longer than the gateway's 2 s read timeout plus its retries: it answers first
IMPATIENT_S = 0.5  # shorter than that timeout: the client leaves first
# The gateway's settings for the soak; upstream max_retries stays at its default (2), so 503s
# go through the retry path.
GATEWAY_ENV = {"MAVERA_GATEWAY_UPSTREAM__READ_TIMEOUT_S": "2"}  # so that hangs end


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix, and the answer it must get."""

    name: str
    weight: float  # percent of all requests
    endpoint: str
    stream: bool
    sim: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = PATIENT_S
    hang_up_after_first_chunk: bool = False
    include_usage: bool = False
    # What the client may see: (status, end) pairs, `end` as `soak_client.Seen.end` names it.
    client: tuple[tuple[int, str], ...] = ((200, "complete"),)
    # What the ledger may hold: (status, outcome) pairs.
    ledger: tuple[tuple[int, str], ...] = ((200, "ok"),)

    @property
    def fault(self) -> bool:
        """Whether this kind injects a fault (or an unusual client), not a plain request."""
        return bool(self.sim) or self.timeout_s != PATIENT_S or self.hang_up_after_first_chunk

    def body(self) -> bytes:
        """The JSON body of every request of this kind."""
        payload: dict[str, Any] = {"model": "mavera-1", "stream": self.stream}
        if self.endpoint == CHAT:
            payload["messages"] = [{"role": "user", "content": "How do you pick a running shoe?"}]
            if self.include_usage:
                payload["stream_options"] = {"include_usage": True}
        else:
            payload["input"] = "How do you pick a running shoe?"
        if self.sim:
            payload["mavera_sim"] = self.sim
        return orjson.dumps(payload)


_GONE = ((0, "abandoned"),)
_SLOW_STREAM = {"chunk_delay_ms": 40}  # still streaming when the client hangs up on it

# fmt: off
KINDS: tuple[Kind, ...] = (
    Kind("chat", 30, CHAT, False),
    Kind("chat_stream_usage", 15, CHAT, True, include_usage=True),
    Kind("chat_stream", 10, CHAT, True),
    Kind("responses", 15, RESPONSES, False),
    Kind("responses_stream", 15, RESPONSES, True),
    # Mavera errors: 5xx become 502 (503 after the gateway's retries), 4xx are relayed.
    Kind("upstream_500", 2, CHAT, False, {"status": 500}, client=((502, "complete"),),
         ledger=((502, "upstream_error"),)),
    Kind("upstream_503", 1, RESPONSES, False, {"status": 503}, client=((502, "complete"),),
         ledger=((502, "upstream_error"),)),
    Kind("upstream_429", 1.5, CHAT, True, {"status": 429}, client=((429, "complete"),),
         ledger=((429, "client_error"),)),
    Kind("upstream_400", 1.5, RESPONSES, False, {"status": 400}, client=((400, "complete"),),
         ledger=((400, "client_error"),)),
    # Cuts: the upstream drops the connection mid-answer.
    Kind("cut_chat_stream", 1.5, CHAT, True, {"cut_after": 3}, client=((200, "error_event"),),
         ledger=((200, "upstream_error"),)),
    Kind("cut_responses_stream", 1, RESPONSES, True, {"cut_after": 2},
         client=((200, "error_event"),), ledger=((200, "upstream_error"),)),
    Kind("cut_chat_body", 1, CHAT, False, {"cut_after": 20}, client=((502, "complete"),),
         ledger=((502, "upstream_error"),)),
    # Client disconnects: the client hangs up after the first chunk of a stream still running.
    Kind("hangup_chat_stream", 1.5, CHAT, True, _SLOW_STREAM, hang_up_after_first_chunk=True,
         client=((200, "hung_up"),), ledger=((200, "client_disconnected"),)),
    Kind("hangup_responses_stream", 1, RESPONSES, True, _SLOW_STREAM,
         hang_up_after_first_chunk=True, client=((200, "hung_up"),),
         ledger=((200, "client_disconnected"),)),
    # Hangs: the upstream goes silent; either the gateway's read timeout or the client ends it.
    # A stream's head can take longer than the impatient client waits when the machine is busy.
    Kind("hang_head_client_leaves", 0.5, CHAT, False, {"hang": True}, timeout_s=IMPATIENT_S,
         client=_GONE, ledger=((499, "client_disconnected"),)),
    Kind("hang_head_gateway_timeout", 0.25, RESPONSES, False, {"hang": True},
         client=((504, "complete"),), ledger=((504, "upstream_error"),)),
    Kind("hang_stream_gateway_timeout", 0.25, CHAT, True, {"hang_after": 2},
         client=((200, "error_event"),), ledger=((200, "upstream_error"),)),
    Kind("hang_stream_client_leaves", 0.5, RESPONSES, True, {"hang_after": 2},
         timeout_s=IMPATIENT_S, client=((200, "abandoned"), *_GONE),
         ledger=((200, "client_disconnected"), (499, "client_disconnected"))),
    # A slow first byte: must still end well.
    Kind("slow_first_byte", 1.5, CHAT, False, {"first_byte_delay_ms": 300}),
)
# fmt: on


def schedule(count: int, seed: int) -> bytearray:
    """The kind (an index into KINDS) of each of `count` requests, the same for the same seed."""
    picks = random.Random(seed).choices(range(len(KINDS)), [k.weight for k in KINDS], k=count)
    return bytearray(picks)


def fault_share() -> float:
    """The share of requests, in percent, that inject a fault."""
    return sum(k.weight for k in KINDS if k.fault) / sum(k.weight for k in KINDS) * 100
