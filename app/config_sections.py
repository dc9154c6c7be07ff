"""The sections of the configuration, one model each, with their defaults and checks.

`app.config.Settings` puts them together and reads them from the TOML file and the environment;
every section refuses keys it does not know.
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from app.clients import BudgetPeriod, ClientSpec

DEFAULT_BASE_URL = "https://app.mavera.io/api/v1"


def default_database_url() -> str:
    """The ledger's default: an SQLite file in the per-user data directory, so that which
    database a command reads never depends on the directory it was run from."""
    directory = Path(platformdirs.user_data_dir("mavera-gateway", appauthor=False))
    return f"sqlite:///{directory / 'mavera-gateway.db'}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_headers: int = Field(100, gt=0)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(1000, gt=0)
    allow_open: bool = False
    shutdown_grace_s: float = Field(30.0, ge=0)
    log_format: Literal["text", "json"] = "text"


class UpstreamSettings(_Section):
    base_url: str = DEFAULT_BASE_URL
    api_key: SecretStr | None = None
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    write_timeout_s: float = Field(30.0, gt=0)
    total_timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    max_connections: int = Field(512, gt=0)
    pool_timeout_s: float = Field(5.0, gt=0)
    keepalive_s: float = Field(5.0, ge=0)
    proxy_url: str | None = None
    ca_bundle: str | None = None
    max_event_bytes: int = Field(1024 * 1024, ge=1024)
    # read Mavera's persona list once at start (in the background) for reports' persona names
    persona_names_at_start: bool = True

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("proxy_url")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("http://"):
            raise ValueError("must be an http:// proxy URL, e.g. http://user:pass@proxy:3128")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such file: {value} (a PEM file of CA certificates)")
        return value


class DefaultsSettings(_Section):
    model: str = "mavera-1"
    persona_id: str | None = None
    require_persona: bool = True
    allow_persona_override: bool = False
    strict_models: bool = False


class ModelAlias(BaseModel):
    """A model name clients may ask for; extra keys are default request fields."""

    model_config = ConfigDict(extra="allow")

    persona_id: str | None = None
    model: str | None = None

    def request_defaults(self) -> dict[str, Any]:
        """Request fields (reasoning_effort, verbosity, ...) added when the client left them out."""
        return dict(self.model_extra or {})


class RouteSettings(_Section):
    persona_id: str | None = None
    model: str | None = None
    allow_persona_override: bool | None = None


class ClientSettings(ClientSpec):
    """`[clients.NAME]`: a client declared in the config, with the digest of its key."""

    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def spec(self) -> ClientSpec:
        """The client's settings without the key digest."""
        return ClientSpec.model_validate(self.model_dump(exclude={"key_sha256"}))


class LedgerSettings(_Section):
    database_url: str = Field(default_factory=default_database_url)
    flush_interval_ms: int = Field(200, gt=0)
    batch_size: int = Field(500, gt=0)
    max_buffer: int = Field(100_000, gt=0)
    durability: Literal["batched", "strict"] = "batched"

    @field_validator("database_url")
    @classmethod
    def _supported(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(
                "the ledger is SQLite or PostgreSQL: use sqlite:///path/file.db "
                "or postgresql://user@host:port/db"
            )
        return value


class LimitsSettings(_Section):
    timezone: str = "UTC"  # calendar budget periods (day, week, month) begin at midnight here
    budget_reserve_credits: float = Field(5.0, ge=0)
    gateway_credit_budget: int | None = Field(None, ge=0)
    gateway_budget_period: BudgetPeriod = "month"
    gateway_rpm: int | None = Field(None, gt=0, le=1_000_000)
    queue_timeout_ms: int = Field(2000, ge=0, le=600_000)
    redis_url: str | None = None
    # Every key the gateway keeps in Redis starts with this: deployments sharing one Redis
    # (or one db) keep apart by prefix.
    redis_prefix: str = Field("mavera-gateway:", min_length=1, max_length=100)
    on_shared_failure: Literal["fail_closed", "fail_open"] = "fail_closed"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as UTC or Europe/Berlin"
            ) from None
        return value


class AlertsSettings(_Section):
    webhook_url: str | None = None
    thresholds: tuple[float, ...] = (0.8, 1.0)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # the URL itself is a secret (Slack's carries a token): not quoted here
                raise ValueError("the webhook URL must be an http:// or https:// URL with a host")
        return value

    @field_validator("thresholds")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < t <= 10 for t in value):
            raise ValueError("thresholds are fractions of a budget, such as 0.8 and 1.0")
        return tuple(sorted(set(value)))


class AdminSettings(_Section):
    key: SecretStr | None = None


class MetricsSettings(_Section):
    key: SecretStr | None = None
    public_client_labels: bool = False
