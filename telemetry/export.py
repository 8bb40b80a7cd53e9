"""Span and metric exporters chosen from the standard ``OTEL_*`` environment variables."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import structlog
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from telemetry.metrics import TaskMetrics

PROTOCOLS = ("http/protobuf", "grpc")


def otlp_protocol(signal: str, explicit: str | None = None) -> str:
    """``explicit``, else ``OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL``, else
    ``OTEL_EXPORTER_OTLP_PROTOCOL``, else http/protobuf."""
    name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    value = explicit or os.environ.get(name) or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    value = value or "http/protobuf"
    if value not in PROTOCOLS:
        raise ValueError(
            f"OTLP protocol {value!r} (from {'otlp_protocol' if explicit else name} or "
            f"OTEL_EXPORTER_OTLP_PROTOCOL) is not supported; use one of {', '.join(PROTOCOLS)}"
        )
    return value


def otlp_configured(signal: str, explicit_endpoint: str | None = None) -> bool:
    """Whether an OTLP endpoint is set for ``signal`` (argument or environment)."""
    return bool(
        explicit_endpoint
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _endpoint(signal: str, endpoint: str | None, protocol: str) -> dict[str, Any]:
    if endpoint is None:
        return {}  # the exporter reads OTEL_EXPORTER_OTLP_* itself
    if protocol == "grpc":
        return {"endpoint": endpoint, "insecure": endpoint.startswith("http://")}
    return {"endpoint": endpoint.rstrip("/") + f"/v1/{signal}"}


def span_exporter(endpoint: str | None = None, protocol: str | None = None) -> SpanExporter:
    """The OTLP span exporter (HTTP/protobuf or gRPC)."""
    proto = otlp_protocol("traces", protocol)
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(**_endpoint("traces", endpoint, proto))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http(**_endpoint("traces", endpoint, proto))


def metric_exporter(endpoint: str | None = None, protocol: str | None = None) -> MetricExporter:
    """The OTLP metric exporter (HTTP/protobuf or gRPC)."""
    proto = otlp_protocol("metrics", protocol)
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as Grpc,
        )

        return Grpc(**_endpoint("metrics", endpoint, proto))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    return Http(**_endpoint("metrics", endpoint, proto))


class CountingSpanExporter(SpanExporter):
    """Wraps an exporter; spans of a failed export are counted in ``bgtask_spans_dropped``."""

    def __init__(self, inner: SpanExporter, metrics: TaskMetrics) -> None:
        self.inner = inner
        self._dropped = metrics.spans_dropped

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            self._dropped.inc(len(spans))
            raise
        if result is not SpanExportResult.SUCCESS:
            self._dropped.inc(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """A BatchSpanProcessor that counts the spans its full queue drops."""

    def __init__(self, exporter: SpanExporter, metrics: TaskMetrics, **kwargs: Any) -> None:
        super().__init__(CountingSpanExporter(exporter, metrics), **kwargs)
        self._dropped = metrics.spans_dropped

    def on_end(self, span: ReadableSpan) -> None:
        batch = self._batch_processor
        queue = getattr(batch, "_queue", None)
        full = queue is not None and len(queue) >= getattr(batch, "_max_queue_size", 1 << 62)
        if full and span.context is not None and span.context.trace_flags.sampled:
            self._dropped.inc()
        super().on_end(span)


class LogSpanExporter(SpanExporter):
    """Writes each span as one structured log line (the default with no OTLP endpoint)."""

    def __init__(self) -> None:
        self._log = structlog.get_logger("tasklens.spans")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            ctx = span.context
            parent = span.parent
            start, end = span.start_time or 0, span.end_time or 0
            self._log.info(
                "span",
                span_name=span.name,
                trace_id=format(ctx.trace_id, "032x") if ctx else "",
                span_id=format(ctx.span_id, "016x") if ctx else "",
                parent_span_id=format(parent.span_id, "016x") if parent else "",
                kind=span.kind.name,
                status=span.status.status_code.name,
                duration_ms=round((end - start) / 1e6, 3),
                attributes=json.loads(json.dumps(dict(span.attributes or {}), default=str)),
            )
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None
