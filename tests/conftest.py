"""Shared fixtures: a clean environment, the simulator and the gateway on real loopback sockets,
and a watch on every log line for the Mavera key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
import psycopg
import pytest
import trustme
from psycopg.conninfo import conninfo_to_dict

from app.background import BackgroundServer
from app.config import Settings
from app.ledger.backends import POSTGRES_SCHEMES
from app.ledger.postgres import PostgresLedger
from app.ledger.protocol import Ledger
from app.ledger.sqlite import SqliteLedger, sqlite_path
from app.records import COLUMNS, UsageRecord
from app.server import create_app
from app.simulator import Simulator, persona_ids
from app.state import Gateway

# Long and distinctive, so finding it anywhere it should not be is unambiguous.
UPSTREAM_KEY = "mvra_live_TESTKEY_do_not_leak_7f3a9c2e51b04d68"
PERSONAS = persona_ids()
DEFAULT_PERSONA = PERSONAS[0]


def _ephemeral_ports() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(int(low), int(high) + 1)


def free_port() -> int:
    """A loopback port nobody listens on right now, outside the ephemeral range, so that no
    port-0 bind (such as the simulator `serve --simulate` starts) can take it in the meantime."""
    ephemeral = _ephemeral_ports()
    for _ in range(100):
        port = random.randrange(10000, 30000)
        if port in ephemeral:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority, for TLS upstreams."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    """The test CA's certificate as a PEM file, as an operator would point ca_bundle at."""
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    """An open, empty SQLite ledger in the test's own directory."""
    store = SqliteLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    store.open_sync()
    yield store
    store.close_sync()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The URL of a SQLite ledger file in the test's directory (not created), set as
    MAVERA_GATEWAY_DATABASE_URL for the CLI."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("MAVERA_GATEWAY_DATABASE_URL", url)
    return url


def ledger_rows(database_url: str) -> list[dict[str, Any]]:
    """Every usage record in a ledger, oldest first, read on a connection of its own."""
    sql = f"SELECT {', '.join(COLUMNS)} FROM usage_records ORDER BY received_at"
    return [dict(zip(COLUMNS, row, strict=True)) for row in raw_query(database_url, sql)]


def raw_query(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one SQL statement on a connection of the test's own, SQLite or PostgreSQL."""
    if database_url.startswith(POSTGRES_SCHEMES):
        with psycopg.connect(database_url, autocommit=True) as pg:
            cursor = pg.execute(sql.encode())
            return cursor.fetchall() if cursor.description else []
    with contextlib.closing(sqlite3.connect(sqlite_path(database_url))) as db:
        rows = db.execute(sql).fetchall()
        db.commit()
        return rows


POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


_POSTGRES = conninfo_to_dict(POSTGRES_URL)
POSTGRES_ADDRESS = (str(_POSTGRES.get("host") or "127.0.0.1"), int(_POSTGRES.get("port") or 5432))


def through_port(url: str, port: int) -> str:
    """The URL `url` with its server replaced by 127.0.0.1:`port` (a relay in front of it)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(
        parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}")
    )


def _postgres_or_skip() -> None:
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        message = (
            f"PostgreSQL at {POSTGRES_URL} is not reachable ({exc}); set GATEWAY_TEST_POSTGRES_URL"
        )
        if os.environ.get("GATEWAY_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message} (GATEWAY_REQUIRE_SERVICES=1, so this is a failure)")
        pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty schema in the test database (first on its search_path),
    dropped with everything in it afterwards."""
    _postgres_or_skip()
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}".encode())
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
            db.execute(f"DROP SCHEMA {schema} CASCADE".encode())


@dataclass
class LedgerUnderTest:
    """An open ledger of either backend, driven from synchronous tests on one event loop."""

    url: str
    ledger: Ledger
    loop: asyncio.AbstractEventLoop

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        """Await `work` on the ledger's event loop (PostgreSQL connections belong to one)."""
        return self.loop.run_until_complete(work)

    def write(self, records: Iterable[UsageRecord]) -> None:
        """Store a batch."""
        self.run(self.ledger.write(list(records)))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Raw SQL on a connection of the test's own."""
        return raw_query(self.url, sql)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerUnderTest]:
    """An open, empty ledger: SQLite in the test's directory, or PostgreSQL in a fresh schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        ledger: Ledger = SqliteLedger(url)
    else:
        url = request.getfixturevalue("postgres_url")
        ledger = PostgresLedger(url)
    loop = asyncio.new_event_loop()
    under_test = LedgerUnderTest(url, ledger, loop)
    under_test.run(ledger.open())
    try:
        yield under_test
    finally:
        under_test.run(ledger.close())
        loop.close()


# The upstream client honours these as curl does; a developer's proxy must not route the tests.
PROXY_VARIABLES = ("https_proxy", "http_proxy", "no_proxy", "all_proxy", "ssl_cert_file")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never see the developer's MAVERA_* settings or proxies, and never write to the
    real per-user data directory (the default ledger's home): theirs is in the test's tmp."""
    for name in list(os.environ):
        if name.startswith("MAVERA_") or name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)  # urllib ignores HTTP_PROXY under CGI
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        extra = getattr(record, "record", None)
        if extra is not None:
            text += repr(extra)
        self.lines.append(text)


