"""The task record: everything the runtime knows about one background task."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context

from .naming import TaskIdentity
from .outcomes import Executor, Outcome


@dataclass(frozen=True)
class Message:
    """The message a task travels as, for a task sent to a broker or received from one."""

    #: The messaging system (``celery``).
    system: str
    #: ``send`` (the web process hands it to the broker) or ``process`` (a worker runs it).
    operation: str
    #: Its id (the Celery task id).
    message_id: str
    #: Where it goes (the Celery queue), when known.
    destination: str | None = None


class TaskRecord:
    """One background task, from ``add_task`` to its outcome.

    Times are ``time.perf_counter()`` seconds, except ``enqueued_ns`` and ``started_ns``
    (``time.time_ns()``) which place spans on the wall clock.
    """

    __slots__ = (
        "args",
        "batch_size",
        "claimed",
        "context",
        "enqueued_at",
        "enqueued_ns",
        "error",
        "finished_at",
        "func",
        "identity",
        "index",
        "is_async",
        "kwargs",
        "loop_blocked",
        "loop_blocking",
        "message",
        "observer_state",
        "outcome",
        "parent_context",
        "queue_known",
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
    ) -> None:
        self.identity = identity
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.is_async = is_async
        self.enqueued_at = time.perf_counter()
        self.enqueued_ns = time.time_ns()
        self.parent_context = parent_context
        #: The context variables at ``add_task``: the task runs in this copy of its own, so
        #: what it sets (contextvars, structlog bindings) never reaches later tasks.
        self.context = contextvars.copy_context()
        self.index = 0
        self.batch_size = 1
        self.started_at: float | None = None
        self.started_ns = 0
        self.finished_at: float | None = None
        self.threadpool_wait: float | None = None
        #: Async tasks: the longest uninterrupted event-loop step, seconds.
        self.loop_blocking: float | None = None
        #: That step exceeded ``loop_block_threshold`` (decided once, by the runner).
        self.loop_blocked = False
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        #: Per-observer scratch space (the span observer keeps its span and token here).
        self.observer_state: dict[object, Any] = {}
        #: True once a runner took the task to run it (inline or detached).
        self.claimed = False
        #: A task that travels as a message (Celery): what the message is; else None.
        self.message: Message | None = None
        #: False when the enqueue time is unknown (a message that came without one): its
        #: queue time is then not recorded.
        self.queue_known = True

    @property
    def name(self) -> str:
        """The ``task`` label: ``module.qualname`` of the callable (or ``other``)."""
        return self.identity.name

    @property
    def executor(self) -> Executor:
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
