"""The closed sets the runtime decides and every observer reads: executors and outcomes.

Telemetry's contract re-exports them as label values; they are defined here, on the ground
floor, because the runtime is what makes the decision.
"""

from __future__ import annotations

from typing import Final, Literal

Executor = Literal["event_loop", "thread_pool", "broker", "celery"]
Outcome = Literal["success", "failure", "skipped", "cancelled", "abandoned"]

#: Where a task ran.
EXECUTOR_EVENT_LOOP: Final = "event_loop"
EXECUTOR_THREAD_POOL: Final = "thread_pool"
#: A Celery task's web-process part: sent to the broker (``instrument(app, celery=...)``).
EXECUTOR_BROKER: Final = "broker"
#: A Celery task's run on a worker (``tasklens.celery.instrument_worker``).
EXECUTOR_CELERY: Final = "celery"
EXECUTORS: Final[tuple[Executor, ...]] = (
    EXECUTOR_EVENT_LOOP,
    EXECUTOR_THREAD_POOL,
    EXECUTOR_BROKER,
    EXECUTOR_CELERY,
)

#: How a task ended. ``skipped``: not run because an earlier task of the same response
#: failed under ``on_error="stop"``. ``cancelled``: cancelled while running.
#: ``abandoned``: never started (shutdown, or its response was never sent), or, in
#: detached mode, still running 0.5 s after its cancellation at shutdown.
OUTCOME_SUCCESS: Final = "success"
OUTCOME_FAILURE: Final = "failure"
OUTCOME_SKIPPED: Final = "skipped"
OUTCOME_CANCELLED: Final = "cancelled"
OUTCOME_ABANDONED: Final = "abandoned"
OUTCOMES: Final[tuple[Outcome, ...]] = (
    OUTCOME_SUCCESS,
    OUTCOME_FAILURE,
    OUTCOME_SKIPPED,
    OUTCOME_CANCELLED,
    OUTCOME_ABANDONED,
)

#: Task name used for callables beyond the distinct-name limit.
OTHER_TASK: Final = "other"
