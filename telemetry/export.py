"""Span and metric exporters chosen from the standard ``OTEL_*`` environment variables
(``OTEL_<SIGNAL>_EXPORTER``, ``OTEL_EXPORTER_OTLP_*``)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import structlog
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from .metrics import TaskMetrics

PROTOCOLS = ("http/protobuf", "grpc")
Signal = Literal["traces", "metrics", "logs"]
#: What ``OTEL_<SIGNAL>_EXPORTER`` may name (``prometheus``: the ``/metrics`` endpoint, which
#: ``instrument`` serves anyway, so it selects no exporter here).
EXPORTERS: dict[str, frozenset[str]] = {
    "traces": frozenset({"otlp", "console", "none"}),
    "metrics": frozenset({"otlp", "console", "none", "prometheus"}),
    "logs": frozenset({"otlp", "console", "none"}),
}
_logger = logging.getLogger("tasklens.telemetry")


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


def exporter_names(signal: Signal, otlp_by_default: bool) -> tuple[str, ...]:
    """The exporters ``OTEL_<SIGNAL>_EXPORTER`` names (a comma list, as in the spec;
    ``none``: no exporter). Unset: ``("otlp",)`` when ``otlp_by_default`` (an endpoint is
    configured), else none. An unknown name is a ValueError naming the variable."""
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    raw = os.environ.get(variable, "")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if not names:
        return ("otlp",) if otlp_by_default else ()
    unknown = [n for n in names if n not in EXPORTERS[signal]]
    if unknown:
        raise ValueError(
            f"{variable}={raw!r}: unknown exporter {unknown[0]!r}; tasklens supports "
            f"{', '.join(sorted(EXPORTERS[signal]))}"
        )
    chosen = [n for n in names if n not in ("none", "prometheus")]
    return tuple(dict.fromkeys(chosen))


def describe(name: str, signal: Signal, protocol: str | None = None) -> str:
    """How an exporter shows in ``Telemetry.exporting``: ``OTLP grpc``, ``console``."""
    return f"OTLP {otlp_protocol(signal, protocol)}" if name == "otlp" else name


def _endpoint(signal: str, endpoint: str | None, protocol: str) -> dict[str, Any]:
    if endpoint is None:
        return {}  # the exporter reads OTEL_EXPORTER_OTLP_* itself
    if protocol == "grpc":
        return {"endpoint": endpoint, "insecure": endpoint.startswith("http://")}
    return {"endpoint": endpoint.rstrip("/") + f"/v1/{signal}"}


def span_exporter(
    endpoint: str | None = None, protocol: str | None = None, name: str = "otlp"
) -> SpanExporter:
    """The span exporter ``name`` stands for: OTLP (HTTP/protobuf or gRPC) or console."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    proto = otlp_protocol("traces", protocol)
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(**_endpoint("traces", endpoint, proto))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http(**_endpoint("traces", endpoint, proto))


def metric_exporter(
    endpoint: str | None = None, protocol: str | None = None, name: str = "otlp"
) -> MetricExporter:
    """The metric exporter ``name`` stands for: OTLP (HTTP/protobuf or gRPC) or console."""
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    proto = otlp_protocol("metrics", protocol)
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as Grpc,
        )

        return Grpc(**_endpoint("metrics", endpoint, proto))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    return Http(**_endpoint("metrics", endpoint, proto))


