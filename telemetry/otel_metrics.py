"""The contract's metrics through OpenTelemetry's metrics API, on a meter provider of the app.

``instrument(app, meter_provider=mp)`` (or ``FastAPI(telemetry={"meter_provider": mp})``)
adds :class:`OTelMetricsObserver` beside the Prometheus one: ``/metrics`` keeps working and
``mp`` gets the same metrics, exported by its own readers. The global provider is left to
:func:`tasklens.setup`, whose bridge already exports the Prometheus values over OTLP.

Names are the contract's Prometheus family names (counters without ``_total``) with units
``s`` and ``{task}``-style annotations, so the OTel → Prometheus translation (the
collector's ``prometheus``/``prometheusremotewrite`` exporters, Prometheus's OTLP receiver)
gives back exactly the names the dashboards and alert rules query; see
:func:`prometheus_name`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    Meter,
    MeterProvider,
    Observation,
    get_meter_provider,
)

from tasklens.runtime import TaskObserver, TaskRecord
from tasklens.runtime.naming import LabelLimit

from . import contract as c
from .metrics import DEFAULT_EXCEPTION_LIMIT
from .setup import installed

_logger = logging.getLogger("tasklens.telemetry")
#: The contract's metrics recorded here (spans dropped is counted by the span processor,
#: in Prometheus only).
OTEL_METRICS: tuple[c.MetricSpec, ...] = (
    c.ENQUEUED,
    c.FINISHED,
    c.FAILURES,
    c.QUEUE_SECONDS,
    c.THREADPOOL_WAIT_SECONDS,
    c.DURATION_SECONDS,
    c.IN_PROGRESS,
    c.PENDING,
    c.THREADPOOL_TOKENS,
    c.LOOP_BLOCKING_SECONDS,
    c.EVENT_LOOP_LAG_SECONDS,
    *c.BACKPRESSURE_METRICS,
)
#: Gauges whose value tasklens raises and lowers (an up-down counter); the others are set.
UP_DOWN = frozenset({c.IN_PROGRESS.name, c.PENDING.name})


def otel_unit(spec: c.MetricSpec) -> str:
    """``s`` for ``*_seconds``; else a UCUM annotation (``{task}``, ``{token}``, ...), which the
    Prometheus translation drops (unit ``1`` would add ``_ratio`` to a gauge)."""
    if spec.name.endswith("_seconds"):
        return "s"
    return {c.THREADPOOL_TOKENS.name: "{token}", c.ADMISSION_DELAYED.name: "{request}"}.get(
        spec.name, "{task}"
    )


def prometheus_name(name: str, unit: str, monotonic_sum: bool) -> str:
    """The name OpenTelemetry's Prometheus translation (metric suffixes on, the default)
    gives an instrument: unit suffix unless already a word of the name, ``_total`` for
    monotonic sums, annotations (``{...}``) dropped. Documents the mapping; tested."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", name) if w]
    suffix = {"s": "seconds"}.get(unit, "")
    if suffix and suffix not in words:
        words.append(suffix)
    if monotonic_sum:
        words = [w for w in words if w != "total"] + ["total"]
    return "_".join(words)


def app_meter_provider(app: object) -> MeterProvider | None:
    """The meter provider a FastAPI app was configured with
    (``FastAPI(telemetry={"meter_provider": mp})``, kept in ``app._telemetry``), or None."""
    config = getattr(app, "_telemetry", None)
    provider = config.get("meter_provider") if isinstance(config, dict) else None
    return provider if isinstance(provider, MeterProvider) else None


class _Tally:
    """Values of one asynchronous instrument's series, kept in Python and observed at
    collection: a task costs an int addition per count instead of an SDK measurement."""

    __slots__ = ("_cells", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # finished runs in worker threads too
        self._cells: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[float]]] = {}

    def cell(self, attributes: dict[str, str]) -> list[float]:
        """The series of ``attributes`` (created at 0): callers cache it, the hot path never
        looks it up."""
        key = tuple(sorted(attributes.items()))
        with self._lock:
            found = self._cells.get(key)
            if found is None:
                found = self._cells[key] = (attributes, [0])
            return found[1]

    def add(self, cell: list[float], amount: float) -> None:
        with self._lock:
            cell[0] += amount

    def set(self, cell: list[float], value: float) -> None:
        cell[0] = value

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            return [Observation(cell[0], attrs) for attrs, cell in self._cells.values()]


def exported_by_setup(provider: MeterProvider) -> bool:
    """True (and a warning) when ``provider`` is the global one and :func:`setup` already
    exports the Prometheus values over OTLP: recording them through it too would send every
    value twice (``bgtask_finished`` and ``bgtask_finished_total``, one name in Prometheus)."""
    handle = installed()
    if handle is None or not handle.metrics_bridges or provider is not get_meter_provider():
        return False
    _logger.warning(
        "tasklens: meter_provider is the global MeterProvider, to which setup() already "
        "exports the bgtask metrics over OTLP; not recording them through it a second time"
    )
    return True


def _histogram(meter: Meter, spec: c.MetricSpec) -> Histogram:
    return meter.create_histogram(
        spec.name,
        otel_unit(spec),
        spec.help,
        explicit_bucket_boundaries_advisory=c.DURATION_BUCKETS,
    )


def _observed(meter: Meter, spec: c.MetricSpec) -> _Tally:
    tally = _Tally()
    if spec.type == "counter":
        create: Any = meter.create_observable_counter
    elif spec.name in UP_DOWN:
        create = meter.create_observable_up_down_counter
    else:
        create = meter.create_observable_gauge
    create(spec.name, [tally.observe], otel_unit(spec), spec.help)
    return tally


