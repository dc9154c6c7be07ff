"""Where the credits go, on a running gateway in front of the simulator: cost tags from the
header, `metadata.tags` and the client's own settings; reports by tag, end user and persona
(with its name); and reconciliation of the ledger with Mavera's GET /usage."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from app.auth import key_digest
from app.cli import main
from app.simulator import PERSONAS as SIM_PERSONAS
from tests.conftest import DEFAULT_PERSONA, PERSONAS, UPSTREAM_KEY, GatewayFactory, RunningGateway

ADMIN_KEY = "admin-key-for-attribution-tests-0123"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
ALICE_KEY = "mgw_alice_key_for_attribution_tests_00000000000"
BOB_KEY = "mgw_bob_key_for_attribution_tests_0000000000000"
HI = [{"role": "user", "content": "hi"}]
NAMES = {p.id: p.name for p in SIM_PERSONAS}


def _team(make_gateway: GatewayFactory, **overrides: Any) -> RunningGateway:
    """A gateway with two clients; alice's own settings tag her requests `team-a`."""
    clients = {
        "alice": {"key_sha256": key_digest(ALICE_KEY), "tags": ["team-a"]},
        "bob": {"key_sha256": key_digest(BOB_KEY)},
    }
    return make_gateway(clients=clients, admin={"key": ADMIN_KEY}, **overrides)


def _admin(gateway: RunningGateway, path: str, **params: str) -> httpx.Response:
    return httpx.get(gateway.url + path, headers=ADMIN, params=params, timeout=10)


def _cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    gateway: RunningGateway,
    *argv: str,
) -> tuple[int, str, str]:
    """`mavera-gateway ...` in-process, configured as the test gateway is."""
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", gateway.settings.ledger.database_url)
    monkeypatch.setenv("MAVERA_BASE_URL", gateway.settings.upstream.base_url)
    monkeypatch.setenv("MAVERA_API_KEY", UPSTREAM_KEY)
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _tagged_traffic(gateway: RunningGateway) -> None:
    alice, bob = gateway.client(ALICE_KEY), gateway.client(BOB_KEY)
    alice.chat.completions.create(
        model="mavera-1", messages=HI, extra_headers={"X-Mavera-Tags": "proj-a, exp-1"}
    )
    alice.responses.create(model="mavera-1", input="hello", metadata={"tags": "proj-a"})
    bob.chat.completions.create(model="mavera-1", messages=HI, metadata={"tags": "exp-1,proj-b"})
    bob.chat.completions.create(
        model="mavera-1", messages=HI, extra_body={"metadata": {"tags": ["proj-b"]}}
    )
    bob.chat.completions.create(model="mavera-1", messages=HI)


