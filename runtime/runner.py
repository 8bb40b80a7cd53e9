"""Where a task is enqueued, started and finished: the runtime's one execution path.

``enqueue`` captures the task at ``add_task`` time (name, executor, trace context, clock);
``run`` executes a response's tasks in order, async ones on the event loop and each run of
consecutive sync ones in a single thread hand-off (on asyncio through one queue that worker
threads drain: runtime/drain.py), isolating failures per ``on_error``. With ``max_pending``,
``admit`` holds new requests while that many tasks are unfinished (backpressure).
Every step is announced to the observers; the runtime knows none of them by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from opentelemetry import context as otel_context
from opentelemetry.context import Context

from .celery_send import CeleryDispatch
from .context import current_task_var
from .detached import DetachedExecutor
from .drain import Job, SyncDrain
from .loop_lag import LoopLagSampler
from .naming import TaskIdentity, TaskNamer, display_name
from .observer import TaskObserver
from .options import RuntimeOptions
from .outcomes import (
    OUTCOME_ABANDONED,
    OUTCOME_CANCELLED,
    OUTCOME_FAILURE,
    OUTCOME_SKIPPED,
    OUTCOME_SUCCESS,
    Outcome,
)
from .record import TaskRecord
from .stepping import resume_steps

try:  # anyio marks worker-thread contexts "no async library"; a task's own context too
    from sniffio import current_async_library_cvar as _async_library
except ImportError:  # newer anyio releases no longer need sniffio
    _async_library = None  # type: ignore[assignment]

_logger = logging.getLogger("tasklens.runtime")
_perf = time.perf_counter


#: A remote enqueue time further back than this (30 days) is not a queue time.
MAX_REMOTE_WAIT_NS = 30 * 24 * 3600 * 10**9


def _ran(*_: Any, **__: Any) -> None:
    """A finished record's function (the real one is released)."""


#: ``_begin_async``: the function returned an awaitable that is not a coroutine.
_NOT_STEPPED = object()


def _never_ran(result: object) -> bool:
    """A sync task returned something whose body has not run: a coroutine (an ``async def``
    called without ``await``), another awaitable, or an async generator. (No ABC check: an
    ``isinstance`` against ``Awaitable`` caches every type it sees.)"""
    if isinstance(result, (types.CoroutineType, types.AsyncGeneratorType)):
        return True
    if isinstance(result, types.GeneratorType):
        return bool(result.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE)
    return hasattr(type(result), "__await__")


def _call_sync(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, BaseException | None]:
    """Call a sync task: (its result, None) or (None, what it raised). Apart from the runner
    so that the exception's traceback holds no frame that refers to the record: no
    record <-> traceback cycle keeps a failure (its message, its arguments) until a full GC."""
    try:
        return func(*args, **kwargs), None
    except BaseException as exc:
        return None, exc


def _returned_awaitable(record: TaskRecord, result: object) -> TypeError:
    """The failure of a sync task that returned an awaitable; a coroutine is closed (no
    "never awaited" warning), its body never ran."""
    if inspect.iscoroutine(result):
        kind = "a coroutine"
        result.close()
    elif inspect.isasyncgen(result):
        kind = "an async generator"
    else:
        kind = f"an awaitable ({type(result).__name__})"
    return TypeError(
        f"background task {display_name(record.func)} returned {kind} that nothing awaits; "
        "make it async def or await it"
    )


