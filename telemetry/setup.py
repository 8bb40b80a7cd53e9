"""``telemetry.setup()``: tracer and meter providers, exporters chosen from the standard
``OTEL_*`` variables, structured logs."""

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
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from prometheus_client import REGISTRY

from .export import (
    CountingBatchSpanProcessor,
    LogSpanExporter,
    Signal,
    describe,
    exporter_names,
    metric_exporter,
    otlp_configured,
    span_exporter,
)
from .log_export import LogExport
from .log_export import start as start_log_export
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
    metrics_bridges: list[PrometheusOTLPBridge] = field(default_factory=list)
    log_export: LogExport | None = None
    owns_tracer_provider: bool = True
    exporting: list[str] = field(default_factory=list)

    def force_flush(self) -> None:
        if isinstance(self.tracer_provider, TracerProvider):
            self.tracer_provider.force_flush()
        for bridge in self.metrics_bridges:
            bridge.export()
        if self.meter_provider is not None:
            self.meter_provider.force_flush()
        if self.log_export is not None:
            self.log_export.force_flush()

    def shutdown(self) -> None:
        global _handle
        for bridge in self.metrics_bridges:
            bridge.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        if self.log_export is not None:
            self.log_export.shutdown()
        if self.owns_tracer_provider and isinstance(self.tracer_provider, TracerProvider):
            self.tracer_provider.shutdown()
        with _lock:
            if _handle is self:
                _handle = None


def installed() -> Telemetry | None:
    """What :func:`setup` built in this process, or None before it ran."""
    return _handle


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


#: ``service.name`` when neither ``setup(service_name=...)`` nor the environment names one.
DEFAULT_SERVICE_NAME = "tasklens-app"
#: Default bound of a span or event attribute value, in characters (strings are truncated),
#: when neither ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` nor ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``
#: is set: a 50 KB exception message or stack trace must not make every span 100 KB.
DEFAULT_ATTRIBUTE_LENGTH_LIMIT = 4096
_ATTR_LIMIT = "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"
_SPAN_ATTR_LIMIT = "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"


