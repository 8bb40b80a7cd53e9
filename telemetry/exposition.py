"""``/metrics``: prometheus_client's ASGI app over the right registry.

Single process: the default registry (exemplars shown with OpenMetrics negotiation,
``Accept: application/openmetrics-text``). In prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the process started): a fresh registry with
prometheus_client's ``MultiProcessCollector``, summing the files of all workers, live and
dead (see :mod:`telemetry.multiprocess`); exemplars are not available there.
"""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp

from telemetry.metrics import multiprocess_mode
from telemetry.multiprocess import ENV, directory_from_env

_logger = logging.getLogger("tasklens.telemetry")


def metrics_registry() -> CollectorRegistry:
    """The registry /metrics exposes (a multiprocess collector when several workers write)."""
    if multiprocess_mode():
        directory = directory_from_env()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory) if directory else None)
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