class _Series:
    """The cells and attribute dicts of one task name and executor, built once."""

    __slots__ = (
        "enqueued",
        "failures",
        "finished",
        "in_progress",
        "outcome",
        "task",
        "task_executor",
    )

    def __init__(self, o: OTelMetricsObserver, name: str, executor: str) -> None:
        self.task = {"task": name}
        self.task_executor = {"task": name, "executor": executor}
        self.outcome = {oc: {**self.task_executor, "outcome": oc} for oc in c.OUTCOMES}
        self.enqueued = o._enqueued.cell(self.task)
        # Every outcome at 0 from the start, so rate() works (as in Prometheus).
        self.finished = {oc: o._finished.cell(attrs) for oc, attrs in self.outcome.items()}
        self.in_progress = o._in_progress.cell(self.task_executor)
        self.failures: dict[str, list[float]] = {}


class OTelMetricsObserver(TaskObserver):
    """Records the task lifecycle in ``meter_provider``'s instruments (meter ``tasklens``).

    Histograms are synchronous, with the contract's buckets (the advisory; a View of the
    app's wins) and trace exemplars from the task span, current while ``finished`` runs,
    when the SDK's exemplar filter (trace-based by default) keeps them. Counts and gauges
    are asynchronous instruments reading tallies kept here: with synchronous ones a task
    paid ~10 SDK measurements (42-150 µs with a sampled span, bench in the commit), now 3
    (21-42 µs). ``exception`` is bounded by ``max_exception_types`` as in Prometheus."""

    def __init__(
        self, meter_provider: MeterProvider, max_exception_types: int = DEFAULT_EXCEPTION_LIMIT
    ) -> None:
        self.meter_provider = meter_provider
        meter = meter_provider.get_meter("tasklens")
        self._enqueued = _observed(meter, c.ENQUEUED)
        self._finished = _observed(meter, c.FINISHED)
        self._failures = _observed(meter, c.FAILURES)
        self._queue = _histogram(meter, c.QUEUE_SECONDS)
        self._wait = _histogram(meter, c.THREADPOOL_WAIT_SECONDS)
        self._duration = _histogram(meter, c.DURATION_SECONDS)
        self._in_progress = _observed(meter, c.IN_PROGRESS)
        pending = _observed(meter, c.PENDING)
        tokens = _observed(meter, c.THREADPOOL_TOKENS)
        self._blocking = _histogram(meter, c.LOOP_BLOCKING_SECONDS)
        self._lag = _histogram(meter, c.EVENT_LOOP_LAG_SECONDS)
        self._pending_tally, self._pending = pending, pending.cell({})
        self._tokens = tokens
        self._borrowed = tokens.cell({"state": "borrowed"})
        self._total = tokens.cell({"state": "total"})
        self._held = _observed(meter, c.ADMISSION_DELAYED)
        self._held_cell = self._held.cell({})
        self._held_seconds = _observed(meter, c.ADMISSION_WAIT_SECONDS)
        self._held_seconds_cell = self._held_seconds.cell({})
        self.exception_types = LabelLimit(
            "exception", "exception classes", "max_exception_types", max_exception_types, _logger
        )

    def _series(self, task: TaskRecord) -> _Series:
        cache = task.identity.cache
        series: _Series | None = cache.get(self)
        if series is None:
            series = cache[self] = _Series(self, task.name, task.executor)
        return series

    def enqueued(self, task: TaskRecord) -> None:
        self._enqueued.add(self._series(task).enqueued, 1)
        self._pending_tally.add(self._pending, 1)

    def started(self, task: TaskRecord) -> None:
        self._pending_tally.add(self._pending, -1)
        self._in_progress.add(self._series(task).in_progress, 1)

    def finished(self, task: TaskRecord) -> None:
        series = self._series(task)
        outcome = task.outcome or c.OUTCOME_ABANDONED
        if task.started_at is None:
            self._pending_tally.add(self._pending, -1)
        else:
            self._in_progress.add(series.in_progress, -1)
            if task.queue_known:
                self._queue.record(task.queue_seconds, series.task_executor)
            self._duration.record(task.duration_seconds, series.outcome[outcome])
            if task.threadpool_wait is not None and task.executor == c.EXECUTOR_THREAD_POOL:
                self._wait.record(task.threadpool_wait, series.task)
            if task.loop_blocking is not None and task.executor == c.EXECUTOR_EVENT_LOOP:
                self._blocking.record(task.loop_blocking, series.task)
        self._finished.add(series.finished[outcome], 1)
        if task.error is not None and outcome == c.OUTCOME_FAILURE:
            kind = self.exception_types.admit(c.error_type(task.error))
            cell = series.failures.get(kind)
            if cell is None:
                cell = series.failures[kind] = self._failures.cell(
                    {**series.task, "exception": kind}
                )
            self._failures.add(cell, 1)

    def threadpool_changed(self, borrowed: int, total: int) -> None:
        self._tokens.set(self._borrowed, borrowed)
        self._tokens.set(self._total, total)

    def loop_lag(self, seconds: float) -> None:
        self._lag.record(seconds)

    def admission_held(self) -> None:
        """A request held at the ``max_pending`` bound (the runner's optional hook)."""
        self._held.add(self._held_cell, 1)

    def admission_resumed(self, seconds: float) -> None:
        """A held request goes on after ``seconds``."""
        self._held_seconds.add(self._held_seconds_cell, seconds)
