"""``/metrics``: prometheus_client's ASGI app over the right registry.

Single process: the default registry (exemplars shown with OpenMetrics negotiation,
``Accept: application/openmetrics-text``). In prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the process started): a fresh registry with
prometheus_client's ``MultiProcessCollector``, summing the files of all workers, live and
dead (see :mod:`telemetry.multiprocess`); exemplars are not available there.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from .metrics import multiprocess_mode
from .multiprocess import ENV, directory_from_env

_logger = logging.getLogger("tasklens.telemetry")


_HEADER_BYTES = 8  # prometheus_client's file header: 4 bytes "used", 4 bytes padding


class WorkerFilesCollector(MultiProcessCollector):  # type: ignore[misc]
    """prometheus_client's ``MultiProcessCollector``, minus files too short to hold a header.

    A worker creates its file empty and sizes it a moment later; a worker killed in
    between leaves it empty for ever. prometheus_client reads such a file with
    ``struct.error`` and the whole scrape answers 500 (prometheus/client_python#1199).
    An empty file holds no sample, so skipping it loses nothing.
    """

    def collect(self) -> Iterable[Metric]:
        files = [path for path in glob.glob(os.path.join(self._path, "*.db")) if _has_header(path)]
        return self.merge(files, accumulate=True)  # type: ignore[no-any-return]


def _has_header(path: str) -> bool:
    try:
        return os.stat(path).st_size >= _HEADER_BYTES
    except FileNotFoundError:  # a dead worker's live gauge, removed since the glob
        return False


def metrics_registry() -> CollectorRegistry:
    """The registry /metrics exposes (a multiprocess collector when several workers write)."""
    if multiprocess_mode():
        directory = directory_from_env()
        registry = CollectorRegistry()
        WorkerFilesCollector(registry, path=str(directory) if directory else None)
        return registry
    if directory_from_env() is not None:
        _logger.warning(
            "tasklens: %s is set but prometheus_client was imported before it was, so it "
            "is not in multiprocess mode: /metrics shows this process only. Set the "
            "variable in the environment the server starts with.",
            ENV,
        )
    return REGISTRY


def metrics_asgi_app() -> ASGIApp:
    """An ASGI app answering GET with the exposition (content negotiation, gzip)."""
    return make_asgi_app(registry=metrics_registry())  # type: ignore[no-any-return]


class MetricsEndpointMiddleware:
    """Answers ``path`` with the exposition before anything else of the app runs (no request
    span, no task scope, no user middleware)."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path
        self.metrics_app = metrics_asgi_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            await self.metrics_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def exclude_from_fastapi_telemetry(app: Starlette, path: str) -> None:
    """Keep scrapes of ``path`` out of FastAPI's native request spans (FastAPI >= 0.164 wraps
    the whole app, outside any middleware); the user's own ``exclude`` still applies."""
    config = getattr(app, "_telemetry", None)
    if not isinstance(config, dict) or "exclude" not in config:
        return
    user_exclude = config["exclude"]

    def exclude(scope: Any) -> bool:
        return scope.get("path") == path or bool(user_exclude and user_exclude(scope))

    config["exclude"] = exclude
