"""Two gateway processes acting as one: a PostgreSQL ledger and Redis counters shared, one
simulator behind both. Budgets, rpm, max_concurrent and gateway_rpm hold across the two; a
replica killed mid-stream gives its concurrency places back by expiry; Redis emptied while
they run has its budgets rebuilt from the ledger.

The gateways run as `python -m tests.gateway_main` so that rate windows (1 s) and concurrency
places (3 s, heartbeat every 1 s) pass within a test; the product counts 60 s and 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

import app.simulator.limits
from app.auth import key_digest
from app.simulator import Simulator
from tests.conftest import DEFAULT_PERSONA, REDIS_URL, UPSTREAM_KEY, free_port, ledger_rows
from tests.processes import GatewayProcess, gateway_env

KEYS = {name: f"mgw_{name}_shared_key_0123456789abcdefghijklmn" for name in ("alice", "bob")}
RESERVE = 5
BUDGET = 40
# 200 words: the simulator bills exactly one reservation (5 credits) for each
COSTLY = [{"role": "user", "content": " ".join(["word"] * 200)}]
HI = [{"role": "user", "content": "hi"}]
SLOT_TTL_S = 3.0
TIMINGS = {
    "MGW_TEST_WINDOW_S": "1",
    "MGW_TEST_SHARED_MARGIN_S": "0.2",
    "MGW_TEST_SLOT_TTL_S": str(SLOT_TTL_S),
    "MGW_TEST_HEARTBEAT_S": "1",
}

Start = Callable[..., GatewayProcess]


def _config(path: Path, prefix: str, clients: dict[str, dict[str, Any]], limits: str) -> None:
    lines = [
        f'[defaults]\npersona_id = "{DEFAULT_PERSONA}"',
        '[ledger]\ndurability = "strict"\nflush_interval_ms = 20',
        # no persona list fetched at start: it would count in the simulator's rate window
        "[upstream]\nmax_retries = 0\npersona_names_at_start = false",
        f'[limits]\nredis_prefix = "{prefix}"\nbudget_reserve_credits = {RESERVE}\n{limits}',
    ]
    for name, spec in clients.items():
        fields = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in spec.items())
        lines.append(f'[clients.{name}]\nkey_sha256 = "{key_digest(KEYS[name])}"\n{fields}')
    path.write_text("\n\n".join(lines) + "\n")


@pytest.fixture
def start(
    tmp_path: Path,
    postgres_url: str,
    redis_prefix: str,
    simulator: tuple[Simulator, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Start]:
    """Start gateway processes sharing the test's PostgreSQL schema, Redis prefix, simulator."""
    monkeypatch.setattr(app.simulator.limits, "WINDOW_S", 1.0)
    started: list[GatewayProcess] = []

    def run(
        clients: dict[str, dict[str, Any]], limits: str = "", timings: bool = True
    ) -> GatewayProcess:
        name = f"g{len(started)}"
        config = tmp_path / f"{name}.toml"
        _config(config, redis_prefix, clients, limits)
        env = gateway_env(
            tmp_path,
            MAVERA_BASE_URL=simulator[1] + "/api/v1",
            MAVERA_API_KEY=UPSTREAM_KEY,
            MAVERA_GATEWAY_DATABASE_URL=postgres_url,
            MAVERA_GATEWAY_REDIS_URL=REDIS_URL,
            **(TIMINGS if timings else {}),
        )
        port = free_port()
        args = ["serve", "--port", str(port), "--config", str(config)]
        process = GatewayProcess(args, env, tmp_path / f"{name}.log", port, "tests.gateway_main")
        started.append(process.start())
        process.wait_ready()
        return process

    yield run
    for process in started:
        process.stop()


async def _send(
    targets: list[str], name: str, count: int, body: dict[str, Any]
) -> list[httpx.Response]:
    """`count` requests of client `name` at once, spread over the gateways in turn; the
    client's name is the message, unless the body has its own."""
    body = {"messages": [{"role": "user", "content": name}], **body}
    pool = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    headers = {"authorization": f"Bearer {KEYS[name]}"}
    async with httpx.AsyncClient(limits=pool, timeout=60) as http:
        urls = [targets[i % len(targets)] + "/v1/chat/completions" for i in range(count)]
        jobs = [http.post(url, json=body, headers=headers) for url in urls]
        return list(await asyncio.gather(*jobs))


def _statuses(replies: list[httpx.Response]) -> Counter[int]:
    return Counter(reply.status_code for reply in replies)


def _generations(sim: Simulator) -> list[Any]:
    return [r for r in sim.records if r.path.endswith("/chat/completions")]


def test_a_budget_holds_across_two_replicas_hammered_at_once(
    start: Start, simulator: tuple[Simulator, str], postgres_url: str
) -> None:
    clients = {"alice": {"credit_budget": BUDGET, "budget_period": "day"}}
    one, two = start(clients), start(clients)
    body = {"model": "mavera-1", "messages": COSTLY}
    replies = asyncio.run(_send([one.url, two.url], "alice", 120, body))

    counts = _statuses(replies)
    assert set(counts) == {200, 402}, counts
    charged = simulator[0].total_credits_charged()
    assert charged == counts[200] * RESERVE
    logs = [line for line in (one.log() + two.log()).splitlines() if "Redis" in line]
    assert BUDGET <= charged <= BUDGET + RESERVE, logs  # never more than one reservation over
    rows = ledger_rows(postgres_url)
    assert len(rows) == 120 and len({r["id"] for r in rows}) == 120
    assert sum(float(r["credits_used"] or 0) for r in rows) == charged


