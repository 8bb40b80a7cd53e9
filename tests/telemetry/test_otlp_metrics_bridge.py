"""The Prometheus → OTLP conversion, against the real OTLP receiver."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from tasklens.telemetry.metrics import TaskMetrics
from tasklens.telemetry.otlp_metrics import PrometheusOTLPBridge
from tests.support.otlp_receiver import OTLPReceiver


def test_registry_is_exported_with_exact_values_and_exemplars() -> None:
    registry = CollectorRegistry()
    metrics = TaskMetrics(registry)
    finished = metrics.finished.labels("shop.send", "event_loop", "success")
    finished.inc(3)
    metrics.pending.set(2)
    duration = metrics.duration_seconds.labels("shop.send", "event_loop", "success")
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    duration.observe(0.0003, {"trace_id": trace_id, "span_id": "b7ad6b7169203331"})
    duration.observe(2.0)
    with OTLPReceiver() as rx:
        exporter = OTLPMetricExporter(endpoint=rx.http_endpoint + "/v1/metrics")
        bridge = PrometheusOTLPBridge(
            registry, exporter, Resource.create({"service.name": "t"}), interval=3600
        )
        try:
            assert bridge.export() is True
        finally:
            bridge.shutdown()
        points = {(p.name, p.kind): p for p in rx.metrics()}
    counter = points[("bgtask_finished_total", "sum")]
    assert counter.value == 3.0 and counter.is_monotonic is True
    assert counter.attributes == {
        "task": "shop.send",
        "executor": "event_loop",
        "outcome": "success",
    }
    assert points[("bgtask_pending", "gauge")].value == 2.0
    hist = points[("bgtask_duration_seconds", "histogram")]
    assert hist.count == 2 and hist.sum == 2.0003
    assert hist.explicit_bounds[:3] == [0.0001, 0.00025, 0.0005]
    assert len(hist.bucket_counts) == len(hist.explicit_bounds) + 1
    assert sum(hist.bucket_counts) == 2
    assert hist.bucket_counts[2] == 1  # 0.0003 falls in (0.00025, 0.0005]
    assert hist.bucket_counts[hist.explicit_bounds.index(2.5)] == 1  # 2.0 in (1, 2.5]
    assert [e["trace_id"] for e in hist.exemplars] == [trace_id]


def test_units_keep_prometheus_names_after_a_collector() -> None:
    """Seconds carry "s"; counts carry no unit (a collector adds "_ratio" to gauges of
    unit "1", which would rename bgtask_pending on its way to Prometheus)."""
    from tasklens.telemetry.otlp_metrics import registry_to_metrics

    registry = CollectorRegistry()
    metrics = TaskMetrics(registry)
    metrics.pending.inc()
    metrics.duration_seconds.labels("t", "event_loop", "success").observe(0.1)
    units = {m.name: m.unit for m in registry_to_metrics(registry, 0)}
    assert units["bgtask_pending"] == ""
    assert units["bgtask_duration_seconds"] == "s"
