"""The openai Node SDK (pinned in node/package-lock.json), run with the machine's Node.

The fixture installs the pinned SDK with `npm ci` when node_modules does not hold it. A failed
install is a test failure, never a skip: the client must be proven to work, not assumed to.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.clients.support import missing, run
from tests.conftest import DEFAULT_PERSONA, RunningGateway

NODE_DIR = Path(__file__).parent / "node"
PINNED = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["openai"]


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing("node and npm", "install Node.js 20+ with npm (Debian: apt-get install nodejs npm)")
    installed = NODE_DIR / "node_modules" / "openai" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != PINNED:
        done = run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, timeout_s=300)
        assert done.returncode == 0, f"npm ci of openai@{PINNED} failed:\n{done.stderr}"
    return node


def test_node_sdk_chat_responses_and_streams(node: str, gateway: RunningGateway) -> None:
    env = {**os.environ, "OPENAI_BASE_URL": gateway.url + "/v1", "OPENAI_API_KEY": "sk-node"}
    done = run([node, str(NODE_DIR / "clients.mjs")], env=env, cwd=NODE_DIR)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)

    assert "e-bike" in out["chat"]["text"]
    assert out["chat"]["usage"]["credits_used"] > 0
    assert out["chatStream"]["text"] == out["chat"]["text"]
    assert out["chatStreamHelper"]["deltas"] == out["chatStreamHelper"]["final"]
    assert out["chatStreamHelper"]["final"] == out["chat"]["text"]
    assert "Trains or buses?" in out["responses"]["text"]
    assert out["responses"]["id"].startswith("resp_")
    stream = out["responsesStream"]
    assert (stream["first"], stream["last"]) == ("response.created", "response.completed")
    assert stream["deltas"].startswith("As a")
    assert "Bikes?" in out["responsesStreamHelper"]["text"]
    assert out["error"] == {
        "rateLimit": True,
        "status": 429,
        "code": "rate_limit_exceeded",
        "requestId": out["error"]["requestId"],
    }

    seen = gateway.sim.records
    assert {r.persona_id for r in seen} == {DEFAULT_PERSONA}
    assert all(r.headers["user-agent"].startswith("OpenAI/JS") for r in seen)
    rows = gateway.records()
    assert rows[0]["request_id"] == out["chat"]["request_id"]
    assert rows[-1]["request_id"] == out["error"]["requestId"]
    assert [r["outcome"] for r in rows] == ["ok"] * 6 + ["client_error"]
