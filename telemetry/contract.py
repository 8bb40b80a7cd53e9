"""The telemetry contract: every metric, label, span and attribute name, written once.

Dashboards, alert rules, tests and the README tables are generated from or checked
against this module, so a rename here is a rename everywhere (or a failing test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Label values the runtime decides (executor, outcome, the fold-over task name), re-exported.
from tasklens.runtime.outcomes import (  # noqa: F401
    EXECUTOR_BROKER,
    EXECUTOR_CELERY,
    EXECUTOR_EVENT_LOOP,
    EXECUTOR_THREAD_POOL,
    EXECUTORS,
    OTHER_TASK,
    OUTCOME_ABANDONED,
    OUTCOME_CANCELLED,
    OUTCOME_FAILURE,
    OUTCOME_SKIPPED,
    OUTCOME_SUCCESS,
    OUTCOMES,
)

#: Histogram buckets, seconds: 100 µs (a log write) to 10 minutes (a report).
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

MetricType = Literal["counter", "histogram", "gauge"]
MultiprocessMode = Literal["livesum", "liveall", "livemax", "livemin", "sum", "all", "max", "min"]


@dataclass(frozen=True)
class MetricSpec:
    """One Prometheus metric: its name (without the ``_total`` suffix for counters) and labels."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str
    multiprocess_mode: MultiprocessMode = "livesum"

    @property
    def sample_name(self) -> str:
        """The name as it appears in PromQL (counters gain ``_total``)."""
        return f"{self.name}_total" if self.type == "counter" else self.name


ENQUEUED = MetricSpec(
    "bgtask_enqueued", "counter", ("task",), "Background tasks added to a response."
)
FINISHED = MetricSpec(
    "bgtask_finished",
    "counter",
    ("task", "executor", "outcome"),
    "Background tasks that reached an outcome (success, failure, skipped, cancelled, abandoned).",
)
FAILURES = MetricSpec(
    "bgtask_failures",
    "counter",
    ("task", "exception"),
    "Background task failures by exception class (module.qualname; past max_exception_types "
    "classes, other).",
)
QUEUE_SECONDS = MetricSpec(
    "bgtask_queue_seconds",
    "histogram",
    ("task", "executor"),
    "Time from add_task to the start of the task function (includes thread-pool wait).",
)
THREADPOOL_WAIT_SECONDS = MetricSpec(
    "bgtask_threadpool_wait_seconds",
    "histogram",
    ("task",),
    "Wait for a thread-pool slot (sync tasks).",
)
DURATION_SECONDS = MetricSpec(
    "bgtask_duration_seconds",
    "histogram",
    ("task", "executor", "outcome"),
    "Task function run time, start to end.",
)
IN_PROGRESS = MetricSpec(
    "bgtask_in_progress", "gauge", ("task", "executor"), "Background tasks running now."
)
PENDING = MetricSpec("bgtask_pending", "gauge", (), "Background tasks added and not started yet.")
THREADPOOL_TOKENS = MetricSpec(
    "bgtask_threadpool_tokens",
    "gauge",
    ("state",),
    "Thread-pool tokens of the background-task limiter (state: borrowed or total).",
    multiprocess_mode="livesum",
)
LOOP_BLOCKING_SECONDS = MetricSpec(
    "bgtask_loop_blocking_seconds",
    "histogram",
    ("task",),
    "Longest uninterrupted event-loop step (time between two awaits) of each async task.",
)
EVENT_LOOP_LAG_SECONDS = MetricSpec(
    "bgtask_event_loop_lag_seconds",
    "histogram",
    (),
    "Event-loop lag measured by a periodic sampler.",
)
SPANS_DROPPED = MetricSpec(
    "bgtask_spans_dropped",
    "counter",
    (),
    "Task spans dropped by the span exporter queue (collector down or too slow).",
)

#: The core contract, in README order.
CORE_METRICS = (
    ENQUEUED,
    FINISHED,
    FAILURES,
    QUEUE_SECONDS,
    THREADPOOL_WAIT_SECONDS,
    DURATION_SECONDS,
    IN_PROGRESS,
    PENDING,
    THREADPOOL_TOKENS,
)
ALL_METRICS = (*CORE_METRICS, LOOP_BLOCKING_SECONDS, EVENT_LOOP_LAG_SECONDS, SPANS_DROPPED)

