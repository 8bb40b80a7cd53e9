"""Small network helpers for tests: a free loopback port and a TCP black hole."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before returning, so another process may grab it; prefer binding
    port 0 yourself when the server allows it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class BlackholeServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never reads or answers.

    Useful to make exporters hit their timeouts: the TCP handshake succeeds, then nothing.

        with BlackholeServer() as hole:
            exporter = OTLPSpanExporter(endpoint=hole.endpoint + "/v1/traces", timeout=0.5)
    """

    def __init__(self) -> None:
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._accepted = 0

    def start(self) -> Self:
        """Bind 127.0.0.1:0 and start accepting connections in a background thread."""
        if self._listener is not None:
            raise RuntimeError("BlackholeServer already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((LOOPBACK, 0))
            listener.listen(64)
            listener.settimeout(0.05)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._thread = threading.Thread(
            target=self._accept_loop, name="blackhole-accept", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, then close every accepted connection and the listener."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The listening port."""
        if self._listener is None:
            raise RuntimeError("BlackholeServer is not started")
        return int(self._listener.getsockname()[1])

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def accepted(self) -> int:
        """How many connections were accepted so far."""
        with self._lock:
            return self._accepted

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections.append(conn)
                self._accepted += 1