def sdk_disabled() -> bool:
    """``OTEL_SDK_DISABLED=true`` (case-insensitive, as the SDK reads it)."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _resource(service_name: str | None) -> Resource:
    """The service's resource. ``service.name``: the ``setup()`` argument (code wins over
    the environment, as in the SDK's ``Resource.create``), else ``OTEL_SERVICE_NAME``, else
    ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, else :data:`DEFAULT_SERVICE_NAME` (a
    default never beats the environment). With a ``service.instance.id`` per process (what
    recent SDKs add by themselves; older ones don't), so that several workers exporting over
    OTLP stay apart; one set in ``OTEL_RESOURCE_ATTRIBUTES`` is kept."""
    if service_name is None and not OTELResourceDetector().detect().attributes.get(SERVICE_NAME):
        service_name = DEFAULT_SERVICE_NAME
    resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
    if SERVICE_INSTANCE_ID not in resource.attributes:
        resource = resource.merge(Resource({SERVICE_INSTANCE_ID: str(uuid.uuid4())}))
    return resource


def span_limits() -> SpanLimits:
    """The SDK's limits, with :data:`DEFAULT_ATTRIBUTE_LENGTH_LIMIT` for attribute values
    (span and event attributes alike: ``exception.message``, ``exception.stacktrace``)
    unless ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` / ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``
    say otherwise."""
    generic = bool(os.environ.get(_ATTR_LIMIT, "").strip())
    spans = generic or bool(os.environ.get(_SPAN_ATTR_LIMIT, "").strip())
    default = DEFAULT_ATTRIBUTE_LENGTH_LIMIT
    return SpanLimits(
        max_attribute_length=None if generic else default,
        max_span_attribute_length=None if spans else default,
    )


def _metric_interval() -> float:
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    try:
        value = float(raw) / 1000
    except ValueError:
        raise ValueError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r} is not a number of ms") from None
    if value <= 0:
        raise ValueError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r} must be > 0")
    return value


def _global_meter_provider() -> otel_metrics.MeterProvider | None:
    """The MeterProvider the application (or ``opentelemetry-instrument``) set, or None."""
    provider = otel_metrics.get_meter_provider()
    return None if type(provider).__name__ == "_ProxyMeterProvider" else provider


def _global_tracer_provider() -> trace.TracerProvider | None:
    provider = trace.get_tracer_provider()
    return None if isinstance(provider, trace.ProxyTracerProvider) else provider


@dataclass
class _Exporters:
    """Builds the providers' exporters from the arguments of :func:`setup` and notes each
    one in ``handle.exporting``."""

    endpoint: str | None
    protocol: str | None
    handle: Telemetry

    def note(self, signal: Signal, names: tuple[str, ...]) -> None:
        for name in names:
            self.handle.exporting.append(f"{signal}: {describe(name, signal, self.protocol)}")

    def tracer_provider(
        self, names: tuple[str, ...], log_lines: bool, resource: Resource, metrics: TaskMetrics
    ) -> TracerProvider:
        limits = span_limits()
        bound = limits.max_span_attribute_length  # also for the status description
        provider = TracerProvider(resource=resource, span_limits=limits)
        for name in names:
            exporter = span_exporter(self.endpoint, self.protocol, name)
            provider.add_span_processor(
                CountingBatchSpanProcessor(exporter, metrics, status_limit=bound)
            )
        self.note("traces", names)
        if log_lines:
            provider.add_span_processor(
                CountingBatchSpanProcessor(LogSpanExporter(), metrics, status_limit=bound)
            )
            self.handle.exporting.append("traces: log lines")
        return provider

    def metrics(self, names: tuple[str, ...], resource: Resource, interval: float) -> None:
        # This process's values, also with several workers (multiprocess mode): each
        # worker exports its own series under its own service.instance.id, and the
        # backend sums them. Exporting the all-worker sum from every worker (what
        # /metrics shows) would count everything once per worker.
        self.handle.metrics_bridges = [
            PrometheusOTLPBridge(
                REGISTRY, metric_exporter(self.endpoint, self.protocol, name), resource, interval
            )
            for name in names
        ]
        if _global_meter_provider() is None:
            # For the OTel instruments of the app and its libraries (the ASGI request
            # metrics); one set by the application is used as it is.
            readers = [
                PeriodicExportingMetricReader(
                    metric_exporter(self.endpoint, self.protocol, name),
                    export_interval_millis=interval * 1000,
                )
                for name in names
            ]
            provider = MeterProvider(metric_readers=readers, resource=resource)
            self.handle.meter_provider = provider
            otel_metrics.set_meter_provider(provider)
        self.note("metrics", names)


def setup(
    service_name: str | None = None,
    *,
    otlp_endpoint: str | None = None,
    otlp_protocol_name: str | None = None,
    span_logs: bool | None = None,
    configure_logs: bool = True,
) -> Telemetry:
    """Set up tracing, OTLP export and structured logs. Idempotent: a second call returns
    the first handle. The README's configuration section says what each variable does.

    - ``service_name``: see :func:`_resource` (argument, else ``OTEL_SERVICE_NAME``, else
      ``OTEL_RESOURCE_ATTRIBUTES``, else ``tasklens-app``).
    - Exporters: ``OTEL_{TRACES,METRICS}_EXPORTER`` (``otlp``, ``console``, ``none``,
      comma lists); unset: OTLP when an endpoint is set (argument or
      ``OTEL_EXPORTER_OTLP[_<SIGNAL>]_ENDPOINT``). Protocol from the argument or
      ``OTEL_EXPORTER_OTLP[_<SIGNAL>]_PROTOCOL`` (``http/protobuf`` default, ``grpc``).
    - ``span_logs``: also print spans as log lines; default on when no trace exporter is
      configured at all (``OTEL_TRACES_EXPORTER`` unset and no endpoint).
    - ``OTEL_LOGS_EXPORTER`` (``otlp``, ``console``; unset or ``none``: no log export):
      every stdlib/structlog line, with trace and span ids, through a LoggerProvider.
    - ``OTEL_SDK_DISABLED=true``: no provider, no exporter, no thread (logs still set up);
      tasks still run and ``/metrics`` still answers.
    - A tracer or meter provider set earlier (by the application or by
      ``opentelemetry-instrument``) is used as it is, never replaced nor duplicated.
    """
    global _handle
    if service_name is not None and (not isinstance(service_name, str) or not service_name):
        raise ValueError(f"setup(): service_name must be a non-empty string, got {service_name!r}")
    with _lock:
        if _handle is not None:
            return _handle
        if configure_logs:
            configure_logging()
        if sdk_disabled():
            handle = Telemetry(
                str(_resource(service_name).attributes[SERVICE_NAME]),
                trace.get_tracer_provider(),
                owns_tracer_provider=False,
            )
            _logger.info("tasklens: OTEL_SDK_DISABLED=true, no telemetry provider installed")
            _handle = handle
            return handle
        # Every variable checked before anything is installed: a bad one leaves no half set-up.
        traces = exporter_names("traces", otlp_configured("traces", otlp_endpoint))
        metrics = exporter_names("metrics", otlp_configured("metrics", otlp_endpoint))
        # Logs only when asked for (unlike traces and metrics, an OTLP endpoint alone does
        # not send them: every line of the application would leave the process).
        logs = exporter_names("logs", False)
        interval = _metric_interval() if metrics else 0.0
        task_metrics = TaskMetrics.for_registry()
        existing = _global_tracer_provider()
        resource = getattr(existing, "resource", None)
        if not isinstance(resource, Resource):
            resource = _resource(service_name)
        elif service_name is not None and resource.attributes.get(SERVICE_NAME) != service_name:
            _logger.warning(
                "tasklens: setup(service_name=%r) ignored: the tracer provider configured "
                "earlier names the service %r",
                service_name,
                resource.attributes.get(SERVICE_NAME),
            )
        handle = Telemetry(
            str(resource.attributes.get(SERVICE_NAME, "")), trace.NoOpTracerProvider()
        )
        exporters = _Exporters(otlp_endpoint, otlp_protocol_name, handle)
        if existing is not None:
            handle.tracer_provider = existing
            handle.owns_tracer_provider = False
            _logger.info("tasklens: keeping the tracer provider configured by the application")
        else:
            logs_only = span_logs or (
                span_logs is None and "OTEL_TRACES_EXPORTER" not in os.environ and not traces
            )
            handle.tracer_provider = exporters.tracer_provider(
                traces, bool(logs_only), resource, task_metrics
            )
            trace.set_tracer_provider(handle.tracer_provider)
        if metrics:
            exporters.metrics(metrics, resource, interval)
        handle.log_export = start_log_export(logs, resource, otlp_endpoint, otlp_protocol_name)
        if handle.log_export is not None:
            exporters.note("logs", logs)
        _handle = handle
        return handle
