"""``/metrics``: prometheus_client's ASGI app over the right registry.

Single process: the default registry (exemplars shown with OpenMetrics negotiation,
``Accept: application/openmetrics-text``). With ``PROMETHEUS_MULTIPROC_DIR`` set: a fresh
registry with prometheus_client's ``MultiProcessCollector``, summing all workers.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp

from telemetry.metrics import multiprocess_mode


def metrics_registry() -> CollectorRegistry:
    """The registry /metrics exposes (a multiprocess collector when several workers write)."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def metrics_asgi_app() -> ASGIApp:
    """An ASGI app answering GET with the exposition (content negotiation, gzip)."""
    return make_asgi_app(registry=metrics_registry())  # type: ignore[no-any-return]
