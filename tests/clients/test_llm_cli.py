"""Simon Willison's `llm` CLI with OpenAI-compatible model entries (extra-openai-models.yaml)
in a private LLM_USER_PATH: a persona by model alias, by route prefix and by header."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.clients.support import missing, run, venv_tool
from tests.conftest import PERSONAS, GatewayFactory

LLM_KEY = "sk-llm-cli-user-key"
MODELS_YAML = """\
- model_id: mavera-gen-z
  model_name: gen-z
  api_base: "{base}/v1"
  api_key_name: mavera
- model_id: mavera-marketing
  model_name: mavera-1
  api_base: "{base}/marketing/v1"
  api_key_name: mavera
  responses: true
- model_id: mavera-boomer
  model_name: mavera-1
  api_base: "{base}/v1"
  api_key_name: mavera
  headers:
    X-Mavera-Persona: {persona}
"""


@pytest.fixture
def llm(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The `llm` executable and an environment with an empty user directory of its own."""
    found = venv_tool("llm")
    if found is None:
        missing("the llm CLI", "pip install -e '.[test]' installs it (package llm)")
    home = tmp_path / "llm-user"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    env["LLM_USER_PATH"] = str(home)
    done = run([found, "keys", "set", "mavera", "--value", LLM_KEY], env=env)
    assert done.returncode == 0, done.stderr
    return found, env


def test_llm_prompts_through_the_gateway(
    llm: tuple[str, dict[str, str]], make_gateway: GatewayFactory
) -> None:
    executable, env = llm
    gateway = make_gateway(
        clients={
            "llm-user": {
                "key_sha256": hashlib.sha256(LLM_KEY.encode()).hexdigest(),
                "allow_persona_override": True,
            }
        },
        models={"gen-z": {"persona_id": PERSONAS[1]}},
        routes={"marketing": {"persona_id": PERSONAS[2]}},
    )
    yaml = MODELS_YAML.format(base=gateway.url, persona=PERSONAS[3])
    (Path(env["LLM_USER_PATH"]) / "extra-openai-models.yaml").write_text(yaml)

    outputs = []
    for args in (
        ["-m", "mavera-gen-z", "Would you pay for ad-free music?"],
        ["-m", "mavera-gen-z", "--no-stream", "Would you pay for ad-free music?"],
        ["-m", "mavera-marketing", "Describe our new tagline"],
        ["-m", "mavera-boomer", "--no-stream", "Do you shop online?"],
    ):
        done = run([executable, *args], env=env)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip())
    assert outputs[0] == outputs[1] and "ad-free music" in outputs[0]
    assert "tagline" in outputs[2]

    seen = gateway.sim.records
    assert [(r.path, r.stream, r.persona_id) for r in seen] == [
        ("/api/v1/chat/completions", True, PERSONAS[1]),
        ("/api/v1/chat/completions", False, PERSONAS[1]),
        ("/api/v1/responses", True, PERSONAS[2]),
        ("/api/v1/chat/completions", False, PERSONAS[3]),
    ]
    rows = gateway.records()
    assert {r["client"] for r in rows} == {"llm-user"}
    assert [r["route"] for r in rows] == [None, None, "marketing", None]
