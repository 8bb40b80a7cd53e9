"""The mechanism: capture each background task at ``add_task``, run it (event loop or thread
pool, inline or detached), time it, isolate its failure, and announce its lifecycle to
observers. Knows no exporter: telemetry plugs in as :class:`TaskObserver` subclasses.

Where a task is enqueued, started and finished: :mod:`.runner`. How Starlette's tasks get
here: :mod:`.patch` (hooks) and :mod:`.middleware` (the request scope).
"""

from .attach import attach
from .background import BackgroundTasks
from .context import current_task
from .observer import TaskObserver
from .options import RuntimeOptions
from .record import TaskRecord
from .runner import TaskRunner

__all__ = [
    "BackgroundTasks",
    "RuntimeOptions",
    "TaskObserver",
    "TaskRecord",
    "TaskRunner",
    "attach",
    "current_task",
]