@pytest.fixture(autouse=True)
def no_key_in_logs() -> Iterator[_LogCollector]:
    """Every log line of every test, at every level, is checked for the Mavera key."""
    collector = _LogCollector()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        root.removeHandler(collector)
        root.setLevel(previous)
    leaked = [line for line in collector.lines if UPSTREAM_KEY in line]
    assert not leaked, f"the Mavera key appeared in {len(leaked)} log line(s): {leaked[:1]}"


@pytest.fixture
def simulator() -> Iterator[tuple[Simulator, str]]:
    """The Mavera simulator on a loopback socket, accepting only UPSTREAM_KEY."""
    sim = Simulator(api_keys={UPSTREAM_KEY})
    with BackgroundServer(sim.app) as server:
        yield sim, server.url


@dataclass
class RunningGateway:
    """A gateway served on a loopback socket, with the simulator behind it."""

    url: str
    settings: Settings
    sim: Simulator
    server: BackgroundServer
    sdk_clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def state(self) -> Gateway:
        """The live gateway resources (ledger writer, keys, metrics)."""
        gateway: Gateway = self.server.server.config.app.state.gateway
        return gateway

    def client(self, key: str = "no-key-needed", **options: Any) -> openai.OpenAI:
        """An OpenAI SDK client pointed at this gateway."""
        options.setdefault("max_retries", 0)
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=key, **options)
        self.sdk_clients.append(client)
        return client

    def records(self) -> list[dict[str, Any]]:
        """Ledger rows, once everything queued has been written."""
        self.flush()
        return ledger_rows(self.settings.ledger.database_url)

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every request has finished and its record has been written."""
        deadline = time.monotonic() + timeout_s
        while self.state.in_flight or self.state.writer.depth():
            assert time.monotonic() < deadline, "requests still in flight or records unwritten"
            time.sleep(0.01)


GatewayFactory = Callable[..., RunningGateway]


def gateway_settings(sim_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test gateway in front of the simulator at `sim_url`."""
    sections: dict[str, Any] = {
        # no persona list read at start: tests count what the simulator received
        "upstream": {
            "base_url": sim_url + "/api/v1",
            "api_key": UPSTREAM_KEY,
            "max_retries": 2,
            "persona_names_at_start": False,
        },
        "defaults": {"persona_id": DEFAULT_PERSONA},
        "ledger": {"database_url": f"sqlite:///{tmp_path / 'ledger.db'}", "flush_interval_ms": 20},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(sections.get(section), dict):
            sections[section] = {**sections[section], **values}
        else:
            sections[section] = values
    return Settings(**sections)


@pytest.fixture
def make_gateway(simulator: tuple[Simulator, str], tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateways (settings sections as keyword overrides) in front of the simulator."""
    sim, sim_url = simulator
    started: list[RunningGateway] = []

    def start(**overrides: Any) -> RunningGateway:
        settings = gateway_settings(sim_url, tmp_path, **overrides)
        server = BackgroundServer(create_app(settings), edge=settings.server).start()
        started.append(RunningGateway(server.url, settings, sim, server))
        return started[-1]

    yield start
    for gateway in reversed(started):
        for client in gateway.sdk_clients:
            client.close()
        gateway.server.stop()


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway with default settings: local mode, one default persona."""
    return make_gateway()


REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_or_skip() -> None:
    """Skip (or, with GATEWAY_REQUIRE_SERVICES=1, fail) when the test Redis is not there."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except (redis.RedisError, OSError) as exc:
        message = f"Redis at {REDIS_URL} is not reachable ({exc}); set GATEWAY_TEST_REDIS_URL"
        if os.environ.get("GATEWAY_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message} (GATEWAY_REQUIRE_SERVICES=1, so this is a failure)")
        pytest.skip(message)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of the test's own in the shared test Redis (other sessions' tests may use
    the same server and db), with every key under it deleted afterwards."""
    import redis

    redis_or_skip()
    prefix = f"mgw-test-{secrets.token_hex(6)}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
