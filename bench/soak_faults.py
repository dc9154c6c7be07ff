"""`python -m bench.soak_faults`: a long mixed load with injected faults against a real gateway.

The Mavera simulator (`bench.soak_sim`, or `mavera-gateway simulate` itself with `--simulator
cli`) and the gateway (`mavera-gateway serve`, SQLite ledger) run as processes of their own on
127.0.0.1, each stopped through its own process group when the run ends, however it ends. A
bounded number of client tasks send the mix of `bench.soak_mix` (chat and Responses, streamed and
not, about 15% with a fault: Mavera 5xx and 4xx, cut streams and bodies, hangs, client disconnects
and deadlines), each request with its own `x-request-id`. The gateway's RSS is sampled throughout.
After the load the gateway is stopped with SIGTERM (which flushes its ledger), and the ledger is
read: every request id sent must be there exactly once, with the outcome its fault calls for, and
no gateway 500 anywhere.

Bounded by `--requests` and by `--max-seconds` of load, whichever comes first. Not run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from bench import procs, soak_report
from bench.soak_client import Connection, encode_head, encode_request
from bench.soak_mix import GATEWAY_ENV, KINDS, schedule
from bench.targets import GATEWAY_KEY, gateway_command

READY_LIMIT_S = 60.0
STOP_GRACE_S = 60.0  # SIGTERM to SIGKILL: the gateway drains and flushes its ledger in between
CONNECT_TIMEOUT_S = 5.0
SAMPLE_EVERY_S = 2.0
_DROPPED_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class Load:
    """The requests to send, and what has happened to them so far."""

    port: int
    kinds: bytearray  # kind index of each request, by sequence number
    deadline: float  # time.monotonic() at which no new request starts
    prefix: str  # request ids are prefix + sequence number
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    started: int = 0
    done: int = 0
    connect_failures: int = 0
    written: bytearray = field(default_factory=bytearray)  # 1: the request went on the wire
    seen: Counter[tuple[int, int, str]] = field(default_factory=Counter)  # (kind, status, end)

    def __post_init__(self) -> None:
        self.written = bytearray(len(self.kinds))
        self.bodies = [kind.body() for kind in KINDS]
        paths = [f"/v1/{kind.endpoint}" for kind in KINDS]
        self.heads = [encode_head(self.port, p, b) for p, b in zip(paths, self.bodies, strict=True)]


async def _client(load: Load) -> None:
    """One client: requests one after another on a keep-alive connection, reopened when needed."""
    connection: Connection | None = None
    while load.started < len(load.kinds) and time.monotonic() < load.deadline:
        seq = load.started
        load.started += 1
        index = load.kinds[seq]
        if connection is None or not connection.usable:
            try:
                opening = Connection.open(load.port)
                connection = await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                load.connect_failures += 1
                connection = None
                continue
        request = encode_request(load.heads[index], f"{load.prefix}{seq}", load.bodies[index])
        load.written[seq] = 1
        kind = KINDS[index]
        seen = await connection.exchange(request, kind.timeout_s, kind.hang_up_after_first_chunk)
        load.seen[(index, seen.status, seen.end)] += 1
        load.done += 1
    if connection is not None:
        connection.close()


async def _sample(
    load: Load, pids: dict[str, int], began: float, out: list[dict[str, float]]
) -> None:
    """Every SAMPLE_EVERY_S: requests done, RSS and CPU of each process, the ledger queue depth."""
    while True:
        row = {"t": time.monotonic() - began, "done": float(load.done)}
        for name, pid in pids.items():
            tree = procs.process_tree(pid)
            row[f"{name}_rss_mb"] = procs.rss_mb(tree)
            row[f"{name}_cpu_s"] = procs.cpu_seconds(tree)
        row["queue_depth"] = await soak_report.queue_depth(load.port)
        row["machine_busy_s"] = procs.machine_busy_seconds()
        row["own_cpu_s"] = procs.cpu_seconds([os.getpid()])
        row["load_avg"] = os.getloadavg()[0]
        out.append(row)
        await asyncio.sleep(SAMPLE_EVERY_S)


async def _drive(load: Load, concurrency: int, pids: dict[str, int]) -> list[dict[str, float]]:
    """Run the load with `concurrency` clients; the samples taken meanwhile, and one after."""
    samples: list[dict[str, float]] = []
    began = time.monotonic()
    sampler = asyncio.ensure_future(_sample(load, pids, began, samples))
    try:
        await asyncio.gather(*(_client(load) for _ in range(concurrency)))
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    await asyncio.sleep(SAMPLE_EVERY_S)  # idle: the ledger writer catches up
    idle = asyncio.ensure_future(_sample(load, pids, began, samples))
    await asyncio.sleep(0.5)
    idle.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await idle
    samples[-1]["idle"] = 1.0
    return samples


def _start_simulator(workdir: Path, which: str) -> tuple[subprocess.Popen[bytes], int]:
    """The simulator on a free port, once it accepts connections.

    `cli` is `mavera-gateway simulate`; `recent` is `bench.soak_sim`, the same app keeping only
    its recent request records (see there why).
    """
    port = procs.free_port()
    env = _clean_env()
    if which == "cli":
        command = [*gateway_command(), "simulate", "--port", str(port)]
    else:
        command = [sys.executable, "-m", "bench.soak_sim", "--port", str(port)]
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    process = procs.spawn(command, workdir / "simulator.log", env)
    deadline = time.monotonic() + READY_LIMIT_S
    while procs.probe(port, "/api/v1/personas") is None:  # any answer (401 without a key) will do
        if process.poll() is not None or time.monotonic() > deadline:
            procs.stop(process)
            raise procs.NotReady(f"the simulator did not start (see {workdir}/simulator.log)")
        time.sleep(0.02)
    return process, port


def _start_gateway(workdir: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """`mavera-gateway serve` in front of the simulator, once /readyz answers 200."""
    from app.simulator import persona_ids

    port = procs.free_port()
    env = _clean_env() | GATEWAY_ENV
    env |= {
        "MAVERA_BASE_URL": f"http://127.0.0.1:{upstream_port}/api/v1",
        "MAVERA_API_KEY": GATEWAY_KEY,
        "MAVERA_GATEWAY_DATABASE_URL": f"sqlite:///{workdir / 'ledger.db'}",
        "MAVERA_GATEWAY_DEFAULTS__PERSONA_ID": persona_ids()[0],
    }
    command = [*gateway_command(), "serve", "--port", str(port)]
    process = procs.spawn(command, workdir / "gateway.log", env)
    try:
        procs.wait_ready(process, port, "/readyz", time.perf_counter(), READY_LIMIT_S)
    except procs.NotReady:
        procs.stop(process)
        raise
    return process, port


def code_version() -> str:
    """The commit the gateway's code is at, and how many files under app/ differ from it."""
    root = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(root)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    changed = subprocess.run(
        [*git, "status", "--porcelain", "app"], capture_output=True, text=True, check=False
    )
    count = len(changed.stdout.splitlines())
    return f"{head.stdout.strip() or 'unknown'} ({count} uncommitted changed files in app/)"


