"""Who calls the gateway, and the one definition of a client's settings.

`ClientSpec` is validated wherever a client's settings enter: the config file and environment
(`[clients.NAME]`), the key store (rows read back from the ledger), the admin API and the CLI.
Domain types: they import nothing of the gateway's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BudgetPeriod = Literal["day", "week", "month", "total"]
BUDGET_PERIODS: tuple[BudgetPeriod, ...] = ("day", "week", "month", "total")

# Names appear in reports, metrics labels and URLs (/admin/keys/NAME).
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
CLIENT_NAME_RULE = "1-64 characters: letters, digits and . _ @ -, starting with a letter or digit"
# Cost tags (a client's own, X-Mavera-Tags, metadata.tags) are grouped by in reports.
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,63}$"
MAX_TAGS = 16


class ClientSpec(BaseModel):
    """A client's settings: default persona, override permission, budget, rate limits, share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    persona_id: str | None = Field(None, min_length=1, max_length=128)
    allow_persona_override: bool | None = None
    credit_budget: int | None = Field(None, ge=0, le=10**12)
    budget_period: BudgetPeriod = "month"
    rpm: int | None = Field(None, gt=0, le=1_000_000)
    max_concurrent: int | None = Field(None, gt=0, le=100_000)
    # share of the gateway-wide rpm when demand exceeds it, relative to other clients' weights
    weight: int = Field(1, gt=0, le=1000)
    tags: tuple[Annotated[str, Field(pattern=TAG_PATTERN)], ...] = Field((), max_length=MAX_TAGS)


class InvalidClientSpec(ValueError):
    """A client's settings were refused; the message names each bad field and why."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def check_client_name(name: object) -> str:
    """The name if it is a usable client name, else InvalidClientSpec."""
    if not isinstance(name, str) or not CLIENT_NAME.fullmatch(name):
        raise InvalidClientSpec(f"client name {name!r} is not valid: {CLIENT_NAME_RULE}", "name")
    return name


def parse_client_spec(data: dict[str, Any], *, strict: bool = True) -> ClientSpec:
    """A ClientSpec from untrusted input, or InvalidClientSpec naming what is wrong.

    `strict` refuses look-alike types (`"5"` for 5, `"no"` for false): right for JSON from
    the admin API and for values typed by the CLI; config from environment variables, which are
    always strings, is read with `strict=False`.
    """
    try:
        return ClientSpec.model_validate(data, strict=strict)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors]
        first = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
        raise InvalidClientSpec("invalid client settings: " + "; ".join(parts), first) from None


@dataclass(frozen=True, slots=True)
class Client:
    """A caller the gateway knows: a named gateway key, or `local` in local-proxy mode."""

    name: str
    spec: ClientSpec = ClientSpec()


LOCAL_CLIENT = Client(name="local")
