"""The task record: everything the runtime knows about one background task."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from runtime.naming import TaskIdentity
    from runtime.runner import TaskRunner


class TaskRecord:
    """One background task, from ``add_task`` to its outcome.

    Times are ``time.perf_counter()`` seconds, except ``enqueued_ns`` and ``started_ns``
    (``time.time_ns()``) which place spans on the wall clock.
    """

    __slots__ = (
        "args",
        "batch_size",
        "claimed",
        "enqueued_at",
        "enqueued_ns",
        "error",
        "finished_at",
        "func",
        "identity",
        "index",
        "is_async",
        "kwargs",
        "loop_blocking",
        "observer_state",
        "outcome",
        "parent_context",
        "runner",
        "started_at",
        "started_ns",
        "threadpool_wait",
    )

    def __init__(
        self,
        identity: TaskIdentity,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        is_async: bool,
        parent_context: Context | None,
        runner: TaskRunner | None = None,
    ) -> None:
        self.identity = identity
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.is_async = is_async
        self.enqueued_at = time.perf_counter()
        self.enqueued_ns = time.time_ns()
        self.parent_context = parent_context
        self.index = 0
        self.batch_size = 1
        self.started_at: float | None = None
        self.started_ns = 0
        self.finished_at: float | None = None
        self.threadpool_wait: float | None = None
        self.loop_blocking: float | None = None
        self.outcome: str | None = None
        self.error: BaseException | None = None
        #: Per-observer scratch space (the span observer keeps its span and token here).
        self.observer_state: dict[object, Any] = {}
        #: True once a runner took the task to run it (inline or detached).
        self.claimed = False
        self.runner = runner

    @property
    def name(self) -> str:
        """The ``task`` label: ``module.qualname`` of the callable (or ``other``)."""
        return self.identity.name

    @property
    def executor(self) -> str:
        return self.identity.executor

    @property
    def queue_seconds(self) -> float:
        """From enqueue to function start (includes thread-pool wait for sync tasks)."""
        return 0.0 if self.started_at is None else self.started_at - self.enqueued_at

    @property
    def duration_seconds(self) -> float:
        """From function start to function end."""
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return self.finished_at - self.started_at

    def __repr__(self) -> str:
        return f"<TaskRecord {self.name} {self.executor} outcome={self.outcome}>"
