"""A gateway's configuration for one start: its ledger, where its counters live, its workers.

`--ledger postgres` gives every start a database of its own, created on the server of
`--postgres-url` and dropped when the start ends (the empty ledger of the SQLite runs' new
file). `--counters redis` gives every start a key prefix of its own in the Redis of
`--redis-url`, and deletes the keys under it when the start ends: nothing else in that Redis
is touched. `--counters memory` keeps them in the process whatever the environment says;
without `--counters` the gateway inherits `MAVERA_GATEWAY_REDIS_URL` if the harness has it.
`--workers N` is `serve --workers N`.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
LEDGERS = ("sqlite", "postgres")
COUNTERS = ("memory", "redis")


@dataclass(frozen=True)
class Setup:
    """What differs between two gateways run side by side on the same code."""

    ledger: str = "sqlite"
    counters: str | None = None  # None: as the environment says (MAVERA_GATEWAY_REDIS_URL)
    workers: int = 1
    postgres_url: str = POSTGRES_URL
    redis_url: str = REDIS_URL

    def label(self) -> str:
        """For the report: `postgres + redis, 2 workers`."""
        plural = "s" if self.workers > 1 else ""
        counters = self.counters or "counters as the environment says"
        return f"{self.ledger} + {counters}, {self.workers} worker{plural}"


def choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    """An argparse type accepting one of `allowed`."""

    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"choose from {', '.join(allowed)}")
        return text

    parse.__name__ = "/".join(allowed)  # argparse names the type in its error message
    return parse


def _with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


def _postgres(setup: Setup, tag: str) -> tuple[dict[str, str], Callable[[], None]]:
    import psycopg  # the [postgres] extra; only needed when asked for

    database = f"bench_{tag}"
    with psycopg.connect(setup.postgres_url, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{database}"')

    def drop() -> None:
        with psycopg.connect(setup.postgres_url, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    return {"MAVERA_GATEWAY_DATABASE_URL": _with_database(setup.postgres_url, database)}, drop


def _redis(setup: Setup, tag: str) -> tuple[dict[str, str], Callable[[], None]]:
    import redis  # the [redis] extra; only needed when asked for

    prefix = f"mavera-bench-{tag}:"

    def delete() -> None:
        client = redis.Redis.from_url(setup.redis_url)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            client.close()

    env = {
        "MAVERA_GATEWAY_REDIS_URL": setup.redis_url,
        "MAVERA_GATEWAY_LIMITS__REDIS_PREFIX": prefix,
    }
    return env, delete


def provision(setup: Setup, name: str) -> tuple[dict[str, str], list[Callable[[], None]]]:
    """The environment that points one start at its own database and keys, and the clean-ups.

    The clean-ups are to run once the gateway has stopped, in the order given.
    """
    tag = f"{time.time_ns()}_{name.replace('-', '_')}"
    env: dict[str, str] = {}
    cleanups: list[Callable[[], None]] = []
    if setup.ledger == "postgres":
        extra, cleanup = _postgres(setup, tag)
        env |= extra
        cleanups.append(cleanup)
    if setup.counters == "redis":
        extra, cleanup = _redis(setup, tag)
        env |= extra
        cleanups.append(cleanup)
    return env, cleanups
