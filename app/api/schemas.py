"""The shapes of the HTTP surface, as pydantic models: what `/openapi.json` and `/docs` show.

The generation endpoints pass bodies through to Mavera untouched (unknown fields included), so
their models document the fields the gateway itself reads and allow every other field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.clients import ClientSpec


class _Open(BaseModel):
    """A body the gateway passes on: fields it does not know are kept as they are."""

    model_config = ConfigDict(extra="allow")


class ChatCompletionRequest(_Open):
    """OpenAI chat completion request, plus Mavera's `persona_id` where overrides are allowed."""

    model: str | None = Field(None, description="a Mavera model or a gateway alias")
    messages: list[dict[str, Any]] = Field(default_factory=list)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    persona_id: str | None = Field(None, description="only where allow_persona_override")
    user: str | None = Field(None, description="recorded as the end user")


class ResponsesRequest(_Open):
    """OpenAI Responses request, plus Mavera's `persona_id` where overrides are allowed."""

    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    stream: bool | None = None
    persona_id: str | None = Field(None, description="only where allow_persona_override")
    user: str | None = Field(None, description="recorded as the end user")


class ChatCompletion(_Open):
    """Mavera's chat completion, as it sent it; `usage.credits_used` is what it cost."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ResponseObject(_Open):
    """Mavera's Responses object, as it sent it."""

    id: str
    object: Literal["response"] = "response"
    status: str | None = None
    output: list[dict[str, Any]] = Field(default_factory=list)
    usage: dict[str, Any] | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, the gateway's own and Mavera's, in the shape the OpenAI SDKs parse."""

    error: ErrorDetail


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class PersonaList(_Open):
    """Mavera's persona list, passed through (costs no credits)."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    problems: list[str]
    # what works less well while ready: shared limits out of reach under fail_open
    degraded: list[str] = []


class NewKey(ClientSpec):
    """POST /admin/keys: a client name and its settings (types are checked strictly)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1, max_length=64, examples=["alice"])

    @field_validator("tags", mode="before")
    @classmethod
    def _json_array(cls, value: Any) -> Any:
        # JSON has arrays, not tuples, and strict validation takes only a tuple for a tuple
        return tuple(value) if isinstance(value, list) else value


class CreatedKey(BaseModel):
    name: str
    key: str = Field(description="shown only this once; the gateway stores its SHA-256")
    created_at: float


class KeyInfo(ClientSpec):
    name: str
    created_at: float
    revoked_at: float | None = None


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyInfo]


class Revoked(BaseModel):
    name: str
    revoked: bool


PATCH_DESCRIPTION = (
    "Any of the client's settings (persona_id, allow_persona_override, credit_budget, "
    "budget_period, rpm, max_concurrent, weight, tags); fields left out keep their value, "
    "null clears one (back to its default). Types are checked strictly; the key is unchanged."
)
PATCH_EXAMPLE = {"rpm": 120, "credit_budget": None, "tags": ["team-a"]}


class AuditChange(BaseModel):
    before: Any
    after: Any


class AuditRow(BaseModel):
    id: str
    at: float
    actor: str = Field(description="admin-api@<remote address> or cli:<OS user>")
    action: Literal["key.created", "key.updated", "key.revoked"]
    client: str
    changes: dict[str, AuditChange]


class AuditLog(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditRow]


class UsageReport(BaseModel):
    object: Literal["list"] = "list"
    by: str
    since: float
    until: float | None
    data: list[dict[str, Any]]
    note: str | None = Field(
        None, description="by tag: a request with several tags counts under each of them"
    )


class BillingPeriod(BaseModel):
    start: str = Field(description="ISO 8601, as Mavera sent it")
    end: str


class MaveraCredits(BaseModel):
    credits_used: int | float
    credits_included: int | float | None
    credits_remaining: int | float | None


class LedgerCredits(BaseModel):
    credits_used: int | float = Field(description="known costs of every client's requests")
    requests: int
    unknown_cost_requests: int = Field(description="requests Mavera may have billed unreported")


class UnknownCost(BaseModel):
    received_at: float
    client: str
    request_id: str
    status: int
    endpoint: str


class Reconciliation(BaseModel):
    """Mavera's bill for its billing period next to the ledger's total for the same period."""

    billing_period: BillingPeriod
    mavera: MaveraCredits
    ledger: LedgerCredits
    difference: int | float = Field(description="Mavera's credits used minus the ledger's")
    agrees: bool
    unknown_cost: list[UnknownCost] = Field(description="the newest 20 unknown-cost requests")
    ledger_description: str


class RecordPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    has_more: bool
    next_offset: int | None


class Spend(BaseModel):
    """A client's budget period now: settled and reserved credits, limits, requests in flight."""

    client: str
    budget: int | None = Field(description="credits per period; null: no budget")
    period: str = Field(description="day, week, month or total")
    timezone: str = Field(description="where calendar periods begin at midnight ([limits])")
    spent: float = Field(description="credits settled in this period")
    reserved: float = Field(description="credits held by requests in flight")
    remaining: float | None = Field(description="budget - spent - reserved; null: no budget")
    period_start: str | None = Field(description="ISO 8601 with offset; null for total")
    resets_at: str | None = Field(description="ISO 8601 with offset; null for total")
    rpm: int | None
    max_concurrent: int | None
    in_flight: int = Field(description="the client's requests in flight on this replica")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "invalid request (body not JSON, persona required, bad parameter)"),
        (401, "no or unknown gateway key"),
    )
}
CONFLICT: dict[str, Any] = {
    "model": ErrorResponse,
    "description": "the key is declared in the config file: edit it there",
}
GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    **{
        status: {"model": ErrorResponse, "description": description}
        for status, description in (
            (402, "the client's credit budget is spent, or Mavera's credits are"),
            (403, "persona override not allowed for this client"),
            (404, "no such route or model"),
            (413, "request body too large"),
            (429, "rate limited (Retry-After says when to retry)"),
            (502, "Mavera unreachable, failing, or refusing the gateway's key"),
            (503, "no upstream connection free (Retry-After)"),
            (504, "Mavera too slow"),
        )
    },
}
