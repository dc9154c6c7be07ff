"""Starting `mavera-gateway serve` as a target: `gateway`, and `gateway-base` beside it.

`gateway-base` is another venv's `mavera-gateway` (another build), or the same venv's with
another configuration: ledger durability, limits, ledger backend, counters, workers
(`bench.setups`). Both are started the same way otherwise: the same config file but for
those, the request log to a file, the same environment without proxy variables.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from bench import procs
from bench.setups import Setup, provision
from bench.targets import GATEWAY_KEY, PERSONA_ID, Target, gateway_command, launch

# Not passed to a gateway: a build that honours proxies and one that does not must both reach the
# fake upstream directly, or the comparison measures the proxy.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# With --counters given, where the counters live comes from it, not from the environment.
_SETUP_VARIABLES = ("MAVERA_GATEWAY_REDIS_URL", "MAVERA_GATEWAY_LIMITS__REDIS_PREFIX")

# `--limits`: both gateways serve one keyed client; `gateway` also counts every limit there is,
# each far too large to refuse anything, so the figures show what counting costs.
BENCH_CLIENT_KEY = "mgw_bench-client-key-not-a-secret-0123456789"
_LIMITS_ON = """
[limits]
gateway_rpm = 1000000
gateway_credit_budget = 1000000000000

[clients.bench]
key_sha256 = "{digest}"
credit_budget = 1000000000000
budget_period = "month"
rpm = 1000000
max_concurrent = 100000
"""
_KEYED_ONLY = '\n[clients.bench]\nkey_sha256 = "{digest}"\n'


def _config(target: Target, durability: str | None, client: str | None) -> str:
    text = f'[defaults]\npersona_id = "{PERSONA_ID}"\n'
    if durability is not None:
        text += f'\n[ledger]\ndurability = "{durability}"\n'
    if client is not None:
        digest = hashlib.sha256(BENCH_CLIENT_KEY.encode()).hexdigest()
        text += (_LIMITS_ON if client == "limits" else _KEYED_ONLY).format(digest=digest)
        target.token = BENCH_CLIENT_KEY
    return text


def start_gateway(
    workdir: Path,
    upstream: Target,
    name: str = "gateway",
    command: list[str] | None = None,
    durability: str | None = None,
    client: str | None = None,
    setup: Setup | None = None,
) -> Target:
    """`mavera-gateway serve` with a new ledger and the request log to a file.

    `command` runs another build (`gateway-base`) with the same config, environment and ledger;
    `durability` sets its `[ledger] durability` (the same build, strict against batched);
    `client` ("keyed" or "limits") makes the load a keyed client, with every limit on or none;
    `setup` chooses the ledger backend, where the counters live and the workers (default: SQLite,
    in memory, one). A PostgreSQL database or Redis prefix made for it goes when it stops.
    """
    setup = setup or Setup()
    target = Target(name, procs.free_port(), "/v1", log=workdir / f"{name}.log")
    config = workdir / f"{name}.toml"
    config.write_text(_config(target, durability, client))
    database = workdir / f"ledger-{time.time_ns()}.db"  # a new ledger per start: worst case
    dropped = _SETUP_VARIABLES if setup.counters is not None else ()
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in _PROXY_VARIABLES and k not in dropped
    }
    env |= {
        "MAVERA_BASE_URL": f"http://127.0.0.1:{upstream.port}/api/v1",
        "MAVERA_API_KEY": GATEWAY_KEY,
        "MAVERA_GATEWAY_DATABASE_URL": f"sqlite:///{database}",
    }
    extra, target.cleanups = provision(setup, name)
    env |= extra
    command = (command or gateway_command()) + ["serve", "--port", str(target.port)]
    command += ["--workers", str(setup.workers)] if setup.workers > 1 else []
    try:
        return launch(target, command + ["--config", str(config)], "/readyz", env)
    except BaseException:
        target.stop()  # launch stopped the process; this drops the database and keys
        raise
