"""Serve an ASGI app on a loopback port from a thread of this process.

`serve --simulate` runs the simulator this way, so its streams cross a real socket exactly as
Mavera's would; tests use it for the same reason. A thread keeps it off the main thread's
signal handlers, which belong to the gateway's own server.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from app.config_sections import ServerSettings
from app.edge import uvicorn_options


class BackgroundServer:
    """uvicorn serving `app` on `host`, an ephemeral port unless one is given.

    With `edge` (the gateway's [server] settings) its connections get the limits of app.edge,
    exactly as `serve` applies them; without, plain uvicorn (the simulator).
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        edge: ServerSettings | None = None,
        **config: Any,
    ) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        # log_config=None: leave logging to whoever owns the process (uvicorn's defaults would
        # reconfigure its loggers process-wide, under the gateway's own server too).
        options = {"log_config": None, "lifespan": "on", "timeout_graceful_shutdown": 2}
        if edge is not None:
            options.update(uvicorn_options(edge, app))
        self.server = uvicorn.Server(uvicorn.Config(app, **{**options, **config}))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:40123."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> BackgroundServer:
        """Start serving; return once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"background server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        self._thread.join(timeout=timeout_s)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
