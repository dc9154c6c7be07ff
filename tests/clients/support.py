"""Helpers for tests that drive real tools (CLIs, Node, curl) against a gateway process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest


def missing(what: str, how: str) -> NoReturn:
    """Skip a test whose tool is absent; fail instead when CI requires every tool."""
    message = f"{what}: not found on this machine; {how}"
    if os.environ.get("GATEWAY_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} (GATEWAY_REQUIRE_SERVICES=1, so this is a failure)")
    pytest.skip(message)


def venv_tool(name: str) -> str | None:
    """A console script installed beside the running interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def run(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its text output; a hang fails the test."""
    return subprocess.run(
        args, capture_output=True, text=True, check=False, env=env, cwd=cwd, timeout=timeout_s
    )
