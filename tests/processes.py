"""Run the gateway as a real `python -m app` process, for tests where signals, exit codes and
the process's own stderr are the point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def gateway_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a gateway subprocess: ours minus MAVERA_*, plus its ledger file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAVERA_")}
    env["MAVERA_GATEWAY_DATABASE_URL"] = f"sqlite:///{tmp_path / 'ledger.db'}"
    env.update(extra)
    return env


@dataclass
class GatewayProcess:
    """`python -m app <args>` with stderr captured to a file."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int = 0
    module: str = "app"  # what `python -m` runs (tests.gateway_main: short limit windows)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Poll /readyz until it answers 200; fail with the log if the process died first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"gateway not ready within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Make sure the process is gone (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


_WORKER_READY = re.compile(r"worker (\d+) of (\d+) ready \(pid (\d+)\)")


def ready_workers(process: GatewayProcess, count: int, timeout_s: float = 60.0) -> list[int]:
    """The pids of a `serve --workers` gateway's workers (worker 1 first), from its log, once all
    are ready."""
    assert process.proc is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            pytest.fail(f"gateway exited with {process.proc.returncode}:\n{process.log()}")
        found = _WORKER_READY.findall(process.log())
        if len(found) == count:
            return [int(pid) for _, _, pid in sorted(found, key=lambda f: int(f[0]))]
        time.sleep(0.1)
    pytest.fail(f"{count} workers not ready within {timeout_s} s:\n{process.log()}")


def connection_owners(port: int, pids: list[int]) -> dict[int, int]:
    """Established IPv4 connections to `port`: the client's port -> the pid serving it.

    Read from /proc: the kernel's socket table, and which process holds each socket.
    """
    client_port_of: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
            client_port_of[inode] = int(remote.rsplit(":", 1)[1], 16)
    owners: dict[int, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            inode = target.removeprefix("socket:[").removesuffix("]")
            if target.startswith("socket:[") and inode in client_port_of:
                owners[client_port_of[inode]] = pid
    return owners


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
