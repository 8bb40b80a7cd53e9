"""The live page's recording: one observer's ``finished`` hook appending to bounded rings.

Everything the page shows (``ui_path``, :mod:`telemetry.live_page`) comes from here, fed by
the same hook that feeds spans and metrics, so the page and ``/metrics`` count the same tasks.
Per task the hook copies a few fields of the record (never the record, its function, its
arguments or its context) into a small entry and bumps two sets of counters; nothing is
formatted, serialised or sent until somebody opens the page.

Bounds (documented in docs/live-page.md, tested under 100,000 tasks):

- the last :data:`MAX_TASKS` tasks;
- the last :data:`MAX_TRACES` requests (traces) with at most :data:`MAX_TASKS_PER_TRACE`
  tasks each (later ones counted, not kept);
- tracebacks of the last :data:`MAX_FAILURES` failures (messages cut at
  :data:`MAX_MESSAGE_CHARS`, tracebacks at :data:`MAX_TRACEBACK_CHARS`);
- per second for :data:`SERIES_SECONDS` s: tasks by outcome and a queue-time histogram;
- per minute for :data:`SUMMARY_MINUTES` min: per task name, count, failures and queue and
  duration histograms (task names are already bounded by ``max_task_names``).

Quantiles are read from histograms with Prometheus's buckets and its ``histogram_quantile``
interpolation, so the page's p95 is the one a Grafana panel over ``/metrics`` shows.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace

from tasklens.runtime import TaskObserver, TaskRecord

from .contract import DURATION_BUCKETS, OUTCOMES
from .redact import describe_args, task_failure

MAX_TASKS = 1000
MAX_TRACES = 200
MAX_TASKS_PER_TRACE = 20
MAX_FAILURES = 200
MAX_MESSAGE_CHARS = 300
MAX_TRACEBACK_CHARS = 8000
SERIES_SECONDS = 120
SUMMARY_MINUTES = 5
_BUCKETS = DURATION_BUCKETS
_NO_BUCKETS = (0,) * (len(_BUCKETS) + 1)  # the last one is +Inf


def _cut(text: str, limit: int) -> str:
    # ASCII marker: a non-ASCII one would make CPython store the whole cut text 2 bytes a char.
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


class TaskEntry:
    """What the page keeps of one finished task (copied from its record)."""

    __slots__ = (
        "args",
        "batch_size",
        "duration",
        "enqueued_ns",
        "error_message",
        "error_type",
        "executor",
        "finished_ns",
        "index",
        "loop_blocked",
        "loop_blocking",
        "name",
        "outcome",
        "queue",
        "request",
        "seq",
        "span_id",
        "started_ns",
        "trace_id",
        "wait",
    )

    def __init__(self, seq: int, task: TaskRecord, finished_ns: int) -> None:
        self.seq = seq
        self.name = task.name
        self.executor = str(task.executor)
        self.outcome = str(task.outcome)
        # Wall-clock times from the enqueue time and the runtime's perf_counter offsets.
        enqueued = self.enqueued_ns = task.enqueued_ns
        started = task.started_at
        self.started_ns = (
            0 if started is None else enqueued + int((started - task.enqueued_at) * 1e9)
        )
        end = task.finished_at
        self.finished_ns = (
            finished_ns if end is None else enqueued + int((end - task.enqueued_at) * 1e9)
        )
        self.queue = task.queue_seconds if task.started_at is not None else None
        self.wait = task.threadpool_wait
        self.duration = task.duration_seconds if task.finished_at is not None else None
        self.loop_blocked = task.loop_blocked
        self.loop_blocking = task.loop_blocking
        self.index = task.index
        self.batch_size = task.batch_size
        self.trace_id = 0
        self.span_id = 0
        self.request: tuple[int, int] | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.args: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        request = self.request
        return {
            "seq": self.seq,
            "name": self.name,
            "executor": self.executor,
            "outcome": self.outcome,
            "enqueued_ns": self.enqueued_ns,
            "started_ns": self.started_ns or None,
            "finished_ns": self.finished_ns,
            "queue_seconds": self.queue,
            "threadpool_wait_seconds": self.wait,
            "duration_seconds": self.duration,
            "trace_id": f"{self.trace_id:032x}" if self.trace_id else None,
            "span_id": f"{self.span_id:016x}" if self.span_id else None,
            "request": trace_key(request) if request else None,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "loop_blocked": self.loop_blocked,
            "loop_blocking_seconds": self.loop_blocking,
            "index": self.index,
            "batch_size": self.batch_size,
            "args": self.args,
        }


def trace_key(request: tuple[int, int]) -> str:
    """The page's id of a request: its server span's trace id and span id, in hex."""
    return f"{request[0]:032x}-{request[1]:016x}"


def parse_trace_key(text: str) -> tuple[int, int] | None:
    trace_hex, _, span_hex = text.partition("-")
    if len(trace_hex) != 32 or len(span_hex) != 16:
        return None
    try:
        return int(trace_hex, 16), int(span_hex, 16)
    except ValueError:
        return None


class RequestTrace:
    """A request (its server span) and the tasks it added, as they finished."""

    __slots__ = ("dropped", "name", "span", "start_ns", "tasks")

    def __init__(self, span: trace.Span) -> None:
        # An SDK span is kept (bounded: MAX_TRACES) to read its end when the page asks:
        # in inline mode the request ends after its tasks.
        self.span: Any = span if hasattr(span, "end_time") else None
        self.name: str | None = getattr(span, "name", None)
        self.start_ns: int | None = getattr(span, "start_time", None)
        self.tasks: list[TaskEntry] = []
        self.dropped = 0

    @property
    def end_ns(self) -> int | None:
        return getattr(self.span, "end_time", None) if self.span is not None else None


class _NameStats:
    __slots__ = ("count", "duration", "failures", "queue")

    def __init__(self) -> None:
        self.count = 0
        self.failures = 0
        self.queue = [0] * (len(_BUCKETS) + 1)
        self.duration = [0] * (len(_BUCKETS) + 1)


class _Second:
    __slots__ = ("outcomes", "queue", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.outcomes: dict[str, int] = {}
        self.queue = [0] * (len(_BUCKETS) + 1)


class _Minute:
    __slots__ = ("minute", "names")

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.names: dict[str, _NameStats] = {}


def quantile(q: float, buckets: Sequence[int]) -> float | None:
    """Prometheus's ``histogram_quantile`` over counts per bucket (``le`` bounds
    :data:`DURATION_BUCKETS`, then +Inf): linear within the bucket; None with no sample."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for i, count in enumerate(buckets):
        if cumulative + count >= rank and count:
            if i == len(_BUCKETS):  # +Inf: the highest finite bound, as Prometheus answers
                return _BUCKETS[-1]
            lower = _BUCKETS[i - 1] if i else 0.0
            return lower + (_BUCKETS[i] - lower) * (rank - cumulative) / count
        cumulative += count
    return _BUCKETS[-1]


