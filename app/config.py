"""Settings: one TOML file plus environment variables, validated once at start.

Priority, highest first: constructor arguments (tests), the contract's short environment
variables (`MAVERA_API_KEY`, `MAVERA_BASE_URL`, `MAVERA_GATEWAY_DATABASE_URL`, ...), then
`MAVERA_GATEWAY_<SECTION>__<KEY>`, then the TOML file, then the defaults below.
"""

from __future__ import annotations

import contextvars
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from app.clients import check_client_name
from app.config_sections import (
    AdminSettings,
    AlertsSettings,
    ClientSettings,
    DefaultsSettings,
    LedgerSettings,
    LimitsSettings,
    MetricsSettings,
    ModelAlias,
    RouteSettings,
    ServerSettings,
    UpstreamSettings,
)

# The contract's short variable names and where each lands in Settings.
CONTRACT_ENV: dict[str, tuple[str, ...]] = {
    "MAVERA_API_KEY": ("upstream", "api_key"),
    "MAVERA_BASE_URL": ("upstream", "base_url"),
    "MAVERA_GATEWAY_DATABASE_URL": ("ledger", "database_url"),
    "MAVERA_GATEWAY_REDIS_URL": ("limits", "redis_url"),
    "MAVERA_GATEWAY_ADMIN_KEY": ("admin", "key"),
    "MAVERA_GATEWAY_METRICS_KEY": ("metrics", "key"),
}

_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "mavera_gateway_config_file", default=None
)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and where it came from."""


class Settings(BaseSettings):
    """The gateway's whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="MAVERA_GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    defaults: DefaultsSettings = DefaultsSettings()
    models: dict[str, ModelAlias] = {}
    routes: dict[str, RouteSettings] = {}
    clients: dict[str, ClientSettings] = {}
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)  # its default path, when read
    limits: LimitsSettings = LimitsSettings()
    alerts: AlertsSettings = AlertsSettings()
    admin: AdminSettings = AdminSettings()
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("routes")
    @classmethod
    def _route_names(cls, routes: dict[str, RouteSettings]) -> dict[str, RouteSettings]:
        reserved = {"v1", "admin", "healthz", "readyz", "metrics", "dashboard"}
        for name in routes:
            if name in reserved or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"route name {name!r} must be alphanumeric and not {reserved}")
        return routes

    @field_validator("clients")
    @classmethod
    def _client_names(cls, clients: dict[str, ClientSettings]) -> dict[str, ClientSettings]:
        for name in clients:
            check_client_name(name)
        return clients

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            _ContractEnvSource(settings_cls),
            env_settings,
        ]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


class _ContractEnvSource(PydanticBaseSettingsSource):
    """The short environment variable names the interface contract promises."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for variable, (section, key) in CONTRACT_ENV.items():
            value = os.environ.get(variable)
            if value:
                found.setdefault(section, {})[key] = value
        return found


def config_path_from_env(explicit: str | Path | None) -> Path | None:
    """The config file to read: the explicit path, else `MAVERA_GATEWAY_CONFIG`, else none."""
    chosen = explicit or os.environ.get("MAVERA_GATEWAY_CONFIG")
    return Path(chosen) if chosen else None


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from the file, the environment and `overrides`; raise ConfigError if bad."""
    path = config_path_from_env(config_path)
    where = f"config file {path}" if path else "configuration"
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None
    finally:
        _config_file.reset(token)


def _describe(exc: ValidationError, where: str) -> str:
    lines = [f"invalid {where} (or MAVERA_GATEWAY_* environment):"]
    for error in exc.errors(include_url=False, include_input=False):
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)
