"""Deterministic answers: the text, tool call and token counts for one generation request.

Everything here is a pure function of the request body, the persona and ``SimScript.chunks``,
so the same request always produces the same text and costs the same credits.
"""

from __future__ import annotations

import secrets
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

_TOPIC_WORDS = 12
_FILLERS = (
    "The first thing I would look at is whether it saves me time.",
    "Price matters, but trust matters more to me.",
    "I would want to see real people like me using it.",
    "Clear, honest messaging would win me over quickly.",
    "If the experience feels clunky, I will move on.",
    "I would compare it with what I already use before switching.",
    "Recommendations from peers carry a lot of weight for me.",
    "Show me the outcome, not the feature list.",
    "I am open to it if the first commitment is small.",
    "Overall, I am cautiously interested.",
)
_SAMPLES: dict[str, Any] = {"integer": 0, "number": 0, "boolean": True, "array": [], "null": None}


def new_id(prefix: str) -> str:
    """A Mavera-style id: ``prefix`` + 24 lowercase hex characters."""
    return prefix + secrets.token_hex(12)


def count_tokens(text: str) -> int:
    """Token approximation: whitespace-separated words."""
    return len(text.split())


def credit_cost(input_tokens: int, output_tokens: int) -> int:
    """Credits for one generation: 1 per started 40 tokens, capped at 5 (the documented 1-5)."""
    return min(5, 1 + (input_tokens + output_tokens) // 40)


@dataclass(frozen=True)
class ToolCall:
    """A function call the simulator answers with instead of text."""

    name: str
    call_id: str
    item_id: str
    arguments: str = "{}"


@dataclass(frozen=True)
class Completion:
    """The planned answer: text split into stream deltas (or a tool call) and token counts."""

    text: str
    deltas: tuple[str, ...]
    tool_call: ToolCall | None
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def cost(self) -> int:
        """Credits this answer is billed."""
        return credit_cost(self.input_tokens, self.output_tokens)


def text_of(content: Any) -> list[str]:
    """The text pieces of a message ``content``: a string or a list of text parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _fill(schema: Any, answer: str) -> Any:
    """A value matching the simple parts of a JSON schema, with ``answer`` in string slots."""
    if not isinstance(schema, dict):
        return answer
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    properties = schema.get("properties")
    if kind == "object" or isinstance(properties, dict):
        if not isinstance(properties, dict):
            return {}
        return {name: _fill(spec, answer) for name, spec in properties.items()}
    return _SAMPLES.get(kind, answer) if isinstance(kind, str) else answer


def _split(text: str, parts: int) -> tuple[str, ...]:
    """``text`` cut into ``parts`` consecutive, nearly equal slices."""
    bounds = [len(text) * i // parts for i in range(parts + 1)]
    return tuple(text[bounds[i] : bounds[i + 1]] for i in range(parts))


def compose(persona_name: str, question: str, chunks: int, json_schema: Any = None) -> Completion:
    """Write the answer for ``question`` in ``chunks`` deltas (JSON text when a schema is given).

    ``json_schema`` is None for plain text, ``{}`` for ``json_object``, or the requested schema.
    Token counts are left at 0 for the caller to fill in.
    """
    if chunks <= 0:
        return Completion("", (), None, 0, 0)
    words = question.split()
    topic = " ".join(words[:_TOPIC_WORDS]) + (" ..." if len(words) > _TOPIC_WORDS else "")
    article = "an" if persona_name[:1].lower() in "aeiou" else "a"
    topic = topic or "your question"
    stop = "" if topic.endswith((".", "?", "!")) else "."
    sentences = [f"As {article} {persona_name}, here is my take on: {topic}{stop}"]
    start = zlib.crc32(f"{persona_name}\n{question}".encode())
    sentences += [_FILLERS[(start + i) % len(_FILLERS)] for i in range(chunks - 1)]
    if json_schema is None:
        deltas = tuple(s + " " for s in sentences[:-1]) + (sentences[-1],)
        return Completion("".join(deltas), deltas, None, 0, 0)
    answer = _fill(json_schema, " ".join(sentences)) if json_schema else None
    if not answer or not isinstance(answer, dict):
        answer = {"answer": " ".join(sentences)}
    text = orjson.dumps(answer).decode()
    return Completion(text, _split(text, chunks), None, 0, 0)


def plan(
    persona_name: str,
    question: str,
    prompt_text: str,
    *,
    chunks: int,
    tool_name: str | None = None,
    json_schema: Any = None,
) -> Completion:
    """The full answer for one request: a tool call when ``tool_name`` is set, else text."""
    input_tokens = count_tokens(prompt_text)
    if tool_name is not None:
        call = ToolCall(tool_name, new_id("call_"), new_id("fc_"))
        output_tokens = count_tokens(tool_name) + 1
        return Completion("", (), call, input_tokens, output_tokens)
    done = compose(persona_name, question, chunks, json_schema)
    return Completion(done.text, done.deltas, None, input_tokens, count_tokens(done.text))
