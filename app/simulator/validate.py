"""Request checks in the documented order (mavera-api.md sections 2, 4, 11) and request parsing.

Each check raises ``SimError`` with the documented status, type, code and param.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.simulator.errors import SimError
from app.simulator.generate import text_of
from app.simulator.personas import Persona, find_persona

MODEL = "mavera-1"
KEY_PREFIXES = ("mvra_live_", "mvra_test_")
MIN_KEY_LENGTH = 32
MAX_MESSAGES = 128
MAX_INPUT_CHARS = 100_000


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def check_key(authorization: str | None, accepted: set[str] | None) -> str:
    """The caller's key if accepted (any well-formed key when ``accepted`` is None)."""
    if not authorization:
        raise SimError.auth(
            "missing_api_key", "No API key provided. Send it as 'Authorization: Bearer <key>'."
        )
    token = bearer_token(authorization)
    if accepted is None:
        ok = token is not None and token.startswith(KEY_PREFIXES) and len(token) >= MIN_KEY_LENGTH
    else:
        ok = token in accepted
    if not ok or token is None:
        raise SimError.auth("invalid_api_key", "Invalid API key provided.")
    return token


def personas_query(params: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for ``filter_personas`` from the ``GET /personas`` query string."""
    is_custom: bool | None = None
    if "is_custom" in params:
        raw = params["is_custom"].lower()
        if raw not in ("true", "false"):
            raise SimError.invalid(
                "is_custom must be true or false.", code="invalid_field", param="is_custom"
            )
        is_custom = raw == "true"
    limit = 50
    if "limit" in params:
        raw_limit = params["limit"]
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
            raise SimError.invalid(
                "limit must be an integer between 1 and 100.", code="invalid_field", param="limit"
            )
        limit = int(raw_limit)
    return {
        "category": params.get("category") or None,
        "search": params.get("search") or None,
        "is_custom": is_custom,
        "limit": limit,
    }


@dataclass(frozen=True)
class GenerationRequest:
    """A validated ``/chat/completions`` or ``/responses`` request, reduced to what matters here."""

    kind: Literal["chat", "responses"]
    persona: Persona
    stream: bool
    include_usage: bool
    question: str
    prompt_text: str
    tool_name: str | None
    json_schema: Any  # None: plain text; {}: json_object; else the requested JSON schema


def _missing(field: str) -> SimError:
    return SimError.invalid(f"Missing required field: {field}.", code="missing_field", param=field)


def _invalid(field: str, why: str) -> SimError:
    return SimError.invalid(f"Invalid value for {field}: {why}", code="invalid_field", param=field)


def _common(body: Any) -> tuple[dict[str, Any], Persona, bool]:
    """Checks shared by both endpoints: body shape, model, persona and the stream flag."""
    if not isinstance(body, dict):
        raise SimError.invalid(
            "Request body must be a JSON object.", code="invalid_field", param=None
        )
    if body.get("model") != MODEL:
        raise SimError.invalid(
            f"Invalid model: {body.get('model')!r}. The only supported model is '{MODEL}'.",
            code="invalid_model",
            param="model",
        )
    persona_id = body.get("persona_id")
    if persona_id is None:
        raise _missing("persona_id")
    persona = find_persona(persona_id) if isinstance(persona_id, str) else None
    if persona is None:
        raise SimError.invalid(
            f"Persona not found: {persona_id!r}.", code="invalid_persona", param="persona_id"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream", "must be a boolean.")
    return body, persona, stream


def _function_tool(tools: Any, choice: Any, *, nested: bool) -> str | None:
    """Name of the function the model should call: the forced one, else the first function tool."""
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        forced = choice.get("function", {}) if nested else choice
        if isinstance(forced, dict) and isinstance(forced.get("name"), str):
            return str(forced["name"])
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        spec = tool.get("function") if nested else tool
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            return str(spec["name"])
    return None


def _json_schema(fmt: Any, *, nested: bool) -> Any:
    """None for text output, ``{}`` for json_object, the schema for json_schema."""
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return None
    if fmt["type"] == "json_object":
        return {}
    holder = fmt.get("json_schema") if nested else fmt
    schema = holder.get("schema") if isinstance(holder, dict) else None
    return schema if isinstance(schema, dict) else {}


def parse_chat(body: Any) -> GenerationRequest:
    """Validate a ``POST /chat/completions`` body."""
    body, persona, stream = _common(body)
    if "messages" not in body:
        raise _missing("messages")
    messages = body["messages"]
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
        raise _invalid("messages", f"must be an array of 1 to {MAX_MESSAGES} messages.")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise _invalid("messages", "each message must be an object with a role.")
    users = [m for m in messages if m["role"] == "user"]
    options = body.get("stream_options")
    tool_name = None
    if not stream and messages[-1]["role"] != "tool":
        tool_name = _function_tool(body.get("tools"), body.get("tool_choice"), nested=True)
    return GenerationRequest(
        kind="chat",
        persona=persona,
        stream=stream,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        question=" ".join(text_of(users[-1].get("content"))) if users else "",
        prompt_text="\n".join(t for m in messages for t in text_of(m.get("content"))),
        tool_name=tool_name,
        json_schema=_json_schema(body.get("response_format"), nested=True),
    )


def _input_items(value: Any) -> tuple[str, str, bool]:
    """(question, all input text, last item is a tool result) for a Responses ``input``."""
    if isinstance(value, str):
        return value, value, False
    texts: list[str] = []
    question = ""
    for item in value:
        pieces = text_of(item.get("content"))
        if item.get("type") == "function_call_output" and isinstance(item.get("output"), str):
            pieces = [item["output"]]
        texts += pieces
        if item.get("role") == "user":
            question = " ".join(pieces)
    return question, "\n".join(texts), value[-1].get("type") == "function_call_output"


def parse_responses(body: Any) -> GenerationRequest:
    """Validate a ``POST /responses`` body."""
    body, persona, stream = _common(body)
    if "input" not in body:
        raise _missing("input")
    value = body["input"]
    if isinstance(value, str):
        if len(value) > MAX_INPUT_CHARS:
            raise _invalid("input", f"must be at most {MAX_INPUT_CHARS} characters.")
    elif not isinstance(value, list) or not value or not all(isinstance(i, dict) for i in value):
        raise _invalid("input", "must be a string or a non-empty array of input items.")
    question, prompt_text, answered_tool = _input_items(value)
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        prompt_text = f"{instructions}\n{prompt_text}"
    tool_name = None
    if not stream and not answered_tool:
        tool_name = _function_tool(body.get("tools"), body.get("tool_choice"), nested=False)
    text = body.get("text")
    return GenerationRequest(
        kind="responses",
        persona=persona,
        stream=stream,
        include_usage=True,
        question=question,
        prompt_text=prompt_text,
        tool_name=tool_name,
        json_schema=_json_schema(
            text.get("format") if isinstance(text, dict) else None, nested=False
        ),
    )
