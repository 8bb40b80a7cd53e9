"""Context variables the runtime sets: the request scope and the task running now."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.record import TaskRecord
    from runtime.scope import RequestScope

#: Set by the runtime middleware for the duration of one request of an instrumented app.
current_scope: ContextVar[RequestScope | None] = ContextVar("tasklens_scope", default=None)
#: Set while a task's function runs.
current_task_var: ContextVar[TaskRecord | None] = ContextVar("tasklens_task", default=None)


def current_task() -> TaskRecord | None:
    """The background task running in this context, if any."""
    return current_task_var.get()
