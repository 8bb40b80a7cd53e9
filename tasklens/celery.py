"""Celery workers: the ``bgtask_*`` contract, spans and logs for tasks a Celery worker runs.

    # shop.py, the module ``celery -A shop worker`` loads (and the web app imports)
    celery_app = Celery("shop", broker="redis://127.0.0.1:6379/0")
    tasklens.celery.instrument_worker(celery_app, service_name="shop-worker")

Nothing happens in a process that is not a worker (the web app importing ``shop``): the
worker's signals set everything up when a worker starts. Then every task of ``celery_app``
is recorded with ``executor="celery"`` (runtime/celery_worker.py): queue time from
``add_task`` in the web process, a CONSUMER span child of the web process's send span,
failures by exception class, logs with trace and task ids. ``/metrics`` is served on
``metrics_host:metrics_port``; with the prefork pool the processes are summed through
prometheus_client's multiprocess mode, so ``PROMETHEUS_MULTIPROC_DIR`` must be set in the
worker's environment (a directory of its own; wiped when the worker starts). The web side is
``tasklens.instrument(app, celery=celery_app)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from tasklens.runtime import RuntimeOptions, TaskObserver, TaskRunner
from tasklens.runtime.celery_send import require_celery_app
from tasklens.runtime.celery_worker import CeleryWorkerRuntime
from tasklens.telemetry import TelemetryOptions, default_observers, flush, setup
from tasklens.telemetry.metrics import multiprocess_mode
from tasklens.telemetry.multiprocess import ENV, MultiprocessDirectoryError, claim_directory
from tasklens.telemetry.worker_metrics import MetricsServer

__all__ = ["CeleryWorker", "WorkerSetupError", "instrument_worker"]

_logger = logging.getLogger("tasklens")
DEFAULT_METRICS_PORT = 9808
#: The options of ``instrument`` that mean something on a worker.
WORKER_OPTIONS = frozenset(
    {"max_task_names", "max_exception_types", "record_args", "tracer_provider", "meter_provider"}
)


class WorkerSetupError(SystemExit):
    """The worker cannot record its tasks as configured: raised at worker start, a
    ``SystemExit`` carrying the message (Celery logs and ignores exceptions of signal
    handlers; this one stops the worker, its message printed)."""


class CeleryWorker:
    """What :func:`instrument_worker` installed: the runtime, and the metrics server once
    the worker started."""

    def __init__(
        self,
        celery_app: Any,
        runtime: CeleryWorkerRuntime,
        service_name: str | None,
        metrics_host: str,
        metrics_port: int | None,
    ) -> None:
        self.celery_app = celery_app
        self.runtime = runtime
        self.service_name = service_name
        self.metrics_host = metrics_host
        self.metrics_port = metrics_port
        self.metrics_server: MetricsServer | None = None
        self._prefork = False

    # --- worker signals ---------------------------------------------------------------
    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        """Main worker process, before the pool starts."""
        if sender is not None and getattr(sender, "app", None) not in (None, self.celery_app):
            return
        self._prefork = _is_prefork(getattr(sender, "pool_cls", None))
        if not multiprocess_mode() and self._prefork:
            raise WorkerSetupError(
                "tasklens.celery: the prefork pool runs tasks in child processes, whose "
                f"metrics are summed through prometheus_client's multiprocess mode: set {ENV} "
                "to a directory of this worker's own in the environment the worker starts "
                "with (prometheus_client reads it when first imported), or run --pool solo "
                "or --pool threads"
            )
        if self.metrics_port is not None:
            try:
                self.metrics_server = MetricsServer(self.metrics_host, self.metrics_port)
            except OSError as exc:
                raise WorkerSetupError(
                    f"tasklens.celery: cannot serve /metrics on {self.metrics_host}:"
                    f"{self.metrics_port}: {exc}; give each worker on a host its own "
                    "instrument_worker(metrics_port=...) (0: a free port; None: no endpoint)"
                ) from exc
            # WARNING: Celery's default log level; the port is news when it was 0.
            _logger.log(
                logging.WARNING if self.metrics_port == 0 else logging.INFO,
                "tasklens: worker metrics on http://%s:%d/metrics",
                self.metrics_host,
                self.metrics_server.port,
            )
        if multiprocess_mode():
            # After the bind: a second worker refused for its port must not touch the
            # first one's files. The previous run's files would add to this run's counts.
            try:
                claim_directory()
            except MultiprocessDirectoryError as exc:
                if self.metrics_server is not None:
                    self.metrics_server.close()
                raise WorkerSetupError(f"tasklens.celery: {exc}") from exc
        if not self._prefork:
            self._start_recording()

    def on_process_init(self, **_: Any) -> None:
        """A prefork pool process, after the fork: exporters and recording of its own (the
        main process's /metrics socket is closed here: a pool process must not hold it)."""
        server = self.metrics_server
        if server is not None and server.pid != os.getpid():
            server.close_inherited()
            self.metrics_server = None
        self._start_recording()

    def on_process_shutdown(self, **_: Any) -> None:
        flush()

    def on_worker_shutdown(self, **_: Any) -> None:
        if not self._prefork:
            flush()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None

    def _start_recording(self) -> None:
        setup(service_name=self.service_name)
        self.runtime.connect()
        from celery import signals

        # At the first task, not now: opentelemetry-instrumentation-celery's documented
        # set-up instruments in a worker_process_init receiver that may run after this one.
        signals.task_prerun.connect(self._check_duplicate_spans, weak=False)

    def _check_duplicate_spans(self, **_: Any) -> None:
        from celery import signals

        signals.task_prerun.disconnect(self._check_duplicate_spans)
        if _celery_instrumentor_active():
            _logger.warning(
                "tasklens: opentelemetry-instrumentation-celery is instrumented too: its "
                "apply_async/ and run/ spans duplicate tasklens's send and task spans; "
                "use one of the two"
            )


def instrument_worker(
    celery_app: Any,
    *,
    service_name: str | None = None,
    metrics_port: int | None = DEFAULT_METRICS_PORT,
    metrics_host: str = "127.0.0.1",
    observers: Sequence[TaskObserver] | None = None,
    **options: Any,
) -> CeleryWorker:
    """Record every task of ``celery_app`` that a worker of it runs (call it at import of
    the module ``celery -A`` loads; it is inert in other processes).

    At worker start: :func:`tasklens.setup` with ``service_name`` in each process that runs
    tasks (the prefork pool's processes after their fork: exporter threads do not survive
    one), and ``GET /metrics`` on ``metrics_host:metrics_port`` (``None``: not served;
    ``0``: a free port, see ``CeleryWorker.metrics_server.port``). ``options``:
    ``max_task_names``, ``max_exception_types``, ``record_args``, ``tracer_provider``,
    ``meter_provider``, as for :func:`tasklens.instrument`. ``observers`` replaces the
    default spans, metrics and logs observers."""
    require_celery_app(celery_app, "instrument_worker()")
    if service_name is not None and (not isinstance(service_name, str) or not service_name):
        raise ValueError(
            f"instrument_worker(): invalid service_name={service_name!r}; expected a "
            "non-empty string, or None"
        )
    if not isinstance(metrics_host, str) or not metrics_host:
        raise ValueError(
            f"instrument_worker(): invalid metrics_host={metrics_host!r}; expected an "
            "address such as '127.0.0.1', '0.0.0.0' or '::'"
        )
    unknown = sorted(set(options) - WORKER_OPTIONS)
    if unknown:
        raise TypeError(
            f"instrument_worker() got unknown option(s) {', '.join(unknown)}; "
            f"known options: {', '.join(sorted(WORKER_OPTIONS))}"
        )
    if metrics_port is not None and (
        isinstance(metrics_port, bool) or not isinstance(metrics_port, int)
        or not 0 <= metrics_port <= 65535
    ):  # fmt: skip
        raise ValueError(
            f"instrument_worker(): invalid metrics_port={metrics_port!r}; expected a port "
            "number 0-65535, or None"
        )
    existing: CeleryWorker | None = getattr(celery_app, "_tasklens_worker", None)
    if existing is not None:
        return existing
    runtime_options = RuntimeOptions(
        **{k: v for k, v in options.items() if k == "max_task_names"},
        loop_lag_interval=None,
    )
    telemetry_options = TelemetryOptions(
        metrics_path=None, **{k: v for k, v in options.items() if k != "max_task_names"}
    )
    if observers is None:
        observers = default_observers(telemetry_options)
    runner = TaskRunner(runtime_options, observers)
    worker = CeleryWorker(
        celery_app, CeleryWorkerRuntime(celery_app, runner), service_name, metrics_host,
        metrics_port,
    )  # fmt: skip
    from celery import signals

    signals.worker_init.connect(worker.on_worker_init, weak=False)
    signals.worker_process_init.connect(worker.on_process_init, weak=False)
    signals.worker_process_shutdown.connect(worker.on_process_shutdown, weak=False)
    signals.worker_shutdown.connect(worker.on_worker_shutdown, weak=False)
    celery_app._tasklens_worker = worker
    return worker


def _celery_instrumentor_active() -> bool:
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
    except ImportError:
        return False
    return bool(CeleryInstrumentor().is_instrumented_by_opentelemetry)


def _is_prefork(pool: object) -> bool:
    """``--pool`` as the worker received it (a name or a class): prefork is the default."""
    if pool is None:
        return True
    name = pool if isinstance(pool, str) else f"{getattr(pool, '__module__', '')}"
    return "prefork" in name or name in ("processes", "celery.concurrency.prefork:TaskPool")
