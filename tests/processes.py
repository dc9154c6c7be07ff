"""Run the gateway as a real `python -m app` process, for tests where signals, exit codes and
the process's own stderr are the point."""

from __future__ import annotations

import os
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
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", *self.args],
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
