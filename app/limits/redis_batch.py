"""The connection to Redis, and script calls made at the same moment sent together.

`connect` makes the client: short timeouts, no retries (a failure is reported at once, and
`[limits] on_shared_failure` decides), and a pool that makes commands wait for a free
connection instead of failing when the process is busy.

Batching: one pipeline, one round trip for the calls of one event-loop turn.

Under load many requests ask Redis something in the same turn of the event loop; sending each
alone costs a round trip and most of redis-py's per-command work (a pooled connection, a write,
a read). The batcher queues the calls of one turn and sends them as one pipeline (not a
transaction: each script is atomic on its own, and none depends on another). A Redis that lost
its scripts (restarted) gets them loaded again, and the batch is sent once more.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.maint_notifications import MaintNotificationsConfig

from app.limits.counters import SharedUnavailable

SOCKET_TIMEOUT_S = 0.5  # a Redis that does not answer within this is treated as down
MAX_CONNECTIONS = 128  # to Redis, per gateway process
# How long a command may wait for a free connection of this process's pool: busy as the process
# may be, a dead Redis frees connections at the socket timeout, so this is a backstop.
POOL_WAIT_S = 5.0

Call = Callable[[Awaitable[Any]], Awaitable[Any]]
Pending = tuple[str, list[Any], list[Any], "asyncio.Future[Any]"]


def connect(url: str) -> aioredis.Redis:
    """A client of the Redis at `url`, for the counters."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT_S,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        # a managed-cluster feature; plain Redis refuses it on every new connection
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return aioredis.Redis(connection_pool=pool)


def shown_url(url: str) -> str:
    """The Redis URL without its password, for logs and /readyz."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class ScriptBatcher:
    """Runs the named Lua scripts, many calls to one pipeline per event-loop turn."""

    def __init__(self, client: aioredis.Redis, scripts: dict[str, str], call: Call) -> None:
        self.client = client
        self.scripts = scripts
        self.shas = {name: hashlib.sha1(s.encode()).hexdigest() for name, s in scripts.items()}
        self.call = call  # awaits one Redis command, turning failures into SharedUnavailable
        self._batch: list[Pending] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script with its keys and arguments, sent with this turn's other calls."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._batch.append((script, list(keys), list(args), done))
        if len(self._batch) == 1:
            loop.call_soon(self._flush)
        return await done

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Pending]) -> None:
        try:
            results = await self._pipelined(batch, reload=True)
        except SharedUnavailable as exc:
            results = [exc] * len(batch)
        for (_, _, _, done), result in zip(batch, results, strict=True):
            if done.done():
                continue  # its caller gave up (cancelled)
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

    async def _alone(self, name: str, keys: list[Any], args: list[Any]) -> list[Any]:
        try:
            return [await self.client.evalsha(self.shas[name], len(keys), *keys, *args)]
        except NoScriptError as exc:  # as a pipeline answers it: a result, not a failure
            return [exc]

    async def _pipelined(self, batch: list[Pending], reload: bool) -> list[Any]:
        if len(batch) == 1:  # alone: a pipeline would only add work
            name, keys, args, _ = batch[0]
            results: list[Any] = await self.call(self._alone(name, keys, args))
        else:
            pipe = self.client.pipeline(transaction=False)
            for name, keys, args, _ in batch:
                pipe.evalsha(self.shas[name], len(keys), *keys, *args)
            results = await self.call(pipe.execute(raise_on_error=False))
        if reload and any(isinstance(r, NoScriptError) for r in results):
            for text in self.scripts.values():  # a Redis that restarted has none of them
                await self.call(self.client.script_load(text))
            return await self._pipelined(batch, reload=False)
        return [
            SharedUnavailable(f"Redis refused a counter script: {r}")
            if isinstance(r, RedisError)
            else r
            for r in results
        ]
