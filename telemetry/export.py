"""Span and metric exporters chosen from the standard ``OTEL_*`` environment variables."""

from __future__ import annotations

import json
import os
import threading
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
    """A BatchSpanProcessor that counts the spans its full queue drops.

    The SDK's batch processor reports each drop (queue full, or already shut down) to its
    processor metrics; those are wrapped so every reported drop also increments
    ``bgtask_spans_dropped``. Should a future SDK lay its internals out differently, the
    queue length is checked before each span is queued instead (a close estimate).
    """

    def __init__(self, exporter: SpanExporter, metrics: TaskMetrics, **kwargs: Any) -> None:
        super().__init__(CountingSpanExporter(exporter, metrics), **kwargs)
        self._dropped = metrics.spans_dropped
        self._enqueue_lock = threading.Lock()
        batch = getattr(self, "_batch_processor", None)
        reported = getattr(batch, "_metrics", None)
        self._drops_reported = callable(getattr(reported, "drop_items", None))
        if self._drops_reported:
            batch._metrics = _DropCountingMetrics(reported, self._dropped)  # type: ignore[union-attr]

    def on_end(self, span: ReadableSpan) -> None:
        # One span at a time: the SDK checks "queue full" and then appends without a lock,
        # so two threads ending spans at once (event loop and thread pool) could both see
        # room, and the deque would drop a span silently.
        with self._enqueue_lock:
            if not self._drops_reported:
                batch = self._batch_processor
                queue = getattr(batch, "_queue", None)
                limit = getattr(batch, "_max_queue_size", 1 << 62)
                full = queue is not None and len(queue) >= limit
                if full and span.context is not None and span.context.trace_flags.sampled:
                    self._dropped.inc()
            super().on_end(span)


class _DropCountingMetrics:
    """Forwards the SDK processor's metrics calls; counts the drops it reports."""

    def __init__(self, inner: Any, dropped: Any) -> None:
        self._inner = inner
        self._dropped = dropped

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        self._dropped.inc(count)
        self._inner.drop_items(count, error_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


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