class LiveBuffer(TaskObserver):
    """The live page's observer (last in the default list, so its ``finished`` runs first,
    while the task span is still current and its id can be read)."""

    def __init__(self, record_args: bool = False) -> None:
        self.record_args = record_args
        self.tasks: deque[TaskEntry] = deque(maxlen=MAX_TASKS)
        self.traces: OrderedDict[tuple[int, int], RequestTrace] = OrderedDict()
        self.tracebacks: OrderedDict[int, str] = OrderedDict()
        self.seconds = [_Second(-1) for _ in range(SERIES_SECONDS)]
        self.minutes = [_Minute(-1) for _ in range(SUMMARY_MINUTES)]
        #: Tasks recorded since the start, by outcome (what bgtask_finished_total counts).
        self.totals: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.seq = 0
        #: Sync tasks finish in worker threads: one lock keeps every count exact.
        self.lock = threading.Lock()

    def finished(self, task: TaskRecord) -> None:
        now_ns = time.time_ns()
        failure = task_failure(task) if task.error is not None else None
        parent = trace.get_current_span(task.parent_context)
        parent_ctx = parent.get_span_context()
        # The task span is current only for a task that ran (skipped and abandoned tasks
        # finish outside their context; their span is made after this hook).
        current = trace.get_current_span().get_span_context() if task.started_at else None
        args = None
        if self.record_args and (task.args or task.kwargs):
            described = describe_args(task.args, task.kwargs, task.func)
            args = {"args": described.args, "kwargs": described.kwargs}
        with self.lock:
            self.seq += 1
            entry = TaskEntry(self.seq, task, now_ns)
            entry.args = args
            if parent_ctx.is_valid:
                entry.request = request = (parent_ctx.trace_id, parent_ctx.span_id)
                entry.trace_id = parent_ctx.trace_id
                self._add_to_trace(request, parent, entry)
            if current is not None and current.is_valid and current.span_id != parent_ctx.span_id:
                entry.trace_id, entry.span_id = current.trace_id, current.span_id  # task span
            if failure is not None:
                entry.error_type = failure.type
                entry.error_message = _cut(failure.message, MAX_MESSAGE_CHARS)
                self.tracebacks[entry.seq] = _cut(failure.stacktrace, MAX_TRACEBACK_CHARS)
                if len(self.tracebacks) > MAX_FAILURES:
                    self.tracebacks.popitem(last=False)
            self.tasks.append(entry)
            self._count(entry, now_ns // 1_000_000_000)

    def _add_to_trace(self, key: tuple[int, int], span: trace.Span, entry: TaskEntry) -> None:
        request = self.traces.get(key)
        if request is None:
            request = self.traces[key] = RequestTrace(span)
            if len(self.traces) > MAX_TRACES:
                self.traces.popitem(last=False)
        if len(request.tasks) < MAX_TASKS_PER_TRACE:
            request.tasks.append(entry)
        else:
            request.dropped += 1

    def _count(self, entry: TaskEntry, second: int) -> None:
        outcome = entry.outcome
        self.totals[outcome] = self.totals.get(outcome, 0) + 1
        slot = self.seconds[second % SERIES_SECONDS]
        if slot.second != second:
            slot = self.seconds[second % SERIES_SECONDS] = _Second(second)
        slot.outcomes[outcome] = slot.outcomes.get(outcome, 0) + 1
        minute = second // 60
        bucket = self.minutes[minute % SUMMARY_MINUTES]
        if bucket.minute != minute:
            bucket = self.minutes[minute % SUMMARY_MINUTES] = _Minute(minute)
        stats = bucket.names.get(entry.name)
        if stats is None:
            stats = bucket.names[entry.name] = _NameStats()
        stats.count += 1
        if outcome == "failure":
            stats.failures += 1
        if entry.queue is not None:
            i = bisect_left(_BUCKETS, entry.queue)
            slot.queue[i] += 1
            stats.queue[i] += 1
        if entry.duration is not None:
            stats.duration[bisect_left(_BUCKETS, entry.duration)] += 1

    # --- reading (the page's requests; under the lock, no per-task cost) -----------------

    def recent(self, after: int = 0, limit: int = MAX_TASKS) -> tuple[int, list[dict[str, Any]]]:
        """The last sequence number and the tasks after ``after``, oldest first."""
        with self.lock:
            last = self.seq
            entries = [e for e in self.tasks if e.seq > after][-limit:]
        return last, [e.as_dict() for e in entries]

    def task(self, seq: int) -> dict[str, Any] | None:
        """One kept task with its traceback (if still among the last :data:`MAX_FAILURES`)."""
        with self.lock:
            entry = next((e for e in reversed(self.tasks) if e.seq == seq), None)
            if entry is None:
                entry = next(
                    (e for t in self.traces.values() for e in t.tasks if e.seq == seq), None
                )
            traceback = self.tracebacks.get(seq)
        if entry is None:
            return None
        return {**entry.as_dict(), "traceback": traceback}

    def request(self, key: tuple[int, int]) -> dict[str, Any] | None:
        """A request and its kept tasks in the order they were added."""
        with self.lock:
            request = self.traces.get(key)
            if request is None:
                return None
            entries = sorted(request.tasks, key=lambda e: (e.enqueued_ns, e.index, e.seq))
            tracebacks = {e.seq: self.tracebacks.get(e.seq) for e in entries if e.error_type}
            dropped = request.dropped
        tasks = [{**e.as_dict(), "traceback": tracebacks.get(e.seq)} for e in entries]
        end_ns = request.end_ns
        start_ns = request.start_ns
        return {
            "key": trace_key(key),
            "trace_id": f"{key[0]:032x}",
            "span_id": f"{key[1]:016x}",
            "name": request.name,
            "start_ns": start_ns,
            "end_ns": end_ns,
            "duration_seconds": (end_ns - start_ns) / 1e9 if end_ns and start_ns else None,
            "tasks": tasks,
            "tasks_not_kept": dropped,
        }

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """Per task name over the last :data:`SUMMARY_MINUTES` minutes, the per-second series
        of the last :data:`SERIES_SECONDS` seconds, and the totals since the start."""
        second = int(time.time() if now is None else now)
        minute = second // 60
        with self.lock:
            merged: dict[str, _NameStats] = {}
            for bucket in self.minutes:
                if minute - SUMMARY_MINUTES < bucket.minute <= minute:
                    for name, stats in bucket.names.items():
                        into = merged.get(name)
                        if into is None:
                            into = merged[name] = _NameStats()
                        into.count += stats.count
                        into.failures += stats.failures
                        into.queue = [a + b for a, b in zip(into.queue, stats.queue, strict=True)]
                        into.duration = [
                            a + b for a, b in zip(into.duration, stats.duration, strict=True)
                        ]
            series = []
            for s in range(second - SERIES_SECONDS + 1, second + 1):
                slot = self.seconds[s % SERIES_SECONDS]
                if slot.second == s:
                    series.append((s, dict(slot.outcomes), list(slot.queue)))
                else:
                    series.append((s, {}, list(_NO_BUCKETS)))
            totals = dict(self.totals)
            seq = self.seq
        names = [
            {
                "name": name,
                "count": stats.count,
                "failures": stats.failures,
                "failure_ratio": stats.failures / stats.count if stats.count else 0.0,
                "queue_p50": quantile(0.5, stats.queue),
                "queue_p95": quantile(0.95, stats.queue),
                "duration_p50": quantile(0.5, stats.duration),
                "duration_p95": quantile(0.95, stats.duration),
            }
            for name, stats in sorted(merged.items())
        ]
        return {
            "window_minutes": SUMMARY_MINUTES,
            "names": names,
            "series": {
                "start": series[0][0],
                "outcomes": {
                    o: [counts.get(o, 0) for _, counts, _ in series]
                    for o in sorted({o for _, counts, _ in series for o in counts} | {"success"})
                },
                "queue_p95": [quantile(0.95, queue) for _, _, queue in series],
            },
            "totals": totals,
            "seq": seq,
        }
