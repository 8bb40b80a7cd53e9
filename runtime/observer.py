"""The lifecycle events the runtime emits, and the base class observers extend.

enqueued → started → finished(outcome). ``started`` runs in the task's own context (on the
event loop or in the worker thread) right before the function; ``finished`` right after it,
in the same context, so an observer may make something current for the task's duration.
Tasks that never start (skipped, abandoned) get ``finished`` only.
"""

from __future__ import annotations

from .record import TaskRecord


class TaskObserver:
    """Base of lifecycle observers: override the hooks you need; the runner calls only
    overridden ones (hooks must not raise: an exception is logged and ignored)."""

    def enqueued(self, task: TaskRecord) -> None:
        """The task was added to a response (``add_task`` / ``BackgroundTask(...)``)."""
        return None

    def started(self, task: TaskRecord) -> None:
        """The task's function is about to run."""
        return None

    def finished(self, task: TaskRecord) -> None:
        """The task reached ``task.outcome`` (``task.error`` is set on failure)."""
        return None

    def threadpool_changed(self, borrowed: int, total: int) -> None:
        """Tokens of the runtime's thread-pool limiter changed."""
        return None

    def loop_lag(self, seconds: float) -> None:
        """The lag sampler's latest sample (``loop_lag_interval``); called on the event loop."""
        return None
