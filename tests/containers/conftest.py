"""What the container tests share: podman, the image built once per test session, a workspace
whose containers are removed and whose output is searched for the Mavera key, and a simulator
on the host's loopback standing in for Mavera.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.image import ROOT
from tests.conftest import free_port
from tests.podman import Container, Podman, Workspace, find_podman

# Distinctive, so finding it in any output is unambiguous; the simulator takes any such key.
MAVERA_KEY = "mvra_live_CONTAINER_never_in_logs_3b8e61f0c2d94a57"
CLIENT_KEY = "sk-gw-container-app-0123456789abcdef"
CLIENT_KEY_SHA256 = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
GATEWAY_UID = "10001"
STOP_GRACE_S = 40  # longer than the image's SHUTDOWN_GRACE_S, as docs/docker.md says


@pytest.fixture(scope="session")
def podman() -> Podman:
    """Podman, or a skip (a failure under GATEWAY_REQUIRE_SERVICES=1) saying how to get it."""
    return Podman(find_podman())


@pytest.fixture(scope="session")
def image(podman: Podman) -> Iterator[str]:
    """The Dockerfile built once per test session, under a tag of its own, removed afterwards."""
    tag = f"localhost/mavera-gateway-test:{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        podman.build(tag)
        yield tag
    finally:
        podman("rmi", "--force", tag)


@pytest.fixture
def work(podman: Podman, image: str) -> Iterator[Workspace]:
    """Containers and volumes for one test; all removed, and all their output checked for the
    Mavera key, even when the test fails."""
    work = Workspace(podman, image)
    try:
        yield work
    finally:
        work.clean()
    assert work.leftovers() == []
    leaked = [out for out in work.output if MAVERA_KEY in out]
    assert not leaked, f"the Mavera key appeared in container output: {leaked[0][-2000:]}"


@pytest.fixture
def port() -> int:
    """A free loopback port for the gateway under test."""
    return free_port()


def loopback_env(port: int, **extra: str) -> dict[str, str]:
    """A gateway on 127.0.0.1:port (the host network is shared), with the fake Mavera key."""
    return {
        "MAVERA_GATEWAY_SERVER__HOST": "127.0.0.1",
        "MAVERA_GATEWAY_SERVER__PORT": str(port),
        "MAVERA_API_KEY": MAVERA_KEY,
        **extra,
    }


def stop(container: Container) -> None:
    """`podman stop`, then insist that the gateway exited 0 (drained and flushed, not killed)."""
    container.finish_stop(container.stop_in_background(STOP_GRACE_S), STOP_GRACE_S + 30)


def start_simulator(port: int, log: Path) -> subprocess.Popen[bytes]:
    """`mavera-gateway simulate` from this checkout, on the host's loopback, standing in for
    Mavera; answers only requests that carry a Mavera-shaped key."""
    with log.open("wb") as out:
        sim = subprocess.Popen(
            [sys.executable, "-m", "app", "simulate", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sim.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v1/personas", timeout=2)
            return sim
        except httpx.TransportError:
            time.sleep(0.1)
    sim.kill()
    sim.wait(timeout=10)
    raise AssertionError(f"the simulator did not start:\n{log.read_text(errors='replace')}")
