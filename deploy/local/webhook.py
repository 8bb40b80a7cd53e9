"""A tiny Alertmanager webhook receiver that records (and optionally prints) notifications."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Notification = dict[str, Any]


class WebhookReceiver:
    """Listens on ``127.0.0.1:<port>`` (0 picks a free port); use as a context manager."""

    def __init__(self, port: int = 0, *, echo: bool = False) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        self._echo = echo
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._record(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: notifications are printed by the receiver when ``echo`` is on."""

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The URL to put in Alertmanager's ``webhook_configs``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def _record(self, payload: Notification) -> None:
        with self._lock:
            self.notifications.append(payload)
        if self._echo:
            for alert in payload.get("alerts", []):
                labels = alert.get("labels", {})
                print(
                    f"[alertmanager] {alert.get('status')}: {labels.get('alertname')} {labels}",
                    flush=True,
                )

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification received so far."""
        with self._lock:
            return [alert for payload in self.notifications for alert in payload.get("alerts", [])]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The first alert received that matches ``predicate``; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for alert in self.alerts():
                if predicate(alert):
                    return alert
            time.sleep(0.2)
        raise TimeoutError(f"no matching alert within {timeout:.0f}s; received: {self.alerts()}")

    def start(self) -> WebhookReceiver:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
