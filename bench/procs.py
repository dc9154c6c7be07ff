"""Processes the harness starts: spawning, readiness, stopping, and what /proc says about them.

Every process is started in a session of its own and stopped through its own process group id,
so stopping a target never touches anything the harness did not start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLL_S = 0.002


class NotReady(RuntimeError):
    """A process did not answer its readiness probe in time."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(
    command: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` in its own session, stdout and stderr to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )


def probe(port: int, path: str, timeout: float = 1.0) -> int | None:
    """The status of `GET path` on 127.0.0.1:port, or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".encode()
            )
            line = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return None
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def wait_ready(
    process: subprocess.Popen[bytes] | None, port: int, path: str, started: float, limit_s: float
) -> float:
    """Seconds from `started` (a perf_counter time) until `GET path` answers 200."""
    deadline = started + limit_s
    while time.perf_counter() < deadline:
        if probe(port, path) == 200:
            return time.perf_counter() - started
        if process is not None and process.poll() is not None:
            raise NotReady(f"exited with status {process.returncode} before it was ready")
        time.sleep(POLL_S)
    raise NotReady(f"not ready on port {port} after {limit_s:g} s")


def stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group the harness created, then SIGKILL it if it lingers."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(5)
    _signal_group(process.pid, signal.SIGKILL)  # any child left in the group


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(children.get(current, []))
    return tree


def others_running(pattern: str, mine: Iterable[int]) -> list[int]:
    """Pids whose command line contains `pattern`, other than `mine` (another benchmark?)."""
    excluded = set(mine) | {os.getpid()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in excluded:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if pattern.encode() in command:
            found.append(int(entry.name))
    return found


def machine_busy_seconds() -> float:
    """CPU time all cores have spent busy since boot (everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (targets, wrk, upstream)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time used so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pids: Iterable[int]) -> float:
    """Resident memory of these processes now, in MB (MiB)."""
    return sum(_status_kb(pid, "VmRSS") for pid in pids) / 1024


def peak_rss_mb(pids: Iterable[int]) -> float:
    """Peak resident memory (VmHWM) since start or the last `reset_peak_rss`, in MB (MiB)."""
    return sum(_status_kb(pid, "VmHWM") for pid in pids) / 1024


def reset_peak_rss(pids: Iterable[int]) -> None:
    """Restart VmHWM from the current RSS (Linux clear_refs 5; needs the process's owner)."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def service_pids() -> dict[str, list[int]]:
    """PostgreSQL's and Redis's processes on this machine, found by command name.

    Their CPU is the benchmark's when a gateway uses them (and any other session's too).
    """
    found: dict[str, list[int]] = {"postgres": [], "redis": []}
    names = {b"postgres": "postgres", b"redis-server": "redis"}
    for entry in Path("/proc").iterdir():
        try:
            name = (
                names.get((entry / "comm").read_bytes().strip()) if entry.name.isdigit() else None
            )
        except OSError:
            continue
        if name is not None:
            found[name].append(int(entry.name))
    return found


class CpuShares:
    """How busy named groups of processes kept the cores from now until `cores()`.

    `load` is this process and the children it has waited for meanwhile (wrk, or the harness's
    own client); `others` is the rest of the machine's busy time (other sessions, interrupts).
    """

    def __init__(
        self,
        groups: Mapping[str, Iterable[int]],
        rescan: Callable[[], Mapping[str, list[int]]] | None = None,
    ) -> None:
        """`rescan` lists some groups again at the end: a process new since then (a PostgreSQL
        backend for a new connection) counts with all its CPU time."""
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.rescan = rescan
        self.before = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self.own, self.busy = own_cpu_seconds(), machine_busy_seconds()
        self.started = time.perf_counter()

    def cores(self) -> dict[str, float]:
        """Cores used by each group, `load` and `others` (1.0 = one core for the whole time)."""
        wall = max(time.perf_counter() - self.started, 1e-9)
        used = {name: cpu_seconds(pids) - self.before[name] for name, pids in self.groups.items()}
        for name, pids in (self.rescan() if self.rescan else {}).items():
            known = set(self.groups.get(name, ()))
            used[name] = used.get(name, 0.0) + cpu_seconds(p for p in pids if p not in known)
        used["load"] = own_cpu_seconds() - self.own
        used["others"] = max(0.0, machine_busy_seconds() - self.busy - sum(used.values()))
        return {name: round(seconds / wall, 3) for name, seconds in used.items()}


def settle(pids: list[int], limit_s: float = 10.0) -> tuple[float, float]:
    """Wait until the processes go quiet; the CPU seconds they used meanwhile, and the wait.

    A gateway defers work past its last answer (the ledger writer's backlog, settlements):
    counted here, it is not charged to whichever target runs next. Quiet: under 5% of a core
    over 100 ms.
    """
    began = time.perf_counter()
    start = last = cpu_seconds(pids)
    while time.perf_counter() - began < limit_s:
        time.sleep(0.1)
        now = cpu_seconds(pids)
        if now - last < 0.005:
            break
        last = now
    return last - start, round(time.perf_counter() - began, 2)
