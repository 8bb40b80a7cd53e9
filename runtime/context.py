"""The task running now: a context variable set while a task's function runs."""

from __future__ import annotations

from contextvars import ContextVar

from .record import TaskRecord

#: Set while a task's function runs (in its own context copy, loop or thread).
current_task_var: ContextVar[TaskRecord | None] = ContextVar("tasklens_task", default=None)


def current_task() -> TaskRecord | None:
    """The background task running in this context, if any."""
    return current_task_var.get()