def log_exporter(
    endpoint: str | None = None, protocol: str | None = None, name: str = "otlp"
) -> Any:
    """The log record exporter ``name`` stands for: OTLP (HTTP/protobuf or gRPC) or console."""
    if name == "console":
        from opentelemetry.sdk._logs.export import ConsoleLogExporter

        return ConsoleLogExporter()
    proto = otlp_protocol("logs", protocol)
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as Grpc

        return Grpc(**_endpoint("logs", endpoint, proto))
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as Http

    return Http(**_endpoint("logs", endpoint, proto))


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
    """A BatchSpanProcessor that counts every span it drops in ``bgtask_spans_dropped``.

    - Queue full (``OTEL_BSP_MAX_QUEUE_SIZE``; the collector is down or too slow): the span
      that ends is dropped and counted. Spans are queued one at a time under a lock, so
      the count is exact: the SDK alone checks "full" and appends without a lock, so two
      threads ending spans at once could lose one uncounted, and its export thread taking
      a batch between the two steps made it count a drop that did not happen. (The SDK
      drops the oldest queued span instead; either way the queue stays bounded.)
    - Export failed (collector answered with an error, or timed out): the batch's spans,
      see :class:`CountingSpanExporter`.
    - Ended after shutdown: as the SDK reports them.

    ``status_limit``: longest status description queued (see :func:`bound_status`).

    Queue-full drops are logged once per :data:`DROP_LOG_INTERVAL` seconds with their
    count (the SDK's own warning would be one per dropped span, deduplicated by the SDK).
    Should a future SDK lay its batch processor out differently, its own drop reports are
    counted instead.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        metrics: TaskMetrics,
        status_limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(CountingSpanExporter(exporter, metrics), **kwargs)
        self._status_limit = status_limit
        self._dropped = metrics.spans_dropped
        self._lock = threading.Lock()
        self._drop_log = DropLog()
        batch = self._batch_processor
        self._queue = getattr(batch, "_queue", None)
        self._limit = getattr(batch, "_max_queue_size", None)
        self._sdk_metrics = getattr(batch, "_metrics", None)
        if callable(getattr(self._sdk_metrics, "drop_items", None)):
            batch._metrics = _DropCountingMetrics(self._sdk_metrics, self._dropped)
        else:
            self._sdk_metrics = None
        self._guarded = isinstance(self._queue, deque) and isinstance(self._limit, int)
        if hasattr(os, "register_at_fork"):
            reinit = weakref.WeakMethod(self._reinit_lock)

            def after_in_child() -> None:
                method = reinit()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=after_in_child)

    def _reinit_lock(self) -> None:
        self._lock = threading.Lock()  # a fork may copy it held by another thread

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        if self._status_limit is not None:
            bound_status(span, self._status_limit)
        if not self._guarded:
            super().on_end(span)
            return
        with self._lock:
            # Only this lock's holder appends and the export thread only takes away, so a
            # queue with room now still has room when the SDK appends.
            full = len(self._queue) >= self._limit  # type: ignore[arg-type, operator]
            if not full or getattr(self._batch_processor, "_shutdown", False):
                super().on_end(span)
                return
        self._dropped.inc()
        if self._sdk_metrics is not None:
            self._sdk_metrics.drop_items(1)  # the SDK's own processor metrics, if enabled
        self._drop_log.dropped(self._limit)  # type: ignore[arg-type]


def bound_status(span: ReadableSpan, limit: int) -> None:
    """Truncate the span's status description to ``limit`` characters. The SDK's span
    limits bound attribute values but not the description, which carries the exception's
    message: a 50 KB message would keep every queued span 50 KB larger. The SDK keeps the
    status in ``_status`` (1.40 to today); a span laid out otherwise is left as it is."""
    description = span.status.description
    if description and len(description) > limit and hasattr(span, "_status"):
        span._status = Status(span.status.status_code, description[:limit])


#: Seconds between two "span export queue full" warnings.
DROP_LOG_INTERVAL = 10.0


class DropLog:
    """Logs dropped spans at most once per ``interval`` seconds, with their count."""

    def __init__(
        self, interval: float = DROP_LOG_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = 0
        self._last: float | None = None

    def dropped(self, queue_size: int, count: int = 1) -> None:
        now = self._clock()
        with self._lock:
            self._pending += count
            if self._last is not None and now - self._last < self.interval:
                return
            count, self._pending, self._last = self._pending, 0, now
        _logger.warning(
            "tasklens: span export queue full (OTEL_BSP_MAX_QUEUE_SIZE=%d), dropped %d "
            "span(s) since the last warning: is the collector down or too slow? "
            "(all drops are counted in bgtask_spans_dropped_total; next warning in %gs at "
            "the earliest)",
            queue_size,
            count,
            self.interval,
        )


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
