"""The composition point: the one module that knows both rooms and wires them together.

``instrument(app)`` builds the runtime's runner with telemetry's observers, attaches it to
the app, and adds the app-level telemetry (request spans, ``/metrics``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette

from tasklens.runtime import RuntimeOptions, TaskObserver, TaskRunner, attach
from tasklens.runtime.options import split_options
from tasklens.telemetry import (
    TelemetryOptions,
    add_app_telemetry,
    default_observers,
    flush_at_shutdown,
)

_logger = logging.getLogger("tasklens")
_STATE_ATTR = "tasklens"


def instrument(
    app: Starlette,
    *,
    observers: Sequence[TaskObserver] | None = None,
    **options: Any,
) -> TaskRunner:
    """Run every background task of ``app`` in the instrumented runtime; serve ``/metrics``.

    Options (validated here, each error names the option; README's option table says what
    each does), runtime: ``on_error``, ``mode``, ``max_concurrency``, ``shutdown_timeout``,
    ``threadpool_size``, ``max_pending``, ``max_task_names``, ``loop_block_threshold``,
    ``loop_lag_interval``, ``celery`` (a ``celery.Celery`` app: its tasks given to
    ``add_task`` are sent to its broker instead of running here; workers record them with
    ``tasklens.celery.instrument_worker``);
    telemetry: ``metrics_path``, ``metrics_auth``, ``max_exception_types``, ``record_args``,
    ``request_spans``, ``record_url_query``, ``enqueue_events``, ``task_trace``,
    ``tracer_provider``, ``ui_path`` (the live page), ``ui_trace_url``,
    ``meter_provider`` (the metrics also recorded through it, beside Prometheus; a FastAPI
    app's ``telemetry={"meter_provider": ...}`` too). ``observers`` replaces the default
    spans, metrics and logs observers. Calling it twice returns the first runner.
    """
    if not isinstance(app, Starlette):
        raise TypeError(
            f"instrument() expects a FastAPI or Starlette application, got {type(app).__name__}"
        )
    runtime_kwargs, telemetry_kwargs = split_options(options, RuntimeOptions, TelemetryOptions)
    runtime_options = RuntimeOptions(**runtime_kwargs)
    telemetry_options = TelemetryOptions(**telemetry_kwargs)
    existing: tuple[TaskRunner, TelemetryOptions] | None = getattr(app.state, _STATE_ATTR, None)
    if existing is not None:
        runner, first_telemetry = existing
        if options and (runtime_options, telemetry_options) != (runner.options, first_telemetry):
            _logger.warning(
                "tasklens: instrument() called again with different options; keeping the first"
            )
        return runner

    if observers is None:
        observers = default_observers(telemetry_options, app)
    runner = TaskRunner(runtime_options, observers)
    attach(app, runner, on_shutdown=[flush_at_shutdown])
    add_app_telemetry(app, telemetry_options)
    setattr(app.state, _STATE_ATTR, (runner, telemetry_options))
    return runner
