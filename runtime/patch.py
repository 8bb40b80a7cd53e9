"""The hook into Starlette: ``BackgroundTask`` creation and ``BackgroundTask(s).__call__``.

Installed once per process and scoped by a context variable: only tasks created or run
inside a request of an instrumented app take the runtime's path; every other app keeps
Starlette's plain behaviour. This covers every way of scheduling a task (FastAPI's
``BackgroundTasks`` parameter in endpoints and dependencies, ``JSONResponse(background=...)``,
``response.background = BackgroundTask(...)``, plain Starlette) without changing user code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from starlette.background import BackgroundTask, BackgroundTasks

from .record import TaskRecord
from .runner import TaskRunner
from .scope import current_scope

#: Attribute of a BackgroundTask taken by the runtime: (its runner, its record).
_CLAIM_ATTR = "_tasklens_claim"
Claim = tuple[TaskRunner, TaskRecord]
_STARLETTE_INIT = BackgroundTask.__init__
_STARLETTE_TASK_CALL = BackgroundTask.__call__
_previous_task_call: Callable[[BackgroundTask], Any] = _STARLETTE_TASK_CALL


def _task_init(self: BackgroundTask, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    scope = current_scope.get()
    if scope is None:
        _STARLETTE_INIT(self, func, *args, **kwargs)
        return
    record = scope.runner.enqueue(func, args, kwargs, scope.context)
    self.func = func
    self.args = args  # type: ignore[assignment]
    self.kwargs = kwargs  # type: ignore[assignment]
    self.is_async = record.is_async
    setattr(self, _CLAIM_ATTR, (scope.runner, record))
    scope.records.append(record)


def _claim_of(task: BackgroundTask) -> Claim | None:
    claim: Claim | None = getattr(task, _CLAIM_ATTR, None)
    if claim is None:
        scope = current_scope.get()
        if scope is not None:  # created outside a request, run inside one
            record = scope.runner.enqueue(task.func, task.args, task.kwargs, scope.context)
            claim = (scope.runner, record)
            setattr(task, _CLAIM_ATTR, claim)
    return claim


def _flatten(tasks: list[BackgroundTask]) -> list[BackgroundTask]:
    flat: list[BackgroundTask] = []
    for task in tasks:
        if isinstance(task, BackgroundTasks):
            flat.extend(_flatten(task.tasks))
        else:
            flat.append(task)
    return flat


def _tasks_call_for(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A ``BackgroundTasks.__call__`` that takes the runtime's path when the tasks belong to
    an instrumented app, and ``original`` otherwise."""

    async def __call__(self: BackgroundTasks) -> None:
        claims = [_claim_of(task) for task in _flatten(self.tasks)]
        runner = next((c[0] for c in claims if c is not None), None)
        if runner is None or any(c is None or c[1].claimed for c in claims):
            await original(self)
            return
        await runner.run([c[1] for c in claims])  # type: ignore[index]

    __call__._tasklens = True  # type: ignore[attr-defined]
    return __call__


async def _task_call(self: BackgroundTask) -> None:
    claim = _claim_of(self)
    if claim is None or claim[1].claimed:
        await _previous_task_call(self)
        return
    runner, record = claim
    await runner.run([record])


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
