"""The default observers and the app-level telemetry of an instrumented app."""

from __future__ import annotations

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware

from tasklens.runtime import TaskObserver

from .exposition import MetricsEndpointMiddleware, at_path, exclude_from_fastapi_telemetry
from .live_buffer import LiveBuffer
from .live_page import LivePageMiddleware, live_buffer_of, page_requests
from .logs import LogObserver
from .metrics import MetricsObserver
from .options import TelemetryOptions
from .otel_metrics import OTelMetricsObserver, app_meter_provider, exported_by_setup
from .requests import RequestSpanMiddleware
from .setup import flush
from .spans import EnqueueEventObserver, SpanObserver


def default_observers(options: TelemetryOptions, app: object = None) -> list[TaskObserver]:
    """Spans, metrics and logs, in that order: ``started`` runs them in order and
    ``finished`` in reverse, so the task span is current while metrics and logs record.

    With a meter provider of the app's (``meter_provider``, else FastAPI's ``telemetry``
    config of ``app``), the metrics are also recorded through it, beside Prometheus."""
    observers: list[TaskObserver] = [
        SpanObserver(
            tracer_provider=options.tracer_provider,
            record_args=options.record_args,
            task_trace=options.task_trace,
        ),
        MetricsObserver(max_exception_types=options.max_exception_types),
    ]
    if options.enqueue_events:
        observers.append(EnqueueEventObserver())
    meter_provider = options.meter_provider or app_meter_provider(app)
    if meter_provider is not None and not exported_by_setup(meter_provider):
        observers.append(OTelMetricsObserver(meter_provider, options.max_exception_types))
    observers.append(LogObserver(record_args=options.record_args))
    if options.ui_path is not None:  # last: its finished runs first, the task span current
        observers.append(LiveBuffer(record_args=options.record_args))
    return observers


def add_app_telemetry(app: Starlette, options: TelemetryOptions) -> None:
    """Request spans (when nothing else makes them), innermost, and the ``/metrics``
    endpoint, outside every middleware already on ``app``.

    The request-span middleware is appended to ``user_middleware`` (innermost: every tracer
    in the stack, added before or after ``instrument``, is outside it) and is there even with
    ``request_spans=False``: it makes whichever server span traces the request the parent of
    its tasks, and carries the app's tracer provider to their spans."""
    app.user_middleware.append(
        Middleware(
            RequestSpanMiddleware,
            owner=app,
            request_spans=options.request_spans,
            record_url_query=options.record_url_query,
            tracer_provider=options.tracer_provider,
        )
    )
    if options.metrics_path:
        app.add_middleware(
            MetricsEndpointMiddleware, path=options.metrics_path, auth=options.metrics_auth
        )
        exclude_from_fastapi_telemetry(app, at_path(options.metrics_path))
    if options.ui_path:
        app.add_middleware(
            LivePageMiddleware,
            path=options.ui_path,
            buffer=lambda: live_buffer_of(app),
            auth=options.metrics_auth,
            trace_url=options.ui_trace_url,
            owner=app,
        )
        exclude_from_fastapi_telemetry(app, page_requests(options.ui_path))


async def flush_at_shutdown() -> None:
    """At the end of the app's lifespan: export what :func:`setup` buffered (bounded, see
    :func:`flush`), off the event loop. uvicorn re-raises SIGTERM after the shutdown, so the
    SDK's atexit flush never runs."""
    await anyio.to_thread.run_sync(flush, abandon_on_cancel=True)
