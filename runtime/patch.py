"""The hook into Starlette: ``BackgroundTask`` creation and ``BackgroundTask(s).__call__``.

Installed once per process and scoped by a context variable: only tasks created or run
inside a request of an instrumented app take the runtime's path; every other app keeps
Starlette's plain behaviour. This covers every way of scheduling a task (FastAPI's
``BackgroundTasks`` parameter in endpoints and dependencies, ``JSONResponse(background=...)``,
``response.background = BackgroundTask(...)``, plain Starlette) without changing user code.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.context import Context
from starlette.background import BackgroundTask, BackgroundTasks

from .context import current_task_var
from .record import TaskRecord
from .runner import TaskRunner
from .scope import current_scope

#: Attribute of a BackgroundTask taken by the runtime: (its runner, its record).
_CLAIM_ATTR = "_tasklens_claim"
#: Set on a task of a nested list taken with its enclosing task (see _reserve).
_RESERVED_ATTR = "_tasklens_reserved"
Claim = tuple[TaskRunner, TaskRecord]
_STARLETTE_INIT = BackgroundTask.__init__
_STARLETTE_TASK_CALL = BackgroundTask.__call__
_previous_task_call: Callable[[BackgroundTask], Any] = _STARLETTE_TASK_CALL
#: (enclosing task, the nested tasks it holds) until it ends; see reconcile().
_holds: list[tuple[TaskRecord, list[Claim]]] = []
_holds_lock = threading.Lock()


def _task_init(self: BackgroundTask, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    scope = current_scope.get()
    if scope is None or scope.closed or current_task_var.get() is not None:
        # Outside a live request (or made by a running task, which may never run it): not
        # counted now; counted when it runs (see _claim_of), so pending is never stuck.
        _STARLETTE_INIT(self, func, *args, **kwargs)
        return
    record = scope.runner.enqueue(func, args, kwargs, scope.context)
    self.func = func
    self.args = args  # type: ignore[assignment]
    self.kwargs = kwargs  # type: ignore[assignment]
    self.is_async = record.is_async
    setattr(self, _CLAIM_ATTR, (scope.runner, record))
    scope.records.append(record)


def _parent() -> Context | None:
    """The parent of a task counted at run time: the running task's span when one runs
    (a nested list), else the request's (None: the current context)."""
    scope = current_scope.get()
    if scope is None or current_task_var.get() is not None:
        return None
    return scope.context


def _claim_of(task: BackgroundTask) -> Claim | None:
    claim: Claim | None = getattr(task, _CLAIM_ATTR, None)
    if claim is None or claim[1].outcome is not None:
        scope = current_scope.get()
        # Created outside a request, or run again (one object reused by every request):
        # counted now, as a task of its own.
        if scope is not None:
            record = scope.runner.enqueue(task.func, task.args, task.kwargs, _parent())
            claim = (scope.runner, record)
            setattr(task, _CLAIM_ATTR, claim)
    return claim


def _is_list(entry: object) -> bool:
    """A BackgroundTasks whose ``__call__`` is the runtime's: its entries run as ours."""
    return isinstance(entry, BackgroundTasks) and getattr(type(entry).__call__, "_tasklens", False)


def _flatten(tasks: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for task in tasks:
        if _is_list(task):
            flat.extend(_flatten(task.tasks))
        else:
            flat.append(task)
    return flat


def _runnable(task: object, claim: Claim) -> bool:
    """The claimed record may run now: never taken, or reserved by an enclosing task."""
    record = claim[1]
    return not record.claimed or (
        record.outcome is None and getattr(task, _RESERVED_ATTR, False) is True
    )


def _take(task: object, claim: Claim) -> bool:
    """Like :func:`_runnable`, and uses up a reservation."""
    runnable = _runnable(task, claim)
    _unreserve(task)
    return runnable


def _unreserve(obj: object) -> None:
    attrs = getattr(obj, "__dict__", None)
    if attrs:
        attrs.pop(_RESERVED_ATTR, None)


def _nested(obj: object, seen: set[int]) -> list[BackgroundTask]:
    """Tasks of the lists reachable from ``obj`` (a list, or a task whose function is one)."""
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, BackgroundTasks):
        found: list[BackgroundTask] = []
        for task in getattr(obj, "tasks", ()):
            found.append(task)
            found.extend(_nested(task, seen))
        return found
    func = getattr(obj, "func", None)
    return _nested(func, seen) if isinstance(func, BackgroundTasks) else []