def test_rpm_and_max_concurrent_hold_across_two_replicas(
    start: Start, simulator: tuple[Simulator, str]
) -> None:
    clients = {"alice": {"rpm": 6}, "bob": {"max_concurrent": 2}}
    one, two = start(clients, timings=False), start(clients, timings=False)  # 60 s windows
    targets = [one.url, two.url]
    rated = asyncio.run(_send(targets, "alice", 30, {"model": "mavera-1"}))
    assert _statuses(rated) == {200: 6, 429: 24}
    assert len(_generations(simulator[0])) == 6

    simulator[0].records.clear()
    slow: dict[str, Any] = {"model": "mavera-1", "stream": True}
    slow["mavera_sim"] = {"chunks": 10, "chunk_delay_ms": 100}  # about 1 s each
    streams = asyncio.run(_send(targets, "bob", 12, slow))
    assert _statuses(streams)[429] >= 1
    spans = [(r.received_at, r.events[-1][0]) for r in _generations(simulator[0]) if r.events]
    for began, _ in spans:  # open at the moment each began, across both replicas
        assert sum(1 for b, e in spans if b <= began < e) <= 2


def test_gateway_rpm_is_one_fair_queue_across_two_replicas(
    start: Start, simulator: tuple[Simulator, str]
) -> None:
    sim = simulator[0]
    sim.rpm = 4  # the Mavera key's own limit, as the gateways were told
    clients = {"alice": {"weight": 1}, "bob": {"weight": 1}}
    limits = "gateway_rpm = 4\nqueue_timeout_ms = 20000"
    one, two = start(clients, limits), start(clients, limits)
    body = {"model": "mavera-1"}

    async def burst() -> list[int]:
        await _send([one.url], "alice", 4, body)  # the window is full: the rest wait
        jobs = [_send([one.url, two.url], name, 8, body) for name in ("alice", "bob")]
        both = await asyncio.gather(*jobs)
        return [r.status_code for replies in both for r in replies]

    assert set(asyncio.run(burst())) == {200}
    records = _generations(sim)
    assert [r.status for r in records if r.status != 200] == []  # never a 429 from Mavera
    times = sorted(r.received_at for r in records)
    assert all(sum(1 for t in times[i:] if t < a + 1.0) <= 4 for i, a in enumerate(times))
    waited = sorted(records, key=lambda r: r.received_at)[4:12]  # the two windows after
    served = Counter(r.body["messages"][0]["content"] for r in waited)
    assert 3 <= served["alice"] <= 5 and 3 <= served["bob"] <= 5, served


def _post(url: str, name: str, **body: Any) -> httpx.Response:
    payload = {"model": "mavera-1", "messages": HI, **body}
    headers = {"authorization": f"Bearer {KEYS[name]}"}
    return httpx.post(url + "/v1/chat/completions", json=payload, headers=headers, timeout=30)


def test_a_replica_killed_mid_stream_gives_its_places_back_by_expiry(
    start: Start, postgres_url: str
) -> None:
    clients = {"alice": {"max_concurrent": 1}, "bob": {}}
    one, two = start(clients), start(clients)
    acknowledged = []
    for _ in range(5):
        reply = _post(one.url, "bob")
        assert reply.status_code == 200
        acknowledged.append(reply.headers["x-request-id"])
    held = {"model": "mavera-1", "messages": HI, "stream": True, "mavera_sim": {"hang_after": 1}}
    headers = {"authorization": f"Bearer {KEYS['alice']}"}
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(
            httpx.stream("POST", one.url + "/v1/chat/completions", json=held, headers=headers)
        )
        assert stream.status_code == 200
        chunks = stream.iter_raw()
        next(chunks)  # the stream is open on the first replica
        time.sleep(SLOT_TTL_S + 1)  # past the place's TTL: its holder's heartbeat keeps it
        assert _post(two.url, "alice").status_code == 429
        assert one.proc is not None
        one.proc.send_signal(signal.SIGKILL)
        one.proc.wait(timeout=10)
        stack.push(contextlib.suppress(httpx.HTTPError))  # the stream dies with its replica

    assert _post(two.url, "bob").status_code == 200  # the other keeps serving
    deadline = time.monotonic() + SLOT_TTL_S + 10
    while (reply := _post(two.url, "alice")).status_code == 429:
        assert time.monotonic() < deadline, "the dead replica's place never lapsed"
        time.sleep(0.2)
    assert reply.status_code == 200
    stored = {row["request_id"] for row in ledger_rows(postgres_url)}
    assert set(acknowledged) <= stored  # strict durability: acknowledged means committed


def test_redis_emptied_while_running_rebuilds_budgets_from_the_ledger(
    start: Start, simulator: tuple[Simulator, str], redis_prefix: str
) -> None:
    clients = {"alice": {"credit_budget": BUDGET, "budget_period": "day"}}
    one, two = start(clients), start(clients)
    targets = [one.url, two.url]
    body = {"model": "mavera-1", "messages": COSTLY}
    assert _statuses(asyncio.run(_send(targets, "alice", 4, body))) == {200: 4}
    # Redis restarted empty, as far as this gateway can tell: its keys are deleted rather than
    # the server restarted or FLUSHDB sent, since other sessions' tests may share the server.
    rebuilt = "budgets rebuilt from the ledger"
    before = (one.log() + two.log()).count(rebuilt)  # at the first reservation ever
    shared = redis.Redis.from_url(REDIS_URL)
    shared.delete(*shared.scan_iter(match=redis_prefix + "*"))
    shared.close()

    counts = _statuses(asyncio.run(_send(targets, "alice", 60, body)))
    charged = simulator[0].total_credits_charged()
    assert BUDGET <= charged <= BUDGET + RESERVE  # the 20 spent before still count
    assert counts[200] == (charged - 20) / RESERVE and counts[402] >= 1
    assert (one.log() + two.log()).count(rebuilt) > before >= 1