#: Backpressure (``max_pending``, issue 10): what happens at the bound is counted. Apart from
#: ALL_METRICS until the dashboards show them; README lists them with the option.
ADMISSION_DELAYED = MetricSpec(
    "bgtask_admission_delayed",
    "counter",
    (),
    "Requests held before the app saw them because max_pending tasks were unfinished.",
)
ADMISSION_WAIT_SECONDS = MetricSpec(
    "bgtask_admission_wait_seconds",
    "counter",
    (),
    "Seconds requests were held at the max_pending bound, in all.",
)
BACKPRESSURE_METRICS = (ADMISSION_DELAYED, ADMISSION_WAIT_SECONDS)

#: Celery workers (issue 12): the queue time of a task runs from add_task in the web process
#: to the start on the worker, on two clocks; a worker clock behind is counted here.
CLOCK_SKEW = MetricSpec(
    "bgtask_clock_skew",
    "counter",
    ("task",),
    "Tasks started on a worker whose clock was behind the add_task time the message carries "
    "(queue time recorded as 0).",
)
CELERY_METRICS = (CLOCK_SKEW,)

# --- Traces -------------------------------------------------------------------------------
SPAN_NAME_PREFIX = "bgtask "
#: The web-process span of a Celery task: its send to the broker (PRODUCER).
SEND_SPAN_NAME_PREFIX = "bgtask send "
ENQUEUED_EVENT = "bgtask.enqueued"
LOOP_BLOCKED_EVENT = "bgtask.loop_blocked"

ATTR_NAME = "bgtask.name"
ATTR_EXECUTOR = "bgtask.executor"
ATTR_QUEUE_SECONDS = "bgtask.queue_seconds"
ATTR_THREADPOOL_WAIT_SECONDS = "bgtask.threadpool_wait_seconds"
ATTR_OUTCOME = "bgtask.outcome"
ATTR_INDEX = "bgtask.index"
ATTR_BATCH_SIZE = "bgtask.batch_size"
ATTR_ARGS = "bgtask.args"
ATTR_KWARGS = "bgtask.kwargs"
#: Semantic conventions 1.33 (stable): replace the deprecated ``code.function`` and
#: ``code.namespace``; the function name is fully qualified.
ATTR_CODE_FUNCTION_NAME = "code.function.name"
ATTR_CODE_FILE_PATH = "code.file.path"
ATTR_CODE_LINE_NUMBER = "code.line.number"
ATTR_ERROR_TYPE = "error.type"
ATTR_UNREPRESENTABLE = "bgtask.unrepresentable"
#: Messaging semantic conventions, on the send and worker spans of Celery tasks.
ATTR_MESSAGING_SYSTEM = "messaging.system"
ATTR_MESSAGING_OPERATION_TYPE = "messaging.operation.type"
ATTR_MESSAGING_MESSAGE_ID = "messaging.message.id"
ATTR_MESSAGING_DESTINATION_NAME = "messaging.destination.name"

#: Span attributes in README order, with what they hold.
SPAN_ATTRIBUTES = {
    ATTR_NAME: "task name, module.qualname of the callable (a Celery task: its registered name)",
    ATTR_EXECUTOR: "event_loop, thread_pool, broker (a Celery task's send) or celery (its run)",
    ATTR_QUEUE_SECONDS: "add_task to function start",
    ATTR_THREADPOOL_WAIT_SECONDS: "wait for a thread-pool slot (sync tasks only)",
    ATTR_OUTCOME: "success, failure, skipped, cancelled or abandoned",
    ATTR_INDEX: "position of the task among its response's tasks (0-based)",
    ATTR_BATCH_SIZE: "number of tasks of the response",
    ATTR_CODE_FUNCTION_NAME: "the callable, module.qualname (a callable object: its __call__)",
    ATTR_CODE_FILE_PATH: "source file of the function the task runs (not for builtins)",
    ATTR_CODE_LINE_NUMBER: "first line of that function",
    ATTR_ERROR_TYPE: "exception class, on failure",
    ATTR_UNREPRESENTABLE: "values recorded as <unrepresentable T> (repr or str raised), if any",
    ATTR_MESSAGING_SYSTEM: "celery (Celery tasks only, as the next three)",
    ATTR_MESSAGING_OPERATION_TYPE: "send (web process) or process (worker)",
    ATTR_MESSAGING_MESSAGE_ID: "the Celery task id",
    ATTR_MESSAGING_DESTINATION_NAME: "the Celery queue",
}


def error_type(exc: BaseException) -> str:
    """The ``exception`` label and ``error.type`` attribute: class name, module-qualified
    unless it is a builtin (``ValueError``, ``shop.payments.CardDeclined``)."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