def _reserve(entry: object) -> list[Claim]:
    """Take, with their enclosing task, the request's tasks of lists nested in ``entry``:
    they run when its code reaches them (detached: after the request, whose end must not
    count them abandoned); whatever it did not reach is abandoned when it ends."""
    held = []
    for task in _nested(entry, set()):
        claim: Claim | None = getattr(task, _CLAIM_ATTR, None)
        if claim is not None and not claim[1].claimed:
            claim[1].claimed = True
            setattr(task, _RESERVED_ATTR, True)
            held.append(claim)
    return held


def _release(held: list[Claim]) -> None:
    """Abandon the held tasks that never started; forget the hold."""
    with _holds_lock:
        _holds[:] = [h for h in _holds if h[1] is not held]
    for runner, record in held:
        if record.outcome is None and record.started_at is None:
            runner.abandon([record])


def reconcile() -> None:
    """Release the holds of enclosing tasks that ended without starting (skipped, abandoned
    at shutdown): called at the end of every request; a no-op when nothing is held."""
    if not _holds:
        return
    with _holds_lock:
        done = [held for outer, held in _holds if outer.outcome is not None]
    for held in done:
        _release(held)


def _awaiting(call: Callable[[], Awaitable[Any]], held: list[Claim]) -> Callable[..., Any]:
    """Run an opaque entry as Starlette does (``await entry()``, its own ``__call__``), then
    abandon the nested tasks it held but never reached."""

    async def run_entry(*_args: Any, **_kwargs: Any) -> None:
        try:
            await call()
        finally:
            if held:
                _release(held)

    return run_entry


def _record_of(entry: Any, claim: Claim | None, runner: TaskRunner) -> TaskRecord:
    """The record an entry of a list runs as. A plain BackgroundTask runs its function; any
    other entry (a subclass with its own ``__call__``, an object with an async ``__call__``,
    a BackgroundTasks subclass with its own ``__call__``) is one opaque task that awaits
    ``entry()``, named after its function if it has one, else after its type."""
    if (
        claim is not None
        and type(entry).__call__ is _task_call
        and not isinstance(entry.func, BackgroundTasks)
    ):  # the common case: a plain task counted at add_task, nothing nested in it
        entry.__dict__.pop(_RESERVED_ATTR, None)
        return claim[1]
    if claim is None:
        func = getattr(entry, "func", None) if isinstance(entry, BackgroundTask) else None
        if callable(func):
            record = runner.enqueue(func, entry.args, entry.kwargs, _parent())
            setattr(entry, _CLAIM_ATTR, (runner, record))
        else:
            record = runner.enqueue(entry, (), {}, _parent())
    else:
        record = claim[1]
    _unreserve(entry)
    held = _reserve(entry)
    if type(entry).__call__ is not _task_call:
        record.func = _awaiting(entry, held)
        record.is_async = True
    elif held:  # a task whose function is a list
        record.func = _awaiting(functools.partial(entry.func, *entry.args, **entry.kwargs), held)
        record.is_async = True
    if held:
        with _holds_lock:
            _holds.append((record, held))
    return record


async def _run(runner: TaskRunner, records: list[TaskRecord]) -> None:
    """Run records: inside a running task (a nested list, a subclass's ``super().__call__``)
    right here, in order, as Starlette would; otherwise through the runner (inline or
    detached)."""
    if current_task_var.get() is None:
        await runner.run(records)
        return
    for record in records:
        record.claimed = True
    await runner.run_batch(records)


