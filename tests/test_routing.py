"""Persona and model resolution: precedence, overrides, requirement, aliases, model mapping."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import Headers

from app.clients import LOCAL_CLIENT, Client, ClientSpec
from app.config import Settings
from app.errors import ModelNotFound, PersonaOverrideForbidden, PersonaRequired
from app.routing import Target, apply_target, resolve

NO_HEADERS: dict[str, str] = {}


def full_settings(**defaults: Any) -> Settings:
    """Every level sets a persona, so each precedence step can be peeled off."""
    return Settings(
        defaults={"persona_id": "p-default", "model": "mavera-1", **defaults},
        models={
            "fast": {"persona_id": "p-model", "model": "mavera-1-mini", "reasoning_effort": "low"},
            "plain": {"verbosity": "low"},
        },
        routes={"sales": {"persona_id": "p-route"}, "bare": {}},
    )


CLIENT = Client("alice", ClientSpec(persona_id="p-client"))


# --- persona precedence ---------------------------------------------------------------------


def test_global_default() -> None:
    target = resolve(full_settings(), None, LOCAL_CLIENT, {"model": "mavera-1"}, NO_HEADERS)
    assert (target.persona_id, target.persona_source) == ("p-default", "default")


def test_client_beats_default() -> None:
    target = resolve(full_settings(), None, CLIENT, {"model": "mavera-1"}, NO_HEADERS)
    assert (target.persona_id, target.persona_source) == ("p-client", "client")


def test_route_beats_client() -> None:
    target = resolve(full_settings(), "sales", CLIENT, {"model": "mavera-1"}, NO_HEADERS)
    assert (target.persona_id, target.persona_source) == ("p-route", "route")


def test_route_without_persona_falls_through_to_client() -> None:
    target = resolve(full_settings(), "bare", CLIENT, {"model": "mavera-1"}, NO_HEADERS)
    assert (target.persona_id, target.persona_source) == ("p-client", "client")


def test_model_alias_beats_route() -> None:
    target = resolve(full_settings(), "sales", CLIENT, {"model": "fast"}, NO_HEADERS)
    assert (target.persona_id, target.persona_source) == ("p-model", "model")


def test_alias_without_persona_falls_through_to_route() -> None:
    target = resolve(full_settings(), "sales", CLIENT, {"model": "plain"}, NO_HEADERS)
    assert (target.persona_id, target.persona_source) == ("p-route", "route")


def test_permitted_override_beats_everything() -> None:
    settings = full_settings(allow_persona_override=True)
    body = {"model": "fast", "persona_id": "p-request"}
    target = resolve(settings, "sales", CLIENT, body, NO_HEADERS)
    assert (target.persona_id, target.persona_source) == ("p-request", "request")


def test_header_override() -> None:
    settings = full_settings(allow_persona_override=True)
    headers = {"x-mavera-persona": "p-header"}
    target = resolve(settings, None, CLIENT, {"model": "fast"}, headers)
    assert (target.persona_id, target.persona_source) == ("p-header", "request")


def test_header_override_is_case_insensitive_with_real_headers() -> None:
    settings = full_settings(allow_persona_override=True)
    headers = Headers(headers={"X-Mavera-Persona": "p-header"})
    target = resolve(settings, None, CLIENT, {}, headers)
    assert target.persona_id == "p-header"


def test_body_persona_beats_header() -> None:
    settings = full_settings(allow_persona_override=True)
    body = {"persona_id": "p-body"}
    target = resolve(settings, None, CLIENT, body, {"x-mavera-persona": "p-header"})
    assert target.persona_id == "p-body"


@pytest.mark.parametrize("empty", ["", None, 42])
def test_empty_or_non_string_body_persona_falls_back_to_header(empty: Any) -> None:
    settings = full_settings(allow_persona_override=True)
    body = {"persona_id": empty}
    target = resolve(settings, None, CLIENT, body, {"x-mavera-persona": "p-header"})
    assert target.persona_id == "p-header"


def test_empty_header_is_no_override() -> None:
    target = resolve(full_settings(), None, CLIENT, {}, {"x-mavera-persona": ""})
    assert (target.persona_id, target.persona_source) == ("p-client", "client")


# --- who may override -----------------------------------------------------------------------


def test_override_refused_by_default() -> None:
    with pytest.raises(PersonaOverrideForbidden) as caught:
        resolve(full_settings(), None, CLIENT, {"persona_id": "p-mine"}, NO_HEADERS)
    error = caught.value
    assert error.status == 403
    assert error.code == "persona_override_forbidden"
    assert error.param == "persona_id"
    assert "alice" in error.message


def test_header_override_refused_by_default() -> None:
    with pytest.raises(PersonaOverrideForbidden):
        resolve(full_settings(), None, CLIENT, {}, {"x-mavera-persona": "p-mine"})


def test_override_equal_to_resolved_persona_is_accepted() -> None:
    # SDKs that always send the persona they were configured with must keep working.
    body = {"model": "fast", "persona_id": "p-model"}
    target = resolve(full_settings(), "sales", CLIENT, body, NO_HEADERS)
    assert (target.persona_id, target.persona_source) == ("p-model", "model")
    header = {"x-mavera-persona": "p-client"}
    target = resolve(full_settings(), None, CLIENT, {}, header)
    assert (target.persona_id, target.persona_source) == ("p-client", "client")


def allowed(default: bool, route: bool | None, client: bool | None) -> bool:
    settings = Settings(
        defaults={"persona_id": "p", "allow_persona_override": default},
        routes={"r": {"allow_persona_override": route}},
    )
    who = Client("c", ClientSpec(allow_persona_override=client))
    try:
        resolve(settings, "r", who, {"persona_id": "other"}, NO_HEADERS)
    except PersonaOverrideForbidden:
        return False
    return True


@pytest.mark.parametrize(
    ("default", "route", "client", "expected"),
    [
        (False, None, None, False),
        (True, None, None, True),
        (False, True, None, True),
        (True, False, None, False),
        (False, False, True, True),
        (True, True, False, False),
        (False, True, False, False),
        (True, False, True, True),
    ],
)
def test_client_allow_beats_route_beats_default(
    default: bool, route: bool | None, client: bool | None, expected: bool
) -> None:
    assert allowed(default, route, client) is expected


# --- persona requirement --------------------------------------------------------------------


def test_persona_required_when_none_resolves() -> None:
    with pytest.raises(PersonaRequired) as caught:
        resolve(Settings(), None, LOCAL_CLIENT, {"model": "mavera-1"}, NO_HEADERS)
    assert caught.value.status == 400
    assert caught.value.code == "persona_required"
    assert caught.value.param == "persona_id"


def test_no_persona_allowed_when_not_required() -> None:
    settings = Settings(defaults={"require_persona": False})
    target = resolve(settings, None, LOCAL_CLIENT, {"model": "mavera-1"}, NO_HEADERS)
    assert (target.persona_id, target.persona_source) == (None, "none")
    request: dict[str, Any] = {"model": "mavera-1", "persona_id": None, "messages": []}
    apply_target(target, request)
    assert "persona_id" not in request
    assert request == {"model": "mavera-1", "messages": []}


def test_unpermitted_override_refused_even_without_a_persona() -> None:
    settings = Settings(defaults={"require_persona": False})
    with pytest.raises(PersonaOverrideForbidden):
        resolve(settings, None, LOCAL_CLIENT, {"persona_id": "p"}, NO_HEADERS)


def test_permitted_override_satisfies_requirement() -> None:
    settings = Settings(defaults={"allow_persona_override": True})
    target = resolve(settings, None, LOCAL_CLIENT, {"persona_id": "p-req"}, NO_HEADERS)
    assert target.persona_id == "p-req"


# --- model mapping --------------------------------------------------------------------------


def test_alias_maps_to_its_upstream_model() -> None:
    target = resolve(full_settings(), None, CLIENT, {"model": "fast"}, NO_HEADERS)
    assert target.requested_model == "fast"
    assert target.upstream_model == "mavera-1-mini"


def test_alias_without_model_maps_to_default_model() -> None:
    target = resolve(full_settings(), None, CLIENT, {"model": "plain"}, NO_HEADERS)
    assert target.upstream_model == "mavera-1"


def test_alias_defaults_are_only_the_extra_fields() -> None:
    target = resolve(full_settings(), None, CLIENT, {"model": "fast"}, NO_HEADERS)
    assert dict(target.defaults) == {"reasoning_effort": "low"}


def test_alias_defaults_added_only_when_absent() -> None:
    settings = Settings(
        defaults={"persona_id": "p"},
        models={"fast": {"persona_id": "m", "reasoning_effort": "low", "verbosity": "low"}},
    )
    target = resolve(settings, None, CLIENT, {"model": "fast"}, NO_HEADERS)
    request: dict[str, Any] = {"model": "fast", "reasoning_effort": "high", "messages": []}
    apply_target(target, request)
    assert request == {
        "model": "mavera-1",
        "persona_id": "m",
        "reasoning_effort": "high",
        "verbosity": "low",
        "messages": [],
    }


def test_unknown_model_maps_to_default_model() -> None:
    target = resolve(full_settings(), None, CLIENT, {"model": "gpt-4o"}, NO_HEADERS)
    assert (target.requested_model, target.upstream_model) == ("gpt-4o", "mavera-1")
    assert dict(target.defaults) == {}


def test_unknown_model_maps_to_route_model() -> None:
    settings = Settings(defaults={"persona_id": "p"}, routes={"r": {"model": "mavera-r"}})
    target = resolve(settings, "r", CLIENT, {"model": "gpt-4o"}, NO_HEADERS)
    assert target.upstream_model == "mavera-r"


def test_missing_model_maps_to_default_model() -> None:
    target = resolve(full_settings(strict_models=True), None, CLIENT, {}, NO_HEADERS)
    assert (target.requested_model, target.upstream_model) == (None, "mavera-1")


def test_unknown_model_refused_when_strict() -> None:
    with pytest.raises(ModelNotFound) as caught:
        resolve(full_settings(strict_models=True), None, CLIENT, {"model": "gpt-4o"}, NO_HEADERS)
    assert caught.value.status == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert "gpt-4o" in caught.value.message


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("model", ["mavera-1", "mavera-1-mini", "fast"])
def test_known_models_pass(strict: bool, model: str) -> None:
    settings = full_settings(strict_models=strict)
    target = resolve(settings, None, CLIENT, {"model": model}, NO_HEADERS)
    assert target.upstream_model == ("mavera-1-mini" if model == "fast" else model)


def test_route_model_is_known_under_strict() -> None:
    settings = Settings(
        defaults={"persona_id": "p", "strict_models": True}, routes={"r": {"model": "mavera-r"}}
    )
    target = resolve(settings, "r", CLIENT, {"model": "mavera-r"}, NO_HEADERS)
    assert target.upstream_model == "mavera-r"


# --- applying the target --------------------------------------------------------------------


def test_apply_target_sets_model_and_persona_and_keeps_unknown_fields() -> None:
    target = Target(
        persona_id="p",
        persona_source="default",
        requested_model="gpt-4o",
        upstream_model="mavera-1",
    )
    request: dict[str, Any] = {
        "model": "gpt-4o",
        "persona_id": "old",
        "messages": [{"role": "user", "content": "hi"}],
        "some_future_field": {"x": 1},
    }
    apply_target(target, request)
    assert request == {
        "model": "mavera-1",
        "persona_id": "p",
        "messages": [{"role": "user", "content": "hi"}],
        "some_future_field": {"x": 1},
    }


def test_resolve_does_not_touch_the_body() -> None:
    settings = full_settings(allow_persona_override=True)
    request = {"model": "fast", "persona_id": "p-request"}
    resolve(settings, None, CLIENT, request, NO_HEADERS)
    assert request == {"model": "fast", "persona_id": "p-request"}
