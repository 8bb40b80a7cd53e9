"""OTLP export of the Prometheus metrics: one recording path, two exports.

Tasks are recorded once, in prometheus_client. This exporter periodically reads that
registry, converts each family to OpenTelemetry's metric data model (cumulative sums,
gauges, explicit-bucket histograms with their trace exemplars) and hands it to the
maintained OTLP exporter. No Python library bridges Prometheus to OTLP, hence this file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry.sdk.metrics._internal.exemplar import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample

_logger = logging.getLogger("tasklens.telemetry")
_SCOPE = InstrumentationScope("tasklens")
_CUMULATIVE = AggregationTemporality.CUMULATIVE


def _exemplars(sample: Sample) -> list[Exemplar]:
    ex = sample.exemplar
    if ex is None or "trace_id" not in ex.labels:
        return []
    return [
        Exemplar(
            filtered_attributes={},
            value=ex.value,
            time_unix_nano=int(float(ex.timestamp or time.time()) * 1e9),
            span_id=int(ex.labels.get("span_id", "0"), 16),
            trace_id=int(ex.labels["trace_id"], 16),
        )
    ]


def _histogram_points(
    samples: Iterable[Sample], base: str, start: int, now: int
) -> list[HistogramDataPoint]:
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        labels = {k: v for k, v in s.labels.items() if k != "le"}
        entry = series.setdefault(tuple(sorted(labels.items())), {"buckets": [], "exemplars": []})
        if s.name == base + "_bucket":
            entry["buckets"].append((float(s.labels["le"]), s.value))
            entry["exemplars"].extend(_exemplars(s))
        elif s.name == base + "_count":
            entry["count"] = int(s.value)
        elif s.name == base + "_sum":
            entry["sum"] = s.value
    points = []
    for key, entry in series.items():
        cumulative = sorted(entry["buckets"])
        bounds = [le for le, _ in cumulative if le != float("inf")]
        counts, previous = [], 0.0
        for _, value in cumulative:
            counts.append(int(value - previous))
            previous = value
        points.append(
            HistogramDataPoint(
                attributes=dict(key),
                start_time_unix_nano=start,
                time_unix_nano=now,
                count=entry.get("count", int(previous)),
                sum=entry.get("sum", 0.0),
                bucket_counts=counts,
                explicit_bounds=bounds,
                min=None,  # type: ignore[arg-type]  # unknown to Prometheus histograms
                max=None,  # type: ignore[arg-type]
                exemplars=entry["exemplars"],
            )
        )
    return points


def registry_to_metrics(registry: CollectorRegistry, start_unix_nano: int) -> list[Metric]:
    """Convert every family of ``registry`` to OpenTelemetry ``Metric`` objects."""
    now = time.time_ns()
    metrics: list[Metric] = []
    for family in registry.collect():
        data: Sum | Gauge | Histogram
        if family.type == "counter":
            points = [
                NumberDataPoint(dict(s.labels), start_unix_nano, now, s.value, _exemplars(s))
                for s in family.samples
                if s.name.endswith("_total")
            ]
            data = Sum(points, _CUMULATIVE, is_monotonic=True)
            name = family.name + "_total"
        elif family.type == "gauge":
            data = Gauge(
                [
                    NumberDataPoint(dict(s.labels), start_unix_nano, now, s.value)
                    for s in family.samples
                ]
            )
            name = family.name
        elif family.type == "histogram":
            data = Histogram(
                _histogram_points(family.samples, family.name, start_unix_nano, now), _CUMULATIVE
            )
            name = family.name
        else:
            continue
        if data.data_points:
            metrics.append(
                # Not "1": the collector's Prometheus translation turns unit "1" on a gauge
                # into a "_ratio" suffix (bgtask_pending_ratio); counts carry no unit.
                Metric(name, family.documentation, "s" if name.endswith("_seconds") else "", data)
            )
    return metrics


class PrometheusOTLPBridge:
    """Exports a Prometheus registry through an OTLP ``MetricExporter`` every ``interval`` s."""

    def __init__(
        self,
        registry: CollectorRegistry,
        exporter: MetricExporter,
        resource: Resource,
        interval: float = 10.0,
    ) -> None:
        self.registry = registry
        self.exporter = exporter
        self.resource = resource
        self.interval = interval
        self._start = time.time_ns()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop, name="tasklens-otlp-metrics", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.export()

    def export(self) -> bool:
        """Collect and export once; False (logged) when the export failed."""
        with self._lock:
            try:
                metrics = registry_to_metrics(self.registry, self._start)
                data = MetricsData(
                    [ResourceMetrics(self.resource, [ScopeMetrics(_SCOPE, metrics, "")], "")]
                )
                result = self.exporter.export(data, timeout_millis=10_000)
                return bool(result.value == 0)
            except Exception:
                _logger.warning("tasklens: OTLP metrics export failed", exc_info=True)
                return False

    def shutdown(self) -> None:
        """Export a last time and stop."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)
        self.export()
        self.exporter.shutdown()