def _tasks_call_for(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A ``BackgroundTasks.__call__`` that takes the runtime's path when the tasks belong to
    an instrumented app, and ``original`` otherwise."""

    async def __call__(self: BackgroundTasks) -> None:
        entries = _flatten(self.tasks)
        claims: list[Claim | None] = [getattr(e, _CLAIM_ATTR, None) for e in entries]
        scope = current_scope.get()
        if scope is not None:  # a finished task run again is counted again (see _claim_of)
            claims = [None if c is not None and c[1].outcome is not None else c for c in claims]
        pairs = list(zip(entries, claims, strict=True))
        runner = next((c[0] for c in claims if c is not None), None)
        if runner is None and scope is not None:
            runner = scope.runner
        if (
            runner is None
            or not entries
            or any(c is not None and not _runnable(e, c) for e, c in pairs)
            or (scope is None and any(c is None for c in claims))
            or not all(callable(e) for e in entries)  # Starlette's own TypeError, in order
        ):
            await original(self)
            return
        await _run(runner, [_record_of(e, c, runner) for e, c in pairs])

    __call__._tasklens = True  # type: ignore[attr-defined]
    return __call__


async def _task_call(self: BackgroundTask) -> None:
    claim = _claim_of(self)
    if claim is not None and current_task_var.get() is claim[1]:
        # A subclass's own __call__ calling super().__call__() inside its task's run: the
        # function runs as in Starlette; the span is ours already (no instrumentor's second).
        await _STARLETTE_TASK_CALL(self)
        return
    if claim is None or not _take(self, claim):
        await _previous_task_call(self)
        return
    runner, record = claim
    if type(self).__call__ is not _task_call and current_task_var.get() is None:
        # Reached through a subclass's own __call__ (super().__call__()), as a response's
        # only background: its code around this call must run in order, so here, not
        # detached.
        record.claimed = True
        await runner.run_batch([record])
        return
    await _run(runner, [record])


def _task_list_classes() -> list[type[BackgroundTasks]]:
    """Starlette's BackgroundTasks and subclasses with their own ``__call__`` (FastAPI >= 0.164
    wraps each task in a ``fastapi.background_task`` span there: ours replaces it).

    FastAPI's only once imported (a FastAPI app, or code using its BackgroundTasks, has
    imported it by now): importing it for a Starlette app would load FastAPI and pydantic,
    ~20k more objects for every full garbage collection to scan. Tasks of a FastAPI
    BackgroundTasks whose class was imported later still run on the runtime, one by one
    (through ``BackgroundTask.__call__``), and the next ``instrument()`` patches it."""
    classes: list[type[BackgroundTasks]] = [BackgroundTasks]
    module = sys.modules.get("fastapi.background")
    fastapi_tasks = getattr(module, "BackgroundTasks", None)
    if isinstance(fastapi_tasks, type) and "__call__" in fastapi_tasks.__dict__:
        classes.append(fastapi_tasks)
    return classes


def install() -> None:
    """Install the hooks (idempotent). Leaves uninstrumented apps on Starlette's path."""
    global _previous_task_call
    BackgroundTask.__init__ = _task_init  # type: ignore[method-assign]
    for cls in _task_list_classes():
        if not getattr(cls.__dict__.get("__call__"), "_tasklens", False):
            cls.__call__ = _tasks_call_for(cls.__dict__["__call__"])  # type: ignore[method-assign, assignment]
    current = BackgroundTask.__call__
    if current is not _task_call:
        # Keep whatever was there (OpenTelemetry's FastAPI instrumentor wraps it in a span)
        # for tasks of other apps; tasks of instrumented apps get exactly one span, ours.
        _previous_task_call = current
        BackgroundTask.__call__ = _task_call  # type: ignore[method-assign]
    if not hasattr(BackgroundTask, "_otel_original_call"):
        # FastAPIInstrumentor checks this attribute before wrapping BackgroundTask.__call__;
        # with it set, instrumenting FastAPI after tasklens does not add a second task span.
        BackgroundTask._otel_original_call = _STARLETTE_TASK_CALL  # type: ignore[attr-defined]
