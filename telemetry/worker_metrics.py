"""``/metrics`` of a process that serves no HTTP of its own (a Celery worker): a small
threaded WSGI server on a port of its own, exposing prometheus_client's WSGI app over the
worker's registry (all pool processes summed in multiprocess mode)."""

from __future__ import annotations

import os
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from .exposition import metrics_registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log line per scrape."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServerV6(_ThreadingServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """A running ``/metrics`` server; :meth:`close` stops it and frees the port."""

    def __init__(self, host: str, port: int) -> None:
        app = make_wsgi_app(metrics_registry(drop_dead_processes=True))
        server_class = _ThreadingServerV6 if ":" in host else _ThreadingServer
        self._server = make_server(host, port, app, server_class, _QuietHandler)
        self.host = host
        self.port = int(self._server.server_port)
        #: The process serving: a forked child holds a copy of the socket, not the server.
        self.pid = os.getpid()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="tasklens-metrics", daemon=True
        )
        self._thread.start()

    def close_inherited(self) -> None:
        """In a forked child: close the copy of the listening socket (the serving thread
        does not exist there), so only the parent holds the port; nothing in the process
        that serves (the solo pool announces its process init in the main process too)."""
        if os.getpid() != self.pid:
            self._server.server_close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
