"""The live page's recording: one observer's ``finished`` hook appending to bounded rings.

Everything the page shows (``ui_path``, :mod:`telemetry.live_page`) comes from here, fed by
the same hook that feeds spans and metrics, so the page and ``/metrics`` count the same tasks.
Per task the hook appends one tuple of fields of the record (never the record, its
function or its arguments; its parent context until the next pass) to a pending deque;
every :data:`DRAIN_AT` tasks, or when the page asks, one pass turns them into entries and
counters. Nothing is formatted, serialised or sent until somebody opens the page.

Bounds (documented in docs/live-page.md, tested under 100,000 tasks):

- the last :data:`MAX_TASKS` tasks;
- the last :data:`MAX_TRACES` requests (traces) with at most :data:`MAX_TASKS_PER_TRACE`
  tasks each (later ones counted, not kept);
- tracebacks of the last :data:`MAX_FAILURES` failures (messages cut at
  :data:`MAX_MESSAGE_CHARS`, tracebacks at :data:`MAX_TRACEBACK_CHARS`);
- per second for :data:`SERIES_SECONDS` s: tasks by outcome and a queue-time histogram;
- per minute for :data:`SUMMARY_MINUTES` min: per task name, count, failures and queue and
  duration histograms (task names are already bounded by ``max_task_names``), merged as
  tasks are recorded into one window (a minute leaving it is subtracted), so a read copies
  the :data:`SUMMARY_NAMES` names with the most tasks and merges nothing;
- with ``record_args``: at most :data:`MAX_ARGS` positional and :data:`MAX_ARGS` keyword
  arguments and :data:`MAX_ARGS_CHARS` characters of them per task (the rest counted).

Quantiles are read from histograms with Prometheus's buckets and its ``histogram_quantile``
interpolation, so the page's p95 is the one a Grafana panel over ``/metrics`` shows.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Sequence
from itertools import islice
from typing import Any, NamedTuple

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
#: Names in the per-name summary the page gets: the ones with the most tasks in the window.
SUMMARY_NAMES = 50
#: With ``record_args``: arguments kept per task (positional, and keyword, each) and the
#: characters of all of them (names and values; the rest cut or counted in ``omitted``).
MAX_ARGS = 20
MAX_ARGS_CHARS = 1000
#: Tasks appended before the hook records them in one pass (and before every read).
DRAIN_AT = 64
_BUCKETS = DURATION_BUCKETS
_NO_BUCKETS = (0,) * (len(_BUCKETS) + 1)  # the last one is +Inf


_NOTHING = object()
#: ``TaskEntry(*fields)`` without the generated ``__new__`` (half the time, once per task).
_new_entry = tuple.__new__


def _current_span_context() -> trace.SpanContext:
    return trace.get_current_span().get_span_context()


def _cut(text: str, limit: int) -> str:
    # ASCII marker: a non-ASCII one would make CPython store the whole cut text 2 bytes a char.
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def bounded_args(task: TaskRecord) -> dict[str, Any]:
    """A task's arguments as the page keeps them (``record_args``): scrubbed reprs of at most
    :data:`MAX_ARGS` positional and :data:`MAX_ARGS` keyword ones, :data:`MAX_ARGS_CHARS`
    characters in all; ``omitted``, when there, counts the arguments left out."""
    kwargs = task.kwargs
    kept = dict(islice(kwargs.items(), MAX_ARGS)) if len(kwargs) > MAX_ARGS else kwargs
    given = describe_args(task.args[:MAX_ARGS], kept, task.func)
    omitted = max(0, len(task.args) - MAX_ARGS) + len(kwargs) - len(kept)
    budget = MAX_ARGS_CHARS
    positional: list[str] = []
    for text in given.args:
        if budget <= 0:
            omitted += 1
            continue
        positional.append(_cut(text, budget))
        budget -= len(text)
    keywords: dict[str, str] = {}
    for key, text in given.kwargs.items():
        if budget <= 0:
            omitted += 1
            continue
        name = _cut(key, budget)
        budget -= len(key)
        keywords[name] = _cut(text, max(budget, 0))
        budget -= len(text)
    described: dict[str, Any] = {"args": positional, "kwargs": keywords}
    if omitted:
        described["omitted"] = omitted
    return described


class TaskEntry(NamedTuple):
    """What the page keeps of one finished task: raw fields copied from its record (one
    tuple, built once; wall-clock times and hex ids are derived when the page asks)."""

    seq: int
    name: str
    executor: str
    outcome: str
    enqueued_ns: int
    enqueued_at: float
    started_at: float | None
    finished_at: float | None
    finished_ns: int
    wait: float | None
    loop_blocking: float | None
    loop_blocked: bool
    position: int  # index among its response's tasks
    batch_size: int
    trace_id: int
    span_id: int
    request: tuple[int, int] | None
    error_type: str | None
    error_message: str | None
    args: dict[str, Any] | None

    @property
    def queue(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.enqueued_at

    @property
    def duration(self) -> float | None:
        started, finished = self.started_at, self.finished_at
        return None if started is None or finished is None else finished - started

    def _wall_ns(self, at: float | None) -> int | None:
        """A perf_counter time of the record on the wall clock (its enqueue time's)."""
        return None if at is None else self.enqueued_ns + int((at - self.enqueued_at) * 1e9)

    def as_dict(self) -> dict[str, Any]:
        request = self.request
        return {
            "seq": self.seq,
            "name": self.name,
            "executor": self.executor,
            "outcome": self.outcome,
            "enqueued_ns": self.enqueued_ns,
            "started_ns": self._wall_ns(self.started_at),
            "finished_ns": self._wall_ns(self.finished_at) or self.finished_ns,
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
            "index": self.position,
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

    def subtract(self, other: _NameStats) -> None:
        self.count -= other.count
        self.failures -= other.failures
        self.queue = [a - b for a, b in zip(self.queue, other.queue, strict=True)]
        self.duration = [a - b for a, b in zip(self.duration, other.duration, strict=True)]


class _Second:
    __slots__ = ("outcomes", "queue", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.outcomes: dict[str, int] = {}
        self.queue = [0] * (len(_BUCKETS) + 1)


class _Minute:
    __slots__ = ("counted", "minute", "names")

    def __init__(self, minute: int, counted: bool = True) -> None:
        self.minute = minute
        self.names: dict[str, _NameStats] = {}
        #: Its counts are in the buffer's window (until the minute leaves it).
        self.counted = counted


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
    while the task span is still current and its id can be read).

    ``finished`` only reads what cannot be read later (the task span; the failure, cut) and
    appends one tuple to ``pending`` (``deque.append`` is atomic: no lock in the hook). Every
    :data:`DRAIN_AT` tasks, and before each read, :meth:`drain` turns what is pending into
    entries, traces and counters in one pass under the lock."""

    def __init__(self, record_args: bool = False) -> None:
        self.record_args = record_args
        self.pending: deque[tuple[Any, ...]] = deque()
        self.tasks: deque[TaskEntry] = deque(maxlen=MAX_TASKS)
        self.traces: OrderedDict[tuple[int, int], RequestTrace] = OrderedDict()
        self.tracebacks: OrderedDict[int, str] = OrderedDict()
        self.seconds = [_Second(-1) for _ in range(SERIES_SECONDS)]
        self.minutes = [_Minute(-1, counted=False) for _ in range(SUMMARY_MINUTES)]
        #: Per task name, the sum of the counted minutes (what the summary reads).
        self.window: dict[str, _NameStats] = {}
        #: This process's buffer: a page that sees another one (the app restarted) reloads.
        self.epoch = f"{os.getpid():x}-{time.time_ns():x}"
        #: Tasks recorded since the start, by outcome (what bgtask_finished_total counts).
        self.totals: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.seq = 0
        #: A task had a trace id (else the page says there is no tracer provider).
        self.traced = False
        #: Sync tasks finish in worker threads: draining and reading hold this lock.
        self.lock = threading.Lock()

    def finished(self, task: TaskRecord) -> None:
        started = task.started_at
        # The task span is current only for a task that ran (skipped and abandoned tasks
        # finish outside their context; their span is made after this hook).
        current = _current_span_context() if started is not None else None
        failure = None
        if task.error is not None:
            described = task_failure(task)  # made once for the span and log observers too
            if described is not None:
                failure = (
                    described.type,
                    _cut(described.message, MAX_MESSAGE_CHARS),
                    _cut(described.stacktrace, MAX_TRACEBACK_CHARS),
                )
        args = None
        if self.record_args and (task.args or task.kwargs):
            args = bounded_args(task)
        pending = self.pending
        pending.append((
            task.name, task.executor, task.outcome, task.enqueued_ns, task.enqueued_at,
            started, task.finished_at, task.threadpool_wait, task.loop_blocking,
            task.loop_blocked, task.index, task.batch_size, task.parent_context, current,
            failure, args,
        ))  # fmt: skip
        if len(pending) >= DRAIN_AT:
            self.drain()

    def drain(self) -> None:
        """Record what is pending (see the class docstring)."""
        with self.lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        pending = self.pending
        tasks, tracebacks, totals = self.tasks, self.tracebacks, self.totals
        seconds, minutes, window = self.seconds, self.minutes, self.window
        last_context: object = _NOTHING
        parent: Any = None
        parent_ctx: Any = None
        while pending:
            (name, executor, outcome, enqueued_ns, enqueued_at, started, finished, wait,
             blocking, blocked, index, batch_size, parent_context, current, failure,
             args) = pending.popleft()  # fmt: skip
            if parent_context is not last_context:  # a response's tasks share their context
                last_context = parent_context
                parent = trace.get_current_span(parent_context)
                parent_ctx = parent.get_span_context()
            trace_id = span_id = 0
            request = None
            if parent_ctx.is_valid:
                trace_id = parent_ctx.trace_id
                request = (trace_id, parent_ctx.span_id)
            if current is not None and current.is_valid and current.span_id != parent_ctx.span_id:
                trace_id, span_id = current.trace_id, current.span_id
            if trace_id:
                self.traced = True
            error_type = message = None
            if failure is not None:
                error_type, message, stacktrace = failure
            outcome = str(outcome)
            finished_ns = (
                time.time_ns() if finished is None
                else enqueued_ns + int((finished - enqueued_at) * 1e9)
            )  # fmt: skip
            self.seq = seq = self.seq + 1
            entry = _new_entry(TaskEntry, (
                seq, name, str(executor), outcome, enqueued_ns, enqueued_at, started, finished,
                finished_ns, wait, blocking, blocked, index, batch_size, trace_id, span_id,
                request, error_type, message, args,
            ))  # fmt: skip
            tasks.append(entry)
            if request is not None:
                self._add_to_trace(request, parent, entry)
            if failure is not None:
                tracebacks[seq] = stacktrace
                if len(tracebacks) > MAX_FAILURES:
                    tracebacks.popitem(last=False)
            # Counters: since the start, per second (plots), per minute and name (summary),
            # at the second the task finished.
            totals[outcome] = totals.get(outcome, 0) + 1
            second = finished_ns // 1_000_000_000
            slot = seconds[second % SERIES_SECONDS]
            if slot.second != second:
                if slot.second > second:  # older than the series (a long-pending task)
                    slot = _Second(second)
                else:
                    slot = seconds[second % SERIES_SECONDS] = _Second(second)
            slot.outcomes[outcome] = slot.outcomes.get(outcome, 0) + 1
            minute = second // 60
            bucket = minutes[minute % SUMMARY_MINUTES]
            if bucket.minute != minute:
                if bucket.minute > minute:  # older than the window: not counted in it
                    bucket = _Minute(minute, counted=False)
                else:
                    self._uncount(bucket)
                    bucket = minutes[minute % SUMMARY_MINUTES] = _Minute(minute)
            stats = bucket.names.get(name)
            if stats is None:
                stats = bucket.names[name] = _NameStats()
            merged = None
            if bucket.counted:
                merged = window.get(name)
                if merged is None:
                    merged = window[name] = _NameStats()
                merged.count += 1
            stats.count += 1
            failed = outcome == "failure"
            if failed:
                stats.failures += 1
                if merged is not None:
                    merged.failures += 1
            if started is not None:
                i = bisect_left(_BUCKETS, started - enqueued_at)
                slot.queue[i] += 1
                stats.queue[i] += 1
                j = -1
                if finished is not None:
                    j = bisect_left(_BUCKETS, finished - started)
                    stats.duration[j] += 1
                if merged is not None:
                    merged.queue[i] += 1
                    if j >= 0:
                        merged.duration[j] += 1

    def _uncount(self, bucket: _Minute) -> None:
        """Take a minute leaving the window out of it (under the lock)."""
        if not bucket.counted:
            return
        bucket.counted = False
        window = self.window
        for name, stats in bucket.names.items():
            merged = window[name]
            if merged.count == stats.count:
                del window[name]
            else:
                merged.subtract(stats)

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

    # --- reading (the page's requests; under the lock, no per-task cost) -----------------

    def recent(self, after: int = 0, limit: int = MAX_TASKS) -> tuple[int, list[dict[str, Any]]]:
        """The last sequence number and the tasks after ``after``, oldest first."""
        with self.lock:
            self._drain_locked()
            last = self.seq
            entries = [e for e in self.tasks if e.seq > after][-limit:]
        return last, [e.as_dict() for e in entries]

    def task(self, seq: int) -> dict[str, Any] | None:
        """One kept task with its traceback (if still among the last :data:`MAX_FAILURES`)."""
        with self.lock:
            self._drain_locked()
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
            self._drain_locked()
            request = self.traces.get(key)
            if request is None:
                return None
            entries = sorted(request.tasks, key=lambda e: (e.enqueued_at, e.position, e.seq))
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

    def summary(self, now: float | None = None, names_known: str | None = None) -> dict[str, Any]:
        """Per task name over the last :data:`SUMMARY_MINUTES` minutes (the
        :data:`SUMMARY_NAMES` names with the most tasks), the per-second series of the last
        :data:`SERIES_SECONDS` seconds, and the totals since the start.

        ``names_known``: the ``names_token`` of the caller's copy of the names ("keep": any
        copy will do); when it is still current, ``names`` is None (not rebuilt, not sent)."""
        second = int(time.time() if now is None else now)
        minute = second // 60
        with self.lock:
            self._drain_locked()
            for bucket in self.minutes:
                if bucket.minute <= minute - SUMMARY_MINUTES:
                    self._uncount(bucket)
            window = self.window
            token = f"{self.seq}-{minute}"
            top: list[tuple[str, int, int, list[int], list[int]]] | None = None
            if names_known not in (token, "keep"):
                # A copy of the top names only: no merge, no quantile under the lock.
                best = (
                    heapq.nlargest(SUMMARY_NAMES, window.items(), key=lambda kv: kv[1].count)
                    if len(window) > SUMMARY_NAMES
                    else window.items()
                )
                top = [(n, s.count, s.failures, list(s.queue), list(s.duration)) for n, s in best]
            names_total = len(window)
            series = []
            for s in range(second - SERIES_SECONDS + 1, second + 1):
                slot = self.seconds[s % SERIES_SECONDS]
                if slot.second == s:
                    series.append((s, dict(slot.outcomes), list(slot.queue)))
                else:
                    series.append((s, {}, list(_NO_BUCKETS)))
            totals = dict(self.totals)
            seq = self.seq
        names = None
        if top is not None:
            names = [
                {
                    "name": name,
                    "count": count,
                    "failures": failures,
                    "failure_ratio": failures / count if count else 0.0,
                    "queue_p50": quantile(0.5, queue),
                    "queue_p95": quantile(0.95, queue),
                    "duration_p50": quantile(0.5, duration),
                    "duration_p95": quantile(0.95, duration),
                }
                for name, count, failures, queue, duration in sorted(
                    top, key=lambda row: (-row[1], row[0])
                )
            ]
        return {
            "window_minutes": SUMMARY_MINUTES,
            "names": names,
            "names_token": token,
            "names_total": names_total,
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
            "traced": self.traced,
        }
