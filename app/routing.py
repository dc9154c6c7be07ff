"""Decide, per request, which persona and upstream model to use. Pure: no I/O.

Persona precedence, first match wins: a permitted request override (body `persona_id`, then
header `X-Mavera-Persona`) -> model alias -> route -> client default -> global default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.clients import Client
from app.config import Settings
from app.config_sections import RouteSettings
from app.errors import ModelNotFound, PersonaOverrideForbidden, PersonaRequired
from app.records import PersonaSource

PERSONA_HEADER = "x-mavera-persona"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the persona and model, and fields to fill in when absent."""

    persona_id: str | None
    persona_source: PersonaSource
    requested_model: str | None
    upstream_model: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


def resolve(
    settings: Settings,
    route_name: str | None,
    client: Client,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
) -> Target:
    """Choose persona and model for one request, or raise the GatewayError that explains why not."""
    route = settings.routes[route_name] if route_name else RouteSettings()
    requested = body.get("model")
    requested_model = requested if isinstance(requested, str) else None
    alias = settings.models.get(requested_model) if requested_model else None
    upstream_model = _upstream_model(settings, route, requested_model, alias is not None)

    candidates: tuple[tuple[PersonaSource, str | None], ...] = (
        ("model", alias.persona_id if alias else None),
        ("route", route.persona_id),
        ("client", client.spec.persona_id),
        ("default", settings.defaults.persona_id),
    )
    none: tuple[PersonaSource, str | None] = ("none", None)
    source, persona = next(((s, p) for s, p in candidates if p), none)

    override = _requested_override(body, headers)
    if override is not None and override != persona:
        if not _override_allowed(settings, route, client):
            raise PersonaOverrideForbidden(
                f"client {client.name!r} may not choose its own persona; "
                "remove persona_id / X-Mavera-Persona, or set allow_persona_override",
                param="persona_id",
            )
        source, persona = "request", override

    if persona is None and settings.defaults.require_persona:
        raise PersonaRequired(
            "no persona_id resolved for this request: set defaults.persona_id, a route or "
            "client persona, a model alias, or send persona_id where overrides are allowed",
            param="persona_id",
        )
    return Target(
        persona_id=persona,
        persona_source=source,
        requested_model=requested_model,
        upstream_model=(alias.model if alias and alias.model else upstream_model),
        defaults=alias.request_defaults() if alias else {},
    )


def apply_target(target: Target, body: dict[str, Any]) -> None:
    """Rewrite the request body in place for the upstream: model, persona, alias defaults."""
    body["model"] = target.upstream_model
    if target.persona_id is None:
        body.pop("persona_id", None)
    else:
        body["persona_id"] = target.persona_id
    for key, value in target.defaults.items():
        body.setdefault(key, value)


def _upstream_model(
    settings: Settings, route: RouteSettings, requested: str | None, is_alias: bool
) -> str:
    fallback = route.model or settings.defaults.model
    if requested is None or is_alias:
        return fallback
    known = {settings.defaults.model, *(m for m in (route.model,) if m)}
    known.update(a.model for a in settings.models.values() if a.model)
    if requested in known:
        return requested
    if settings.defaults.strict_models:
        raise ModelNotFound(
            f"model {requested!r} is not served here; GET /v1/models lists the names you can use",
            param="model",
        )
    return fallback


def _requested_override(body: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    value = body.get("persona_id")
    if isinstance(value, str) and value:
        return value
    return headers.get(PERSONA_HEADER) or None


def _override_allowed(settings: Settings, route: RouteSettings, client: Client) -> bool:
    for choice in (client.spec.allow_persona_override, route.allow_persona_override):
        if choice is not None:
            return choice
    return settings.defaults.allow_persona_override
