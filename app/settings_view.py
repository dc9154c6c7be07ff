"""Show the effective configuration as TOML, with every secret masked."""

from __future__ import annotations

from typing import Any

import orjson

from app.config import Settings

MASK = "********"
_SECRETS = {("upstream", "api_key"), ("admin", "key")}


def effective_config_toml(settings: Settings) -> str:
    """The configuration the gateway would run with, as TOML; secrets show only whether set."""
    data = settings.model_dump(mode="python")
    for section, key in _SECRETS:
        data[section][key] = MASK if data[section][key] is not None else None
    lines: list[str] = []
    for name, section in data.items():
        if name in ("models", "routes", "clients"):
            for entry, table in section.items():
                _table(lines, f"{name}.{_key(entry)}", table)
        else:
            _table(lines, name, section)
    return "\n".join(lines).strip() + "\n"


def _table(lines: list[str], header: str, values: dict[str, Any]) -> None:
    lines.append(f"[{header}]")
    for key, value in values.items():
        if value is None:
            lines.append(f"# {key} is not set")
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    lines.append("")


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else orjson.dumps(name).decode()


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value).decode()
