"""A TCP relay from a loopback port to a real service, that can cut every connection (as a
network partition or a restart would) and come back on the same port."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpRelay:
    """Relays 127.0.0.1:`port` to 127.0.0.1:`target`; `cut` drops it all, `start` resumes."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        """Listen (again) and relay every connection."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            server = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Stop listening and break every relayed connection."""
        assert self.listener is not None
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone would not)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.sockets.clear()
