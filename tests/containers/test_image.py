"""The image built from the unchanged Dockerfile with podman, and its containers driven the way
docs/docker.md tells users to: through the CLI, the environment and HTTP only.

Every container uses the host network and, wherever the tests connect, a 127.0.0.1 bind; the
one --allow-open container binds 0.0.0.0 on a free port and is reached over 127.0.0.1 alone.
"""

from __future__ import annotations

import json
import socket
import tempfile
import tomllib
from pathlib import Path

import httpx
import openai

from tests.conftest import free_port
from tests.containers.conftest import (
    CLIENT_KEY,
    CLIENT_KEY_SHA256,
    GATEWAY_UID,
    MAVERA_KEY,
    STOP_GRACE_S,
    loopback_env,
    start_simulator,
    stop,
)
from tests.podman import Podman, Workspace


def test_configured_by_environment_alone_and_run_as_uid_10001(
    work: Workspace, podman: Podman, port: int
) -> None:
    env = loopback_env(port, MAVERA_GATEWAY_CLIENTS__app__KEY_SHA256=CLIENT_KEY_SHA256)
    shown = work.run("check-config", env=env)
    assert shown.returncode == 0, shown.stderr
    assert tomllib.loads(shown.stdout)["clients"]["app"]["key_sha256"] == CLIENT_KEY_SHA256

    gateway = work.start("serve", "--simulate", env=env)
    url = f"http://127.0.0.1:{port}"
    gateway.wait_healthy(url)
    status = gateway.exec("cat", "/proc/1/status").stdout.splitlines()
    ids = {line.split(":")[0]: line.split()[1:] for line in status if line[:4] in ("Uid:", "Gid:")}
    assert ids == {"Uid": [GATEWAY_UID] * 4, "Gid": [GATEWAY_UID] * 4}, "PID 1, not root"
    owner = gateway.exec("stat", "-c", "%u:%g", "/data/mavera-gateway.db")
    assert owner.stdout.strip() == f"{GATEWAY_UID}:{GATEWAY_UID}", owner.stderr
    probe = gateway.exec(*podman.healthcheck(work.image))
    assert probe.returncode == 0, probe.stderr

    with openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
        reply = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Do you like trains?"}]
        )
    assert "trains" in (reply.choices[0].message.content or "")
    wrong = httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": "Bearer sk-gw-not-the-key"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert wrong.status_code == 401
    stop(gateway)


def accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except ConnectionRefusedError:
        return False


def test_sigterm_mid_stream_drains_flushes_and_the_ledger_outlives_the_container(
    work: Workspace, port: int
) -> None:
    volume = work.volume()
    created = work.run("keys", "create", "app", volume=volume)
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[-1]  # printed once, on the last line

    gateway = work.start("serve", "--simulate", env=loopback_env(port), volume=volume)
    url = f"http://127.0.0.1:{port}"
    gateway.wait_healthy(url)
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-4o",
            stream=True,
            messages=[{"role": "user", "content": "and buses?"}],
            extra_body={"mavera_sim": {"chunks": 30, "chunk_delay_ms": 200}},
        )
        chunks = [next(stream)]
        stopping = gateway.stop_in_background(STOP_GRACE_S)
        closed_after: int | None = None  # chunks received when the listener was seen closed
        for chunk in stream:
            chunks.append(chunk)
            if closed_after is None and not accepts(port):
                closed_after = len(chunks)
    assert closed_after is not None and closed_after < len(chunks), "SIGTERM landed mid-stream"
    deltas = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) == 30, "every delta of the stream arrived"
    assert chunks[-1].choices[0].finish_reason == "stop"
    gateway.finish_stop(stopping, STOP_GRACE_S + 30)

    # A new container on the same volume reads the record the stopped one flushed.
    report = work.run("usage", "--format", "json", volume=volume)
    assert report.returncode == 0, report.stderr
    rows = [(row["client"], row["requests"], row["errors"]) for row in json.loads(report.stdout)]
    assert rows == [("app", 1, 0)]


def test_open_bind_is_refused_without_client_keys_unless_allow_open(
    work: Workspace, port: int
) -> None:
    # The image's own MAVERA_GATEWAY_SERVER__HOST=0.0.0.0; the refusal comes before any bind.
    env = {"MAVERA_GATEWAY_SERVER__PORT": str(port)}
    refused = work.run("serve", "--simulate", env=env)
    assert refused.returncode == 2
    assert "--allow-open" in refused.stderr

    opened = work.start("serve", "--simulate", "--allow-open", env=env)
    opened.wait_healthy(f"http://127.0.0.1:{port}")
    assert f"0.0.0.0:{port}" in opened.logs()
    stop(opened)


def test_the_mavera_key_reaches_upstream_and_no_log(work: Workspace, port: int) -> None:
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}/api/v1"
    with tempfile.TemporaryDirectory(prefix="mgw-sim-") as logs:
        sim = start_simulator(sim_port, Path(logs) / "simulator.log")
        try:
            assert httpx.get(sim_url + "/personas").status_code == 401, "it checks keys"
            personas = httpx.get(
                sim_url + "/personas", headers={"Authorization": f"Bearer {MAVERA_KEY}"}
            )
            persona = personas.json()["data"][0]["id"]
            env = loopback_env(
                port,
                MAVERA_BASE_URL=sim_url,
                MAVERA_GATEWAY_DEFAULTS__PERSONA_ID=persona,
                MAVERA_GATEWAY_CLIENTS__app__KEY_SHA256=CLIENT_KEY_SHA256,
            )
            gateway = work.start("serve", env=env)
            url = f"http://127.0.0.1:{port}"
            gateway.wait_healthy(url)
            with openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
                reply = client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "Any plans?"}]
                )
            assert reply.choices[0].message.content, "Mavera took the key the gateway injected"
            stop(gateway)
        finally:
            sim.terminate()
            sim.wait(timeout=15)
    logs_text = gateway.logs()
    assert sim_url in logs_text, "the logs name the upstream, never its key"
    assert MAVERA_KEY not in logs_text


def test_pip_check_is_clean_in_the_image(work: Workspace) -> None:
    # The venv carries no pip of its own (docs/docker.md); the base image's pip checks it.
    done = work.run(
        "-m", "pip", "--python", "/opt/venv/bin/python", "check", entrypoint="/usr/local/bin/python"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No broken requirements found." in done.stdout
    shipped = work.run(
        "-c",
        "import importlib.util as u; print([m for m in ('pip', 'setuptools') if u.find_spec(m)])",
        entrypoint="/opt/venv/bin/python",
    )
    assert shipped.stdout.strip() == "[]", shipped.stderr
