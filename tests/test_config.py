"""Config loading (file, env, constructor) and the masked effective-config view."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, Settings, load_settings
from app.settings_view import MASK, effective_config_toml

SECRET = "mvra_live_" + "s3cr3t" * 6
ADMIN_SECRET = "admin-" + "x9" * 12
DIGEST = hashlib.sha256(b"mgw_alice").hexdigest()

FULL = f"""
[server]
host = "0.0.0.0"
port = 9000
max_body_bytes = 1024
allow_open = true
log_format = "json"

[upstream]
base_url = "http://127.0.0.1:9999/api/v1/"
connect_timeout_s = 1.5
read_timeout_s = 30
max_retries = 4

[defaults]
model = "mavera-2"
persona_id = "p-file"
require_persona = false
allow_persona_override = true
strict_models = true

[models.fast]
persona_id = "p-fast"
model = "mavera-2-mini"
reasoning_effort = "low"

[models."gpt-4o"]
verbosity = "high"

[routes.sales]
persona_id = "p-sales"
model = "mavera-2"
allow_persona_override = false

[clients.alice]
key_sha256 = "{DIGEST}"
persona_id = "p-alice"
credit_budget = 1000
budget_period = "week"
rpm = 60

[ledger]
database_url = "sqlite:///tmp/ledger.db"
flush_interval_ms = 50
batch_size = 10
"""


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- loading --------------------------------------------------------------------------------


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.server.port == 8080
    assert settings.upstream.base_url == "https://app.mavera.io/api/v1"
    assert settings.upstream.api_key is None
    assert settings.defaults.require_persona is True
    # the per-user data directory (conftest points XDG_DATA_HOME into the test's tmp)
    data = tmp_path / "xdg-data" / "mavera-gateway" / "mavera-gateway.db"
    assert settings.ledger.database_url == f"sqlite:///{data}"
    assert settings.limits.redis_url is None
    assert settings.admin.key is None
    assert (settings.models, settings.routes, settings.clients) == ({}, {}, {})


def test_full_file_loads_into_fields(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL))
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 9000
    assert settings.server.max_body_bytes == 1024
    assert settings.server.allow_open is True
    assert settings.server.log_format == "json"
    assert settings.upstream.base_url == "http://127.0.0.1:9999/api/v1"  # trailing slash gone
    assert settings.upstream.connect_timeout_s == 1.5
    assert settings.upstream.read_timeout_s == 30.0
    assert settings.upstream.max_retries == 4
    assert settings.defaults.model == "mavera-2"
    assert settings.defaults.persona_id == "p-file"
    assert settings.defaults.require_persona is False
    assert settings.defaults.allow_persona_override is True
    assert settings.defaults.strict_models is True
    fast = settings.models["fast"]
    assert (fast.persona_id, fast.model) == ("p-fast", "mavera-2-mini")
    assert fast.request_defaults() == {"reasoning_effort": "low"}
    assert settings.models["gpt-4o"].request_defaults() == {"verbosity": "high"}
    sales = settings.routes["sales"]
    assert (sales.persona_id, sales.model, sales.allow_persona_override) == (
        "p-sales",
        "mavera-2",
        False,
    )
    alice = settings.clients["alice"]
    assert alice.key_sha256 == DIGEST
    assert (alice.persona_id, alice.credit_budget, alice.budget_period, alice.rpm) == (
        "p-alice",
        1000,
        "week",
        60,
    )
    assert alice.allow_persona_override is None
    assert settings.ledger.database_url == "sqlite:///tmp/ledger.db"
    assert (settings.ledger.flush_interval_ms, settings.ledger.batch_size) == (50, 10)


def test_string_path_accepted(tmp_path: Path) -> None:
    assert load_settings(str(write(tmp_path, FULL))).server.port == 9000


def test_nested_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_GATEWAY_DEFAULTS__PERSONA_ID", "p-env")
    monkeypatch.setenv("MAVERA_GATEWAY_SERVER__PORT", "7000")
    settings = load_settings(write(tmp_path, FULL))
    assert settings.defaults.persona_id == "p-env"
    assert settings.server.port == 7000
    # the rest of the section still comes from the file
    assert settings.defaults.model == "mavera-2"
    assert settings.server.host == "0.0.0.0"


def test_contract_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_API_KEY", SECRET)
    monkeypatch.setenv("MAVERA_BASE_URL", "http://upstream.test/api/v1")
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", "sqlite:///env.db")
    monkeypatch.setenv("MAVERA_GATEWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("MAVERA_GATEWAY_ADMIN_KEY", ADMIN_SECRET)
    settings = load_settings()
    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == SECRET
    assert settings.upstream.base_url == "http://upstream.test/api/v1"
    assert settings.ledger.database_url == "sqlite:///env.db"
    assert settings.limits.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.admin.key is not None
    assert settings.admin.key.get_secret_value() == ADMIN_SECRET


def test_contract_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_BASE_URL", "http://env.test")
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", "sqlite:///env.db")
    settings = load_settings(write(tmp_path, FULL))
    assert settings.upstream.base_url == "http://env.test"
    assert settings.ledger.database_url == "sqlite:///env.db"
    assert settings.upstream.max_retries == 4  # same section, from the file


def test_contract_env_beats_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_API_KEY", "short-name")
    monkeypatch.setenv("MAVERA_GATEWAY_UPSTREAM__API_KEY", "long-name")
    settings = load_settings()
    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == "short-name"


def test_constructor_overrides_beat_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAVERA_BASE_URL", "http://env.test")
    monkeypatch.setenv("MAVERA_GATEWAY_DEFAULTS__PERSONA_ID", "p-env")
    settings = load_settings(
        write(tmp_path, FULL),
        upstream={"base_url": "http://init.test"},
        defaults={"persona_id": "p-init"},
    )
    assert settings.upstream.base_url == "http://init.test"
    assert settings.defaults.persona_id == "p-init"
    assert settings.defaults.model == "mavera-2"  # untouched keys still from the file


def test_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_GATEWAY_CONFIG", str(write(tmp_path, FULL)))
    assert load_settings().server.port == 9000


def test_explicit_path_beats_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_GATEWAY_CONFIG", str(write(tmp_path, FULL)))
    other = write(tmp_path, "[server]\nport = 1234\n", "other.toml")
    assert load_settings(other).server.port == 1234


def test_settings_constructed_directly_ignore_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAVERA_GATEWAY_CONFIG", str(write(tmp_path, FULL)))
    assert Settings().server.port == 8080


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nport = 8080\nnope = 1\n", "server.nope"),
        ("[upstream]\ntimeout = 3\n", "upstream.timeout"),
        ("bogus = 1\n", "bogus"),
        ('[server]\nport = "abc"\n', "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[upstream]\nbase_url = "app.mavera.io/api/v1"\n', "upstream.base_url"),
        ('[clients.bob]\nkey_sha256 = "not-a-digest"\n', "clients.bob.key_sha256"),
        ("[clients.bob]\npersona_id = 'p'\n", "clients.bob.key_sha256"),
        (
            f'[clients.bob]\nkey_sha256 = "{DIGEST}"\nbudget_period = "year"\n',
            "clients.bob.budget_period",
        ),
        ("[routes.admin]\npersona_id = 'p'\n", "admin"),
        ("[routes.v1]\npersona_id = 'p'\n", "v1"),
        ("[models.fast]\npersona_id = 3\n", "models.fast.persona_id"),
        ("[defaults]\nrequire_persona = 'maybe'\n", "defaults.require_persona"),
        (f"[clients.carol]\nkey_sha256 = '{'a' * 64}'\nrpm = 0\n", "clients.carol.rpm"),
        (
            f"[clients.carol]\nkey_sha256 = '{'a' * 64}'\ncredit_budget = -5\n",
            "clients.carol.credit_budget",
        ),
        (f"[clients.'carol smith']\nkey_sha256 = '{'a' * 64}'\n", "carol smith"),
        ("[upstream]\nproxy_url = 'socks5://proxy:1080'\n", "upstream.proxy_url"),
        ("[upstream]\nca_bundle = '/nowhere/ca.pem'\n", "upstream.ca_bundle"),
        ("[upstream]\npool_timeout_s = 0\n", "upstream.pool_timeout_s"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert key in message
    assert str(path) in message


def test_reserved_route_name_is_named_as_a_route(tmp_path: Path) -> None:
    path = write(tmp_path, "[routes.healthz]\npersona_id = 'p'\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "routes" in str(caught.value)
    assert "'healthz'" in str(caught.value)


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 8080\nhost = "unterminated\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message
    assert "TOML" in message
    assert "line 3" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_missing_file_named_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "from-env.toml"
    monkeypatch.setenv("MAVERA_GATEWAY_CONFIG", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(path) in str(caught.value)


def test_bad_env_value_names_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_BASE_URL", "app.mavera.io")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "upstream.base_url" in str(caught.value)
    assert "MAVERA_GATEWAY_" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        '[server]\nport = "abc"\n',
        "[clients.bob]\nkey_sha256 = 'zz'\n",
        f'[upstream]\napi_key = "{SECRET}"\nbase_url = "nope"\n',
        f'[upstream]\napi_key = "{SECRET}"\nmax_retries = "{SECRET}"\n',
        f'[defaults]\nmodel = "{SECRET}"\npersona_id = [1]\n',
        f'[upstream]\napi_key = "{SECRET}\n',  # TOML syntax error on the secret's own line
    ],
)
def test_error_never_contains_the_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("MAVERA_API_KEY", SECRET)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert SECRET not in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_error_without_cause_chain_holding_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a traceback prints __cause__/__context__: neither may carry the pydantic input values
    monkeypatch.setenv("MAVERA_API_KEY", SECRET)
    path = write(tmp_path, f'[upstream]\nmax_retries = "{SECRET}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


# --- effective config view ------------------------------------------------------------------


def full_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MAVERA_API_KEY", SECRET)
    monkeypatch.setenv("MAVERA_GATEWAY_ADMIN_KEY", ADMIN_SECRET)
    return load_settings(write(tmp_path, FULL))


def test_view_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = effective_config_toml(full_settings(tmp_path, monkeypatch))
    assert SECRET not in out
    assert ADMIN_SECRET not in out
    parsed = tomllib.loads(out)
    assert parsed["upstream"]["api_key"] == MASK
    assert parsed["admin"]["key"] == MASK


def test_view_masks_the_proxy_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_GATEWAY_UPSTREAM__PROXY_URL", "http://ops:s3cr%40t@proxy.corp:3128")
    out = effective_config_toml(load_settings())
    assert "s3cr" not in out
    assert tomllib.loads(out)["upstream"]["proxy_url"] == f"http://ops:{MASK}@proxy.corp:3128"


def test_view_masks_the_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", "postgresql://gw:pg-s3cret@db:5432/usage")
    out = effective_config_toml(load_settings())
    assert "pg-s3cret" not in out
    assert tomllib.loads(out)["ledger"]["database_url"] == f"postgresql://gw:{MASK}@db:5432/usage"


def test_view_masks_the_redis_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAVERA_GATEWAY_REDIS_URL", "redis://:rd-s3cret@cache:6379/2")
    out = effective_config_toml(load_settings())
    assert "rd-s3cret" not in out
    assert tomllib.loads(out)["limits"]["redis_url"] == f"redis://:{MASK}@cache:6379/2"


def test_view_says_unset_secrets_are_unset() -> None:
    out = effective_config_toml(Settings())
    parsed = tomllib.loads(out)
    assert "api_key" not in parsed["upstream"]
    assert "key" not in parsed["admin"]
    assert "# api_key is not set" in out


def test_view_is_the_effective_config_as_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = full_settings(tmp_path, monkeypatch)
    parsed = tomllib.loads(effective_config_toml(settings))
    expected = settings.model_dump(mode="json", exclude_none=True)
    expected["upstream"]["api_key"] = MASK
    expected["admin"]["key"] = MASK
    for empty in ("models", "routes", "clients"):
        if not expected[empty]:
            del expected[empty]
    assert parsed == expected


def test_view_shows_models_routes_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = effective_config_toml(full_settings(tmp_path, monkeypatch))
    assert "[models.fast]" in out
    assert '[models."gpt-4o"]' in out or "[models.gpt-4o]" in out
    assert "[routes.sales]" in out
    assert "[clients.alice]" in out
    parsed = tomllib.loads(out)
    assert parsed["models"]["fast"] == {
        "persona_id": "p-fast",
        "model": "mavera-2-mini",
        "reasoning_effort": "low",
    }
    assert parsed["models"]["gpt-4o"] == {"verbosity": "high"}
    assert parsed["routes"]["sales"]["persona_id"] == "p-sales"
    assert parsed["clients"]["alice"]["key_sha256"] == DIGEST
    assert parsed["clients"]["alice"]["rpm"] == 60


def test_view_round_trips_structured_alias_defaults() -> None:
    # Responses-API defaults are tables (`reasoning = {effort = "low"}`) and arrays.
    alias: dict[str, Any] = {
        "persona_id": "p",
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"verbosity": "low", "format": {"type": "text"}},
        "stop": ["END", "STOP"],
        "tools": [{"type": "web_search", "filters": {"allowed_domains": ["a.example"]}}],
        "temperature": 0.2,
    }
    settings = Settings(models={"deep": alias})
    parsed = tomllib.loads(effective_config_toml(settings))
    assert parsed["models"]["deep"] == alias


def test_view_quotes_names_toml_cannot_take_bare() -> None:
    names = ["gpt-4.1", "mod\u00e8le", "with space", 'has"quote']
    settings = Settings(models={name: {"verbosity": "low"} for name in names})
    parsed = tomllib.loads(effective_config_toml(settings))
    assert sorted(parsed["models"]) == sorted(names)


@pytest.mark.parametrize(
    "url", ["postgresql://gw@db.internal:5432/usage", "postgres://gw@db/usage?sslmode=require"]
)
def test_a_postgres_ledger_url_is_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", url)
    assert load_settings().ledger.database_url == url


def test_an_unsupported_ledger_url_names_both_kinds(tmp_path: Path) -> None:
    path = write(tmp_path, '[ledger]\ndatabase_url = "mysql://root@db/usage"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "ledger.database_url" in message
    assert "sqlite:///" in message and "postgresql://" in message
