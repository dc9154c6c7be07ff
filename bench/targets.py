"""The things measured: the fake upstream itself (`direct`), nginx, our gateway, and LiteLLM.

Each starter launches its process on a free loopback port, times spawn-to-ready, and returns a
`Target` that knows where its chat and responses endpoints are. A target that cannot be started
(not installed, crashed) raises `Unavailable` with the reason; the harness reports it and goes on.
The gateways themselves are started by `bench.gateways`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs

GATEWAY_KEY = "mvra_live_bench-fake-key-not-a-real-one"  # what the fake upstream is sent; not real
PERSONA_ID = "clx1abc2d0001abcdef123456"
LITELLM_MASTER_KEY = "sk-bench-master-key"
READY_LIMIT_S = 60.0
BASELINE = "gateway-base"  # the target name of the build given by --baseline-venv


class Unavailable(RuntimeError):
    """The target cannot run here; the message says why."""


@dataclass
class Target:
    """A running target: where to send requests and which process to watch."""

    name: str
    port: int
    prefix: str  # path before /chat/completions and /responses
    token: str | None = None
    process: subprocess.Popen[bytes] | None = None
    startup_s: list[float] = field(default_factory=list)
    log: Path | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # after the process stops

    def url(self, endpoint: str) -> str:
        """Full URL of `chat/completions` or `responses`."""
        return f"http://127.0.0.1:{self.port}{self.path(endpoint)}"

    def path(self, endpoint: str) -> str:
        """Request path of `chat/completions` or `responses`."""
        return f"{self.prefix}/{endpoint}"

    def pids(self) -> list[int]:
        """The process and its children (nginx's worker, for one); empty for `direct`."""
        return procs.process_tree(self.process.pid) if self.process else []

    def stop(self) -> None:
        """Stop the process if the harness started one."""
        if self.process is not None:
            procs.stop(self.process)
        while self.cleanups:
            self.cleanups.pop(0)()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the target's log, for error messages."""
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def launch(
    target: Target, command: list[str], ready_path: str, env: dict[str, str] | None = None
) -> Target:
    assert target.log is not None
    started = time.perf_counter()
    target.process = procs.spawn(command, target.log, env)
    try:
        target.startup_s.append(
            procs.wait_ready(target.process, target.port, ready_path, started, READY_LIMIT_S)
        )
    except procs.NotReady as exc:
        target.stop()
        raise Unavailable(f"{target.name} {exc}:\n{target.log_tail()}") from None
    return target


def start_upstream(workdir: Path, workers: int, chunks: int, delay_ms: float) -> Target:
    """The fake Mavera upstream (`bench.fake_upstream`)."""
    target = Target("upstream", procs.free_port(), "/api/v1", log=workdir / "upstream.log")
    command = [sys.executable, "-m", "bench.fake_upstream", "--port", str(target.port)]
    command += ["--workers", str(workers), "--chunks", str(chunks), "--delay-ms", str(delay_ms)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return launch(target, command, "/healthz", env)


def direct(upstream: Target) -> Target:
    """The client talking to the fake upstream itself: the baseline everything is compared with."""
    return Target("direct", upstream.port, upstream.prefix)


def gateway_command() -> list[str]:
    """`mavera-gateway` from the harness's own environment, as users run it."""
    script = Path(sys.executable).with_name("mavera-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app"]


def baseline_command(venv: Path | None) -> list[str]:
    """`mavera-gateway` of another venv: the build the harness's own gateway is compared with."""
    if venv is None:
        raise Unavailable(f"{BASELINE} needs --baseline-venv")
    script = venv / "bin" / "mavera-gateway"
    if not script.exists():
        raise Unavailable(f"no mavera-gateway at {script} (pip install the baseline into {venv})")
    return [str(script)]


def baseline_version(venv: Path) -> str:
    """The baseline's package version and where its `app` comes from, or why there is none."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"not installed ({python} missing)"
    code = "import importlib.metadata as m, app; print(m.version('mavera-gateway'), app.__file__)"
    # cwd=venv: `python -c` imports from its working directory first, the console script does not.
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, cwd=venv, check=False
    )
    version, _, where = done.stdout.strip().partition(" ")
    return f"{version} (app/ from {Path(where).parent})" if where else "unknown"


# Not the gateway's business: installers, and the profiler the harness adds to its own venv.
_TOOLING = {"mavera-gateway", "pip", "setuptools", "wheel", "py-spy"}


def packages(python: Path) -> set[str]:
    """`name==version` of every distribution in that interpreter's environment but the tooling."""
    code = "import importlib.metadata as m\nfor d in m.distributions(): print(d.name, d.version)"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    pairs = (line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    return {f"{name}=={version}" for name, version in pairs if name.lower() not in _TOOLING}


NGINX_CONF = """\
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    upstream mavera {{ server 127.0.0.1:{upstream}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        keepalive_requests 1000000;
        location = /readyz {{ return 200 "ready"; }}
        location / {{
            proxy_pass http://mavera;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def start_nginx(workdir: Path, upstream: Target) -> Target:
    """nginx-light as a plain reverse proxy with `proxy_buffering off`: the floor."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise Unavailable("nginx is not installed (apt-get install -y nginx-light)")
    target = Target("nginx", procs.free_port(), upstream.prefix, log=workdir / "nginx.log")
    config = workdir / "nginx.conf"
    config.write_text(NGINX_CONF.format(workdir=workdir, upstream=upstream.port, port=target.port))
    command = [binary, "-p", str(workdir), "-c", str(config), "-g", "daemon off;"]
    return launch(target, command, "/readyz")


LITELLM_CONF = """\
model_list:
  - model_name: mavera-1
    litellm_params:
      model: openai/mavera-1
      api_base: http://127.0.0.1:{upstream}/api/v1
      api_key: {key}
general_settings:
  master_key: {master}
"""


def start_litellm(workdir: Path, upstream: Target, venv: Path) -> Target:
    """LiteLLM's proxy from its own venv: one worker, no database, local model cost map."""
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        raise Unavailable(f"no LiteLLM at {binary} (bench/run.sh --setup installs it)")
    target = Target(
        "litellm", procs.free_port(), "/v1", LITELLM_MASTER_KEY, log=workdir / "litellm.log"
    )
    config = workdir / "litellm.yaml"
    config.write_text(
        LITELLM_CONF.format(upstream=upstream.port, key=GATEWAY_KEY, master=LITELLM_MASTER_KEY)
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "LITELLM_", "MAVERA_"))
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    command = [str(binary), "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(target.port), "--num_workers", "1"]
    return launch(target, command, "/health/liveliness", env)


def litellm_version(venv: Path) -> str:
    """The installed LiteLLM version, or why there is none."""
    python = venv / "bin" / "python"
    if not python.exists():
        return "not installed"
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def nginx_version() -> str:
    """`nginx -v`, or why there is none."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        return "not installed"
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().removeprefix("nginx version: ")
