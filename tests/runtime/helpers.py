"""Real servers and isolated telemetry for the runtime tests.

``serve(app)`` runs a real uvicorn server in a thread, on a socket bound to 127.0.0.1:0 (no
port race), lifespan on; it stops the server on exit, even when the test failed. ``Probe``
bundles a fresh Prometheus registry and an in-memory span exporter with the three observers,
so a test sees only its own tasks.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tasklens.runtime.observer import TaskObserver
from tasklens.telemetry.logs import LogObserver
from tasklens.telemetry.metrics import MetricsObserver, TaskMetrics
from tasklens.telemetry.spans import SpanObserver
from tests.support.metrics import Samples, scrape
from tests.support.net import LOOPBACK
from tests.support.polling import wait_for

T = TypeVar("T")
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0


@dataclass
class Server:
    """A running uvicorn server: its base URL and the uvicorn object (to watch or stop it)."""

    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Graceful stop (lifespan shutdown runs); waits for the thread to end."""
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT)
        if self.thread.is_alive():  # a hung shutdown must not hang the test session
            self.server.force_exit = True
            self.thread.join(5)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@contextmanager
def serve(app: Any, **config: Any) -> Iterator[Server]:
    """Run ``app`` on a real uvicorn server (in a thread) for the duration of the block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted connections: without it, a keep-alive connection's responses wait
    # ~40 ms for delayed ACKs (Nagle), which would swamp the latencies the tests measure.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 20,
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    running = Server(f"http://{LOOPBACK}:{port}", server, thread)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), STARTUP_TIMEOUT, "startup")
        assert server.started, "uvicorn failed to start"
        yield running
    finally:
        try:
            running.stop()
        finally:
            sock.close()


@dataclass
class Probe:
    """A fresh registry, tracer provider and span exporter, and observers writing to them."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)

    def __post_init__(self) -> None:
        self.metrics = TaskMetrics(self.registry)
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def observers(self, *, record_args: bool = False) -> list[TaskObserver]:
        """Spans, metrics, logs: the order of ``tasklens.telemetry.default_observers``."""
        return [
            SpanObserver(self.tracer_provider, record_args),
            MetricsObserver(self.metrics),
            LogObserver(record_args),
        ]

    def mount_metrics(self, app: FastAPI, path: str = "/metrics") -> None:
        """Serve this probe's registry at ``path`` (an async route: never on a thread)."""

        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        app.add_api_route(path, metrics, methods=["GET"], include_in_schema=False)

    def samples(self) -> Samples:
        """The registry's exposition, parsed (as a scrape of /metrics would be)."""
        return Samples.parse(generate_latest(self.registry).decode())

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def task_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith("bgtask ")]

    def close(self) -> None:
        self.tracer_provider.shutdown()


def scrape_until(
    client: httpx.Client, predicate: Callable[[Samples], bool], timeout: float, what: str
) -> Samples:
    """Scrape until ``predicate`` holds for the samples; return those samples."""
    return wait_for(lambda: s if predicate(s := scrape(client)) else None, timeout, what)


class ListHandler(logging.Handler):
    """Collects the stdlib records of one logger (across threads)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._records_lock:
            self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        with self._records_lock:
            return [r.getMessage() for r in self.records if r.levelno >= level]


@contextmanager
def captured(logger_name: str) -> Iterator[ListHandler]:
    """Capture a stdlib logger's records (level DEBUG) for the block."""
    logger = logging.getLogger(logger_name)
    handler = ListHandler()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
