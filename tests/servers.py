"""Run ASGI apps under real uvicorn on loopback ports, for tests where sockets matter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from app.background import BackgroundServer


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", **config: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yield its base URL, stop on exit."""
    with BackgroundServer(app, host=host, **config) as server:
        yield server.url
