"""A webhook receiver on a real loopback socket: records every POST, answers as scripted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from app.background import BackgroundServer


@dataclass
class Post:
    """One POST as received, and the status it was answered with."""

    path: str
    query: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclass
class Receiver:
    """An ASGI app: answers each POST with the next status of `script`, then 200."""

    script: list[int] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)  # cleared: hold answers
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.release.set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        while not self.release.is_set():  # an unresponsive receiver, until released
            await asyncio.sleep(0.01)
        with self.lock:
            status = self.script.pop(0) if self.script else 200
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            query = scope["query_string"].decode()
            self.posts.append(Post(scope["path"], query, headers, json.loads(raw), status))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies of the POSTs answered 2xx, in order."""
        with self.lock:
            return [p.body for p in self.posts if 200 <= p.status < 300]

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The delivered bodies, once there are at least `count` (fails after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while len(self.delivered()) < count:
            assert time.monotonic() < deadline, f"only {len(self.delivered())} of {count} arrived"
            time.sleep(0.01)
        return self.delivered()


@contextlib.contextmanager
def receiver(*script: int) -> Iterator[tuple[Receiver, str]]:
    """A receiver on a free loopback port; yields it and its base URL."""
    app = Receiver(list(script))
    with BackgroundServer(app, access_log=False) as server:  # its log would show the secret
        yield app, server.url