class TaskRunner:
    """Runs the background tasks of one instrumented app and announces their lifecycle."""

    def __init__(
        self,
        options: RuntimeOptions,
        observers: Sequence[TaskObserver],
        namer: TaskNamer | None = None,
    ) -> None:
        self.options = options
        self.namer = namer or TaskNamer(options.max_task_names)
        self.observers = tuple(observers)
        self._on_enqueued = _hooks(self.observers, "enqueued")
        self._on_started = _hooks(self.observers, "started")
        self._on_finished = tuple(reversed(_hooks(self.observers, "finished")))
        self._on_threadpool = _hooks(self.observers, "threadpool_changed")
        self._on_loop_lag = _hooks(self.observers, "loop_lag")
        self._stop_on_error = options.on_error == "stop"
        self._block_threshold = options.loop_block_threshold
        self._limiter: anyio.CapacityLimiter | None = None
        self._drain: SyncDrain | None = None
        self.detached: DetachedExecutor | None = None
        self._warned_no_lifespan = False
        # Backpressure (max_pending): tasks enqueued and not finished, counted only when a
        # bound is set. Sync tasks finish in worker threads, hence the lock.
        self._bounded = options.max_pending is not None
        #: The middleware calls ``admit`` while ``unfinished`` exceeds this.
        self.admission_limit: int = (
            sys.maxsize if options.max_pending is None else options.max_pending
        )
        self._resume_at = (options.max_pending or 0) // 2
        self.unfinished = 0
        self._count_lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        #: Requests held at the bound, and the seconds they waited in all.
        self.admission_delayed = 0
        self.admission_wait_seconds = 0.0
        self._on_held = _optional_hooks(self.observers, "admission_held")
        self._on_resumed = _optional_hooks(self.observers, "admission_resumed")
        self._on_clock_skew = _optional_hooks(self.observers, "clock_skewed")
        #: ``celery=``: Celery tasks of add_task become sends to its broker.
        self.dispatch = CeleryDispatch(options.celery) if options.celery is not None else None

    # --- enqueue ----------------------------------------------------------------------
    def enqueue(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: Context | None = None,
    ) -> TaskRecord:
        """Capture a task at ``add_task`` time: name, executor, parent trace context (the
        request's server span; the current context if None) and clock."""
        if not callable(func):
            raise TypeError(
                f"add_task() expects a callable, got {func!r} of type {type(func).__name__}"
            )
        message = None
        send = self.dispatch.claim(func, args, kwargs) if self.dispatch is not None else None
        if send is not None:  # a Celery task: the record runs its send (runtime/celery_send)
            identity, func, message = send.identity(self.namer), send, send.message()
        else:
            identity = self.namer.identify(func)
        record = TaskRecord(
            identity,
            func,
            args,
            kwargs,
            identity.is_async,
            parent if parent is not None else otel_context.get_current(),
        )
        record.message = message
        return self._enqueued(record)

    def _enqueued(self, record: TaskRecord) -> TaskRecord:
        """Count the record as unfinished (``max_pending``) and announce it."""
        if self._bounded:
            with self._count_lock:
                self.unfinished += 1
        _notify(self._on_enqueued, record)
        return record

    # --- tasks run by another engine (a Celery worker: runtime/celery_worker.py) ----------
    def receive(
        self,
        identity: TaskIdentity,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: Context | None,
        enqueued_ns: int | None,
    ) -> TaskRecord:
        """A task that arrived from elsewhere, enqueued at wall-clock ``enqueued_ns`` (in
        another process: its queue time runs from then; a clock behind that time is clamped
        to 0 queue time and announced to ``clock_skewed(record, seconds)`` hooks). Without
        a time, or with one more than :data:`MAX_REMOTE_WAIT_NS` ago (not a clock a queue
        time can be measured against), the queue time is unknown and not recorded."""
        record = TaskRecord(identity, func, args, kwargs, False, parent)
        record.claimed = True
        waited = None if enqueued_ns is None else record.enqueued_ns - enqueued_ns
        if waited is None or waited > MAX_REMOTE_WAIT_NS:
            record.queue_known = False
        elif waited < 0:
            _notify(self._on_clock_skew, record, -waited / 1e9)
        else:
            record.enqueued_at -= waited / 1e9
            record.enqueued_ns = enqueued_ns  # type: ignore[assignment]
        return self._enqueued(record)

    def start_external(self, record: TaskRecord) -> contextvars.Token[TaskRecord | None]:
        """The engine is about to call the task's function, in this thread and context;
        returns what :meth:`finish_external` restores (a task run inside another task)."""
        token = current_task_var.set(record)
        _notify(self._on_started, record)
        record.started_at = _perf()
        return token

    def finish_external(
        self,
        record: TaskRecord,
        outcome: Outcome,
        error: BaseException | None = None,
        token: contextvars.Token[TaskRecord | None] | None = None,
    ) -> None:
        """The engine's call returned (``outcome``, ``error`` on failure)."""
        record.outcome = outcome
        record.error = error
        try:
            self._finish(record)
        finally:
            if token is not None:
                with contextlib.suppress(ValueError):  # another context than the start's
                    current_task_var.reset(token)
            elif current_task_var.get() is record:
                current_task_var.set(None)

    # --- backpressure -----------------------------------------------------------------
    async def admit(self) -> None:
        """Hold a new request while more than ``max_pending`` tasks are unfinished, until
        they are down to half the bound: intake slows, as plain Starlette's does when its
        tasks are slow, instead of request cycles piling up. A held request is counted when
        it is held (``admission_delayed``, observer hook ``admission_held()``) and its wait
        when it goes on (``admission_wait_seconds``, ``admission_resumed(seconds)``)."""
        with self._count_lock:
            self.admission_delayed += 1
        _notify(self._on_held)
        start = _perf()
        try:
            while self.unfinished > self.admission_limit:
                loop = asyncio.get_running_loop()
                waiter: asyncio.Future[None] = loop.create_future()
                with self._count_lock:
                    if self.unfinished <= self._resume_at:
                        break
                    self._waiters.append((loop, waiter))
                await waiter
        finally:
            waited = _perf() - start
            with self._count_lock:
                self.admission_wait_seconds += waited
            _notify(self._on_resumed, waited)

    def _finished_one(self) -> None:
        with self._count_lock:
            self.unfinished -= 1
            if not self._waiters or self.unfinished > self._resume_at:
                return
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_wake, waiter)

    # --- run --------------------------------------------------------------------------
    async def run(self, records: list[TaskRecord]) -> None:
        """Run a response's tasks: handed to the detached executor, or here, in order."""
        for record in records:
            record.claimed = True
        detached = self.detached
        if detached is not None and detached.accepting:
            detached.submit(records)
            return
        if self.options.detached and not self._warned_no_lifespan:
            self._warned_no_lifespan = True
            _logger.warning(
                "tasklens: mode='detached' and the app's lifespan is shutting down; "
                "running this response's tasks inline"
            )
        await self.run_batch(records)

    async def run_batch(self, records: Sequence[TaskRecord]) -> None:
        """Run tasks in order; failures are isolated unless ``on_error="stop"``."""
        size = len(records)
        for index, record in enumerate(records):
            record.index = index
            record.batch_size = size
        position = 0
        try:
            while position < size:
                record = records[position]
                if record.is_async:
                    await self._run_async(record)
                    position += 1
                else:
                    end = position + 1
                    while end < size and not records[end].is_async:
                        end += 1
                    position = await self._run_sync_batch(records, position, end)
                    record = records[position - 1]
                if record.outcome == OUTCOME_FAILURE and self._stop_on_error:
                    self._finish_unstarted(records[position:], OUTCOME_SKIPPED)
                    assert record.error is not None
                    raise record.error
        except BaseException:
            self._finish_unstarted(records[position:], OUTCOME_ABANDONED)
            raise

    async def _run_async(self, record: TaskRecord) -> None:
        """Run an async task on the loop, every step inside the task's own context (captured
        at ``add_task``): its context variables stay its own, no asyncio task needed."""
        context = record.context
        try:
            coro, yielded = context.run(self._begin_async, record)
            if coro is not None:
                if yielded is _NOT_STEPPED:
                    await coro  # an awaitable that is not a coroutine (Starlette awaits it)
                else:
                    longest = [record.loop_blocking or 0.0]
                    try:
                        await resume_steps(coro, yielded, longest, context)
                    finally:
                        if self._block_threshold is not None:
                            record.loop_blocking = longest[0]
        except Exception as exc:
            record.outcome = OUTCOME_FAILURE
            record.error = exc
        except BaseException as exc:
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            record.outcome = OUTCOME_CANCELLED if cancelled else OUTCOME_FAILURE
            record.error = exc
            context.run(self._finish, record)
            context.run(current_task_var.set, None)
            raise
        else:
            record.outcome = OUTCOME_SUCCESS
        context.run(self._finish, record)
        context.run(current_task_var.set, None)  # no record <-> context cycle left for GC

    def _begin_async(self, record: TaskRecord) -> tuple[Any, Any]:
        """In the task's context: announce the start, call the function and run its first
        step, as ``await`` would. Returns (coroutine, what it yielded) when it suspended,
        (awaitable, _NOT_STEPPED) for an awaitable that is not a coroutine, (None, None)
        when it is done; only a task that suspends pays for the trampoline (resume_steps)."""
        current_task_var.set(record)
        _notify(self._on_started, record)
        record.started_at = _perf()
        result = record.func(*record.args, **record.kwargs)
        if not isinstance(result, types.CoroutineType):
            return result, _NOT_STEPPED
        step_start = _perf()
        try:
            yielded = result.send(None)
        except StopIteration:
            return None, None
        finally:
            step = _perf() - step_start
            if self._block_threshold is not None:
                record.loop_blocking = step
        return result, yielded

    async def _run_sync_batch(self, records: Sequence[TaskRecord], start: int, end: int) -> int:
        """Run ``records[start:end]`` (all sync) in one thread hand-off; return the next index."""
        handoff = _perf()
        loop = asyncio.events._get_running_loop()
        if loop is not None:  # asyncio: the shared queue
            drain = self._drain
            if drain is None or drain.loop is not loop:
                drain = self._new_drain(loop)
            reached, fatal, cancelled = await drain.run(
                self._sync_batch_in_thread, records, start, end, handoff, None
            )
        else:  # another anyio backend (trio): one hand-off per batch on the limiter
            limiter = self._get_limiter()
            reached, fatal, cancelled = await anyio.to_thread.run_sync(
                self._sync_batch_in_thread, None, records, start, end, handoff, limiter,
                limiter=limiter,
            )  # fmt: skip
            self._report_threadpool(limiter)
        if fatal is not None:
            self._finish_unstarted(records[reached:], OUTCOME_ABANDONED)
            raise fatal
        if cancelled:
            # Cancelled between two tasks: the rest never started.
            self._finish_unstarted(records[reached:], OUTCOME_ABANDONED)
            await anyio.lowlevel.checkpoint()
            raise anyio.get_cancelled_exc_class()()
        return reached

    def _new_drain(self, loop: asyncio.AbstractEventLoop) -> SyncDrain:
        if self._drain is not None:
            self._drain.close()  # its loop is gone (a TestClient makes one per request)
        report = functools.partial(_notify, self._on_threadpool) if self._on_threadpool else _idle
        self._drain = SyncDrain(loop, self.options.threadpool_size, report)
        return self._drain

    def _sync_batch_in_thread(
        self,
        job: Job | None,
        records: Sequence[TaskRecord],
        start: int,
        end: int,
        handoff: float,
        limiter: anyio.CapacityLimiter | None,
    ) -> tuple[int, BaseException | None, bool]:
        if limiter is not None:
            self._report_threadpool(limiter)
        for position in range(start, end):
            record = records[position]
            if position > start:
                if job is not None:
                    if job.cancel_called():
                        return position, None, True
                else:
                    try:
                        anyio.from_thread.check_cancelled()
                    except BaseException:
                        return position, None, True
                record.threadpool_wait = 0.0
            else:
                record.threadpool_wait = _perf() - handoff
            # Its own context (captured at add_task): contextvars never leak to the next task.
            fatal = record.context.run(self._run_sync_one, record)
            if fatal is not None:
                return position + 1, fatal, False
            if record.outcome == OUTCOME_FAILURE and self._stop_on_error:
                return position + 1, None, False
        return end, None, False

    def _run_sync_one(self, record: TaskRecord) -> BaseException | None:
        current_task_var.set(record)
        if _async_library is not None:
            _async_library.set(None)  # a worker thread, as anyio marks its own contexts
        _notify(self._on_started, record)
        record.started_at = _perf()
        fatal: BaseException | None = None
        result, error = _call_sync(record.func, record.args, record.kwargs)
        if error is None and result is not None and _never_ran(result):
            error = _returned_awaitable(record, result)
        if error is None:
            record.outcome = OUTCOME_SUCCESS
        else:
            record.outcome = OUTCOME_FAILURE
            record.error = error
            if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: re-raised
                fatal = error
        self._finish(record)
        current_task_var.set(None)  # no record <-> context cycle left for GC
        return fatal

    # --- finish -----------------------------------------------------------------------
    def _finish(self, record: TaskRecord) -> None:
        if record.finished_at is not None:
            return  # abandoned at shutdown while still running, and has ended since
        record.finished_at = _perf()
        if self._bounded:
            self._finished_one()
        blocking, threshold = record.loop_blocking, self._block_threshold
        if blocking is not None and threshold is not None and blocking > threshold:
            record.loop_blocked = True
        _notify(self._on_finished, record)
        # The observers are done with it: what they kept for one another (the described
        # failure, its stack trace) must not live on with the record.
        record.observer_state.clear()
        if record.started_at is not None:
            # A record outlives its task where something keeps its context (an idle worker
            # thread's last job, a cancelled keep-alive timer): it must not keep the
            # callable and arguments (a request's connection, payload) with it.
            record.func, record.args, record.kwargs = _ran, (), {}

    def _finish_unstarted(self, records: Sequence[TaskRecord], outcome: Outcome) -> None:
        for record in records:
            if record.outcome is None:
                record.outcome = outcome
                self._finish(record)

    def abandon(self, records: Sequence[TaskRecord]) -> None:
        """Finish never-started tasks as ``abandoned`` (each is counted and logged)."""
        for record in records:
            record.claimed = True
        self._finish_unstarted(records, OUTCOME_ABANDONED)

    # --- thread pool and lifespan -----------------------------------------------------
    def _get_limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.options.threadpool_size)
        return self._limiter

    def _report_threadpool(self, limiter: anyio.CapacityLimiter) -> None:
        if self._on_threadpool:
            _notify(self._on_threadpool, limiter.borrowed_tokens, int(limiter.total_tokens))

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run with the app's lifespan: loop-lag sampler and, in detached mode, the task group."""
        self._limiter = anyio.CapacityLimiter(self.options.threadpool_size)
        self._report_threadpool(self._limiter)
        async with anyio.create_task_group() as group:
            sampler = None
            if self.options.loop_lag_interval is not None and self._on_loop_lag:
                # Through _notify: an observer bug must not end the sampler, whose failure
                # would cancel this task group (and every detached task with it).
                sink = functools.partial(_notify, self._on_loop_lag)
                sampler = LoopLagSampler(self.options.loop_lag_interval, [sink])
                group.start_soon(sampler.run)
            try:
                if self.options.detached:
                    executor = DetachedExecutor(self.run_batch, self.abandon, self.options)
                    async with executor:
                        self.detached = executor
                        try:
                            yield
                        finally:
                            self.detached = None
                else:
                    yield
            finally:
                if sampler is not None:
                    sampler.stop()
                group.cancel_scope.cancel()
                if self._drain is not None:
                    self._drain.close()  # idle threads end; jobs already queued still run
                    self._drain = None


def _idle(*_: Any) -> None:
    """No observer wants the thread-pool gauges."""


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # a held request cancelled meanwhile
        waiter.set_result(None)


def _optional_hooks(observers: Sequence[TaskObserver], name: str) -> tuple[Callable[..., Any], ...]:
    """Hooks an observer may define beyond the TaskObserver protocol (duck-typed)."""
    return tuple(h for h in (getattr(o, name, None) for o in observers) if callable(h))


def _hooks(observers: Sequence[TaskObserver], name: str) -> tuple[Callable[..., None], ...]:
    """The observers' ``name`` hooks, leaving out the base class's no-ops (and duck-typed
    observers' missing ones), so a task pays only for hooks that do something."""
    base = getattr(TaskObserver, name)
    return tuple(
        getattr(o, name) for o in observers if getattr(type(o), name, None) not in (None, base)
    )


def _notify(hooks: Sequence[Callable[..., None]], *args: Any) -> None:
    """Call observer hooks; an observer bug is logged, never raised into the task."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            _logger.exception("tasklens: observer %r failed", hook)
