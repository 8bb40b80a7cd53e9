"""Per-request bookkeeping: which tasks a request added, so none is lost uncounted."""

from __future__ import annotations

from contextvars import ContextVar

from opentelemetry.context import Context

from .record import TaskRecord
from .runner import TaskRunner


class RequestScope:
    """Tasks added during one request of an instrumented app.

    A task whose response is never sent (the endpoint raised after ``add_task``) is never
    run by Starlette; at the end of the request such tasks are finished as ``abandoned``.
    Once closed, the scope counts no new task at creation (one made later, by a detached
    task or a fire-and-forget coroutine that copied the request's context, is counted when
    it runs), so no task is left pending for ever.
    """

    __slots__ = ("closed", "context", "records", "runner")

    def __init__(self, runner: TaskRunner, context: Context) -> None:
        self.runner = runner
        self.records: list[TaskRecord] = []
        #: The parent trace context of every task the request adds: the context at the
        #: start of the request, replaced by the app's request middleware (telemetry, just
        #: outside routing) with the one holding the request's server span, whoever made it.
        self.context = context
        self.closed = False

    def close(self) -> None:
        """Finish every task of this request that nothing claimed to run."""
        self.closed = True
        leftovers = [r for r in self.records if not r.claimed]
        if leftovers:
            self.runner.abandon(leftovers)


#: Set by the runtime middleware for the duration of one request of an instrumented app.
current_scope: ContextVar[RequestScope | None] = ContextVar("tasklens_scope", default=None)
