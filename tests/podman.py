"""Podman for tests/containers/: build the Dockerfile into an image and run containers of
it on the host network, each named uniquely and removed again, with its logs kept for checks.

The flags are what works on this project's machines (cgroups v1 hybrid, no systemd) and on
ordinary podman hosts too: `runc` with the `cgroupfs` manager, `--isolation=chroot` builds,
explicit ulimits (the default ones cannot be set there), and no healthcheck timers (they need
systemd; the tests run the image's HEALTHCHECK command with `podman exec` instead). Host
networking with a loopback bind, because only 127.0.0.1 may be a target here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field

import httpx

from tests.clients.image import ROOT, stages
from tests.clients.support import missing

GLOBAL_FLAGS = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
RUN_FLAGS = [
    "--network=host",
    "--ulimit=nofile=4096:4096",
    "--ulimit=nproc=1000:1000",
    "--no-healthcheck",
]
BUILD_FLAGS = ["--pull=never", "--network=host", "--isolation=chroot", "--format=docker"]


def find_podman() -> str:
    """The podman binary, once it is known to work and to have the Dockerfile's base image;
    skips (fails under GATEWAY_REQUIRE_SERVICES=1) with what to do otherwise."""
    how = "bash .ci/container-base installs podman and makes the base image"
    podman = shutil.which("podman")
    if podman is None or shutil.which("runc") is None:
        missing("podman and runc", how)
    info = subprocess.run(
        [podman, *GLOBAL_FLAGS, "info"], capture_output=True, text=True, timeout=60, check=False
    )
    if info.returncode != 0:
        missing(f"a working podman ({info.stderr.strip()[-300:]})", how)
    base = stages()[0].base
    exists = subprocess.run(
        [podman, "image", "exists", base], capture_output=True, timeout=60, check=False
    )
    if exists.returncode != 0:
        missing(f"the base image {base} in podman's storage", how)
    return podman


@dataclass
class Podman:
    """One podman binary with the flags this machine needs."""

    binary: str

    def __call__(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `podman ARGS` to completion; a hang fails the test."""
        return subprocess.run(
            [self.binary, *GLOBAL_FLAGS, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def ok(self, *args: str, timeout_s: float = 120) -> str:
        """Run `podman ARGS`, insist on success, return its stdout."""
        done = self(*args, timeout_s=timeout_s)
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return done.stdout

    def build(self, tag: str) -> None:
        """Build the repository's Dockerfile, as it is now, into `tag`."""
        done = self("build", *BUILD_FLAGS, "--tag", tag, str(ROOT), timeout_s=600)
        assert done.returncode == 0, f"podman build failed:\n{done.stdout[-3000:]}{done.stderr}"

    def healthcheck(self, image: str) -> list[str]:
        """The image's HEALTHCHECK command, as `podman exec` arguments."""
        check = json.loads(self.ok("image", "inspect", "--format", "{{json .HealthCheck}}", image))
        kind, *command = check["Test"]
        assert kind == "CMD", f"an exec-form HEALTHCHECK, not {kind}"
        return list(command)


@dataclass
class Container:
    """A detached container started by a Workspace."""

    podman: Podman
    name: str

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run `command` inside the running container, as the image's user."""
        return self.podman("exec", self.name, *command)

    def state(self, field_name: str) -> str:
        """A field of `podman inspect`'s State (Running, ExitCode, ...)."""
        return self.podman.ok("inspect", "--format", f"{{{{.State.{field_name}}}}}", self.name)

    def logs(self) -> str:
        """Everything the container wrote to stdout and stderr so far."""
        done = self.podman("logs", self.name)
        return done.stdout + done.stderr

    def stop_in_background(self, grace_s: int) -> subprocess.Popen[str]:
        """`podman stop -t GRACE`, running while the caller keeps reading a stream."""
        return subprocess.Popen(
            [self.podman.binary, *GLOBAL_FLAGS, "stop", "-t", str(grace_s), self.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish_stop(self, stopping: subprocess.Popen[str], timeout_s: float) -> None:
        """Wait for a `stop_in_background` to return, insisting it succeeded; then the
        container must have exited 0 (drained and flushed, not killed)."""
        _, errors = stopping.communicate(timeout=timeout_s)
        assert stopping.returncode == 0, f"podman stop {self.name}: {errors}"
        assert self.state("ExitCode").strip() == "0", self.logs()

    def wait_healthy(self, url: str, timeout_s: float = 60) -> None:
        """Poll `url`/healthz from the host until it answers 200; fail early if the container
        has exited, with its logs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.state("Running").strip() != "true":
                raise AssertionError(f"{self.name} exited:\n{self.logs()}")
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not healthy within {timeout_s} s:\n{self.logs()}")


@dataclass
class Workspace:
    """The containers and volumes one test makes, under names unique to it, and their output."""

    podman: Podman
    image: str
    prefix: str = field(default_factory=lambda: f"mgw-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    names: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def _name(self, kind: str) -> str:
        return f"{self.prefix}-{kind}{len(self.names) + len(self.volumes)}"

    def volume(self) -> str:
        """A new named volume."""
        name = self._name("vol")
        self.volumes.append(name)
        self.podman.ok("volume", "create", name)
        return name

    def _run_flags(self, name: str, env: dict[str, str], volume: str | None) -> list[str]:
        args = ["--name", name, *RUN_FLAGS]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        if volume is not None:
            args += ["--volume", f"{volume}:/data"]
        return args

    def run(
        self,
        *command: str,
        env: dict[str, str] | None = None,
        volume: str | None = None,
        entrypoint: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`podman run --rm IMAGE COMMAND` in the foreground, like `docker run --rm`."""
        name = self._name("run")
        self.names.append(name)
        flags = self._run_flags(name, env or {}, volume)
        if entrypoint is not None:
            flags.append(f"--entrypoint={entrypoint}")
        done = self.podman("run", "--rm", *flags, self.image, *command)
        self.output.append(done.stdout + done.stderr)
        return done

    def start(
        self, *command: str, env: dict[str, str] | None = None, volume: str | None = None
    ) -> Container:
        """`podman run -d IMAGE COMMAND`; kept after it exits, so its exit code can be read."""
        name = self._name("ctr")
        self.names.append(name)
        flags = self._run_flags(name, env or {}, volume)
        self.podman.ok("run", "--detach", *flags, self.image, *command)
        return Container(self.podman, name)

    def clean(self) -> None:
        """Remove every container and volume made here, keeping the containers' logs."""
        for name in self.names:
            if self.podman("container", "exists", name).returncode == 0:
                self.output.append(Container(self.podman, name).logs())
                self.podman("rm", "--force", "--volumes", "--time", "0", name)
        for volume in self.volumes:
            self.podman("volume", "rm", "--force", volume)

    def leftovers(self) -> list[str]:
        """Containers and volumes under this workspace's prefix that still exist."""
        found = self.podman.ok("ps", "--all", "--format", "{{.Names}}")
        found += self.podman.ok("volume", "ls", "--format", "{{.Name}}")
        return [line for line in found.split() if line.startswith(self.prefix)]