def _clean_env() -> dict[str, str]:
    """This environment without proxies, config files or Mavera settings of the caller's."""
    return {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in _DROPPED_ENV and not key.startswith("MAVERA_")
    }


@contextlib.contextmanager
def _stopped_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so that `finally` blocks stop the processes."""

    def leave(signum: int, frame: FrameType | None) -> None:
        """Leave through the `finally` blocks, as Ctrl-C would."""
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    """The whole soak; returns the exit status (0 when every check passed)."""
    workdir = Path(tempfile.mkdtemp(prefix="soak-faults-"))
    kinds = schedule(args.requests, args.seed)
    prefix = f"soak-{os.getpid()}-{time.time_ns():x}-"
    sim = gateway = None
    with _stopped_on_sigterm():
        try:
            sim, sim_port = _start_simulator(workdir, args.simulator)
            version = code_version()  # as the gateway starts: app/ may be edited meanwhile
            gateway, port = _start_gateway(workdir, sim_port)
            pids = {"gateway": gateway.pid, "simulator": sim.pid}
            began, started_at = time.monotonic(), time.time()
            load = Load(port, kinds, began + args.max_seconds, prefix)
            _use_uvloop()
            samples = asyncio.run(_drive(load, args.concurrency, pids))
            duration = time.monotonic() - began
            procs.stop(gateway, STOP_GRACE_S)
        except BaseException:
            print(f"soak stopped early; logs and ledger kept in {workdir}", file=sys.stderr)
            raise
        finally:
            for process in (gateway, sim):
                if process is not None:
                    procs.stop(process, STOP_GRACE_S)
    facts = soak_report.Facts(
        requests=args.requests,
        concurrency=args.concurrency,
        seed=args.seed,
        duration_s=duration,
        load=load,
        samples=samples,
        workdir=workdir,
        gateway_exit=gateway.returncode,
        max_seconds=args.max_seconds,
        started_at=started_at,
        simulator=args.simulator,
        version=version,
    )
    passed = soak_report.report(facts, " ".join(["python -m bench.soak_faults", *sys.argv[1:]]))
    if passed and not args.keep:
        soak_report.remove(workdir)
    else:
        print(f"kept {workdir} (ledger.db, gateway.log, simulator.log)")
    return 0 if passed else 1


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> int:
    """Parse the options and run the soak."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak_faults", description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests to send")
    parser.add_argument("--concurrency", type=int, default=128, help="client tasks")
    parser.add_argument("--max-seconds", type=float, default=1200.0, help="load time limit")
    parser.add_argument("--seed", type=int, default=9, help="seed of the request mix")
    parser.add_argument("--keep", action="store_true", help="keep the ledger and logs")
    parser.add_argument(
        "--simulator",
        choices=["recent", "cli"],
        default="recent",
        help="recent: bench.soak_sim, keeping the last records only (default); "
        "cli: mavera-gateway simulate, which keeps every request's record",
    )
    args = parser.parse_args()
    if not 0 < args.requests <= 10_000_000 or not 0 < args.concurrency <= 900:
        parser.error("--requests must be 1..10,000,000 and --concurrency 1..900")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
