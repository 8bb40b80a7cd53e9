"""The contract's Prometheus metrics and the observer that records task lifecycles in them.

Metric objects are created once per registry; each task name's label children are created
the first time the task is seen (counters at 0, so ``rate()`` works from the start) and
cached on the task identity, so the hot path never looks labels up by string.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from typing import Any

from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import values as prometheus_values

from tasklens.runtime import TaskObserver, TaskRecord
from tasklens.runtime.naming import LabelLimit

from . import contract as c
from .multiprocess import prepare_directory

_lock = threading.Lock()
_logger = logging.getLogger("tasklens.telemetry")
#: Distinct ``exception`` label values before new ones fold into ``other``.
DEFAULT_EXCEPTION_LIMIT = 50
#: Seconds between two exemplars of the same histogram bucket (per task, outcome).
EXEMPLAR_INTERVAL = 1.0
_by_registry: dict[int, TaskMetrics] = {}


def multiprocess_mode() -> bool:
    """True when prometheus_client writes values to ``PROMETHEUS_MULTIPROC_DIR`` files
    (several workers). prometheus_client decides once, when it is first imported: a
    variable set later has no effect, and /metrics then shows this process only."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


def _make(spec: c.MetricSpec, registry: CollectorRegistry) -> Any:
    kwargs: dict[str, Any] = {"registry": registry}
    if spec.type == "counter":
        return Counter(spec.name, spec.help, spec.labels, **kwargs)
    if spec.type == "histogram":
        return Histogram(spec.name, spec.help, spec.labels, buckets=c.DURATION_BUCKETS, **kwargs)
    return Gauge(
        spec.name, spec.help, spec.labels, multiprocess_mode=spec.multiprocess_mode, **kwargs
    )


