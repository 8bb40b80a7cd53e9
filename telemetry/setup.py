"""``telemetry.setup()``: tracer and meter providers, OTLP exporters, structured logs."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, field

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from .export import (
    CountingBatchSpanProcessor,
    LogSpanExporter,
    metric_exporter,
    otlp_configured,
    otlp_protocol,
    span_exporter,
)
from .logs import configure_logging
from .metrics import TaskMetrics
from .otlp_metrics import PrometheusOTLPBridge

_logger = logging.getLogger("tasklens.telemetry")
_lock = threading.Lock()
_handle: Telemetry | None = None


@dataclass
class Telemetry:
    """What ``setup`` built; ``shutdown()`` flushes and stops every exporter."""

    service_name: str
    tracer_provider: trace.TracerProvider
    meter_provider: MeterProvider | None = None
    metrics_bridge: PrometheusOTLPBridge | None = None
    owns_tracer_provider: bool = True
    exporting: list[str] = field(default_factory=list)

    def force_flush(self) -> None:
        if isinstance(self.tracer_provider, TracerProvider):
            self.tracer_provider.force_flush()
        if self.metrics_bridge is not None:
            self.metrics_bridge.export()
        if self.meter_provider is not None:
            self.meter_provider.force_flush()

    def shutdown(self) -> None:
        global _handle
        if self.metrics_bridge is not None:
            self.metrics_bridge.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        if self.owns_tracer_provider and isinstance(self.tracer_provider, TracerProvider):
            self.tracer_provider.shutdown()
        with _lock:
            if _handle is self:
                _handle = None


#: Seconds :func:`flush` waits at shutdown (``TASKLENS_SHUTDOWN_FLUSH_TIMEOUT``).
DEFAULT_FLUSH_TIMEOUT = 5.0


def flush(timeout: float | None = None) -> bool:
    """Export the spans and metrics buffered by what :func:`setup` built, waiting at most
    ``timeout`` seconds (default ``TASKLENS_SHUTDOWN_FLUSH_TIMEOUT``, else 5).

    Called when the instrumented app's lifespan ends: servers that stop on SIGTERM by
    re-raising it (uvicorn) never run the SDK's atexit flush, which would lose up to
    ``OTEL_BSP_SCHEDULE_DELAY`` of spans and the last metric values. The SDK's flush does
    not honour a timeout, so it runs in a daemon thread and a collector that does not
    answer delays the shutdown by ``timeout`` at most. True when everything was exported
    (or nothing was set up), False on timeout.
    """
    handle = _handle
    if handle is None:
        return True
    if timeout is None:
        raw = os.environ.get("TASKLENS_SHUTDOWN_FLUSH_TIMEOUT", "")
        try:
            timeout = float(raw) if raw else DEFAULT_FLUSH_TIMEOUT
        except ValueError:
            _logger.warning("tasklens: TASKLENS_SHUTDOWN_FLUSH_TIMEOUT=%r is not seconds", raw)
            timeout = DEFAULT_FLUSH_TIMEOUT
    done = threading.Event()

    def run() -> None:
        try:
            handle.force_flush()
        except Exception:
            _logger.warning("tasklens: telemetry flush failed", exc_info=True)
        finally:
            done.set()

    threading.Thread(target=run, name="tasklens-flush", daemon=True).start()
    if done.wait(timeout):
        return True
    _logger.warning(
        "tasklens: telemetry flush not finished after %.1fs (collector unreachable?); "
        "buffered spans and metrics may be lost",
        timeout,
    )
    return False


def _resource(service_name: str) -> Resource:
    """The service's resource, with a ``service.instance.id`` per process (what recent SDKs
    adds by itself; older ones don't), so that several workers exporting over OTLP stay
    apart. One set in ``OTEL_RESOURCE_ATTRIBUTES`` is kept."""
    resource = Resource.create({SERVICE_NAME: service_name})
    if SERVICE_INSTANCE_ID not in resource.attributes:
        resource = resource.merge(Resource({SERVICE_INSTANCE_ID: str(uuid.uuid4())}))
    return resource


def _metric_interval() -> float:
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    try:
        value = float(raw) / 1000
    except ValueError:
        raise ValueError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r} is not a number of ms") from None
    if value <= 0:
        raise ValueError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r} must be > 0")
    return value


def setup(
    service_name: str = "tasklens-app",
    *,
    otlp_endpoint: str | None = None,
    otlp_protocol_name: str | None = None,
    span_logs: bool | None = None,
    configure_logs: bool = True,
) -> Telemetry:
    """Set up tracing, OTLP export and structured logs. Idempotent: a second call returns
    the first handle.

    - OTLP endpoint and protocol come from the arguments or the standard ``OTEL_*``
      variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL`` =
      ``http/protobuf`` (default) or ``grpc``, the per-signal variants, sampler variables).
    - ``span_logs``: print spans as log lines; default on when no OTLP endpoint is set.
    - A tracer provider set earlier by the user is kept as it is.
    """
    global _handle
    if not isinstance(service_name, str) or not service_name:
        raise ValueError(f"setup(): service_name must be a non-empty string, got {service_name!r}")
    with _lock:
        if _handle is not None:
            return _handle
        if configure_logs:
            configure_logging()
        resource = _resource(service_name)
        task_metrics = TaskMetrics.for_registry()
        traces_on = otlp_configured("traces", otlp_endpoint)
        metrics_on = otlp_configured("metrics", otlp_endpoint)
        handle = Telemetry(service_name, trace.get_tracer_provider())
        if isinstance(handle.tracer_provider, TracerProvider):
            handle.owns_tracer_provider = False
            _logger.info("tasklens: keeping the tracer provider configured by the application")
        else:
            provider = TracerProvider(resource=resource)
            if traces_on:
                exporter = span_exporter(otlp_endpoint, otlp_protocol_name)
                provider.add_span_processor(CountingBatchSpanProcessor(exporter, task_metrics))
                handle.exporting.append(
                    f"traces: OTLP {otlp_protocol('traces', otlp_protocol_name)}"
                )
            if span_logs or (span_logs is None and not traces_on):
                provider.add_span_processor(
                    CountingBatchSpanProcessor(LogSpanExporter(), task_metrics)
                )
                handle.exporting.append("traces: log lines")
            trace.set_tracer_provider(provider)
            handle.tracer_provider = provider
        if metrics_on:
            interval = _metric_interval()
            # This process's values, also with several workers (multiprocess mode): each
            # worker exports its own series under its own service.instance.id, and the
            # backend sums them. Exporting the all-worker sum from every worker (what
            # /metrics shows) would count everything once per worker.
            handle.metrics_bridge = PrometheusOTLPBridge(
                REGISTRY,
                metric_exporter(otlp_endpoint, otlp_protocol_name),
                resource,
                interval,
            )
            reader = PeriodicExportingMetricReader(
                metric_exporter(otlp_endpoint, otlp_protocol_name),
                export_interval_millis=interval * 1000,
            )
            handle.meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
            otel_metrics.set_meter_provider(handle.meter_provider)
            handle.exporting.append(f"metrics: OTLP {otlp_protocol('metrics', otlp_protocol_name)}")
        _handle = handle
        return handle
