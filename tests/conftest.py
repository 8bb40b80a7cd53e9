"""Shared fixtures: an in-memory span exporter on the global tracer provider, and fresh
Prometheus registries with the runtime's observers (unit tests only; the export paths are
proven against the real OTLP receiver in tests/e2e)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from tasklens.telemetry.logs import LogObserver
from tasklens.telemetry.metrics import MetricsObserver, TaskMetrics
from tasklens.telemetry.spans import SpanObserver

_EXPORTER = InMemorySpanExporter()


def _global_provider() -> TracerProvider:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    if not getattr(provider, "_tests_exporter_added", False):
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider._tests_exporter_added = True  # type: ignore[attr-defined]
    return provider


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans finished during the test (global SDK tracer provider, in-memory exporter)."""
    _global_provider()
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@dataclass
class Kit:
    registry: CollectorRegistry
    metrics: TaskMetrics
    observers: list

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


@pytest.fixture
def kit() -> Kit:
    """A fresh registry and the default observers recording into it."""
    registry = CollectorRegistry()
    metrics = TaskMetrics(registry)
    observers = [SpanObserver(), MetricsObserver(metrics), LogObserver()]
    return Kit(registry, metrics, observers)


def task_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("bgtask ")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