class TaskMetrics:
    """Every metric of :mod:`telemetry.contract`, registered in one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        if multiprocess_mode():
            # Fail with a clear message (not a bare FileNotFoundError from mmap) and
            # create the directory when missing; wiping is the process manager's job.
            prepare_directory(wipe=False)
        self.registry = registry
        self.enqueued = _make(c.ENQUEUED, registry)
        self.finished = _make(c.FINISHED, registry)
        self.failures = _make(c.FAILURES, registry)
        self.queue_seconds = _make(c.QUEUE_SECONDS, registry)
        self.threadpool_wait_seconds = _make(c.THREADPOOL_WAIT_SECONDS, registry)
        self.duration_seconds = _make(c.DURATION_SECONDS, registry)
        self.in_progress = _make(c.IN_PROGRESS, registry)
        self.pending = _make(c.PENDING, registry)
        self.threadpool_tokens = _make(c.THREADPOOL_TOKENS, registry)
        self.loop_blocking_seconds = _make(c.LOOP_BLOCKING_SECONDS, registry)
        self.event_loop_lag_seconds = _make(c.EVENT_LOOP_LAG_SECONDS, registry)
        self.spans_dropped = _make(c.SPANS_DROPPED, registry)
        self.admission_delayed = _make(c.ADMISSION_DELAYED, registry)
        self.admission_wait_seconds = _make(c.ADMISSION_WAIT_SECONDS, registry)
        self.clock_skew = _make(c.CLOCK_SKEW, registry)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry = REGISTRY) -> TaskMetrics:
        """The one TaskMetrics of ``registry`` (created on first use)."""
        with _lock:
            metrics = _by_registry.get(id(registry))
            if metrics is None:
                metrics = _by_registry[id(registry)] = cls(registry)
            return metrics


class _TaskChildren:
    """Label children of one task name and executor, created once."""

    __slots__ = (
        "blocking",
        "duration",
        "enqueued",
        "exemplar_at",
        "failures",
        "finished",
        "in_progress",
        "name",
        "queue",
        "wait",
    )  # fmt: skip

    def __init__(self, m: TaskMetrics, name: str, executor: str) -> None:
        self.name = name
        self.enqueued = m.enqueued.labels(name)
        self.finished = {o: m.finished.labels(name, executor, o) for o in c.OUTCOMES}
        self.queue = m.queue_seconds.labels(name, executor)
        # success and failure up front; "cancelled" when it first happens (no NaN-only series).
        self.duration = {
            o: m.duration_seconds.labels(name, executor, o)
            for o in (c.OUTCOME_SUCCESS, c.OUTCOME_FAILURE)
        }
        self.in_progress = m.in_progress.labels(name, executor)
        self.wait = (
            m.threadpool_wait_seconds.labels(name)
            if executor in (c.EXECUTOR_THREAD_POOL, c.EXECUTOR_BROKER)
            else None
        )
        self.blocking = (
            m.loop_blocking_seconds.labels(name) if executor == c.EXECUTOR_EVENT_LOOP else None
        )
        self.failures: dict[str, Any] = {}
        #: When each bucket last got an exemplar: key (outcome, bucket) for duration,
        #: bucket for queue time.
        self.exemplar_at: dict[object, float] = {}


class MetricsObserver(TaskObserver):
    """Records enqueue, start and finish of every task in the contract's metrics.

    The ``exception`` label is bounded like ``task``: past ``max_exception_types`` distinct
    classes (``module.qualname``, so same-named classes of two modules stay apart), new ones
    are counted as ``exception="other"`` with one warning; spans and logs keep the class."""

    def __init__(
        self,
        metrics: TaskMetrics | None = None,
        max_exception_types: int = DEFAULT_EXCEPTION_LIMIT,
    ) -> None:
        self.metrics = metrics or TaskMetrics.for_registry()
        self.exception_types = LabelLimit(
            "exception", "exception classes", "max_exception_types", max_exception_types, _logger
        )
        self._pending = self.metrics.pending
        self._borrowed = self.metrics.threadpool_tokens.labels("borrowed")
        self._total = self.metrics.threadpool_tokens.labels("total")
        self._exemplars = not multiprocess_mode()
        #: (trace id, its hex): the tasks of one request share a trace, format it once.
        self._last_trace: tuple[int, str] = (0, "")

    def _children(self, task: TaskRecord) -> _TaskChildren:
        cache = task.identity.cache
        children: _TaskChildren | None = cache.get(self)
        if children is None:
            children = cache[self] = _TaskChildren(self.metrics, task.name, task.executor)
        return children

    def enqueued(self, task: TaskRecord) -> None:
        self._children(task).enqueued.inc()
        self._pending.inc()

    def started(self, task: TaskRecord) -> None:
        self._pending.dec()
        self._children(task).in_progress.inc()

    def finished(self, task: TaskRecord) -> None:
        children = self._children(task)
        outcome = task.outcome or c.OUTCOME_ABANDONED
        if task.started_at is None:
            self._pending.dec()
        else:
            children.in_progress.dec()
            queue_seconds, duration_seconds = task.queue_seconds, task.duration_seconds
            queue_exemplar = duration_exemplar = None
            if self._exemplars:
                queue_exemplar, duration_exemplar = self._exemplars_for(
                    children, outcome, queue_seconds, duration_seconds, task.finished_at or 0.0
                )
            if task.queue_known:
                children.queue.observe(queue_seconds, queue_exemplar)
            duration = children.duration.get(outcome)
            if duration is None:
                duration = children.duration[outcome] = self.metrics.duration_seconds.labels(
                    task.name, task.executor, outcome
                )
            duration.observe(duration_seconds, duration_exemplar)
            if children.wait is not None and task.threadpool_wait is not None:
                children.wait.observe(task.threadpool_wait)
            if children.blocking is not None and task.loop_blocking is not None:
                children.blocking.observe(task.loop_blocking)
        children.finished[outcome].inc()
        if task.error is not None and outcome == c.OUTCOME_FAILURE:
            kind = self.exception_types.admit(c.error_type(task.error))
            counter = children.failures.get(kind)
            if counter is None:
                counter = children.failures[kind] = self.metrics.failures.labels(task.name, kind)
            counter.inc()

    def threadpool_changed(self, borrowed: int, total: int) -> None:
        self._borrowed.set(borrowed)
        self._total.set(total)

    def clock_skewed(self, task: TaskRecord, seconds: float) -> None:
        """A worker's clock was ``seconds`` behind the task's add_task time (Celery)."""
        self.metrics.clock_skew.labels(task.name).inc()

    def admission_held(self) -> None:
        """A request held at the ``max_pending`` bound (counted as it is held)."""
        self.metrics.admission_delayed.inc()

    def admission_resumed(self, seconds: float) -> None:
        """A held request goes on after ``seconds``."""
        self.metrics.admission_wait_seconds.inc(seconds)

    def loop_lag(self, seconds: float) -> None:
        self.metrics.event_loop_lag_seconds.observe(seconds)

    def _exemplars_for(
        self,
        children: _TaskChildren,
        outcome: str,
        queue_seconds: float,
        duration_seconds: float,
        now: float,
    ) -> tuple[dict[str, str] | None, dict[str, str] | None]:
        """Exemplars for the queue and duration observations of a finished task.

        Prometheus keeps one exemplar per bucket and scrape, so a bucket that got one less
        than :data:`EXEMPLAR_INTERVAL` ago gets none: a slow outlier always carries its trace,
        the thousandth fast task of the second does not pay ~9 µs of exemplar validation.
        """
        stamps = children.exemplar_at
        queue_key = bisect_left(c.DURATION_BUCKETS, queue_seconds)
        duration_key = (outcome, bisect_left(c.DURATION_BUCKETS, duration_seconds))
        queue_due = now - stamps.get(queue_key, -EXEMPLAR_INTERVAL) >= EXEMPLAR_INTERVAL
        duration_due = now - stamps.get(duration_key, -EXEMPLAR_INTERVAL) >= EXEMPLAR_INTERVAL
        if not (queue_due or duration_due):
            return None, None
        exemplar = self._exemplar()
        if exemplar is None:
            return None, None
        if queue_due:
            stamps[queue_key] = now
        if duration_due:
            stamps[duration_key] = now
        return (exemplar if queue_due else None), (exemplar if duration_due else None)

    def _exemplar(self) -> dict[str, str] | None:
        ctx = trace.get_current_span().get_span_context()
        if not ctx.trace_flags.sampled:
            return None
        trace_id = ctx.trace_id
        last = self._last_trace
        if last[0] != trace_id:
            last = self._last_trace = (trace_id, format(trace_id, "032x"))
        return {"trace_id": last[1], "span_id": format(ctx.span_id, "016x")}
