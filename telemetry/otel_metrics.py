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
from typing import Any

from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider, UpDownCounter

from tasklens.runtime import TaskObserver, TaskRecord
from tasklens.runtime.naming import LabelLimit

from . import contract as c
from .metrics import DEFAULT_EXCEPTION_LIMIT

_logger = logging.getLogger("tasklens.telemetry")
#: Instrument kind of each OTel-recorded metric (the rest of the contract, spans dropped,
#: is counted by the span processor, in Prometheus only).
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
)
#: Gauges whose value tasklens raises and lowers (an UpDownCounter); the others are set.
UP_DOWN = frozenset({c.IN_PROGRESS.name, c.PENDING.name})


def otel_unit(spec: c.MetricSpec) -> str:
    """``s`` for ``*_seconds``; else a UCUM annotation (``{task}``, ``{token}``), which the
    Prometheus translation drops (unit ``1`` would add ``_ratio`` to a gauge)."""
    if spec.name.endswith("_seconds"):
        return "s"
    return "{token}" if spec is c.THREADPOOL_TOKENS else "{task}"


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


def _instrument(meter: Meter, spec: c.MetricSpec) -> Any:
    unit = otel_unit(spec)
    if spec.type == "counter":
        return meter.create_counter(spec.name, unit, spec.help)
    if spec.type == "histogram":
        return meter.create_histogram(
            spec.name, unit, spec.help, explicit_bucket_boundaries_advisory=c.DURATION_BUCKETS
        )
    if spec.name in UP_DOWN:
        return meter.create_up_down_counter(spec.name, unit, spec.help)
    return meter.create_gauge(spec.name, unit, spec.help)


class _Attributes:
    """The attribute dicts of one task name and executor, built once."""

    __slots__ = ("failures", "finished", "task", "task_executor")

    def __init__(self, name: str, executor: str) -> None:
        self.task = {"task": name}
        self.task_executor = {"task": name, "executor": executor}
        self.finished = {o: {**self.task_executor, "outcome": o} for o in c.OUTCOMES}
        self.failures: dict[str, dict[str, str]] = {}


class OTelMetricsObserver(TaskObserver):
    """Records the task lifecycle in ``meter_provider``'s instruments (meter ``tasklens``).

    Histograms use the contract's buckets (the advisory; a View of the app's wins), and
    take trace exemplars from the task span, current while ``finished`` runs, when the SDK's
    exemplar filter (trace-based by default) keeps them. ``exception`` is bounded by
    ``max_exception_types`` as in Prometheus."""

    def __init__(
        self, meter_provider: MeterProvider, max_exception_types: int = DEFAULT_EXCEPTION_LIMIT
    ) -> None:
        self.meter_provider = meter_provider
        meter = meter_provider.get_meter("tasklens")
        made = {spec.name: _instrument(meter, spec) for spec in OTEL_METRICS}
        self._enqueued: Counter = made[c.ENQUEUED.name]
        self._finished: Counter = made[c.FINISHED.name]
        self._failures: Counter = made[c.FAILURES.name]
        self._queue: Histogram = made[c.QUEUE_SECONDS.name]
        self._wait: Histogram = made[c.THREADPOOL_WAIT_SECONDS.name]
        self._duration: Histogram = made[c.DURATION_SECONDS.name]
        self._in_progress: UpDownCounter = made[c.IN_PROGRESS.name]
        self._pending: UpDownCounter = made[c.PENDING.name]
        self._tokens = made[c.THREADPOOL_TOKENS.name]
        self._blocking: Histogram = made[c.LOOP_BLOCKING_SECONDS.name]
        self._lag: Histogram = made[c.EVENT_LOOP_LAG_SECONDS.name]
        self.exception_types = LabelLimit(
            "exception", "exception classes", "max_exception_types", max_exception_types, _logger
        )
        # The pending series exists from the start, like Prometheus's label-less gauge.
        self._pending.add(0)

    def _attributes(self, task: TaskRecord) -> _Attributes:
        cache = task.identity.cache
        attrs: _Attributes | None = cache.get(self)
        if attrs is None:
            attrs = cache[self] = _Attributes(task.name, task.executor)
            for finished in attrs.finished.values():  # counters at 0, so rate() works
                self._finished.add(0, finished)
        return attrs

    def enqueued(self, task: TaskRecord) -> None:
        self._enqueued.add(1, self._attributes(task).task)
        self._pending.add(1)

    def started(self, task: TaskRecord) -> None:
        self._pending.add(-1)
        self._in_progress.add(1, self._attributes(task).task_executor)

    def finished(self, task: TaskRecord) -> None:
        attrs = self._attributes(task)
        outcome = task.outcome or c.OUTCOME_ABANDONED
        if task.started_at is None:
            self._pending.add(-1)
        else:
            self._in_progress.add(-1, attrs.task_executor)
            self._queue.record(task.queue_seconds, attrs.task_executor)
            self._duration.record(task.duration_seconds, attrs.finished[outcome])
            if task.threadpool_wait is not None and task.executor == c.EXECUTOR_THREAD_POOL:
                self._wait.record(task.threadpool_wait, attrs.task)
            if task.loop_blocking is not None and task.executor == c.EXECUTOR_EVENT_LOOP:
                self._blocking.record(task.loop_blocking, attrs.task)
        self._finished.add(1, attrs.finished[outcome])
        if task.error is not None and outcome == c.OUTCOME_FAILURE:
            kind = self.exception_types.admit(c.error_type(task.error))
            failure = attrs.failures.get(kind)
            if failure is None:
                failure = attrs.failures[kind] = {**attrs.task, "exception": kind}
            self._failures.add(1, failure)

    def threadpool_changed(self, borrowed: int, total: int) -> None:
        self._tokens.set(borrowed, {"state": "borrowed"})
        self._tokens.set(total, {"state": "total"})

    def loop_lag(self, seconds: float) -> None:
        self._lag.record(seconds)