def test_tags_from_header_metadata_and_client_are_recorded_and_reported(
    make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = _team(make_gateway)
    _tagged_traffic(gateway)
    rows = gateway.records()
    assert [(r["client"], r["tags"]) for r in rows] == [
        ("alice", "team-a,proj-a,exp-1"),
        ("alice", "team-a,proj-a"),
        ("bob", "exp-1,proj-b"),
        ("bob", "proj-b"),
        ("bob", None),
    ]
    # the body goes to Mavera as the client sent it, metadata included
    assert gateway.sim.records[2].body["metadata"] == {"tags": "exp-1,proj-b"}
    cost = {r["request_id"]: r["credits_used"] for r in rows}
    assert all(isinstance(c, int) and c > 0 for c in cost.values())

    def credits(*tags: str | None) -> int:
        return sum(
            r["credits_used"] for r in rows if any(t in (r["tags"] or "").split(",") for t in tags)
        )

    report = _admin(gateway, "/admin/usage", since="1h", by="tag").json()
    by_tag = {row["tag"]: row for row in report["data"]}
    assert {t: row["requests"] for t, row in by_tag.items()} == {
        "(none)": 1, "exp-1": 2, "proj-a": 2, "proj-b": 2, "team-a": 2,
    }  # fmt: skip
    assert by_tag["proj-b"]["credits"] == credits("proj-b")
    assert by_tag["(none)"]["credits"] == rows[-1]["credits_used"]
    assert "counts under each" in report["note"]
    assert sum(row["requests"] for row in report["data"]) > len(rows)

    code, out, err = _cli(capsys, monkeypatch, gateway, "usage", "--by", "tag", "--format", "json")
    assert code == 0 and json.loads(out) == report["data"]
    assert "counts under each" in err
    code, out, _ = _cli(capsys, monkeypatch, gateway, "usage", "--by", "tag")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["tag", "requests", "errors"]
    assert [line.split()[0] for line in lines[2:7]] == [
        "(none)", "exp-1", "proj-a", "proj-b", "team-a",
    ]  # fmt: skip
    assert lines[-1].startswith("A request with several tags counts under each of them")


def test_a_bad_tag_is_a_400_and_its_request_is_still_recorded(
    make_gateway: GatewayFactory,
) -> None:
    gateway = _team(make_gateway)
    alice = gateway.client(ALICE_KEY)
    with pytest.raises(openai.BadRequestError) as refused:
        alice.chat.completions.create(
            model="mavera-1", messages=HI, extra_headers={"X-Mavera-Tags": "ok,not ok!"}
        )
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_request_error" and error["param"] == "X-Mavera-Tags"
    assert "'not ok!'" in error["message"] and "letters, digits" in error["message"]
    with pytest.raises(openai.BadRequestError, match="metadata.tags"):
        alice.responses.create(model="mavera-1", input="x", extra_body={"metadata": {"tags": 5}})
    rows = gateway.records()
    assert [(r["status"], r["outcome"], r["client"]) for r in rows] == [
        (400, "client_error", "alice"),
        (400, "client_error", "alice"),
    ]
    assert gateway.sim.records == [], "a refused request never reaches Mavera"


def test_usage_by_end_user(
    make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = _team(make_gateway)
    bob = gateway.client(BOB_KEY)
    for user in ("u-1", "u-2", "u-1", None):
        extra = {} if user is None else {"user": user}
        bob.chat.completions.create(model="mavera-1", messages=HI, **extra)
    rows = gateway.records()
    code, out, _ = _cli(
        capsys, monkeypatch, gateway, "usage", "--by", "end_user", "--format", "json"
    )
    assert code == 0
    report = {row["end_user"]: row for row in json.loads(out)}
    assert {user: row["requests"] for user, row in report.items()} == {
        "(none)": 1, "u-1": 2, "u-2": 1,
    }  # fmt: skip
    assert report["u-1"]["credits"] == sum(
        r["credits_used"] for r in rows if r["end_user"] == "u-1"
    )
    admin = _admin(gateway, "/admin/usage", since="1h", by="end_user").json()
    assert admin["data"] == json.loads(out) and admin["note"] is None


def _by_persona(gateway: RunningGateway) -> dict[str, Any]:
    report = _admin(gateway, "/admin/usage", since="1h", by="persona").json()
    return {row["persona"]: row for row in report["data"]}


def test_persona_names_are_read_at_start_and_shown_in_reports(
    make_gateway: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = _team(
        make_gateway,
        upstream={"persona_names_at_start": True},
        defaults={"allow_persona_override": True},
    )
    bob = gateway.client(BOB_KEY)
    bob.chat.completions.create(model="mavera-1", messages=HI)
    bob.chat.completions.create(
        model="mavera-1", messages=HI, extra_body={"persona_id": PERSONAS[1]}
    )
    gateway.flush()
    _eventually(
        lambda: _by_persona(gateway)[DEFAULT_PERSONA]["persona_name"] is not None,
        "the persona list read at start is in the ledger",
    )
    assert any(r.path.endswith("/personas") for r in gateway.sim.records)
    rows = _by_persona(gateway)
    assert {p: r["persona_name"] for p, r in rows.items()} == {
        DEFAULT_PERSONA: NAMES[DEFAULT_PERSONA],
        PERSONAS[1]: NAMES[PERSONAS[1]],
    }
    code, out, _ = _cli(capsys, monkeypatch, gateway, "usage", "--by", "persona")
    assert code == 0
    header, _, first, second = out.splitlines()[:4]
    assert header.split()[:2] == ["persona", "persona_name"]
    assert first.startswith(DEFAULT_PERSONA) and NAMES[DEFAULT_PERSONA] in first
    assert first.index(NAMES[DEFAULT_PERSONA]) == header.index("persona_name"), "left-aligned"
    assert second.startswith(PERSONAS[1]) and NAMES[PERSONAS[1]] in second


def test_persona_names_are_refreshed_by_the_persona_list_and_unknown_ids_show_alone(
    make_gateway: GatewayFactory,
) -> None:
    gateway = _team(make_gateway)  # nothing read at start
    gateway.client(BOB_KEY).chat.completions.create(model="mavera-1", messages=HI)
    gateway.flush()
    assert _by_persona(gateway)[DEFAULT_PERSONA]["persona_name"] is None
    listed = httpx.get(gateway.url + "/v1/personas", headers={"authorization": f"Bearer {BOB_KEY}"})
    assert listed.status_code == 200
    _eventually(
        lambda: _by_persona(gateway)[DEFAULT_PERSONA]["persona_name"] == NAMES[DEFAULT_PERSONA],
        "the names of a fetched persona list are in the ledger",
    )
    records = _admin(gateway, "/admin/usage/records", since="1h").json()["data"]
    generation = next(r for r in records if r["endpoint"] == "chat.completions")
    assert generation["persona_name"] == NAMES[DEFAULT_PERSONA]
