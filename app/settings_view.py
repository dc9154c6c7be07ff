"""Show the effective configuration as TOML, with every secret masked."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from app.config import Settings

MASK = "********"
_SECRETS = {
    ("upstream", "api_key"),
    ("admin", "key"),
    ("metrics", "key"),
    ("alerts", "webhook_url"),
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def effective_config_toml(settings: Settings) -> str:
    """The configuration the gateway would run with, as TOML; secrets show only whether set."""
    data = settings.model_dump(mode="python")
    for section, key in _SECRETS:
        data[section][key] = MASK if data[section][key] is not None else None
    data["upstream"]["proxy_url"] = masked_url(data["upstream"]["proxy_url"])
    data["ledger"]["database_url"] = masked_url(data["ledger"]["database_url"])
    data["limits"]["redis_url"] = masked_url(data["limits"]["redis_url"])
    lines: list[str] = []
    for name, section in data.items():
        if name in ("models", "routes", "clients"):
            for entry, table in section.items():
                _table(lines, f"{name}.{_key(entry)}", table)
        else:
            _table(lines, name, section)
    return "\n".join(lines).strip() + "\n"


def masked_url(url: str | None) -> str | None:
    """A URL with the password of its user info masked (proxy and database credentials)."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))


def _table(lines: list[str], header: str, values: dict[str, Any]) -> None:
    lines.append(f"[{header}]")
    for key, value in values.items():
        if value is None:
            lines.append(f"# {key} is not set")
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    lines.append("")


def _key(name: str) -> str:
    # TOML bare keys are ASCII only; str.isalnum() would also pass "modèle"
    return name if _BARE_KEY.fullmatch(name) else orjson.dumps(name).decode()


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # alias defaults may be tables and arrays (`reasoning = {effort = "low"}`); JSON is not TOML
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return orjson.dumps(value).decode()
